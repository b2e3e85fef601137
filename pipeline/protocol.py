"""The evaluation protocols as objects: every rule that differs between them, by name.

Code asks a protocol's rule (`protocol_rules(p.protocol).eval_flip`), never its name, so a new
protocol (BAM's train-image filter, say) is one more `Protocol` in `PROTOCOLS`. The facts behind
each rule: docs/protocol.md ("Data", "Two presets") and the release lines cited there.
Params values written `auto` take the protocol's default (`pipeline.config.resolve`); each stays an
option of its own in params.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

import numpy as np

from pipeline.errors import UserError
from pipeline.shard_format import IGNORE_INDEX

L = TypeVar("L")  # a label map: numpy array or torch tensor


@dataclass(frozen=True)
class Protocol:
    name: str
    # -- data (shards and folds stages)
    # PASCAL-5i image sets: named lists (voc_train, voc_val, sbd_train, sbd_val, sbd_train_noval);
    # train = union of `pascal_train` minus union of `pascal_train_minus`, test = union of `pascal_test`
    pascal_train: tuple[str, ...]
    pascal_train_minus: tuple[str, ...]
    pascal_test: tuple[str, ...]
    pascal_masks: str  # data.pascal_masks default: list (the image set's own list first) | voc
    coco_crowd: str  # data.coco_crowd default: background (crowd not painted) | ignore (255)
    presence_at_image_size: bool  # data.presence_size default: sampler.image_size (true) | original size
    min_fraction: Mapping[str, float]  # data.min_fraction default per dataset: class area >= this fraction
    min_pixels: int  # data.min_pixels default: ... and >= this many pixels
    # -- training
    train_novel_label: int  # what novel-class pixels of a training query's full label become (255 | 0)
    train_void: str  # train.void default: void (255) of training labels -> background | ignore
    # train.void default is the model's released rule (fss_model.recipe.Recipe.train_void) where it has one
    release_void: bool
    train_episodes: str  # train.episodes default: manifest (drawn once, as released) | stream
    freeze_bn: bool  # backbone.freeze_bn default
    # -- test episodes
    single_novel_pools: bool  # 1-way pools hold only images where exactly one novel class is present
    query_only_episode_novel: bool  # way > 1: the query shows no novel class outside the episode's
    # -- evaluation
    eval_flip: bool  # evaluate.flip default: mirror test images with p = 0.5 (the release's test())
    eval_at_image_size: bool  # score labels resized to sampler.image_size (true) | at the original size
    # evaluate.resize default: square (every model's test images squashed to the square, DENet's test) |
    # recipe (each method's own test resize, fss_model.recipe.Recipe.eval_resize: PFENet letterbox)
    eval_resize: str
    eval_void_background: bool  # void (255) of test labels and support masks counts as background | ignored
    release_f_iou: (
        bool  # also report the DENet release's F-IOU (train.metrics.FullIoU) beside mIoU and FB-IoU
    )
    # -- models
    release_model_kwargs: bool  # official data: a model's `release_kwargs` (fss_model.recipe) apply


DENET = Protocol(
    name="denet",
    pascal_train=("voc_train", "sbd_train_noval"),
    pascal_train_minus=(),
    pascal_test=("voc_val", "sbd_val"),
    pascal_masks="list",
    coco_crowd="background",
    presence_at_image_size=True,
    min_fraction=MappingProxyType({"pascal": 0.02, "coco": 0.01}),
    min_pixels=0,
    train_novel_label=IGNORE_INDEX,
    train_void="background",
    release_void=True,
    train_episodes="manifest",
    freeze_bn=False,
    single_novel_pools=True,
    query_only_episode_novel=True,
    eval_flip=True,
    eval_at_image_size=True,
    eval_resize="square",
    eval_void_background=True,
    release_f_iou=True,
    release_model_kwargs=True,
)
STANDARD = Protocol(
    name="standard",
    pascal_train=("voc_train", "sbd_train", "sbd_val"),
    pascal_train_minus=("voc_val",),
    pascal_test=("voc_val",),
    pascal_masks="voc",
    coco_crowd="ignore",
    presence_at_image_size=False,
    min_fraction=MappingProxyType({"pascal": 0.0, "coco": 0.0}),
    min_pixels=2 * 32 * 32,  # HSNet/PFENet: a class is present at >= 2 * 32 * 32 pixels
    train_novel_label=0,
    train_void="ignore",
    release_void=False,
    train_episodes="stream",
    freeze_bn=True,
    single_novel_pools=False,
    query_only_episode_novel=False,
    eval_flip=False,
    eval_at_image_size=False,
    eval_resize="recipe",
    eval_void_background=False,
    release_f_iou=False,
    release_model_kwargs=False,
)
PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({p.name: p for p in (DENET, STANDARD)})


def void_as_background(label: L) -> L:
    """A copy of `label` with void (IGNORE_INDEX) as background (0): the rule of `train.void:
    background` and of `eval_void_background`. Takes a numpy array or a torch tensor (pipeline/
    does not import torch)."""
    if hasattr(label, "masked_fill"):  # torch.Tensor
        return label.masked_fill(label == IGNORE_INDEX, 0)  # type: ignore[attr-defined]
    out = np.array(label, copy=True)
    out[out == IGNORE_INDEX] = 0
    return out  # type: ignore[return-value]


class ProtocolError(UserError, ValueError):
    """A protocol name (from params, a manifest or a checkpoint) that is not in PROTOCOLS."""


def protocol_rules(name: str) -> Protocol:
    """The protocol called `name`; ProtocolError naming the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ProtocolError(f"protocol {name!r} is not {' | '.join(PROTOCOLS)}") from None
