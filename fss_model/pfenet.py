"""PFENet (TPAMI 2020): training-free prior mask and the Feature Enrichment Module, as released."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fss_model.backbones import build_backbone
from fss_model.canet import bilinear_masked_pool
from fss_model.layers import binary_targets, safe_cross_entropy, upsample, uses_batch_statistics
from fss_model.pairwise import combine_ways
from fss_model.recipe import TOY, Recipe
from fss_model.registry import register_model

COSINE_EPS = 1e-7  # the release's eps of the prior's cosine similarity and of its min-max normalisation
PYRAMID_BINS = (60, 30, 15, 8)  # the release's PASCAL scales (its COCO VGG config: 1.0, 0.5, 0.25, 0.125)


def prior_mask(query: Tensor, support: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """PFENet's training-free prior: query [P, C, h, w], masked support [P, C, h', w'] -> [P, 1, h, w].

    Every query pixel takes its highest cosine similarity with any support pixel (the release divides by
    the product of the norms plus eps), then the map is min-max normalised per episode to [0, 1].
    """
    q, s = query.flatten(2), support.flatten(2)
    similarity = torch.einsum("pcs,pcq->psq", s, q)
    norms = torch.einsum("ps,pq->psq", s.norm(dim=1), q.norm(dim=1))
    best = (similarity / (norms + eps)).amax(dim=1)  # [P, h * w]
    low, high = best.amin(dim=1, keepdim=True), best.amax(dim=1, keepdim=True)
    return ((best - low) / (high - low + eps)).view(query.shape[0], 1, *query.shape[-2:])


def _conv(cin: int, cout: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)


def _classifier(depth: int, dropout: float) -> nn.Sequential:
    """The release's `cls` / `inner_cls`: conv3x3 + ReLU + Dropout2d + 1x1 conv to (bg, fg)."""
    return nn.Sequential(
        _conv(depth, depth, 3), nn.ReLU(inplace=True), nn.Dropout2d(dropout), nn.Conv2d(depth, 2, 1)
    )


class PFENet(nn.Module):
    """Prior Guided Feature Enrichment Network (Tian et al., TPAMI 2020) as released in
    dvlab-research/PFENet (`model/PFENet.py`).

    Backbone (frozen as released, BN on batch statistics in training as the release leaves it): the
    mid-level maps `layers[0]` and `layers[1]` (ResNet layer2 + layer3, 1536 channels; VGG's layer2 is
    resized to layer3's size, bilinear align_corners=True) are concatenated (layers[1] first) and reduced
    by 1x1 conv + ReLU + Dropout2d to `reduce_dim` (separate convs for query and supports). The support
    mask (1 = foreground; ignore counts as 0) is resized bilinearly (align_corners=True) to the mid-level
    size; the support's high-level map is the backbone's last stage run on its masked `layers[1]` map.
    Prior: `prior_mask` of the query's high-level map against the support's (masked again at its size),
    resized to the mid-level size; K shots: priors averaged, and the support prototypes (masked average,
    eps 5e-4) averaged, as released. Feature Enrichment Module over `pyramid_bins` (an int: that square
    size; a float <= 1: that fraction of the map): each scale merges the pooled query, the tiled prototype
    and the prior (1x1 conv), adds the previous scale's output through `alpha_conv` (the inter-scale
    path, top-down), refines it (`beta_conv`, residual), emits auxiliary logits (`inner_cls`) and is
    resized back; the scales are concatenated, fused (`res1`, `res2` residual) and classified (`cls`).
    Logits are upsampled (bilinear, align_corners=True) to the image size, as the release's zoom 8 does.

    N-way (the release is 1-way): every way is a 1-way PFENet pass with its own supports; the ways' (bg,
    fg) logits at image size are combined by `fss_model.pairwise.combine_ways` (background = max of the
    ways' background, a way's map = (max of background and the other ways' foreground, its foreground)).
    Objective (`loss`): CE of the main logits + aux_weight * the mean CE of the scales' auxiliary logits
    upsampled to the label (align_corners=True), each way against its binary label. BN batches as
    released: query, then each shot (all ways together) while BN uses batch statistics, else one pass.
    Parity with the release: tests/golden/test_pfenet_golden.py.

    Args:
        num_classes: accepted for a uniform constructor, unused (class-agnostic).
        backbone: `resnet50_deep` (PASCAL as released), `resnet101_deep`, `vgg16_bn_pfenet` (COCO), or
            any backbone with the three `layers`.
        layers: (mid-low, mid-high, high) taps; `small`: ("layer1", "layer2", "layer3").
        frozen, freeze_bn: backbone weights without gradient (as released) / BN statistics fixed.
        reduce_dim: width of the head (256); pyramid_bins: FEM scales; dropout: of the 1x1 reductions
            (0.5); head_dropout: of the classifiers (0.1); aux_weight: of the auxiliary loss (1.0).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50_deep",
        frozen: bool = True,
        freeze_bn: bool = False,
        layers: tuple[str, ...] = ("layer2", "layer3", "layer4"),
        reduce_dim: int = 256,
        pyramid_bins: Sequence[float] = PYRAMID_BINS,
        dropout: float = 0.5,
        head_dropout: float = 0.1,
        aux_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if len(layers) != 3:
            raise ValueError(f"PFENet needs three backbone layers (mid-low, mid-high, high), got {layers}")
        if not pyramid_bins or any(b <= 0 for b in pyramid_bins):
            raise ValueError(f"pyramid_bins must be positive sizes or fractions, got {pyramid_bins}")
        self.num_classes, self.aux_weight = num_classes, aux_weight
        self.layers = tuple(layers)
        self.pyramid_bins = tuple(pyramid_bins)
        self.backbone = build_backbone(backbone, frozen=frozen, freeze_bn=freeze_bn, out_layers=self.layers)
        mid = self.backbone.channels[layers[0]] + self.backbone.channels[layers[1]]
        d = reduce_dim

        def reduce() -> nn.Sequential:
            return nn.Sequential(_conv(mid, d, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout))

        self.down_query, self.down_supp = reduce(), reduce()
        n = len(self.pyramid_bins)
        self.init_merge = nn.ModuleList(
            nn.Sequential(_conv(2 * d + 1, d, 1), nn.ReLU(inplace=True)) for _ in range(n)
        )
        self.alpha_conv = nn.ModuleList(nn.Sequential(_conv(2 * d, d, 1), nn.ReLU()) for _ in range(n - 1))
        self.beta_conv = nn.ModuleList(
            nn.Sequential(_conv(d, d, 3), nn.ReLU(inplace=True), _conv(d, d, 3), nn.ReLU(inplace=True))
            for _ in range(n)
        )
        self.inner_cls = nn.ModuleList(_classifier(d, head_dropout) for _ in range(n))
        self.res1 = nn.Sequential(_conv(n * d, d, 1), nn.ReLU(inplace=True))
        self.res2 = nn.Sequential(
            _conv(d, d, 3), nn.ReLU(inplace=True), _conv(d, d, 3), nn.ReLU(inplace=True)
        )
        self.cls = _classifier(d, head_dropout)

    # ------------------------------------------------------------------------------------- features

    def mid_level(self, feats: dict[str, Tensor]) -> Tensor:
        """cat(layers[1], layers[0] resized to its size): the release's cat([feat_3, feat_2])."""
        low, high = feats[self.layers[0]], feats[self.layers[1]]
        return torch.cat([high, upsample(low, high.shape[-2:])], dim=1)

    def encode_support(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images [N, 3, H, W], masks [N, H, W] -> mid-level map, its-size fg weights, masked high map."""
        feats = self.backbone(images, until=self.layers[1])
        fg = upsample((masks == 1).to(images.dtype).unsqueeze(1), feats[self.layers[1]].shape[-2:])
        high = self.backbone(feats[self.layers[1]] * fg, after=self.layers[1])[self.layers[2]]
        return self.mid_level(feats), fg, high

    def encode(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """query [B, 3, H, W], supports [B, way, shot, 3, H, W], masks [B, way, shot, H, W] -> query mid and
        high maps [B, ...], support mid maps and masked high maps [B * way, shot, ...]."""
        b, way, shot = support_imgs.shape[:3]
        if uses_batch_statistics(self.backbone):  # the release's BN batches: the query, then each shot
            q = self.backbone(query_img)
            shots = [
                self.encode_support(support_imgs[:, :, k].flatten(0, 1), support_masks[:, :, k].flatten(0, 1))
                for k in range(shot)
            ]
            s_mid, s_high = (torch.stack([s[i] for s in shots], dim=1) for i in (0, 2))
            return self.mid_level(q), q[self.layers[2]], s_mid, s_high
        # one pass to the mid level, one through the last stage: the same values in fewer convolutions
        images = torch.cat([query_img, support_imgs.flatten(0, 2)])
        feats = self.backbone(images, until=self.layers[1])
        mid_high = feats[self.layers[1]]
        masks = support_masks.flatten(0, 2)
        fg = upsample((masks == 1).to(mid_high.dtype).unsqueeze(1), mid_high.shape[-2:])
        masked = torch.cat([mid_high[:b], mid_high[b:] * fg])
        high = self.backbone(masked, after=self.layers[1])[self.layers[2]]
        mid = self.mid_level(feats)
        return (
            mid[:b],
            high[:b],
            mid[b:].unflatten(0, (b * way, shot)),
            high[b:].unflatten(0, (b * way, shot)),
        )

    # ------------------------------------------------------------------------------------------ head

    def bin_size(self, scale: float, size: tuple[int, int]) -> tuple[int, int]:
        if scale > 1:
            return int(scale), int(scale)
        return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))

    def enrich(self, query: Tensor, prototype: Tensor, prior: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Feature Enrichment Module: query [P, d, h, w], prototype [P, d, 1, 1], prior [P, 1, h, w] ->
        (logits [P, 2, h, w], auxiliary logits of every scale [P, 2, bin, bin])."""
        size = query.shape[-2:]
        merged: list[Tensor] = []
        aux: list[Tensor] = []
        for i, scale in enumerate(self.pyramid_bins):
            bin_hw = self.bin_size(scale, size)
            x = torch.cat(
                [
                    nn.functional.adaptive_avg_pool2d(query, bin_hw),
                    prototype.expand(-1, -1, *bin_hw),
                    upsample(prior, bin_hw),
                ],
                dim=1,
            )
            x = self.init_merge[i](x)
            if i > 0:  # inter-scale path: the previous scale's output (at the map size) resized here
                previous = upsample(merged[-1], bin_hw)
                x = self.alpha_conv[i - 1](torch.cat([x, previous], dim=1)) + x
            x = self.beta_conv[i](x) + x
            aux.append(self.inner_cls[i](x))
            merged.append(upsample(x, size))
        x = self.res1(torch.cat(merged, dim=1))
        x = self.res2(x) + x
        return self.cls(x), aux

    def forward(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, class_ids: Tensor
    ) -> dict[str, Any]:
        """Design contract; class_ids are unused (class-agnostic) -> {"way_logits" [B, way, 2, H, W],
        "pair_logits" [B, way, 2, H, W] (each way's own pass), "aux_logits": one [B, way, 2, bin, bin]
        per pyramid scale, "prior" [B, way, 1, h, w]}."""
        b, way, shot = support_imgs.shape[:3]
        q_mid, q_high, s_mid, s_high = self.encode(query_img, support_imgs, support_masks)
        q_mid, q_high = q_mid.repeat_interleave(way, dim=0), q_high.repeat_interleave(way, dim=0)
        query = self.down_query(q_mid)
        masks = support_masks.flatten(0, 1)  # [P, shot, H, W]
        priors, prototypes = [], []
        for k in range(shot):
            fg_high = upsample((masks[:, k] == 1).to(q_high.dtype).unsqueeze(1), s_high.shape[-2:])
            priors.append(upsample(prior_mask(q_high, s_high[:, k] * fg_high), q_mid.shape[-2:]))
            prototypes.append(bilinear_masked_pool(self.down_supp(s_mid[:, k]), masks[:, k]))
        prior = torch.stack(priors).mean(dim=0)
        prototype = torch.stack(prototypes).mean(dim=0)[:, :, None, None]
        logits, aux = self.enrich(query, prototype, prior)
        pair = upsample(logits, query_img.shape[-2:]).unflatten(0, (b, way))
        return {
            "way_logits": combine_ways(pair) if way > 1 else pair,
            "pair_logits": pair,
            "aux_logits": [a.unflatten(0, (b, way)) for a in aux],
            "prior": prior.unflatten(0, (b, way)),
        }

    def loss(self, out: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """The release's objective, one binary problem per way (see `pfenet_loss`)."""
        return pfenet_loss(out["pair_logits"], out["aux_logits"], batch["query_label"], self.aux_weight)


def pfenet_loss(
    pair_logits: Tensor, aux_logits: Sequence[Tensor], query_label: Tensor, aux_weight: float = 1.0
) -> dict[str, Tensor]:
    """CE of the main logits + aux_weight * mean over scales of the auxiliary logits' CE (each upsampled,
    bilinear align_corners=True, to the label), every way against its binary label (255 ignored).

    pair_logits [B, way, 2, h, w], aux_logits [B, way, 2, bin, bin] per scale, query_label [B, H, W]
    (0 bg, 1..way, 255) -> {"loss", "main", "aux"}; the release's `main_loss + aux_weight * aux_loss`.
    """
    size = query_label.shape[-2:]
    target = binary_targets(query_label, pair_logits.shape[1]).flatten(0, 1)

    def ce(logits: Tensor) -> Tensor:
        return safe_cross_entropy(upsample(logits.flatten(0, 1).float(), size), target)

    main = ce(pair_logits)
    aux = torch.stack([ce(a) for a in aux_logits]).mean()
    return {"loss": main + aux_weight * aux, "main": main.detach(), "aux": aux.detach()}


# dvlab-research/PFENet config/pascal/pascal_split0_resnet50.yaml, train.py, util/util.py: SGD lr 0.0025,
# momentum 0.9, weight decay 1e-4, poly power 0.9 per iteration, batch 4, 473 px, its augmentation, 200
# epochs. COCO (config/coco/*.yaml, 4 GPUs): batch 32, lr 0.02, 641 px, 50 epochs. Epochs -> steps: an
# epoch is one pass over the training images (util/dataset.py make_dataset), at most the 5,953 lines of
# lists/pascal/voc_sbd_merge_noduplicate.txt (200 x 5,953 / 4 = 297,650 steps) and train2014's 82,783
# images on COCO (50 x 82,783 / 32 = 129,348): upper bounds (docs/methods.md "PFENet").
PFENET_RELEASE = Recipe(
    lr=0.0025, momentum=0.9, weight_decay=1e-4, batch_size=4, steps=297_650, lr_schedule="poly",
    augment="pfenet", image_size=473, backbone="resnet50_deep", backbone_frozen=True, trains_per=("shot",),
    eval_resize="letterbox",
    by_dataset={"coco": {"batch_size": 32, "lr": 0.02, "steps": 129_348, "image_size": 641}},
)  # fmt: skip
# toy: the small backbone's three taps, the COCO config's relative scales (a 21 x 21 map at 161 px), width
# 64 (the released 256 costs ~4x the time per step on 2 cores), Adam lr 1e-3 as HSNet's toy: with the
# shared toy SGD (lr 0.01 or 0.05) the head stayed at all-background for 200 steps; Adam reached
# validation mIoU 46.02 at step 100 (docs/methods.md "PFENet on the toy data")
PFENET_TOY = TOY.replace(
    eval_resize="letterbox",
    optimizer="adam",
    lr=1e-3,
    weight_decay=0.0,
    model_kwargs={
        "layers": ["layer1", "layer2", "layer3"],
        "pyramid_bins": [1.0, 0.5, 0.25, 0.125],
        "reduce_dim": 64,
    },
)


@register_model(
    "pfenet",
    official=PFENET_RELEASE,
    toy=PFENET_TOY,
    tiny_kwargs={"backbone": "small", "layers": ("layer1", "layer2", "layer3"), "reduce_dim": 16},
)
def pfenet(**kwargs: Any) -> PFENet:
    """PFENet; kwargs: see `PFENet` (backbone, layers, frozen, freeze_bn, reduce_dim, pyramid_bins...)."""
    return PFENet(**kwargs)


__all__ = ["PFENet", "pfenet", "pfenet_loss", "prior_mask"]
