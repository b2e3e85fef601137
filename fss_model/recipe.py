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
    weight_decay: float = 5e-4  # every release up to 2020 (HSNet's Adam: none)
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

    def __post_init__(self) -> None:
        for name in ("lr_multipliers", "model_kwargs", "steps_by_dataset", "release_kwargs"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))

    def replace(self, **changes: Any) -> Recipe:
        """A copy with `changes` (a variant of a shared recipe)."""
        return dataclasses.replace(self, **changes)


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
