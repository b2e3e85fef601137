"""Params check before any stage runs: `python -m pipeline.check --out FILE` (the DVC `check` stage).

Every stage removes its outputs just before its command runs, so a mistake found inside a stage
(an unknown key, `fold: 9`, a model name with a typo) used to cost the outputs of that stage. The
`check` stage is the first stage of dvc.yaml (`raw` depends on its output, every other stage on
`raw`'s): it reads the whole params.yaml, builds the model on the meta device (no memory, no
weights) and stops with one line before any other stage has touched anything. Its output is a
constant marker, so a params change never makes the stages after it run again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import ConfigError, Params, load_params
from pipeline.io import atomic_write

MARKER = "params.yaml checked\n"


def check_model(p: Params) -> None:
    """The model exists, supports `way`, and its constructor takes the kwargs params give it."""
    import torch

    import fss_model
    from train.train import model_kwargs_from_params

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


def check(path: str | Path) -> Params:
    """Everything `load_params` checks (keys, types, ranges, combinations) plus the model."""
    p = load_params(path)
    check_model(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=None, help="marker file written when the params are valid")
    args = parser.parse_args(argv)
    try:
        check(args.params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        with atomic_write(args.out, "w") as handle:
            handle.write(MARKER)
    print(f"{args.params}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
