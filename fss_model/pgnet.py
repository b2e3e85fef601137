"""PGNet (ICCV 2019) as the DENet release re-implements it: graph attention units at several query scales."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fss_model.layers import foreground_mask, upsample
from fss_model.pairwise import EmbeddingPairModel
from fss_model.recipe import DENET_TEMPLATE, TOY
from fss_model.registry import register_model

SUPPORT_OFFSET = 5e-4  # added to the masked support map as released, so no support pixel is all zeros
Attention = Literal["release", "fixed"]


class GraphAttentionUnit(nn.Module):
    """Graph attention between query pixels and (masked) support pixels of all shots (the release's GAU).

    Attention = softmax over support pixels of theta(support) . phi(query); the attended support values
    g(support) are concatenated with g(query) pooled to the query scale and projected by 1x1 conv + ReLU.
    `uniform=True` is the release's global unit: every support pixel weighs 1 / (h*w), so the values are
    summed over the shots (K-shot: K times their mean), as released.
    `attention="release"` reshapes the attended values [P, hq*wq, C] straight to [P, C, hq, wq] without a
    permute, as the DENet release's `model/common.py` (GAU.forward) does: channels and pixels are
    scrambled, and DENet's published PGNet numbers come from that computation. "fixed" keeps every
    pixel's own C values.
    """

    def __init__(self, depth: int, uniform: bool = False, attention: Attention = "fixed") -> None:
        super().__init__()
        if attention not in ("release", "fixed"):
            raise ValueError(f"attention must be 'release' or 'fixed', got {attention!r}")
        self.uniform, self.attention = uniform, attention
        if not uniform:
            self.theta = nn.Conv2d(depth, depth, 1)
            self.phi = nn.Conv2d(depth, depth, 1)
        self.out = nn.Sequential(nn.Conv2d(2 * depth, depth, 1), nn.ReLU(inplace=True))

    def attend(self, query: Tensor, supports: Tensor, values: Tensor) -> Tensor:
        """query [P, C, hq, wq], supports/values [P, shot, C, hs, ws] -> attended values [P, C, hq, wq]."""
        p, c, hq, wq = query.shape
        hs, ws = values.shape[-2:]
        v = values.transpose(1, 2).flatten(2)  # [P, C, shot*hs*ws]
        if self.uniform:
            pooled = v.sum(dim=2) / (hs * ws)  # [P, C]
            attended = pooled[:, None, :].expand(p, hq * wq, c)  # [P, hq*wq, C]
        else:
            keys = (
                self.theta(supports.flatten(0, 1)).unflatten(0, supports.shape[:2]).transpose(1, 2).flatten(2)
            )
            att = torch.softmax(torch.einsum("pcq,pck->pqk", self.phi(query).flatten(2), keys), dim=-1)
            attended = torch.einsum("pqk,pck->pqc", att, v)  # [P, hq*wq, C], the release's bmm(att, Gs)
        if self.attention == "release":
            return attended.reshape(p, c, hq, wq)
        return attended.transpose(1, 2).reshape(p, c, hq, wq)

    def forward(self, query: Tensor, supports: Tensor, values: Tensor, query_values: Tensor) -> Tensor:
        attended = self.attend(query, supports, values)
        pooled = F.adaptive_avg_pool2d(query_values, query.shape[-2:])
        return self.out(torch.cat([attended, pooled], dim=1))


class PGNet(EmbeddingPairModel):
    """Pyramid Graph Network (Zhang et al., ICCV 2019) as in lizhaoliu-Lec/DENet `model/head/pgn.py`.

    Encoder shared with CANet (frozen ResNet-50 layer2 + layer3 -> conv3x3 d2 -> 256). The support map
    is masked (nearest-resized mask) plus 5e-4; g = 1x1 conv + ReLU gives the values of support and query.
    Graph attention units run at query scales 1/4, 1/2 and 1 (adaptive average pooling) plus one global
    unit with equal weights; the coarse outputs are upsampled (bilinear, align_corners=False as released)
    and summed, then three residual blocks, ASPP without
    BN and a 1x1 classifier give (bg, fg) logits. K-shot: attention spans the pixels of every shot and
    the global unit sums over them (the release's rules). N-way: one pair per way, combined by
    `combine_ways` (the release's n-way test rule). Objective: binary CE. Backbone passes: query, then
    supports, while BN uses batch statistics (the release's two passes).

    Args: those of `fss_model.pairwise.EmbeddingPairModel` (num_classes accepted, unused), `scales`: the
    query downsampling factors of the attention units, and `attention`: "fixed" (default, the sound
    computation) or "release" (the release's reshape without permute, which reproduces DENet's published
    PGNet numbers; see `GraphAttentionUnit`). Parity with the release:
    tests/golden/test_baseline_golden.py.
    """

    def __init__(
        self, scales: tuple[int, ...] = (4, 2, 1), attention: Attention = "fixed", **kwargs: Any
    ) -> None:
        super().__init__(tail_blocks=3, **kwargs)
        depth = self.depth
        self.scales, self.attention = tuple(scales), attention
        self.values = nn.Sequential(nn.Conv2d(depth, depth, 1), nn.ReLU(inplace=True))
        self.units = nn.ModuleList(GraphAttentionUnit(depth, attention=attention) for _ in self.scales)
        self.global_unit = GraphAttentionUnit(depth, uniform=True, attention=attention)

    def pair_logits(self, query: Tensor, supports: Tensor, masks: Tensor) -> Tensor:
        p, shot = supports.shape[:2]
        fg = foreground_mask(masks.flatten(0, 1), supports.shape[-2:], supports.dtype)
        supports = (supports.flatten(0, 1) * fg + SUPPORT_OFFSET).unflatten(0, (p, shot))
        values = self.values(supports.flatten(0, 1)).unflatten(0, (p, shot))
        query_values = self.values(query)
        h, w = query.shape[-2:]
        out = self.global_unit(query, supports, values, query_values)
        for unit, scale in zip(self.units, self.scales, strict=True):
            # max(1, .): tiny maps (CPU tests) keep at least one pixel at the coarsest scale
            scaled = F.adaptive_avg_pool2d(query, (max(1, h // scale), max(1, w // scale)))
            out = out + upsample(unit(scaled, supports, values, query_values), (h, w), align_corners=False)
        return self.tail(out)


# Official: DENet's re-implementation (config/train_config_pgn.template) on a frozen ResNet-50; under
# protocol denet with the release's attention, which is what DENet's published PGNet numbers measure
# (docs/methods.md). Toy: width 128 (0.6 s per step on 2 cores) and lr 0.05, as CANet (fss_model/canet.py).
@register_model(
    "pgnet",
    official=DENET_TEMPLATE.replace(release_kwargs={"attention": "release"}),
    toy=TOY.replace(lr=0.05, model_kwargs={"depth": 128}),
    tiny_kwargs={"backbone": "small", "depth": 64},
)
def pgnet(**kwargs: Any) -> PGNet:
    """PGNet; kwargs: see `PGNet` and `EmbeddingPairModel` (num_classes, backbone, scales, attention...)."""
    return PGNet(**kwargs)


__all__ = ["GraphAttentionUnit", "PGNet", "pgnet"]
