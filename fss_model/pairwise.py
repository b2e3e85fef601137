"""Episode plumbing shared by the baselines, and the class-agnostic skeleton (CANet, PGNet, SG-One)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fss_model.backbones import build_backbone
from fss_model.layers import (
    ASPP,
    ResidualBlock,
    binary_targets,
    binary_way_logits,
    concat_levels,
    encode_episode,
    episode_images,
    safe_cross_entropy,
    split_episode,
    upsample,
    uses_batch_statistics,
)


def way_ids(b: int, way: int, device: torch.device) -> Tensor:
    """[B, way] rows 1..way: the foreground rows of a [bg, fg_1, ..., fg_way] score map."""
    return torch.arange(1, way + 1, device=device).expand(b, way)


def combine_ways(pair_logits: Tensor) -> Tensor:
    """Per-pair (bg, fg) logits [B, way, 2, h, w] -> per-way binary logits [B, way, 2, h, w], as released.

    The release's `process_nway` (DENet `trainer/utils.py`): background = max over the ways' background
    logits; each way's map is then (max of background and the other ways' foreground, own foreground).
    Identity for 1-way.
    """
    b, way = pair_logits.shape[:2]
    background = pair_logits[:, :, 0].amax(dim=1, keepdim=True)
    scores = torch.cat([background, pair_logits[:, :, 1]], dim=1)
    return binary_way_logits(scores, way_ids(b, way, scores.device))


class PairwiseFewShot(nn.Module):
    """Base of methods whose head segments the query against one class's supports into (bg, fg) logits.

    Subclasses define `encode(images [N, 3, H, W]) -> [N, C, h, w]` and
    `pair_logits(query [P, C, h, w], supports [P, shot, C, h, w], masks [P, shot, H, W]) -> [P, 2, h, w]`
    over P = B * way (query, way) pairs. N-way: every way is segmented on its own and the pairs are
    combined by `combine_ways` at the image size, as the release's test combines the pairs' logits
    after upsampling them (bilinear, align_corners=True) to the label size; at 1-way the way logits stay
    at the pair logits' size. Objective: binary cross-entropy of each pair against its way's binary
    query label (1-way training as released; for 2-way each pair is its own binary problem).
    """

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def pair_logits(self, query: Tensor, supports: Tensor, masks: Tensor) -> Tensor:
        raise NotImplementedError

    def output_logits(self, logits: Tensor, image_size: tuple[int, int]) -> Tensor:
        """The pair logits [P, 2, h, w] as the method outputs them; SG-One resizes to the image here."""
        return logits

    def forward(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, class_ids: Tensor
    ) -> dict[str, Tensor]:
        """Design contract; class_ids are unused (class-agnostic) ->
        {"way_logits": [B, way, 2, h, w], "pair_logits": [B, way, 2, h, w]}."""
        b, way = support_imgs.shape[:2]
        query, supports = encode_episode(self.encode, query_img, support_imgs, uses_batch_statistics(self))
        pair = self.pair_logits(
            query.repeat_interleave(way, dim=0), supports.flatten(0, 1), support_masks.flatten(0, 1)
        )
        pair = self.output_logits(pair, query_img.shape[-2:]).unflatten(0, (b, way))
        if way == 1:
            return {"way_logits": pair, "pair_logits": pair}
        at_image = upsample(pair.flatten(1, 2), query_img.shape[-2:]).unflatten(1, (way, 2))
        return {"way_logits": combine_ways(at_image), "pair_logits": pair}

    def loss(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Binary CE of the upsampled pair logits vs each way's binary query label (255 ignored)."""
        pair = out["pair_logits"]
        label: Tensor = batch["query_label"]
        target = binary_targets(label, pair.shape[1]).flatten(0, 1)
        ce = safe_cross_entropy(upsample(pair.flatten(0, 1).float(), label.shape[-2:]), target)
        return {"loss": ce, "ce": ce.detach()}


class LevelEmbedding(nn.Module):
    """CANet/PGNet encoder: backbone maps at `layers` concatenated (layer2 + layer3 as released: 1536
    channels for ResNet-50), then conv3x3 dilation 2 -> depth, ReLU, Dropout2d."""

    def __init__(
        self,
        backbone: str,
        layers: tuple[str, ...],
        depth: int,
        dropout: float,
        frozen: bool,
        freeze_bn: bool,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, frozen=frozen, freeze_bn=freeze_bn, out_layers=tuple(layers))
        channels = sum(self.backbone.channels[n] for n in self.backbone.out_layers)
        self.embed = nn.Sequential(
            nn.Conv2d(channels, depth, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.embed(concat_levels(list(self.backbone(images).values())))


class EmbeddingPairModel(PairwiseFewShot):
    """CANet/PGNet common parts: `LevelEmbedding` encoder and `SegmentationTail` with `tail_blocks` blocks.

    Args:
        num_classes: accepted for a uniform constructor, unused (class-agnostic).
        backbone, layers: backbone name and the maps concatenated (any backbone with these layers).
        frozen, freeze_bn: backbone weights without gradient (as released) / BN statistics fixed.
        depth, dropout, aspp_rates: width, dropout rate and ASPP rates of the head.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50",
        frozen: bool = True,
        freeze_bn: bool = True,
        layers: tuple[str, ...] = ("layer2", "layer3"),
        depth: int = 256,
        dropout: float = 0.5,
        aspp_rates: tuple[int, ...] = (6, 12, 18),
        tail_blocks: int = 2,
    ) -> None:
        super().__init__()
        self.num_classes, self.depth, self.dropout = num_classes, depth, dropout
        self.encoder = LevelEmbedding(backbone, layers, depth, dropout, frozen, freeze_bn)
        self.tail = SegmentationTail(depth, tail_blocks, tuple(aspp_rates), dropout)

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)


class SegmentationTail(nn.Module):
    """CANet/PGNet tail as released: residual blocks, ASPP without BN, 1x1 classifier to (bg, fg)."""

    def __init__(self, depth: int, blocks: int, rates: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *(ResidualBlock(depth) for _ in range(blocks)), ASPP(depth, depth, rates, dropout)
        )
        self.classifier = nn.Conv2d(depth, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


__all__ = [
    "EmbeddingPairModel",
    "LevelEmbedding",
    "PairwiseFewShot",
    "SegmentationTail",
    "combine_ways",
    "encode_episode",
    "episode_images",
    "split_episode",
    "way_ids",
]
