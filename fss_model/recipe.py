"""How a model is trained: the `Recipe` a model registers beside its constructor (timm keeps a
model's pretrained config the same way), one for the official data and one for the toy data.

A recipe is plain data (no torch): `train.params` fills params.yaml's `auto` values of train.*,
backbone.name, backbone.frozen and model_kwargs from the recipe of `model` for `source`.
Facts behind the numbers: docs/methods.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Recipe:
    """The values `auto` takes for one model on one source. lr_gamma (0.1) is the same in every release
    and stays a plain param."""

    lr: float
    steps: int
    optimizer: str = "sgd"  # sgd | rmsprop | adam
    momentum: float = 0.9  # SGD momentum, or RMSprop's
    batch_size: int = 8
    weight_decay: float = 5e-4  # every release up to 2020; PFENet's 1e-4, HSNet's Adam none
    lr_milestones: tuple[int, ...] = ()  # steps after which lr *= train.lr_gamma; () = constant
    lr_multipliers: Mapping[str, float] = field(default_factory=dict)  # parameter-name glob -> lr factor
    backbone: str = "resnet50"
    backbone_frozen: bool = True
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra constructor kwargs
    # steps on one dataset where the release differs from `steps` (DENet's paper: 200k on COCO)
    steps_by_dataset: Mapping[str, int] = field(default_factory=dict)
    # constructor kwargs that reproduce the numbers of the DENet paper's table, used only under a
    # protocol whose `release_model_kwargs` rule is true (PGNet's attention as DENet's code computes it)
    release_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # how the method's release trains void (255) pixels, used under a protocol whose `release_void` rule
    # holds (denet): query_ignore (PANet), foreground (SG-One); None: the protocol's rule
    # (train.stream.sampler.VOID_RULES)
    train_void: str | None = None
    # which of a test setting's way / shot get their own trained model, as the release trains them (PANet:
    # ("way", "shot"); PFENet: ("shot",)); () reuses one 1-way 1-shot model, as DENet's code does.
    # `train.experiments` sets train.<key> of every key named here to the cell's value
    trains_per: tuple[str, ...] = ()
    lr_schedule: str = "step"  # step (lr_milestones) | poly (PFENet)
    augment: str = "flip"  # train.stream.transforms.TrainTransform: flip | pfenet
    image_size: int | None = None  # sampler.image_size when `auto`; None: the source's default
    # the release's test resize (evaluate.resize under a protocol whose eval_resize rule is `recipe`):
    # square (squashed to the size) | letterbox (PFENet's: long side to the size, padded)
    eval_resize: str = "square"
    # recipe fields that differ on one dataset (PFENet's COCO configs: batch 32, lr 0.02, 641 px)
    by_dataset: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("lr_multipliers", "model_kwargs", "steps_by_dataset", "release_kwargs", "by_dataset"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))
        object.__setattr__(self, "trains_per", tuple(self.trains_per))
        unknown = set(self.trains_per) - {"way", "shot"}
        if unknown:
            raise ValueError(f"Recipe.trains_per takes 'way' and 'shot', got {sorted(unknown)}")

    def replace(self, **changes: Any) -> Recipe:
        """A copy with `changes` (a variant of a shared recipe)."""
        return dataclasses.replace(self, **changes)

    def for_dataset(self, dataset: str) -> Recipe:
        """This recipe with its `by_dataset` changes for `dataset` applied."""
        changes = self.by_dataset.get(dataset)
        return self.replace(**changes, by_dataset={}) if changes else self


# DENet's config templates (config/train_config_{denet,can,pgn,amp}.template): DENet and its
# re-implementations of CANet, PGNet and AMP train with these values (AMP changes its optimizer).
DENET_TEMPLATE = Recipe(optimizer="sgd", lr=0.0025, momentum=0.9, batch_size=8, steps=150_000)

# The toy (CPU) recipe: not a release's, one that learns the toy task in minutes on 2 cores (README
# "Results on the toy data"). The backbone is the small random-init one, so it must train.
TOY = Recipe(optimizer="sgd", lr=0.01, momentum=0.9, batch_size=8, steps=600, backbone="small",
             backbone_frozen=False)  # fmt: skip


@dataclass(frozen=True)
class Recipes:
    """A model's recipe per params `source` (official: its release; toy: the CPU preset)."""

    official: Recipe | None = None
    toy: Recipe | None = None

    def for_source(self, source: str) -> Recipe | None:
        return getattr(self, source, None)
