"""PANet (ICCV 2019): masked-average prototypes, scaled cosine similarity, prototype alignment loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fss_model.backbones import build_backbone
from fss_model.layers import (
    IGNORE_INDEX,
    binary_way_logits,
    concat_levels,
    cosine_map,
    masked_average_pool,
    safe_cross_entropy,
    upsample,
)
from fss_model.pairwise import episode_images, split_episode, way_ids
from fss_model.registry import register_model

QUERY_PROTO_EPS = 1e-5  # PANet's eps for the query prototypes of the alignment branch


class PANet(nn.Module):
    """Prototype Alignment Network (Wang et al., ICCV 2019; kaixin96/PANet), trained end to end.

    Prototypes by masked average pooling of the support features: one foreground prototype per way
    (mean over its shots) and one background prototype (mean over every way and shot). Query logits =
    `scale` (20) * cosine similarity with [background, fg_1, ..., fg_way]: a (1 + way)-class map trained
    with cross-entropy on the episode label; way i's binary map is (max of the other rows, row i).
    Prototype alignment (training objective, weight `align_weight` = 1): the query prediction (argmax,
    no gradient) is used as the mask of the query's own prototypes, which then segment every support
    image; cross-entropy against the support masks (255 ignored), averaged over shots and divided by
    the ways, a way absent from the prediction adding nothing; gradient reaches the backbone through
    the query prototypes and the support features. 1-/2-way and 1-/5-shot are native.
    Differences: the support mask is nearest-downsampled (the shared MAP, eps 1e-3) where PANet upsamples
    the features to the mask; several backbone taps (vgg16's pool3/4/5) are concatenated at the finest
    size, as this toolkit's vgg16 has no stride-8 conv5.

    Args:
        num_classes: accepted for a uniform constructor, unused (no base-class head).
        backbone, layers: backbone name and its taps (None: the backbone's default taps).
        frozen, freeze_bn: backbone weights without gradient / BN statistics fixed (trained by default,
            as PANet fine-tunes its encoder; PANet has no other parameters, so frozen=True is the
            authors' training-free "notrain" variant, evaluated but not trained).
        scale: cosine similarity multiplier; align_weight: weight of the alignment loss (0 disables it).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50",
        frozen: bool = False,
        freeze_bn: bool = True,
        layers: tuple[str, ...] | None = None,
        scale: float = 20.0,
        align_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale, self.align_weight = scale, align_weight
        self.backbone = build_backbone(
            backbone, frozen=frozen, freeze_bn=freeze_bn, out_layers=tuple(layers) if layers else None
        )

    def encode(self, images: Tensor) -> Tensor:
        return concat_levels(list(self.backbone(images).values()))

    def prototypes(self, supports: Tensor, masks: Tensor) -> Tensor:
        """supports [B, way, shot, C, h, w], masks [B, way, shot, H, W] -> [B, 1 + way, C] (bg first)."""
        b, way, shot = supports.shape[:3]
        feats, flat = supports.flatten(0, 2), masks.flatten(0, 2)
        fg = masked_average_pool(feats, flat).unflatten(0, (b, way, shot)).mean(dim=2)
        # background = label 0 only: ignore pixels are neither foreground nor background
        bg = masked_average_pool(feats, (flat == 0).long()).unflatten(0, (b, way * shot)).mean(dim=1)
        return torch.cat([bg[:, None], fg], dim=1)

    def forward(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, class_ids: Tensor
    ) -> dict[str, Tensor]:
        """Design contract -> {"way_logits", "logits" [B, 1 + way, h, w], "query_feats", "support_feats"}."""
        b, way, shot = support_imgs.shape[:3]
        query, supports = split_episode(self.encode(episode_images(query_img, support_imgs)), b, way, shot)
        logits = self.scale * cosine_map(query, self.prototypes(supports, support_masks))
        return {
            "way_logits": binary_way_logits(logits, way_ids(b, way, logits.device)),
            "logits": logits,
            "query_feats": query,
            "support_feats": supports,
        }

    def alignment_loss(
        self, logits: Tensor, query: Tensor, supports: Tensor, support_masks: Tensor
    ) -> Tensor:
        """PANet's prototype alignment: the query, masked by its own prediction, segments the supports."""
        b, way, shot = supports.shape[:3]
        with torch.no_grad():
            pred = F.one_hot(logits.argmax(dim=1), way + 1).permute(0, 3, 1, 2).to(query.dtype)
        protos = torch.einsum("bchw,bkhw->bkc", query, pred) / (
            pred.sum(dim=(2, 3))[..., None] + QUERY_PROTO_EPS
        )
        present = (pred[:, 1:].sum(dim=(2, 3)) > 0).to(logits.dtype)  # [B, way]: PANet skips absent ways
        pairs = torch.stack([protos[:, :1].expand(b, way, -1), protos[:, 1:]], dim=2)  # [B, way, 2, C]
        pairs = pairs[:, :, None].expand(b, way, shot, *pairs.shape[2:]).flatten(0, 2)
        support_logits = self.scale * cosine_map(supports.flatten(0, 2), pairs)
        target = support_masks.flatten(0, 2)
        support_logits = upsample(support_logits.float(), target.shape[-2:])
        ce = F.cross_entropy(support_logits, target, ignore_index=IGNORE_INDEX, reduction="none")
        valid = (target != IGNORE_INDEX).sum(dim=(1, 2)).clamp(min=1)
        per_support = (ce.sum(dim=(1, 2)) / valid).view(b, way, shot).mean(dim=2)
        # multiplying (not indexing) keeps the loss in the graph when every way is skipped
        return ((per_support * present).sum(dim=1) / way).mean()

    def loss(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """CE of the (1 + way)-class query logits + align_weight * prototype alignment loss."""
        label: Tensor = batch["query_label"]
        ce = safe_cross_entropy(upsample(out["logits"].float(), label.shape[-2:]), label)
        align = self.alignment_loss(
            out["logits"], out["query_feats"], out["support_feats"], batch["support_masks"]
        )
        return {"loss": ce + self.align_weight * align, "ce": ce.detach(), "align": align.detach()}


@register_model("panet")
def panet(**kwargs: Any) -> PANet:
    """PANet; kwargs: see `PANet` (num_classes, backbone, frozen, freeze_bn, layers, scale, align_weight)."""
    return PANet(**kwargs)


__all__ = ["PANet", "panet"]
