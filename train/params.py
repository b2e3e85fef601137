"""Params as a run uses them: params.yaml with every `auto` resolved, the model's included.

`pipeline.config` resolves what the data stages need; here the model's keys (train recipe,
backbone.name/frozen, model_kwargs) come from the recipe the model registered (fss_model.recipe),
and the model is built on the meta device to check its arguments. Training, evaluation, inference
and the DVC `check` stage load params through `load_params` below.

    python -m train.params -S model=panet -S source=official   # the resolved params, as YAML
    python -m train.params --check --out FILE                  # the `check` stage: one line per problem

The `check` stage is the first stage of dvc.yaml: every stage removes its outputs just before its
command runs, so a mistake found inside a stage (an unknown key, `fold: 9`, a model name with a typo)
would cost that stage's outputs. Its output is a constant marker, so a params change never makes
the stages after it run again.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import (
    AUTO,
    NUM_CLASSES,
    PARAMS_FILE,
    ConfigError,
    Params,
    check_recipe,
    read_params,
    resolve,
)
from pipeline.io import atomic_write
from pipeline.protocol import protocol_rules
from train.device import DeviceError

MARKER = "params.yaml checked\n"


def _recipe(p: Params) -> Any:
    import fss_model

    try:
        entry = fss_model.model_entry(p.model)
    except ValueError as exc:
        raise ConfigError(f"params: model: {exc}") from exc
    recipe = entry.recipes.for_source(p.source)
    if recipe is None:
        raise ConfigError(
            f"params: model {p.model} has no {p.source} recipe: register it with "
            f"register_model(..., {p.source}=Recipe(...)) (fss_model/registry.py)"
        )
    return recipe


def resolve_model(params: Params, image_size_auto: bool = False) -> Params:
    """Fill the model's `auto` keys from its registered recipe for `source`; returns a new Params.
    `image_size_auto`: params.yaml left sampler.image_size `auto`, so a recipe's image size applies."""
    p = copy.deepcopy(params)
    recipe = _recipe(p).for_dataset(p.dataset)
    t = p.train
    values: dict[str, Any] = {
        "optimizer": recipe.optimizer,
        "lr": recipe.lr,
        "momentum": recipe.momentum,
        "batch_size": recipe.batch_size,
        "weight_decay": recipe.weight_decay,
        "steps": recipe.steps_by_dataset.get(p.dataset, recipe.steps),
        "lr_milestones": list(recipe.lr_milestones),
        "lr_multipliers": dict(recipe.lr_multipliers),
        "lr_schedule": recipe.lr_schedule,
        "augment": recipe.augment,
    }
    for key, value in values.items():
        if getattr(t, key) == AUTO:
            setattr(t, key, value)
    if image_size_auto and recipe.image_size is not None:
        # training and evaluation only: the data stages (presence under `denet`) keep the source's size
        p.sampler.image_size = recipe.image_size
    if p.backbone.name == AUTO:
        p.backbone.name = recipe.backbone
    if p.backbone.frozen == AUTO:
        p.backbone.frozen = recipe.backbone_frozen
    if p.evaluate.resize == AUTO:  # the protocol says `recipe` (pipeline.config.resolve fills the others)
        p.evaluate.resize = recipe.eval_resize
    if t.void == AUTO:
        rules = protocol_rules(p.protocol)
        t.void = recipe.train_void if rules.release_void and recipe.train_void else rules.train_void
    if p.model_kwargs == AUTO:
        p.model_kwargs = dict(recipe.model_kwargs)
        if p.source == "official" and protocol_rules(p.protocol).release_model_kwargs:
            p.model_kwargs.update(recipe.release_kwargs)
    check_recipe(p)
    return p


def load_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """params.yaml (plus `overrides`: dotted keys -> values) type-checked and fully resolved."""
    raw = read_params(path, overrides)
    return resolve_model(resolve(raw), image_size_auto=raw.sampler.image_size == AUTO)


def model_kwargs_from_params(p: Params) -> dict[str, Any]:
    """Constructor kwargs of the model: the only place that maps params.yaml keys onto a model."""
    return {
        "num_classes": NUM_CLASSES[p.dataset] + 1,  # background + every dataset class (W has C rows)
        "backbone": p.backbone.name,
        "frozen": bool(p.backbone.frozen),
        "freeze_bn": bool(p.backbone.freeze_bn),
        **p.model_kwargs,  # per-model extras (params model_kwargs; toy DENet: depth 128)
    }


def resolve_machine(p: Params) -> Params:
    """train.device and train.compile as this machine resolves their `auto` (train.device)."""
    from train.device import compile_mode, resolve_device

    device = resolve_device(p.train.device)
    train = dataclasses.replace(
        p.train, device=device, compile=compile_mode(p.train.compile, device, int(p.train.steps))
    )
    return dataclasses.replace(p, train=train)


def check_model(p: Params) -> None:
    """The model exists, supports `way`, and its constructor takes the kwargs params give it."""
    import torch

    import fss_model

    try:
        entry = fss_model.model_entry(p.model)
    except ValueError as exc:
        raise ConfigError(f"params: model: {exc}") from exc
    if p.way not in entry.ways:
        raise ConfigError(f"params: way = {p.way}: model {p.model} supports {entry.ways}-way episodes")
    kwargs = model_kwargs_from_params(p)
    try:
        fss_model.registry.check_arguments(f"model {p.model!r}", entry.fn, kwargs)  # as build_model does
        with torch.device("meta"):  # shapes only: a ResNet-50 builds in a fraction of a second
            entry.fn(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: torch refusing a shape
        raise ConfigError(
            f"params: model {p.model} cannot be built from these params: {exc}".replace("\n", " ")
        ) from exc


def check(path: str | Path, overrides: dict[str, Any] | None = None) -> Params:
    """Everything `load_params` checks (keys, types, ranges, combinations, recipe) plus the model."""
    p = load_params(path, overrides)
    check_model(p)
    return p


def as_dict(p: Params) -> dict[str, Any]:
    """The resolved params as plain data (the sections of params.yaml, `paths` left out)."""
    out = dataclasses.asdict(p)
    out.pop("paths")
    return out


def write_json(p: Params, path: str | Path) -> None:
    """The resolved params beside a run's metrics (results/train/params.json, a DVC metrics file)."""
    with atomic_write(path, "w") as handle:
        json.dump(as_dict(p), handle, indent=2)
        handle.write("\n")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings (as `dvc exp run -S`) -> {dotted key: YAML value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"params: override {item!r} is not KEY=VALUE (e.g. -S train.lr=0.01)")
        out[key] = yaml.safe_load(value)
    return out


def resolve_data(p: Params) -> Params:
    """`train.episodes_per_class: auto` as the train stage resolves it, where the fold lists exist
    (it depends on the fold's images); before the `folds` stage has run it stays `auto`."""
    from pipeline.config import folds_dir

    folds = folds_dir(p)
    if p.train.episodes_per_class != AUTO or not (folds / f"fold{p.fold}" / "train.txt").is_file():
        return p
    from train.stream.manifests import episodes_per_class

    per_class = episodes_per_class(p, folds)
    return dataclasses.replace(p, train=dataclasses.replace(p.train, episodes_per_class=per_class))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_FILE))
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param as `dvc exp run -S` does (repeatable)")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="check only: print one line, not the params")
    parser.add_argument("--out", default=None, help="marker file written when the params are valid")
    args = parser.parse_args(argv)
    try:
        p = check(args.params, parse_overrides(args.set))
        shown = p if args.check else resolve_data(resolve_machine(p))
    except (ConfigError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        with atomic_write(args.out, "w") as handle:
            handle.write(MARKER)
    if args.check:
        print(f"{args.params}: ok")
    else:
        print(
            "# every `auto` resolved; train.device and train.compile as on this machine; "
            "train.episodes_per_class from the fold lists once the folds stage has run"
        )
        print(yaml.safe_dump(as_dict(shown), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
