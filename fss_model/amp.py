"""AMP (ICCV 2019) as the DENet release re-implements it: FCN-8s base-class segmentation, imprinting."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fss_model.backbones import build_backbone
from fss_model.layers import (
    binary_way_logits,
    masked_average_pool,
    safe_cross_entropy,
    upsample,
    uses_batch_statistics,
)
from fss_model.pairwise import episode_images, split_episode
from fss_model.recipe import DENET_TEMPLATE, TOY
from fss_model.registry import register_model

ALPHA = 0.25821  # the release's moving-average rate of the background row
Imprinting = Literal["episode", "release"]


class AMP(nn.Module):
    """Adaptive Masked Proxies (Siam et al., ICCV 2019) as in lizhaoliu-Lec/DENet `model/head/amp.py`.

    Training is plain multi-class segmentation of the query on the base classes (`query_full_label`:
    base ids, novel classes 255): frozen VGG16 taps pool3 (256, /8), pool4 (512, /16), pool5 (512, /32)
    with the release's dilated conv4/conv5, a 1x1 conv 512 -> 256 on pool5 (the release's reduced
    DFCN8s), one bias-free 1x1 classifier with `num_classes` rows per level, FCN-8s fusion (coarse
    logits upsampled and added to the finer ones); loss = CE at label size.
    Episodes (test time; computed in every mode so `way_logits` always exists): per level, the
    L2-normalised masked average pooling of each support ("proxy") is imprinted as a classifier row:
    the episode class's row <- mean of its shots' normalised foreground proxies; the background row
    (row 0) <- moving average alpha * proxy + (1 - alpha) * row over the normalised background proxies,
    alpha = 0.25821, starting from the trained row. Imprinted weights carry no gradient (as released).
    Way i's binary map is (max over every other row, row of class i), DENet's rule (`get_binary_logits`).
    Imprinting (`imprinting`): "episode" (default) starts every episode's background average from the
    trained row and leaves the parameters unchanged. "release" is the release's drift: one moving
    average runs over the background proxies of every episode and shot of the batch in order, every
    episode of the batch uses its final value, and in eval mode that value is written back into the
    classifier's row 0, so it carries over to every later batch (validation during training included,
    as in the release; training-mode forwards never write). Scoring differs too: the release's test
    takes the argmax over all 21 logits and compares that class index with the 0/1 label; this toolkit
    scores each way's binary map (docs/methods.md has the measured difference).
    Extension (the release is 1-way only): N-way imprints every way's row; the background average runs
    over the background proxies of all ways and shots, way by way, shot by shot.
    Parity with the release (`model/head/amp.py`): tests/golden/test_baseline_golden.py.

    Args:
        num_classes: classifier rows incl. background (21 PASCAL, 81 COCO); class_ids index them.
        backbone, layers: backbone name and its taps, fine to deep (None: the backbone's default taps).
        frozen, freeze_bn: backbone weights without gradient (as released) / BN statistics fixed.
        depth: width of the 1x1 conv on the deepest tap; alpha: background moving-average rate.
        imprinting: "episode" (per-episode background row) or "release" (the release's drift).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "vgg16",
        frozen: bool = True,
        freeze_bn: bool = True,
        layers: tuple[str, ...] | None = None,
        depth: int = 256,
        alpha: float = ALPHA,
        imprinting: Imprinting = "episode",
    ) -> None:
        super().__init__()
        if imprinting not in ("episode", "release"):
            raise ValueError(f"imprinting must be 'episode' or 'release', got {imprinting!r}")
        self.num_classes, self.alpha, self.imprinting = num_classes, alpha, imprinting
        self.backbone = build_backbone(
            backbone, frozen=frozen, freeze_bn=freeze_bn, out_layers=tuple(layers) if layers else None
        )
        channels = [self.backbone.channels[n] for n in self.backbone.out_layers]
        self.fc = nn.Conv2d(channels[-1], depth, 1)
        self.classifiers = nn.ModuleList(
            nn.Conv2d(c, num_classes, 1, bias=False) for c in [*channels[:-1], depth]
        )

    def levels(self, images: Tensor) -> list[Tensor]:
        """[N, 3, H, W] -> the feature map of every level, fine to deep (deepest through `fc`)."""
        feats = list(self.backbone(images).values())
        return [*feats[:-1], self.fc(feats[-1])]

    @staticmethod
    def fuse(logits: list[Tensor]) -> Tensor:
        """FCN-8s fusion: from the deepest level, upsample and add to the next finer one."""
        out = logits[-1]
        for finer in reversed(logits[:-1]):
            out = finer + upsample(out, finer.shape[-2:])
        return out

    def imprint(self, weight: Tensor, supports: Tensor, masks: Tensor, class_ids: Tensor) -> Tensor:
        """weight [C, ch], supports [B, way, shot, ch, h, w], masks [B, way, shot, H, W], class_ids [B, way]
        -> the episode's classifier [B, C, ch] (no gradient)."""
        b, way, shot = supports.shape[:3]
        feats, flat = supports.flatten(0, 2), masks.flatten(0, 2)
        fg = F.normalize(masked_average_pool(feats, flat), dim=1).unflatten(0, (b, way, shot)).mean(dim=2)
        bg = F.normalize(masked_average_pool(feats, (flat == 0).long()), dim=1)
        if self.imprinting == "release":  # one average over the whole batch, in order, shared by all
            bg, row = bg.unflatten(0, (1, b * way * shot)), weight[0].to(bg.dtype)[None]
        else:
            bg, row = bg.unflatten(0, (b, way * shot)), weight[0].to(bg.dtype).expand(b, -1)
        for i in range(bg.shape[1]):
            row = self.alpha * bg[:, i] + (1 - self.alpha) * row
        episode = weight.to(fg.dtype).expand(b, -1, -1).scatter(1, class_ids[..., None].expand_as(fg), fg)
        return torch.cat([row[:, None].expand(b, 1, -1), episode[:, 1:]], dim=1).detach()

    def episode_levels(self, query_img: Tensor, support_imgs: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(query [B, ch, h, w], supports [B, way, shot, ch, h, w]) per level, fine to deep."""
        b, way, shot = support_imgs.shape[:3]
        if uses_batch_statistics(self.backbone):  # two BN batches, as the release's separate passes
            supports = [f.unflatten(0, (b, way, shot)) for f in self.levels(support_imgs.flatten(0, 2))]
            return list(zip(self.levels(query_img), supports, strict=True))
        feats = self.levels(episode_images(query_img, support_imgs))
        return [split_episode(f, b, way, shot) for f in feats]

    def forward(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, class_ids: Tensor
    ) -> dict[str, Tensor]:
        """Design contract -> {"way_logits", "logits_full" (imprinted) and "base_logits" [B, C, h, w]}."""
        base, episode = [], []
        levels = self.episode_levels(query_img, support_imgs)
        for (query, supports), classifier in zip(levels, self.classifiers, strict=True):
            base.append(classifier(query))
            weights = self.imprint(classifier.weight.flatten(1), supports, support_masks, class_ids)
            if self.imprinting == "release" and not self.training:
                with torch.no_grad():  # the release's write-back: the drifted row stays for later batches
                    classifier.weight[0].copy_(weights[0, 0].view_as(classifier.weight[0]))
            episode.append(torch.einsum("bchw,bkc->bkhw", query, weights.to(query.dtype)))
        logits_full = self.fuse(episode)
        return {
            "way_logits": binary_way_logits(logits_full, class_ids),
            "logits_full": logits_full,
            "base_logits": self.fuse(base),
        }

    def loss(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Base-class segmentation: CE of the upsampled base logits vs query_full_label (novel = 255)."""
        label: Tensor = batch["query_full_label"]
        ce = safe_cross_entropy(upsample(out["base_logits"].float(), label.shape[-2:]), label)
        return {"loss": ce, "ce": ce.detach()}


# Official: DENet's re-implementation (config/train_config_amp.template): RMSprop at lr 1e-6 without
# momentum on a frozen VGG16.
@register_model(
    "amp",
    official=DENET_TEMPLATE.replace(optimizer="rmsprop", lr=1e-6, momentum=0.0, backbone="vgg16"),
    toy=TOY,
    tiny_kwargs={"backbone": "small", "layers": ("layer2", "layer3")},
)
def amp(**kwargs: Any) -> AMP:
    """AMP; kwargs: see `AMP` (num_classes, backbone, frozen, freeze_bn, layers, depth, alpha, imprinting)."""
    return AMP(**kwargs)


__all__ = ["AMP", "amp"]
