"""DENet (Dynamic Extension Nets, ACM MM 2020) as released: learned class weights extended by prototypes.

Pipeline (docs/protocol.md, "DENet as released"): backbone layer3 ->
neck (dilated conv, ASPP without BN, conv-BN-ReLU) ->
256-d features at stride 8. A learned matrix W [C, depth] (C = num_classes incl. background) is dropped
out (training only) and the rows of the episode classes are replaced by support prototypes (guided
attention gate, masked average pooling, linear projection, K-shot mean). Query logits are dot products with
every row; each way's binary map is (max over all other rows, own row).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fss_model.backbones import build_backbone
from fss_model.layers import (
    ASPP,
    binary_focal_loss,
    binary_targets,
    binary_way_logits,
    encode_episode,
    episode_cross_entropy,
    foreground_mask,
    masked_average_pool,
    safe_cross_entropy,
    upsample,
)
from fss_model.recipe import DENET_TEMPLATE, TOY
from fss_model.registry import register_model


class DENetNeck(nn.Module):
    """Shared support/query embedding: conv3x3 d2 + ReLU + Dropout2d, ASPP (no BN), conv3x3 + BN + ReLU."""

    def __init__(
        self, in_channels: int, depth: int = 256, dropout: float = 0.5, rates: tuple[int, ...] = (6, 12, 18)
    ) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(in_channels, depth, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.aspp = ASPP(depth, depth, rates, dropout)
        self.out = nn.Sequential(
            nn.Conv2d(depth, depth, 3, padding=1, bias=False),
            nn.BatchNorm2d(depth),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.aspp(self.embed(x)))


class GuidedAttention(nn.Module):
    """Channel gate from the masked global average of the support map (the release's GAM).

    As released the average is taken over *all* pixels of mask * F (adaptive average pooling), not
    normalised by the mask area; the gate is 1x1 conv, ReLU, 1x1 conv, dropout, sigmoid.
    """

    def __init__(self, depth: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Conv2d(depth, depth, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(depth, depth, 1),
            nn.Dropout(dropout),
            nn.Sigmoid(),
        )

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        fg = foreground_mask(mask, feats.shape[-2:], feats.dtype)
        pooled = (feats * fg).mean(dim=(2, 3), keepdim=True)
        return feats * self.gate(pooled)


class DENet(nn.Module):
    """Dynamic Extension Net.

    Args:
        num_classes: rows of W including background (21 PASCAL, 81 COCO); class_ids index these rows.
        backbone: a registered backbone name (fss_model.backbones.list_backbones()); its layer3 feeds
            the neck, whose input width follows the backbone.
        frozen: backbone parameters get no gradient (the release freezes its ImageNet ResNet-50).
        freeze_bn: backbone BN statistics fixed (eval mode under model.train()); the release leaves
            them in train mode (False).
        joint_pass: one backbone + neck pass over queries and supports together (faster); the release
            runs supports, then the query, separately (False): with BN in train mode the two differ.
        ce_average: "episode" (the release: CE averaged per episode, then over the batch) or "pixel"
            (one mean over every valid pixel of the batch).
        depth: neck / prototype / W width (256 as released; narrower for the CPU toy).
        dropout: rate of every dropout (neck, ASPP, attention gate, W).
        aspp_rates: atrous rates of the ASPP 3x3 branches.
    Weights of the backbone are loaded by the caller: `fss_model.backbones.load_weights(model.backbone, ...)`.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50",
        frozen: bool = True,
        freeze_bn: bool = True,
        depth: int = 256,
        dropout: float = 0.5,
        aspp_rates: tuple[int, ...] = (6, 12, 18),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        joint_pass: bool = False,
        ce_average: str = "episode",
    ) -> None:
        super().__init__()
        if ce_average not in ("episode", "pixel"):
            raise ValueError(f"ce_average {ce_average!r} is not episode | pixel")
        self.num_classes = num_classes
        self.joint_pass, self.ce_average = joint_pass, ce_average
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.backbone = build_backbone(backbone, frozen=frozen, freeze_bn=freeze_bn, out_layers=("layer3",))
        self.neck = DENetNeck(self.backbone.channels["layer3"], depth, dropout, tuple(aspp_rates))
        self.attention = GuidedAttention(depth, dropout)
        self.project = nn.Linear(depth, depth)  # the release's 1x1 conv on the pooled prototype
        self.weight_dropout = nn.Dropout(dropout)
        # the release's init: kaiming_uniform(a=sqrt(5)), i.e. nn.Linear's default weight init
        self.class_weight = nn.Parameter(torch.empty(num_classes, depth))
        nn.init.kaiming_uniform_(self.class_weight, a=5**0.5)

    def embed(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] normalised images -> [N, depth, h, w] stride-8 features."""
        return self.neck(self.backbone(images)["layer3"])

    def prototypes(self, support_feats: Tensor, support_masks: Tensor) -> Tensor:
        """[N, depth, h, w] support features, [N, H, W] masks -> [N, depth] projected prototypes."""
        gated = self.attention(support_feats, support_masks)
        return self.project(masked_average_pool(gated, support_masks))

    def episode_weights(self, protos: Tensor, class_ids: Tensor) -> Tensor:
        """W extended per episode: [B, way, depth] prototypes, [B, way] ids -> [B, C, depth].

        Training: each episode draws its own dropout of W, then its class rows are overwritten by the
        prototypes (the release: keeps the net from solving episodes with memorised base-class rows).
        """
        b, way, d = protos.shape
        weight = self.weight_dropout(self.class_weight.unsqueeze(0).expand(b, -1, -1))
        index = class_ids.unsqueeze(-1).expand(b, way, d)
        return weight.scatter(1, index, protos.to(weight.dtype))

    def forward(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, class_ids: Tensor
    ) -> dict[str, Tensor]:
        """query_img [B, 3, H, W], support_imgs [B, way, shot, 3, H, W], support_masks [B, way, shot, H, W]
        (1 fg, 0 bg, 255 ignore), class_ids [B, way] (rows of W, distinct within an episode) ->
        {"way_logits": [B, way, 2, h, w], "logits_full": [B, C, h, w], "weights": [B, C, depth]}.
        """
        b, way, shot = support_imgs.shape[:3]
        query_feats, support_feats = encode_episode(
            self.embed, query_img, support_imgs, separate=not self.joint_pass, supports_first=True
        )
        protos = self.prototypes(support_feats.flatten(0, 2), support_masks.flatten(0, 2))
        protos = protos.view(b, way, shot, -1).mean(dim=2)  # K-shot: mean of the per-shot prototypes
        weights = self.episode_weights(protos, class_ids)
        logits_full = torch.einsum("bchw,bkc->bkhw", query_feats, weights.to(query_feats.dtype))
        return {
            "way_logits": binary_way_logits(logits_full, class_ids),
            "logits_full": logits_full,
            "weights": weights,
        }

    def loss(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """CE of upsampled logits_full vs query_full_label (back-propagated, averaged as `ce_average`);
        binary focal loss of the way logits vs query_label (logged only), as released."""
        full_label: Tensor = batch["query_full_label"]
        size = full_label.shape[-2:]
        logits = upsample(out["logits_full"].float(), size)
        ce = (
            episode_cross_entropy(logits, full_label)
            if self.ce_average == "episode"
            else safe_cross_entropy(logits, full_label)
        )
        with torch.no_grad():
            way_logits = out["way_logits"].detach().float()
            way = way_logits.shape[1]
            logits = upsample(way_logits.flatten(0, 1), size)
            target = binary_targets(batch["query_label"], way).flatten(0, 1)
            focal = binary_focal_loss(logits, target, self.focal_alpha, self.focal_gamma)
        return {"loss": ce, "ce": ce.detach(), "focal": focal}


# The release (config/train_config_denet.template) on a frozen ImageNet ResNet-50; its paper trains
# 200k steps on COCO. Toy: the neck at width 128 learns the toy task as well as at 256 (53.6 vs
# 53.4 novel mIoU, fold 0, 600 steps) in about half the step time on 2 cores.
@register_model(
    "denet",
    official=DENET_TEMPLATE.replace(steps_by_dataset={"coco": 200_000}),
    toy=TOY.replace(model_kwargs={"depth": 128}),
    tiny_kwargs={"backbone": "small", "depth": 64},
)
def denet(**kwargs: Any) -> DENet:
    """DENet; kwargs: see `DENet` (num_classes, backbone, frozen, freeze_bn, depth, dropout, ...)."""
    return DENet(**kwargs)


__all__ = ["DENet", "DENetNeck", "GuidedAttention", "denet"]
