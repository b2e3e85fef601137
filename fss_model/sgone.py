"""SG-One (Zhang et al., 2018): masked average support vector, cosine similarity guidance of the query."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fss_model.backbones import build_backbone
from fss_model.layers import cosine_map, upsample, upsampled_masked_pool
from fss_model.pairwise import PairwiseFewShot
from fss_model.recipe import TOY, Recipe
from fss_model.registry import register_model

VECTOR_EPS = 1e-5  # the release divides by sum(mask) alone; an empty support mask would give NaN


class SGOne(PairwiseFewShot):
    """Similarity Guidance Network (arXiv 1810.09091) as released in xiaomengyc/SG-One, trained end to end.

    Backbone: SG-One's VGG16 (`vgg16_sgone`: 3x3 pools, pool4/pool5 at stride 1, no dilation; taps pool3,
    pool4, pool5 all at stride 8: 41 x 41 at 321 px). Guidance branch: a 3x3 conv (512, no ReLU; the
    authors' `cls`) on pool5 gives the features of support and query; the support's are upsampled
    bilinearly (align_corners=False) to the mask size and averaged under the mask: the representative
    vector (K-shot: mean of the shots' vectors, the authors' `forward_5shot_avg`); its cosine similarity
    with every query pixel is the guidance map in [-1, 1]. Segmentation branch: side3 = conv(pool3) +
    ReLU, side4 = conv([side3, pool4]) + ReLU, side5 = conv([side4, pool5]) (128 channels, no ReLU),
    multiplied by the guidance map, then 3x3 conv + ReLU and the exit 1x1 conv to (bg, fg) with padding 1
    as released (the map grows by one pixel on every side: 43 x 43 at 321 px, its border the exit bias),
    upsampled bilinearly (align_corners=False) to the image size. Head convs of the VGG part (cls, sides)
    are Xavier-uniform initialised with zero bias, as released. Objective: binary CE. N-way (the release
    is 1-way only): one pair per way, combined by `combine_ways`.
    Parity with the release (`models/vgg/vgg_sg.py`, `oneshot/onemodel_sg-one.py`):
    tests/golden/test_baseline_golden.py.

    Args:
        num_classes: accepted for a uniform constructor, unused (class-agnostic).
        backbone, layers: backbone name and its taps, fine to deep (None: the backbone's default taps;
            deeper maps at a coarser stride are upsampled to the finest).
        frozen, freeze_bn: backbone weights without gradient / BN statistics fixed (trained by default).
        guide_channels, side_channels: widths of the guidance and segmentation branches.
        exit_padding: padding of the exit 1x1 conv (1 as released; 0 keeps the map aligned with the image).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "vgg16_sgone",
        frozen: bool = False,
        freeze_bn: bool = True,
        layers: tuple[str, ...] | None = None,
        guide_channels: int = 512,
        side_channels: int = 128,
        exit_padding: int = 1,
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
        for m in [self.guide, *self.sides.modules()]:
            if isinstance(m, nn.Conv2d):  # the release's VGG._initialize_weights
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.classifier = nn.Sequential(
            nn.Conv2d(side_channels, side_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(side_channels, 2, 1, padding=exit_padding),
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
        fg = (masks.flatten(0, 1) == 1).to(supports.dtype)
        vectors = upsampled_masked_pool(supports[:, :, :g].flatten(0, 1), fg, VECTOR_EPS)
        return cosine_map(query[:, :g], vectors.unflatten(0, (p, shot)).mean(dim=1, keepdim=True))

    def pair_logits(self, query: Tensor, supports: Tensor, masks: Tensor) -> Tensor:
        guide = self.guidance(query, supports, masks)
        return self.classifier(query[:, self.guide_channels :] * guide)

    def output_logits(self, logits: Tensor, image_size: tuple[int, int]) -> Tensor:
        """The release's `get_pred`/`get_loss`: upsampled to the image (align_corners=False)."""
        return upsample(logits, image_size, align_corners=False)


# Official: SG-One's train_frame.py and my_optim.get_finetune_optimizer: SGD lr 1e-5, momentum 0.99,
# one episode per step, 100k steps, its own VGG16 fine-tuned; weights x1, biases x2, the `cls`
# (guidance) conv's weight x10, bias x20.
@register_model(
    "sgone",
    official=Recipe(
        lr=1e-5, steps=100_000, momentum=0.99, batch_size=1, backbone="vgg16_sgone", backbone_frozen=False,
        lr_multipliers={"guide.weight": 10.0, "guide.bias": 20.0, "*.bias": 2.0},
    ),
    toy=TOY,
    tiny_kwargs={"backbone": "small", "layers": ("layer2", "layer3")},
)
def sgone(**kwargs: Any) -> SGOne:
    """SG-One; kwargs: see `SGOne` (num_classes, backbone, frozen, freeze_bn, layers, exit_padding, ...)."""
    return SGOne(**kwargs)


__all__ = ["SGOne", "sgone"]
