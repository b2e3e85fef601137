"""Typed view of params.yaml: the one place where its key names are known and checked.

Every stage and entry point calls `load_params()`; an unknown key, a wrong type or an impossible
combination stops with one line that names the key and says what to change.
Values written as `auto` are filled from the presets in `resolve()` (by `source` and `protocol`),
so that `dvc exp run -S source=official` switches every data-size knob at once.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlparse

import yaml

AUTO = "auto"
PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
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


@dataclass
class Toy:
    seed: int = 0
    scale: float = 1.0  # multiplies the number of images


@dataclass
class Data:
    """Masks, per-class index, folds and shards."""

    skip_bad: bool = False  # skip and report bad raw files instead of stopping
    workers: int = 2
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
    way: int = 1  # training episodes; the release trains 1-way 1-shot and reuses the model for all settings
    shot: int = 1
    # the recipe: `auto` = the method's release on official data (_RELEASE_RECIPE), the toy recipe on toy
    steps: int | str = AUTO
    batch_size: int | str = AUTO
    optimizer: Literal["auto", "sgd", "rmsprop"] = AUTO
    lr: float | str = AUTO
    momentum: float | str = AUTO  # SGD momentum, or RMSprop's (0 in AMP's release)
    weight_decay: float | str = AUTO  # 5e-4 in the DENet-era releases, 1e-4 in PFENet's
    lr_milestones: list[int] | str = AUTO  # steps after which lr *= lr_gamma (PANet: 10k, 20k); [] = constant
    lr_gamma: float = 0.1
    # step: lr x lr_gamma at each of lr_milestones | poly: lr x (1 - step / steps) ** lr_power (PFENet)
    lr_schedule: Literal["auto", "step", "poly"] = AUTO
    lr_power: float = 0.9
    # training transform (train.stream.transforms.TrainTransform): flip (square resize + flip, the DENet
    # recipe) | pfenet (PFENet's scale, rotate, blur, flip, crop); auto: the method's recipe
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
    # void (255) pixels of training labels: background (the release) | ignore. auto: denet background,
    # standard ignore
    void: Literal["auto", "background", "ignore"] = AUTO
    # training episodes: stream (drawn from bounded per-class pools while shards stream) | manifest (a
    # fixed set drawn once, episodes_per_class per base class, reshuffled every epoch, read by key from
    # the shards: the release's recipe). auto: see _BY_PROTOCOL
    episodes: Literal["auto", "stream", "manifest"] = AUTO
    episodes_per_class: int = 1000  # manifest size per base class (the release: 1000)
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


@dataclass
class Infer:
    episodes: int = 8
    worst: int = 4


@dataclass
class Params:
    dataset: Literal["pascal", "coco"] = "pascal"
    source: Literal["toy", "official"] = "toy"
    protocol: Literal["denet", "standard"] = "denet"
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


# Presets for `auto` values, keyed by (section, key); each maps a selector to a value.
# Facts behind the numbers: docs/protocol.md (the DENet model and recipe, the data rules) and docs/methods.md.
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
_BY_PROTOCOL: dict[tuple[str, str], dict[str, Any]] = {
    # class presence: DENet keeps a class at >= 2% (PASCAL) / 1% (COCO) of the pixels,
    # HSNet/PFENet at >= 2 * 32 * 32 pixels.
    ("data", "min_fraction"): {"denet": None, "standard": 0.0},
    ("data", "min_pixels"): {"denet": 0, "standard": 2 * 32 * 32},
    ("data", "pascal_masks"): {"denet": "list", "standard": "voc"},
    ("data", "coco_crowd"): {"denet": "background", "standard": "ignore"},
    ("backbone", "freeze_bn"): {"denet": False, "standard": True},
    ("train", "void"): {"denet": "background", "standard": "ignore"},
    ("train", "episodes"): {"denet": "manifest", "standard": "stream"},
    ("evaluate", "flip"): {"denet": True, "standard": False},
}
# Backbone of each method as its release trains it, for backbone.* = auto on official data: DENet's
# re-implementations freeze a ResNet-50 (AMP: its VGG16); PANet and SG-One fine-tune their own VGG16s.
# Sources per method: docs/methods.md.
_RELEASE_BACKBONE: dict[str, tuple[str, bool]] = {
    "denet": ("resnet50", True),
    "canet": ("resnet50", True),
    "pgnet": ("resnet50", True),
    "amp": ("vgg16", True),
    "panet": ("vgg16_panet", False),
    "sgone": ("vgg16_sgone", False),
}
# Training recipe of each method as released, for train.* = auto on official data (docs/methods.md:
# DENet's config/train_config_{denet,can,pgn,amp}.template, PANet's config.py, SG-One's train_frame.py and
# my_optim.get_finetune_optimizer). A model not listed gets DENet's. weight_decay is 5e-4 in all of them.
_DENET_RECIPE: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.0025, "momentum": 0.9, "batch_size": 8, "steps": 150_000,
    "lr_milestones": [], "lr_multipliers": {}, "weight_decay": 5e-4, "lr_schedule": "step",
    "augment": "flip",
}  # fmt: skip
_RELEASE_RECIPE: dict[str, dict[str, Any]] = {
    "denet": _DENET_RECIPE,
    "canet": _DENET_RECIPE,
    "pgnet": _DENET_RECIPE,
    "amp": {**_DENET_RECIPE, "optimizer": "rmsprop", "lr": 1e-6, "momentum": 0.0},
    "panet": {
        **_DENET_RECIPE, "lr": 1e-3, "batch_size": 1, "steps": 30_000, "lr_milestones": [10_000, 20_000],
    },
    "sgone": {
        **_DENET_RECIPE, "lr": 1e-5, "momentum": 0.99, "batch_size": 1, "steps": 100_000,
        # get_finetune_optimizer: weights x1, biases x2, the `cls` (guidance) conv's weight x10, bias x20
        "lr_multipliers": {"guide.weight": 10.0, "guide.bias": 20.0, "*.bias": 2.0},
    },
}  # fmt: skip
# ---- PFENet (issue 28; to move into the registry with issue 27's recipes) -------------------------------
# dvlab-research/PFENet config/pascal/pascal_split0_resnet50.yaml and train.py: SGD lr 0.0025, momentum 0.9,
# weight decay 1e-4, poly power 0.9 per iteration, batch 4, 473 px, 200 epochs on PASCAL. COCO
# (config/coco/*.yaml, 4 GPUs): batch 32, lr 0.02, 641 px, 50 epochs. Epochs -> steps: an epoch is one pass
# over the images showing a base class with >= 2 x 32 x 32 pixels (util/dataset.py make_dataset); PASCAL:
# at most its 5,953-line list (lists/pascal/voc_sbd_merge_noduplicate.txt) -> 200 x 5,953 / 4 = 297,650
# steps as the upper bound used here; COCO: at most train2014's 82,783 images -> 50 x 82,783 / 32 = 129,348.
_RELEASE_RECIPE["pfenet"] = {
    **_DENET_RECIPE, "lr": 0.0025, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 4,
    "steps": 297_650, "lr_schedule": "poly", "augment": "pfenet",
}  # fmt: skip
_RELEASE_BY_DATASET: dict[tuple[str, str], dict[str, Any]] = {
    ("pfenet", "coco"): {"batch_size": 32, "lr": 0.02, "steps": 129_348},
}
_RELEASE_BACKBONE["pfenet"] = ("resnet50_deep", True)
_RELEASE_IMAGE_SIZE = {("pfenet", "pascal"): 473, ("pfenet", "coco"): 641}  # train_h = val_size
# toy: the small backbone's three taps, the COCO config's relative scales (a 21 x 21 map at 161 px), width
# 64 (the released 256 costs ~4x the time per step on 2 cores)
_PFENET_TOY_KWARGS = {
    "layers": ["layer1", "layer2", "layer3"], "pyramid_bins": [1.0, 0.5, 0.25, 0.125], "reduce_dim": 64,
}  # fmt: skip
# ---- end PFENet ---------------------------------------------------------------------------------------
# The toy (CPU) recipe of every method: not a release's, one that learns the toy task in minutes on 2
# cores (README "Results on the toy data"); CANet and PGNet need lr 0.05 there (_TOY_LR).
_TOY_RECIPE: dict[str, Any] = {**_DENET_RECIPE, "lr": 0.01, "steps": 600}
# Constructor kwargs on official data under `protocol: denet` (reproducing DENet's table): PGNet's attention
# as the release computes it, which is what DENet's published PGNet numbers measure (docs/methods.md).
_RELEASE_MODEL_KWARGS: dict[str, dict[str, Any]] = {"pgnet": {"attention": "release"}}
# Toy (CPU) constructor defaults: DENet's neck at width 128 learns the toy task as well as at 256
# (53.6 vs 53.4 novel mIoU, fold 0, 600 steps) in about half the step time on 2 cores.
# CANet and PGNet at their released width 256 take ~1.0 s per step on 2 cores (600 steps ~10 min);
# at 128 (DENet's toy width) 0.43 / 0.6 s per step (train/episodes_per_s, fold 0, batch 8, 161 px).
_TOY_MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "denet": {"depth": 128},
    "canet": {"depth": 128},
    "pgnet": {"depth": 128},
    "pfenet": _PFENET_TOY_KWARGS,
}
# Toy (CPU) learning rate per method where the shared toy lr (0.01) does not learn. CANet and PGNet
# (a deep head without normalisation on a random-init backbone, binary CE) stay at all-background at
# lr 0.01: validation mIoU 0.0 at steps 50 and 100, foreground-minus-background logit -1.81 on
# foreground vs -1.87 on background pixels at step 100 (dropout 0 did not change it). At lr 0.05 the
# two separate (-1.0 vs -3.2 at step 100, CANet; fold 0, validation draw, never the test episodes).
_TOY_LR: dict[str, float] = {"canet": 0.05, "pgnet": 0.05}
_DENET_MIN_FRACTION = {"pascal": 0.02, "coco": 0.01}
_DENET_COCO_STEPS = 200_000  # DENet's paper on COCO; the baselines' templates keep 150k
NUM_CLASSES = {"pascal": 20, "coco": 80}


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


def resolve(params: Params) -> Params:
    """Fill `auto` values from the presets and check combinations; returns a new Params."""
    p = dataclasses.replace(params)
    for f in dataclasses.fields(p):  # copy every section, so the caller's Params is never mutated
        value = getattr(params, f.name)
        if dataclasses.is_dataclass(value):
            setattr(p, f.name, dataclasses.replace(value))
    if p.source == "official":
        recipe = _RELEASE_RECIPE.get(p.model, _DENET_RECIPE)
    else:
        recipe = {**_TOY_RECIPE, **({"lr": _TOY_LR[p.model]} if p.model in _TOY_LR else {})}
    for key, value in recipe.items():
        if getattr(p.train, key) == AUTO:
            setattr(p.train, key, copy.deepcopy(value))
    if params.train.steps == AUTO and p.source == "official" and p.dataset == "coco" and p.model == "denet":
        p.train.steps = _DENET_COCO_STEPS
    if p.source == "official":
        for key, value in _RELEASE_BY_DATASET.get((p.model, p.dataset), {}).items():
            if getattr(params.train, key) == AUTO:
                setattr(p.train, key, value)
        if p.sampler.image_size == AUTO and (p.model, p.dataset) in _RELEASE_IMAGE_SIZE:
            p.sampler.image_size = _RELEASE_IMAGE_SIZE[(p.model, p.dataset)]
    for table, selector in ((_BY_SOURCE, p.source), (_BY_PROTOCOL, p.protocol)):
        for (section, key), choices in table.items():
            obj = getattr(p, section)
            if getattr(obj, key) == AUTO:
                setattr(obj, key, choices[selector])
    release_name, release_frozen = _RELEASE_BACKBONE.get(p.model, ("resnet50", True))
    if p.backbone.name == AUTO:
        p.backbone.name = "small" if p.source == "toy" else release_name
    if p.backbone.frozen == AUTO:
        p.backbone.frozen = False if p.source == "toy" else release_frozen  # a random-init net must train
    if p.model_kwargs == AUTO:
        if p.source == "toy":
            p.model_kwargs = dict(_TOY_MODEL_KWARGS.get(p.model, {}))
        else:
            p.model_kwargs = dict(_RELEASE_MODEL_KWARGS.get(p.model, {})) if p.protocol == "denet" else {}
    if p.data.min_fraction is None:
        p.data.min_fraction = _DENET_MIN_FRACTION[p.dataset]
    if p.data.presence_size == AUTO:
        p.data.presence_size = int(p.sampler.image_size) if p.protocol == "denet" else None
    _check_combinations(p)
    return p


# counts that must be positive (or non-negative: worker counts, retries)
_AT_LEAST = {
    **dict.fromkeys(("train.batch_size", "train.grad_accum", "train.log_every", "evaluate.batch_size"), 1),
    **dict.fromkeys(("sampler.image_size", "sampler.test_episodes", "sampler.val_episodes"), 1),
    **dict.fromkeys(("data.shard_max_samples", "data.min_shards", "train.episodes_per_class"), 1),
    **dict.fromkeys(("sampler.workers", "data.workers", "download.retries"), 0),
    **dict.fromkeys(("infer.episodes", "infer.worst"), 0),
}


# train keys that may be `auto` in params.yaml, and what they must be once resolved
_TRAIN_AUTO_KEYS = {
    **dict.fromkeys(
        ("steps", "batch_size", "lr", "momentum", "weight_decay", "val_every", "checkpoint_every"), "a number"
    ),
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
    for key, expected in _TRAIN_AUTO_KEYS.items():  # `auto` was resolved: a string left is a typo
        value = getattr(p.train, key)
        if isinstance(value, str):
            raise ConfigError(f"params: train.{key} = {value!r} must be {expected} (or auto)")
    for key in ("steps", "val_every", "checkpoint_every"):
        if int(getattr(p.train, key)) < 1:
            raise ConfigError(f"params: train.{key} must be >= 1")
    for dotted, least in _AT_LEAST.items():
        section, key = dotted.split(".")
        value = getattr(getattr(p, section), key)
        if value < least:
            raise ConfigError(f"params: {dotted} = {value} must be >= {least}")
    _check_recipe(p.train)
    if p.train.augment != "flip" and p.sampler.gpu_decode:
        raise ConfigError(
            f"params: train.augment = {p.train.augment} runs on the CPU: set sampler.gpu_decode false"
        )
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


def _check_recipe(t: Train) -> None:
    """Optimizer and schedule values a run could not use."""
    if float(t.lr) <= 0:
        raise ConfigError(f"params: train.lr = {t.lr} must be > 0")
    if float(t.momentum) < 0:
        raise ConfigError(f"params: train.momentum = {t.momentum} must be >= 0")
    if float(t.weight_decay) < 0:
        raise ConfigError(f"params: train.weight_decay = {t.weight_decay} must be >= 0")
    if t.lr_power <= 0:
        raise ConfigError(f"params: train.lr_power = {t.lr_power} must be > 0")
    if t.lr_gamma <= 0:
        raise ConfigError(f"params: train.lr_gamma = {t.lr_gamma} must be > 0")
    milestones = list(t.lr_milestones)
    if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(
            f"params: train.lr_milestones = {milestones} must be increasing steps >= 1 (e.g. [10000, 20000])"
        )
    for pattern, factor in dict(t.lr_multipliers).items():
        if factor <= 0:
            raise ConfigError(f"params: train.lr_multipliers.{pattern} = {factor} must be > 0")


def load_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read, type-check and resolve params.yaml; `overrides` maps dotted keys to values (tests, CLI)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params: {path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"params: cannot set {dotted}: {name} is not a section")
        node[last] = value
    return resolve(_build(Params, raw, ""))
