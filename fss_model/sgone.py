"""SG-One (Zhang et al., 2018): masked average support vector, cosine similarity guidance of the query."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fss_model.backbones import build_backbone
from fss_model.layers import cosine_map, masked_average_pool, upsample
from fss_model.pairwise import PairwiseFewShot
from fss_model.registry import register_model


class SGOne(PairwiseFewShot):
    """Similarity Guidance Network (arXiv 1810.09091; xiaomengyc/SG-One), trained end to end.

    Guidance branch: a 3x3 conv (512, no ReLU; the authors' `cls`) on the deepest backbone map gives
    the features of support and query. The support's masked average pooling is the representative
    vector (K-shot: mean of the shots' vectors, the authors' `5shot_avg`); its cosine similarity with
    every query pixel is the guidance map in [-1, 1]. Segmentation branch: 3x3 convs over the backbone
    levels from fine to deep, each fed the previous output and the next level (the authors' side3/4/5:
    128 channels, ReLU except the last), multiplied by the guidance map, then 3x3 conv + ReLU and a
    1x1 conv to (bg, fg). Objective: binary CE. N-way: one pair per way, combined by `combine_ways`.
    Differences: the authors' VGG16 keeps conv3-conv5 at stride 8; this toolkit's vgg16 taps pool3/4/5 at
    strides 8/16/32, so deeper maps are upsampled (bilinear) to the finest one; the support mask is
    nearest-downsampled (shared MAP) instead of upsampling the features to the mask.

    Args:
        num_classes: accepted for a uniform constructor, unused (class-agnostic).
        backbone, layers: backbone name and its taps, fine to deep (None: the backbone's default taps).
        frozen, freeze_bn: backbone weights without gradient / BN statistics fixed (trained by default).
        guide_channels, side_channels: widths of the guidance and segmentation branches.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "vgg16",
        frozen: bool = False,
        freeze_bn: bool = True,
        layers: tuple[str, ...] | None = None,
        guide_channels: int = 512,
        side_channels: int = 128,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.guide_channels = guide_channels
        self.backbone = build_backbone(
            backbone, frozen=frozen, freeze_bn=freeze_bn, out_layers=tuple(layers) if layers else None
        )
        channels = [self.backbone.channels[n] for n in self.backbone.out_layers]
        self.guide = nn.Conv2d(channels[-1], guide_channels, 3, padding=1)
        sides = []
        for i, c in enumerate(channels):
            conv = nn.Conv2d(c + (side_channels if i else 0), side_channels, 3, padding=1)
            last = i == len(channels) - 1
            sides.append(nn.Sequential(conv) if last else nn.Sequential(conv, nn.ReLU(inplace=True)))
        self.sides = nn.ModuleList(sides)
        self.classifier = nn.Sequential(
            nn.Conv2d(side_channels, side_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(side_channels, 2, 1),
        )

    def encode(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] -> [N, guide + side, h, w]: guidance features then segmentation features."""
        feats = list(self.backbone(images).values())
        size = feats[0].shape[-2:]
        side = self.sides[0](feats[0])
        for conv, f in zip(self.sides[1:], feats[1:], strict=True):
            side = conv(torch.cat([side, upsample(f, size)], dim=1))
        return torch.cat([upsample(self.guide(feats[-1]), size), side], dim=1)

    def guidance(self, query: Tensor, supports: Tensor, masks: Tensor) -> Tensor:
        """Cosine similarity guidance [P, 1, h, w] in [-1, 1] of encoded query and supports."""
        g = self.guide_channels
        p, shot = supports.shape[:2]
        vectors = masked_average_pool(supports[:, :, :g].flatten(0, 1), masks.flatten(0, 1))
        return cosine_map(query[:, :g], vectors.unflatten(0, (p, shot)).mean(dim=1, keepdim=True))

    def pair_logits(self, query: Tensor, supports: Tensor, masks: Tensor) -> Tensor:
        guide = self.guidance(query, supports, masks)
        return self.classifier(query[:, self.guide_channels :] * guide)


@register_model("sgone", tiny_kwargs={"backbone": "small", "layers": ("layer2", "layer3")})
def sgone(**kwargs: Any) -> SGOne:
    """SG-One; kwargs: see `SGOne` (num_classes, backbone, frozen, freeze_bn, layers, ...)."""
    return SGOne(**kwargs)


__all__ = ["SGOne", "sgone"]
