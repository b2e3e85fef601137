"""PGNet (ICCV 2019) as the DENet release re-implements it: graph attention units at several query scales."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fss_model.layers import foreground_mask, upsample
from fss_model.pairwise import EmbeddingPairModel
from fss_model.registry import register_model

SUPPORT_OFFSET = 5e-4  # added to the masked support map as released, so no support pixel is all zeros


class GraphAttentionUnit(nn.Module):
    """Graph attention between query pixels and (masked) support pixels of all shots (the release's GAU).

    Attention = softmax over support pixels of theta(support) . phi(query); the attended support values
    g(support) are concatenated with g(query) pooled to the query scale and projected by 1x1 conv + ReLU.
    `uniform=True` is the release's global unit: equal weights, i.e. the mean of the support values (the
    release fills 1 / (h*w) per shot, which sums to `shot`; the mean is the evident intent and equal
    for 1-shot).
    """

    def __init__(self, depth: int, uniform: bool = False) -> None:
        super().__init__()
        self.uniform = uniform
        if not uniform:
            self.theta = nn.Conv2d(depth, depth, 1)
            self.phi = nn.Conv2d(depth, depth, 1)
        self.out = nn.Sequential(nn.Conv2d(2 * depth, depth, 1), nn.ReLU(inplace=True))

    def attend(self, query: Tensor, supports: Tensor, values: Tensor) -> Tensor:
        """query [P, C, hq, wq], supports/values [P, shot, C, hs, ws] -> attended values [P, C, hq, wq]."""
        p, c, hq, wq = query.shape
        v = values.transpose(1, 2).flatten(2)  # [P, C, shot*hs*ws]
        if self.uniform:
            return v.mean(dim=2)[:, :, None, None].expand(p, c, hq, wq)
        keys = self.theta(supports.flatten(0, 1)).unflatten(0, supports.shape[:2]).transpose(1, 2).flatten(2)
        att = torch.softmax(torch.einsum("pcq,pck->pqk", self.phi(query).flatten(2), keys), dim=-1)
        return torch.einsum("pqk,pck->pcq", att, v).unflatten(2, (hq, wq))

    def forward(self, query: Tensor, supports: Tensor, values: Tensor, query_values: Tensor) -> Tensor:
        attended = self.attend(query, supports, values)
        pooled = F.adaptive_avg_pool2d(query_values, query.shape[-2:])
        return self.out(torch.cat([attended, pooled], dim=1))


class PGNet(EmbeddingPairModel):
    """Pyramid Graph Network (Zhang et al., ICCV 2019) as in lizhaoliu-Lec/DENet `model/head/pgn.py`.

    Encoder shared with CANet (frozen ResNet-50 layer2 + layer3 -> conv3x3 d2 -> 256). The support map
    is masked (nearest-resized mask) plus 5e-4; g = 1x1 conv + ReLU gives the values of support and query.
    Graph attention units run at query scales 1/4, 1/2 and 1 (adaptive average pooling) plus one global
    unit with equal weights; their outputs are upsampled and summed, then three residual blocks, ASPP
    without BN and a 1x1 classifier give (bg, fg) logits. K-shot: attention spans the pixels of every
    shot (the release's rule). N-way: one pair per way, combined by `combine_ways` (the release's n-way
    rule). Objective: binary CE. Args: those of `fss_model.pairwise.EmbeddingPairModel` (num_classes
    accepted, unused) and `scales`: the query downsampling factors of the attention units.
    """

    def __init__(self, scales: tuple[int, ...] = (4, 2, 1), **kwargs: Any) -> None:
        super().__init__(tail_blocks=3, **kwargs)
        depth = self.depth
        self.scales = tuple(scales)
        self.values = nn.Sequential(nn.Conv2d(depth, depth, 1), nn.ReLU(inplace=True))
        self.units = nn.ModuleList(GraphAttentionUnit(depth) for _ in self.scales)
        self.global_unit = GraphAttentionUnit(depth, uniform=True)

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
            out = out + upsample(unit(scaled, supports, values, query_values), (h, w))
        return self.tail(out)


@register_model("pgnet", tiny_kwargs={"backbone": "small", "depth": 64})
def pgnet(**kwargs: Any) -> PGNet:
    """PGNet; kwargs: see `PGNet` and `EmbeddingPairModel` (num_classes, backbone, layers, scales, ...)."""
    return PGNet(**kwargs)


__all__ = ["GraphAttentionUnit", "PGNet", "pgnet"]
