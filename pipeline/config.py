"""Typed view of params.yaml: the one place where its key names are known and checked.

Every stage and entry point loads params through here; an unknown key, a wrong type or an impossible
combination stops with one line that names the key and says what to change.
Values written as `auto` are filled in two places, each where it can see what decides them:
- `resolve()` here: by `source` (data sizes, episode counts) and by the protocol's rules
  (pipeline.protocol), so that `dvc exp run -S source=official` switches every data-size knob at once;
  this is all the data stages need, and pipeline/ never imports the models.
- `train.params.load_params()`: the model's keys (MODEL_KEYS: the train recipe, backbone.name/frozen,
  model_kwargs) from the recipe the model registered (fss_model.recipe), then the model itself is
  checked. Training, evaluation, inference and the `check` stage load params that way;
  `python -m train.params -S key=value` prints the result.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlparse

import yaml

from pipeline.errors import UserError
from pipeline.protocol import PROTOCOLS, protocol_rules

AUTO = "auto"
PARAMS_FILE = Path("params.yaml")


class ConfigError(UserError, ValueError):
    """A params.yaml problem; the message is one line that names the key."""


@dataclass
class Paths:
    raw: str = "data/raw"
    archives: str = "data/archives"
    shards: str = "shards"
    folds: str = "data/folds"
    episodes: str = "data/episodes"
    models: str = "models"
    results: str = "results"


@dataclass
class Download:
    mirror: str | None = None  # URL or folder holding the official archive names; None = official hosts
    retries: int = 5
    timeout_s: float = 60.0
    # a download ends (one line: URL, bytes, time) below this rate over any rate_window_s of waiting,
    # or after deadline_s of waiting in all (a 19 GB COCO archive at 1 MB/s takes 5.3 h)
    min_bytes_per_s: float = 16384.0
    rate_window_s: float = 30.0
    deadline_s: float = 86400.0


@dataclass
class Toy:
    seed: int = 0
    scale: float = 1.0  # multiplies the number of images


@dataclass
class Data:
    """Masks, per-class index, folds and shards."""

    skip_bad: bool = False  # skip and report bad raw files instead of stopping
    workers: int | str = AUTO  # labelling processes of the shards stage; auto: usable_cpus()
    coco_split: Literal["interleaved", "contiguous"] = "interleaved"
    min_fraction: float | str = AUTO  # class present if area >= this fraction of the image (denet preset)
    min_pixels: int | str = AUTO  # ... or >= this many pixels (standard preset)
    shard_max_samples: int | str = AUTO
    min_shards: int | str = AUTO
    drop_novel_images: bool = False  # BAM option: drop training images showing any novel-class pixel
    # presence checks on the label map resized (nearest) to this square size; null = original size.
    # auto: denet = sampler.image_size (the release checks the resized mask), standard = null
    presence_size: int | str | None = AUTO
    # PASCAL mask per image: list = from the image set's own list (VOC list first, then SBD's .mat, as
    # the release does) | voc = VOC's PNG wherever one exists. auto: denet list, standard voc
    pascal_masks: Literal["auto", "list", "voc"] = AUTO
    # COCO crowd regions: background (not painted, as the release) | ignore (255). auto: denet
    # background, standard ignore
    coco_crowd: Literal["auto", "background", "ignore"] = AUTO


@dataclass
class Sampler:
    image_size: int | str = AUTO
    pool_size: int = 64  # samples kept per class pool
    workers: int = 2
    test_episodes: int | str = AUTO
    val_episodes: int | str = AUTO
    decode_reduced: bool = True  # PIL draft mode for JPEGs larger than the target size
    gpu_decode: bool = False
    # None = the local shards folder given on the command line (the DVC output); else a URL prefix
    # (http(s)://, s3://, gs://) holding <split>/manifest.json, index.tsv and the tars, streamed
    shards_url: str | None = None
    # every network read of shards (a stream, a sample, a whole shard) ends with one line (URL, bytes,
    # time) below min_bytes_per_s over any rate_window_s of waiting, or after deadline_s of it
    min_bytes_per_s: float = 16384.0
    rate_window_s: float = 30.0
    deadline_s: float = 3600.0
    # whole shards of servers that ignore HTTP Range; null = $XDG_CACHE_HOME/fss-denet/shards
    cache_dir: str | None = None
    cache_bytes: int = 20 << 30
    # reads by key (evaluation, training manifests) keep every remote shard whole in that cache on first
    # touch, also from servers that honour Range: later passes and runs read local copies
    cache_remote: bool = False


@dataclass
class Backbone:
    name: str | None = AUTO
    weights: str = AUTO  # imagenet | none | path to a state_dict file
    frozen: bool | str = AUTO  # the release freezes the ImageNet backbone; a random-init one must train
    # BN statistics fixed (eval mode) under model.train(); auto: denet false (the release: BN in train
    # mode, support and query in separate batches), standard true (HSNet/PFENet freeze them)
    freeze_bn: bool | str = AUTO


@dataclass
class Train:
    way: int = 1  # training episodes: 1w1s reused by every setting (DENet's release); PANet: per setting
    shot: int = 1
    # the recipe: `auto` = the method's release on official data (_RELEASE_RECIPE), the toy recipe on toy
    steps: int | str = AUTO
    batch_size: int | str = AUTO
    optimizer: Literal["auto", "sgd", "rmsprop", "adam"] = AUTO
    lr: float | str = AUTO
    momentum: float | str = AUTO  # SGD momentum, or RMSprop's (0 in AMP's release)
    weight_decay: float | str = AUTO  # the recipe's: 5e-4 up to 2020, 1e-4 in PFENet's, 0 in HSNet's
    lr_milestones: list[int] | str = AUTO  # steps after which lr *= lr_gamma (PANet: 10k, 20k); [] = constant
    lr_gamma: float = 0.1
    # step: lr x lr_gamma at each of lr_milestones | poly: lr x (1 - step / steps) ** lr_power (PFENet)
    lr_schedule: Literal["auto", "step", "poly"] = AUTO
    lr_power: float = 0.9
    # training transform (train.stream.transforms.TrainTransform): flip (square resize + flip, the DENet
    # recipe) | pfenet (PFENet's scale, rotate, blur, flip, crop); auto: the model's recipe
    augment: Literal["auto", "flip", "pfenet"] = AUTO
    # parameter-name glob -> lr factor, first match wins (SG-One: its guidance conv x10, biases x2)
    lr_multipliers: dict[str, float] | str = AUTO
    grad_accum: int = 1
    val_every: int | str = AUTO
    checkpoint_every: int | str = AUTO
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True
    # torch.compile mode; auto = reduce-overhead (CUDA graphs) for a long run (>= 10k steps) on one
    # CUDA process, else none. Resolved by train.train.compile_mode, where the device is known.
    compile: Literal["auto", "none", "default", "reduce-overhead", "max-autotune"] = AUTO
    device: str = AUTO  # auto = cuda if available else cpu, resolved by train.device.resolve_device
    nan_policy: Literal["stop", "skip"] = "stop"
    select_on_test: bool = False  # the release picks the best checkpoint on test classes
    # void (255) pixels of training labels: background (the DENet release) | ignore | query_ignore
    # (PANet's release: background in supports, ignored in the query) | foreground (SG-One's release:
    # void is foreground, 1-way). auto: the model's released rule (Recipe.train_void) under a protocol
    # whose `release_void` rule holds (denet), else the protocol's rule (denet background, standard ignore)
    void: Literal["auto", "background", "ignore", "query_ignore", "foreground"] = AUTO
    # training episodes: stream (drawn from bounded per-class pools while shards stream) | manifest (a
    # fixed set drawn once, episodes_per_class per base class, reshuffled every epoch, read by key from
    # the shards: the release's recipe). auto: see _BY_PROTOCOL
    episodes: Literal["auto", "stream", "manifest"] = AUTO
    # manifest size per base class; auto: the release's 1000, or what the fold's images allow (train.py)
    episodes_per_class: int | str = AUTO
    log_every: int = 10  # steps between dvclive/metric records


@dataclass
class Evaluate:
    batch_size: int = 8
    trivial: bool = True  # also score the trivial predictors (all fg, all bg, support mask) as the floor
    # test-episode draws: each seed is its own manifest, scored by the same checkpoint (no retraining)
    seeds: list[int] = field(default_factory=lambda: [0])
    # flip each test image (and its label) with p = 0.5, drawn from random.Random(0) in episode order,
    # supports before the query (the release's test()); auto: denet true, standard false
    flip: bool | str = AUTO
    # how test images reach the square input: square (squashed, DENet's and HSNet's tests) | letterbox
    # (PFENet's: long side to the size, padded, predictions mapped back to the label); auto: the protocol's
    # rule (denet: square for every model; standard: the model's recipe, train.params)
    resize: Literal["auto", "square", "letterbox"] = AUTO


@dataclass
class Infer:
    episodes: int = 8
    worst: int = 4


@dataclass
class Params:
    dataset: Literal["pascal", "coco"] = "pascal"
    source: Literal["toy", "official"] = "toy"
    protocol: str = "denet"  # a name in pipeline.protocol.PROTOCOLS
    fold: int = 0
    way: int = 1
    shot: int = 1
    model: str = "denet"
    model_kwargs: dict[str, Any] | str = AUTO  # extra constructor kwargs of `model`, e.g. {depth: 128}
    seed: int = 0  # training: init, sampling, validation draw (test draws: evaluate.seeds)
    paths: Paths = field(default_factory=Paths)
    download: Download = field(default_factory=Download)
    toy: Toy = field(default_factory=Toy)
    data: Data = field(default_factory=Data)
    sampler: Sampler = field(default_factory=Sampler)
    backbone: Backbone = field(default_factory=Backbone)
    train: Train = field(default_factory=Train)
    evaluate: Evaluate = field(default_factory=Evaluate)
    infer: Infer = field(default_factory=Infer)


# Presets for `auto` values by `source`, keyed by (section, key). The protocol's defaults are its
# rules (pipeline.protocol); the model's (train recipe, backbone, model_kwargs) its registered recipe
# (fss_model.recipe, applied by train.params). Facts behind the numbers: docs/protocol.md.
_BY_SOURCE: dict[tuple[str, str], dict[str, Any]] = {
    ("sampler", "image_size"): {"toy": 161, "official": 321},
    ("sampler", "test_episodes"): {"toy": 300, "official": 1000},
    ("sampler", "val_episodes"): {"toy": 100, "official": 300},
    ("data", "shard_max_samples"): {"toy": 200, "official": 500},
    ("data", "min_shards"): {"toy": 1, "official": 64},
    ("backbone", "weights"): {"toy": "none", "official": "imagenet"},
    ("train", "val_every"): {"toy": 200, "official": 500},
    ("train", "checkpoint_every"): {"toy": 200, "official": 2000},
}
# (section, key) <- the protocol rule that is its default
_FROM_PROTOCOL: dict[tuple[str, str], str] = {
    ("data", "pascal_masks"): "pascal_masks",
    ("data", "coco_crowd"): "coco_crowd",
    ("data", "min_pixels"): "min_pixels",
    ("backbone", "freeze_bn"): "freeze_bn",
    ("train", "episodes"): "train_episodes",
    ("evaluate", "flip"): "eval_flip",
}
# Keys whose `auto` depends on the model: its registered recipe fills them (train.params.resolve_model).
MODEL_KEYS: tuple[str, ...] = (
    "train.steps", "train.batch_size", "train.optimizer", "train.lr", "train.momentum", "train.lr_milestones",
    "train.lr_multipliers", "backbone.name", "backbone.frozen", "model_kwargs", "train.void",
    "train.weight_decay", "train.lr_schedule", "train.augment",
)  # fmt: skip
NUM_CLASSES = {"pascal": 20, "coco": 80}


# The data outputs' layout, as dvc.yaml writes it (tests/pipeline/test_config.py renders dvc.yaml and
# checks that both agree): keyed by source/dataset/protocol, manifests also by fold/way/shot.
def shards_dir(p: Params) -> Path:
    """`${paths.shards}/${source}/${dataset}/${protocol}`: the shards stage's output."""
    return Path(p.paths.shards, p.source, p.dataset, p.protocol)


def folds_dir(p: Params) -> Path:
    """`${paths.folds}/${source}/${dataset}/${protocol}`: the folds stage's output."""
    return Path(p.paths.folds, p.source, p.dataset, p.protocol)


def episodes_dir(p: Params) -> Path:
    """`${paths.episodes}/${source}/${dataset}/${protocol}/fold${fold}_${way}way_${shot}shot`: the
    episodes stage's output, one `seed<k>.json` per test seed."""
    return Path(p.paths.episodes, p.source, p.dataset, p.protocol, f"fold{p.fold}_{p.way}way_{p.shot}shot")


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return `value` converted to `hint` (int -> float only), or raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = " | ".join(str(a) for a in typing.get_args(hint))
            raise ConfigError(f"params: {key} = {value!r} is not one of {choices}")
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _check_type(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"params: {key} = {value!r} has the wrong type (expected {hint})")
    if origin is dict:
        if not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
            raise ConfigError(f"params: {key} = {value!r} must be a mapping of names to values")
        value_hint = typing.get_args(hint)[1]
        if value_hint is Any:
            return value
        return {k: _check_type(v, value_hint, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"params: {key} = {value!r} must be a list, e.g. [0, 1, 2]")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"params: {key} = {value!r} must be null")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and value == AUTO:
        return value
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"params: {key} = {value!r} has the wrong type (expected {name})")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"params: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"params: unknown key '{prefix}{key}' (known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, f"{prefix}{key}")
    return cls(**kwargs)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS keeps one): `data.workers: auto`."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def resolve(params: Params) -> Params:
    """Fill the `auto` values that do not depend on the model (by `source` and the protocol's rules)
    and check them; returns a new Params. The model's keys (MODEL_KEYS) stay `auto` here:
    `train.params.load_params` fills them from the model's registered recipe."""
    p = dataclasses.replace(params)
    for f in dataclasses.fields(p):  # copy every section, so the caller's Params is never mutated
        value = getattr(params, f.name)
        if dataclasses.is_dataclass(value):
            setattr(p, f.name, dataclasses.replace(value))
    if p.protocol not in PROTOCOLS:
        raise ConfigError(f"params: protocol = {p.protocol!r} is not one of {' | '.join(PROTOCOLS)}")
    rules = protocol_rules(p.protocol)
    for (section, key), choices in _BY_SOURCE.items():
        obj = getattr(p, section)
        if getattr(obj, key) == AUTO:
            setattr(obj, key, choices[p.source])
    for (section, key), rule in _FROM_PROTOCOL.items():
        obj = getattr(p, section)
        if getattr(obj, key) == AUTO:
            setattr(obj, key, getattr(rules, rule))
    if p.evaluate.resize == AUTO and rules.eval_resize != "recipe":  # recipe: train.params.resolve_model
        p.evaluate.resize = rules.eval_resize
    if p.data.min_fraction == AUTO:
        p.data.min_fraction = rules.min_fraction[p.dataset]
    if p.data.workers == AUTO:
        p.data.workers = usable_cpus()
    if p.data.presence_size == AUTO:
        p.data.presence_size = int(p.sampler.image_size) if rules.presence_at_image_size else None
    _check_combinations(p)
    return p


# The range of every numeric param, inclusive (the list and mapping items too): a value outside, NaN
# included, stops `check` with one line, before a stage could run out of memory (image_size: 100000)
# or train on nothing (lr: .nan). The bounds are wide: they only refuse what no run could use.
_U32 = 2**32 - 1
_RANGES: dict[str, tuple[float, float]] = {
    "fold": (0, 3), "way": (1, 2), "shot": (1, 100), "seed": (0, _U32),
    "download.retries": (0, 100), "download.timeout_s": (1, 3600),
    "download.min_bytes_per_s": (0, 1e10), "download.rate_window_s": (0.1, 3600),
    "download.deadline_s": (1, 1e7),
    "toy.seed": (0, _U32), "toy.scale": (0.01, 100),
    "sampler.image_size": (8, 2048), "sampler.pool_size": (2, 1e5), "sampler.workers": (0, 1024),
    "sampler.test_episodes": (1, 1e6), "sampler.val_episodes": (1, 1e6),
    "sampler.min_bytes_per_s": (0, 1e10), "sampler.rate_window_s": (0.1, 3600),
    "sampler.deadline_s": (1, 1e7),
    "sampler.cache_bytes": (0, 2**50),
    # data after sampler: presence_size is image_size when auto, and image_size says more
    "data.workers": (0, 1024), "data.min_fraction": (0, 1), "data.min_pixels": (0, 1e8),
    "data.shard_max_samples": (1, 1e6), "data.min_shards": (1, 1e5), "data.presence_size": (1, 4096),
    "train.way": (1, 2), "train.shot": (1, 100), "train.steps": (1, 1e8), "train.batch_size": (1, 4096),
    "train.lr": (1e-12, 10), "train.momentum": (0, 1), "train.weight_decay": (0, 1),
    "train.lr_milestones": (1, 1e8), "train.lr_gamma": (1e-6, 10), "train.lr_multipliers": (1e-6, 1e6),
    "train.lr_power": (1e-3, 100),
    "train.grad_accum": (1, 1024), "train.val_every": (1, 1e8), "train.checkpoint_every": (1, 1e8),
    "train.episodes_per_class": (1, 1e6), "train.log_every": (1, 1e8),
    "evaluate.batch_size": (1, 4096), "evaluate.seeds": (0, _U32),
    "infer.episodes": (0, 1e5), "infer.worst": (0, 1e5),
}  # fmt: skip


def numeric_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Dotted names of every numeric param (int/float, or lists and mappings of them): what _RANGES covers."""
    cls = cls or Params
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += numeric_keys(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif _is_numeric(hint):
            keys.append(f"{prefix}{f.name}")
    return keys


def _is_numeric(hint: Any) -> bool:
    if hint in (int, float):
        return True
    return any(_is_numeric(arg) for arg in typing.get_args(hint) if arg is not str)


def _check_ranges(p: Params) -> None:
    for dotted, (low, high) in _RANGES.items():
        node: Any = p
        for name in dotted.split("."):
            node = getattr(node, name)
        values = node.values() if isinstance(node, dict) else node if isinstance(node, list) else [node]
        for value in values:
            if value is None or value == AUTO:  # null where allowed; `auto` is resolved later (recipes)
                continue
            if isinstance(value, str):  # `auto` was resolved: any other string is a typo
                expected = _RECIPE_KEYS.get(dotted.removeprefix("train."), "a number")
                raise ConfigError(f"params: {dotted} = {value!r} must be {expected} (or auto)")
            if value < low:
                raise ConfigError(f"params: {dotted} = {node!r} must be >= {low:g}")
            if not value <= high:  # NaN too
                raise ConfigError(f"params: {dotted} = {node!r} must be <= {high:g} (and a number)")


# train keys of the model's recipe that may be `auto` in params.yaml, and what they must be once resolved
_RECIPE_KEYS = {
    **dict.fromkeys(("steps", "batch_size", "lr", "momentum", "weight_decay"), "a number"),
    "lr_milestones": "a list of steps",
    "lr_multipliers": "a mapping of parameter-name patterns to factors",
}


def _check_combinations(p: Params) -> None:
    if not 0 <= p.fold <= 3:
        raise ConfigError(f"params: fold = {p.fold} is out of range: use 0, 1, 2 or 3")
    if p.way not in (1, 2):
        raise ConfigError(f"params: way = {p.way} is not supported: use 1 or 2")
    if p.shot < 1:
        raise ConfigError(f"params: shot = {p.shot} must be >= 1 (1 and 5 are the benchmark settings)")
    novel = NUM_CLASSES[p.dataset] // 4
    if p.way > novel:
        raise ConfigError(f"params: way = {p.way} exceeds the {novel} novel classes of a {p.dataset} fold")
    if p.train.way not in (1, 2):
        raise ConfigError(f"params: train.way = {p.train.way} is not supported: use 1 or 2")
    if p.train.shot < 1:
        raise ConfigError(f"params: train.shot = {p.train.shot} must be >= 1")
    for key in ("val_every", "checkpoint_every"):  # `auto` was resolved: a string left is a typo
        value = getattr(p.train, key)
        if isinstance(value, str):
            raise ConfigError(f"params: train.{key} = {value!r} must be a number (or auto)")
        if value < 1:
            raise ConfigError(f"params: train.{key} must be >= 1")
    _check_plain_recipe(p.train)
    seeds = p.evaluate.seeds
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(
            f"params: evaluate.seeds = {seeds} must list distinct test-draw seeds >= 0, e.g. [0] or [0, 1, 2]"
        )
    if p.data.presence_size is not None and int(p.data.presence_size) < 1:
        raise ConfigError(f"params: data.presence_size = {p.data.presence_size} must be >= 1 or null")
    if p.sampler.pool_size < p.train.shot + 1:
        # a class pool never gets ready and the sampler would read shards for ever
        raise ConfigError(
            f"params: sampler.pool_size = {p.sampler.pool_size} cannot hold a query and train.shot = "
            f"{p.train.shot} supports of a class: set sampler.pool_size to {p.train.shot + 1} or more"
        )
    if p.sampler.shards_url and urlparse(p.sampler.shards_url).username is not None:
        # the value is not echoed: it holds a secret
        raise ConfigError(
            "params: sampler.shards_url holds credentials; remove them and use the storage client's "
            "own configuration (AWS_* variables or ~/.aws for s3://, a .netrc for https://)"
        )
    _check_ranges(p)  # last: the checks above say more about the values they know


def _check_optimizer_values(t: Train) -> None:
    """Optimizer and schedule values a run could not use; `auto` (filled later from the recipe) passes."""
    if not isinstance(t.lr, str) and float(t.lr) <= 0:
        raise ConfigError(f"params: train.lr = {t.lr} must be > 0")
    if not isinstance(t.momentum, str) and float(t.momentum) < 0:
        raise ConfigError(f"params: train.momentum = {t.momentum} must be >= 0")
    if not isinstance(t.weight_decay, str) and float(t.weight_decay) < 0:
        raise ConfigError(f"params: train.weight_decay = {t.weight_decay} must be >= 0")
    if not isinstance(t.lr_milestones, str):
        milestones = list(t.lr_milestones)
        if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
            raise ConfigError(
                f"params: train.lr_milestones = {milestones} must be increasing steps >= 1 "
                "(e.g. [10000, 20000])"
            )
    if not isinstance(t.lr_multipliers, str):
        for pattern, factor in dict(t.lr_multipliers).items():
            if factor <= 0:
                raise ConfigError(f"params: train.lr_multipliers.{pattern} = {factor} must be > 0")


def _check_plain_recipe(t: Train) -> None:
    """Optimizer values that no recipe sets, which a run could not use (before the ranges: clearer words)."""
    _check_optimizer_values(t)
    if t.lr_power <= 0:
        raise ConfigError(f"params: train.lr_power = {t.lr_power} must be > 0")
    if t.lr_gamma <= 0:
        raise ConfigError(f"params: train.lr_gamma = {t.lr_gamma} must be > 0")


def check_recipe(p: Params) -> None:
    """The model's recipe keys once filled (train.params.resolve_model): values a run could not use."""
    t = p.train
    for key, expected in _RECIPE_KEYS.items():  # `auto` was resolved: a string left is a typo
        value = getattr(t, key)
        if isinstance(value, str):
            raise ConfigError(f"params: train.{key} = {value!r} must be {expected} (or auto)")
    if int(t.steps) < 1:
        raise ConfigError("params: train.steps must be >= 1")
    if t.void == "foreground" and t.way != 1:
        raise ConfigError("params: train.void = foreground (SG-One's rule) needs train.way = 1")
    if int(t.batch_size) < 1:
        raise ConfigError(f"params: train.batch_size = {t.batch_size} must be >= 1")
    _check_optimizer_values(t)
    if t.augment != "flip" and p.sampler.gpu_decode:
        raise ConfigError(
            f"params: train.augment = {t.augment} runs on the CPU: set sampler.gpu_decode false"
        )


def load_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read, type-check and resolve params.yaml; `overrides` maps dotted keys to values (tests, CLI)."""
    return resolve(read_params(path, overrides))


def read_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """params.yaml (plus `overrides`) type-checked, its `auto` values not yet resolved."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params: {path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    except RecursionError as exc:  # a deeply nested document: no params file nests beyond a few levels
        raise ConfigError(f"params: {path} nests too deeply to be a params file") from exc
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"params: cannot set {dotted}: {name} is not a section")
        node[last] = value
    return _build(Params, raw, "")
