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
    safe_cross_entropy,
    upsample,
    upsampled_masked_pool,
    uses_batch_statistics,
)
from fss_model.pairwise import encode_episode, way_ids
from fss_model.recipe import TOY, Recipe
from fss_model.registry import register_model

PROTO_EPS = 1e-5  # PANet's eps of every masked average (support and query prototypes)


class PANet(nn.Module):
    """Prototype Alignment Network (Wang et al., ICCV 2019) as released in kaixin96/PANet, trained end to end.

    Encoder: PANet's VGG16 (`vgg16_panet`: pool4 at stride 1, dilated conv5, no final ReLU; one 512-d map
    at stride 8), shared by supports and query. Prototypes (`models/fewshot.py` getFeatures/getPrototype):
    the support features are upsampled bilinearly to the mask size and averaged under the mask (eps 1e-5);
    one foreground prototype per way (mean over its shots) and one background prototype (mean over ways
    of the mean over shots). Background = a support's pixels of label 0: the data marks the pixels of the
    episode's other classes 255 (`train.stream.transforms.binary_mask`), so, as in PANet's `getMask`, they
    count neither as background nor as foreground. Query logits = `scale` (20) * cosine similarity with
    [background, fg_1, ..., fg_way] at feature size, upsampled bilinearly (align_corners=False) to the
    image: a (1 + way)-class map trained with cross-entropy on the episode label (255 ignored); way i's
    binary map is (max of the other rows, row i), i.e. PANet's argmax.
    Prototype alignment (weight `align_weight` = 1, PANet's `alignLoss`): the argmax of the feature-size
    query prediction masks the query's own prototypes (eps 1e-5), which segment every support image; the
    support logits are upsampled (align_corners=False) to the mask and scored by cross-entropy against
    the support mask (fg 1, bg 0, 255 ignored: the other ways' classes too), divided by shots and ways,
    a way absent from the prediction adding nothing; averaged over the batch.
    1-/2-way and 1-/5-shot are native. Parity with the release: tests/golden/test_baseline_golden.py.

    Args:
        num_classes: accepted for a uniform constructor, unused (no base-class head).
        backbone, layers: backbone name and its taps (None: the backbone's default taps; several taps are
            concatenated at the finest size).
        frozen, freeze_bn: backbone weights without gradient / BN statistics fixed (trained by default,
            as PANet fine-tunes its encoder; PANet has no other parameters, so frozen=True is the
            authors' training-free "notrain" variant, evaluated but not trained).
        scale: cosine similarity multiplier; align_weight: weight of the alignment loss (0 disables it).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "vgg16_panet",
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

    @staticmethod
    def pool(features: Tensor, masks: Tensor, value: int) -> Tensor:
        """PANet's getFeatures: [N, C, h, w] features, [N, H, W] masks -> [N, C] mean where mask == value."""
        return upsampled_masked_pool(features, (masks == value).to(features.dtype), PROTO_EPS)

    def prototypes(self, supports: Tensor, masks: Tensor) -> Tensor:
        """supports [B, way, shot, C, h, w], masks [B, way, shot, H, W] -> [B, 1 + way, C] (bg first)."""
        b, way, shot = supports.shape[:3]
        feats, flat = supports.flatten(0, 2), masks.flatten(0, 2)
        fg = self.pool(feats, flat, 1).unflatten(0, (b, way, shot)).mean(dim=2)
        bg = self.pool(feats, flat, 0).unflatten(0, (b, way, shot)).mean(dim=2).mean(dim=1)
        return torch.cat([bg[:, None], fg], dim=1)

    def forward(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, class_ids: Tensor
    ) -> dict[str, Tensor]:
        """Design contract -> {"way_logits" and "logits" [B, 1 + way, H, W] at image size, "feature_logits"
        [B, 1 + way, h, w], "query_feats", "support_feats"}."""
        b, way = support_imgs.shape[:2]
        query, supports = encode_episode(self.encode, query_img, support_imgs, uses_batch_statistics(self))
        feature_logits = self.scale * cosine_map(query, self.prototypes(supports, support_masks))
        logits = upsample(feature_logits, query_img.shape[-2:], align_corners=False)
        return {
            "way_logits": binary_way_logits(logits, way_ids(b, way, logits.device)),
            "logits": logits,
            "feature_logits": feature_logits,
            "query_feats": query,
            "support_feats": supports,
        }

    def alignment_loss(
        self, logits: Tensor, query: Tensor, supports: Tensor, support_masks: Tensor
    ) -> Tensor:
        """PANet's prototype alignment: the query, masked by its own prediction, segments the supports.

        logits [B, 1 + way, h, w] at feature size (PANet's `pred` before upsampling), query [B, C, h, w],
        supports [B, way, shot, C, h, w], support_masks [B, way, shot, H, W] -> scalar.
        """
        b, way, shot = supports.shape[:3]
        with torch.no_grad():
            pred = F.one_hot(logits.argmax(dim=1), way + 1).permute(0, 3, 1, 2).to(query.dtype)
        protos = torch.einsum("bchw,bkhw->bkc", query, pred) / (pred.sum(dim=(2, 3))[..., None] + PROTO_EPS)
        present = (pred[:, 1:].sum(dim=(2, 3)) > 0).to(logits.dtype)  # [B, way]: PANet skips absent ways
        pairs = torch.stack([protos[:, :1].expand(b, way, -1), protos[:, 1:]], dim=2)  # [B, way, 2, C]
        pairs = pairs[:, :, None].expand(b, way, shot, *pairs.shape[2:]).flatten(0, 2)
        support_logits = self.scale * cosine_map(supports.flatten(0, 2), pairs)
        target = support_masks.flatten(0, 2)
        support_logits = upsample(support_logits.float(), target.shape[-2:], align_corners=False)
        ce = F.cross_entropy(support_logits, target, ignore_index=IGNORE_INDEX, reduction="none")
        valid = (target != IGNORE_INDEX).sum(dim=(1, 2)).clamp(min=1)
        per_support = (ce.sum(dim=(1, 2)) / valid).view(b, way, shot).mean(dim=2)
        # multiplying (not indexing) keeps the loss in the graph when every way is skipped
        return ((per_support * present).sum(dim=1) / way).mean()

    def loss(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """CE of the (1 + way)-class query logits + align_weight * prototype alignment loss."""
        label: Tensor = batch["query_label"]
        ce = safe_cross_entropy(upsample(out["logits"].float(), label.shape[-2:], align_corners=False), label)
        align = self.alignment_loss(
            out["feature_logits"], out["query_feats"], out["support_feats"], batch["support_masks"]
        )
        return {"loss": ce + self.align_weight * align, "ce": ce.detach(), "align": align.detach()}


# Official: PANet's config.py: SGD lr 1e-3, one episode per step, 30k steps, lr x0.1 after 10k and 20k,
# its own VGG16 fine-tuned. One model per test setting (its test reads way and shot from the snapshot's
# name, config.py:89-90). Void: background in a support's background mask (dataloaders/customized.py
# getMask), ignored by the query loss (train.py:78).
@register_model(
    "panet",
    official=Recipe(
        lr=1e-3,
        steps=30_000,
        batch_size=1,
        lr_milestones=(10_000, 20_000),
        backbone="vgg16_panet",
        backbone_frozen=False,
        train_void="query_ignore",
        trains_per=("way", "shot"),
    ),
    toy=TOY.replace(train_void="query_ignore", trains_per=("way", "shot")),
)
def panet(**kwargs: Any) -> PANet:
    """PANet; kwargs: see `PANet` (num_classes, backbone, frozen, freeze_bn, layers, scale, align_weight)."""
    return PANet(**kwargs)


__all__ = ["PANet", "panet"]
