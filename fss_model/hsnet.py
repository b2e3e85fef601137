"""HSNet (ICCV 2021) as released: multi-layer hypercorrelation squeezed by center-pivot 4D convolutions."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fss_model.backbones import Backbone, build_backbone
from fss_model.layers import binary_targets, safe_cross_entropy, upsample, uses_batch_statistics
from fss_model.pairwise import combine_ways, episode_images, split_episode
from fss_model.recipe import TOY, Recipe
from fss_model.registry import register_model

CORR_EPS = 1e-5  # the release's eps of the feature norms (`Correlation.multilayer_correlation`)
GROUPS = 4  # GroupNorm groups of every 4D block
WIDTHS = (16, 64, 128)  # outch1..3 of the release's building blocks (the 4D blocks' widths)
# 4D kernel sizes of the three squeezing blocks, deepest group first (encoder_layer4, 3, 2)
SQUEEZE_KERNELS = ((3, 3, 3), (5, 3, 3), (5, 5, 3))
# support-side strides of a squeezing block by its total support reduction: the release reduces its
# /32, /16 and /8 groups by 8, 16 and 32, so every group's support side ends at the same size
SQUEEZE_STRIDES = {8: (2, 2, 2), 16: (4, 2, 2), 32: (4, 4, 2)}
VOTE_THRESHOLD = 0.5  # predict_mask_nshot: a pixel is foreground when >= half of the largest vote count
# The vote count minus threshold * max is a multiple of 0.5 for threshold 0.5, so a margin of a quarter
# vote turns the release's `>=` into the evaluator's strict argmax without moving any other pixel
VOTE_MARGIN = 0.25


class CenterPivotConv4d(nn.Module):
    """The release's center-pivot 4D convolution on [B, C, ha, wa, hb, wb] (query dims a, support dims b).

    Two 2D convolutions, one over the query dims at every (stride-pruned) support position and one over
    the support dims (strided) at every query position, summed: the 4D kernel restricted to the two
    planes through its centre. `stride` applies to the support dims only, as released.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        b, c, ha, wa, hb, wb = x.shape
        pruned = x[..., :: self.stride, :: self.stride]  # the release's `prune`: index_select every stride
        ph, pw = pruned.shape[-2:]
        out1 = self.conv1(pruned.permute(0, 4, 5, 1, 2, 3).reshape(-1, c, ha, wa))
        out1 = out1.view(b, ph, pw, -1, *out1.shape[-2:]).permute(0, 3, 4, 5, 1, 2)
        out2 = self.conv2(x.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, hb, wb))
        out2 = out2.view(b, ha, wa, -1, *out2.shape[-2:]).permute(0, 3, 1, 2, 4, 5)
        return out1 + out2


def building_block(
    in_channels: int, widths: tuple[int, ...], kernels: tuple[int, ...], strides: tuple[int, ...]
) -> nn.Sequential:
    """The release's `make_building_block`: (4D conv, GroupNorm(4), ReLU) per layer."""
    layers: list[nn.Module] = []
    for cin, cout, k, s in zip((in_channels, *widths[:-1]), widths, kernels, strides, strict=True):
        layers += [CenterPivotConv4d(cin, cout, k, s), nn.GroupNorm(GROUPS, cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def resize_query_dims(corr: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, C, ha, wa, hb, wb] -> [B, C, *size, hb, wb]: bilinear (align_corners=True) over the query dims
    (the release's `interpolate_support_dims`, which, despite its name, resizes these)."""
    b, c, ha, wa, hb, wb = corr.shape
    flat = corr.permute(0, 4, 5, 1, 2, 3).reshape(b * hb * wb, c, ha, wa)
    flat = F.interpolate(flat, size, mode="bilinear", align_corners=True)
    return flat.view(b, hb, wb, c, *size).permute(0, 3, 4, 5, 1, 2)


class HypercorrelationLearner(nn.Module):
    """The release's `HPNLearner`: squeeze each group's hypercorrelation, mix deep into fine, decode.

    taps: hypercorrelation channels (block taps) per group, deepest first; reductions: total support-side
    reduction per group (keys of SQUEEZE_STRIDES), deepest first.
    """

    def __init__(
        self,
        taps: tuple[int, int, int],
        reductions: tuple[int, int, int],
        widths: tuple[int, int, int] = WIDTHS,
    ) -> None:
        super().__init__()
        for r in reductions:
            if r not in SQUEEZE_STRIDES:
                raise ValueError(
                    f"HSNet: a support reduction of {r} has no squeezing strides ({SQUEEZE_STRIDES})"
                )
        self.squeeze = nn.ModuleList(
            building_block(c, widths, k, SQUEEZE_STRIDES[r])
            for c, k, r in zip(taps, SQUEEZE_KERNELS, reductions, strict=True)
        )
        mix = (widths[-1],) * 3
        self.mix = nn.ModuleList(building_block(widths[-1], mix, (3, 3, 3), (1, 1, 1)) for _ in range(2))
        w1, w2 = widths[-1], widths[1]
        self.decoder1 = nn.Sequential(
            nn.Conv2d(w1, w1, 3, padding=1), nn.ReLU(), nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU()
        )
        self.decoder2 = nn.Sequential(
            nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(), nn.Conv2d(w2, 2, 3, padding=1)
        )

    def forward(self, corrs: list[Tensor]) -> Tensor:
        """Hypercorrelations [P, taps_g, ha_g, wa_g, hb_g, wb_g], deepest first -> (bg, fg) logits
        [P, 2, 2 ha, 2 wa] at twice the finest group's query size."""
        squeezed = [block(c) for block, c in zip(self.squeeze, corrs, strict=True)]
        sides = [tuple(s.shape[-2:]) for s in squeezed]
        if len(set(sides)) > 1:
            raise ValueError(
                f"HSNet: the squeezed support sizes differ between groups ({sides}, deepest first) at query "
                f"feature sizes {[tuple(c.shape[2:4]) for c in corrs]}: use another input size"
            )
        x = squeezed[0]
        for block, finer in zip(self.mix, squeezed[1:], strict=True):
            x = block(resize_query_dims(x, finer.shape[2:4]) + finer)
        x = self.decoder1(x.flatten(-2).mean(dim=-1))  # average over the support dims
        # the release upsamples to (2 w, 2 w); equal to (2 h, 2 w) for the square inputs it trains on
        x = F.interpolate(x, (2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=True)
        return self.decoder2(x)


def hypercorrelation(query: Tensor, support: Tensor, mask: Tensor) -> Tensor:
    """One tap: [P, C, ha, wa] query, [P, C, hb, wb] support, [P, H, W] float 0/1 mask -> [P, ha, wa, hb, wb].

    The mask is resized bilinearly (align_corners=True) to the support map and multiplies it; then the
    cosine similarity of every query and support position (norms + 1e-5), negatives clamped to 0.
    """
    m = F.interpolate(mask[:, None], support.shape[-2:], mode="bilinear", align_corners=True)
    s = (support * m).flatten(2)
    s = s / (s.norm(dim=1, p=2, keepdim=True) + CORR_EPS)
    q = query.flatten(2)
    q = q / (q.norm(dim=1, p=2, keepdim=True) + CORR_EPS)
    corr = torch.bmm(q.transpose(1, 2), s).clamp(min=0)
    return corr.view(query.shape[0], *query.shape[-2:], *support.shape[-2:])


class HSNet(nn.Module):
    """Hypercorrelation Squeeze Network as released in juhongm999/hsnet (`model/hsnet.py`, `learner.py`,
    `base/conv4d.py`, `base/correlation.py`, `base/feature.py`).

    Frozen backbone taps (as released: every bottleneck of ResNet layer2..4 before its last ReLU,
    resnet50_hsnet / resnet101_hsnet undilated; VGG16's conv4_x, conv5_x before their ReLU and pool5,
    vgg16_hsnet): every block tap of the backbone's three deepest stages (`layers`). The support maps are
    masked by the bilinearly resized mask, each tap gives a 4D cosine correlation (clamped at 0), stacked
    per stage: three hypercorrelations, deepest first. Squeezing blocks (center-pivot 4D convs, GroupNorm,
    ReLU; widths 16, 64, 128) shrink the support dims to a common size, mixing blocks add each deeper
    result (query dims resized) to the next finer one, the support dims are averaged and the 2D decoder
    gives (bg, fg) logits at twice the finest stage's size, then (use_original_imgsize False, the
    release's default) at the input size, bilinear align_corners=True. use_original_imgsize True keeps
    them at the decoder's size, so the evaluator resizes them once to the label (the release's
    `--use_original_imgsize`: the standard protocol scores at the original size).
    K-shot (`predict_mask_nshot`): one 1-shot pass per support, each argmax'ed at the output size and
    counted; foreground where count >= 0.5 x the episode's largest count (at least 1); 1-shot keeps the
    logits. N-way (the release is 1-way; this toolkit's extension): each way is its own 1-way pass, whose
    (bg, fg) scores are the logits (1-shot) or (0.5 - 0.25 / max count, count / max count) (K-shot, the
    release's decision exactly), combined as every pairwise method here by `fss_model.pairwise.combine_ways`:
    background = the ways' largest bg score, way i = (max of background and the other ways' fg, own fg).
    Objective: cross-entropy of each pass's 2-class logits at the label size against its way's binary
    query label (the release: 1-way 1-shot, mean over pixels). Parity: tests/golden/test_hsnet_golden.py.

    Args:
        num_classes: accepted for a uniform constructor, unused (class-agnostic).
        backbone: a backbone with block taps (`Backbone.blocks`), e.g. resnet50_hsnet, resnet101_hsnet,
            vgg16_hsnet, small. layers: its three stages, deepest last (None: its three deepest).
        frozen, freeze_bn: backbone weights without gradient / BN statistics fixed (both as released).
        use_original_imgsize: see above.
        widths: the 4D blocks' widths (16, 64, 128 as released; narrower for the CPU toy).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50_hsnet",
        frozen: bool = True,
        freeze_bn: bool = True,
        layers: tuple[str, ...] | None = None,
        use_original_imgsize: bool = False,
        widths: tuple[int, int, int] = WIDTHS,
    ) -> None:
        super().__init__()
        self.num_classes, self.use_original_imgsize = num_classes, use_original_imgsize
        probe = build_backbone(backbone)  # the family's stages and blocks (a throwaway build)
        stages = tuple(layers) if layers else tuple(probe.channels)[-3:]
        if len(stages) != 3:
            raise ValueError(f"HSNet needs three backbone stages, got layers={stages}")
        missing = [s for s in stages if not probe.blocks.get(s)]
        if missing:
            raise ValueError(
                f"HSNet: backbone {backbone} has no block taps in {missing} (see Backbone.blocks)"
            )
        self.backbone: Backbone = build_backbone(
            backbone, frozen=frozen, freeze_bn=freeze_bn, out_layers=tuple(f"{s}.*" for s in stages)
        )
        # deepest first, as the release's learner takes them
        self.groups = [
            [n for n in self.backbone.out_layers if self.backbone.stage_of(n) == s] for s in reversed(stages)
        ]
        strides = [self.backbone.strides[s] for s in reversed(stages)]
        reductions = tuple(8 * strides[0] // s for s in strides)
        if len(widths) != 3 or any(w % GROUPS for w in widths):
            raise ValueError(f"HSNet: widths={widths} must be three multiples of {GROUPS} (GroupNorm groups)")
        taps = tuple(len(g) for g in self.groups)
        self.learner = HypercorrelationLearner(taps, reductions, tuple(widths))  # type: ignore[arg-type]

    def features(
        self, query_img: Tensor, support_imgs: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Block taps of the queries [B, ...] and the supports [B, way, shot, ...]."""
        b, way, shot = support_imgs.shape[:3]
        if uses_batch_statistics(self.backbone):  # two BN batches, query first, as the release's passes
            support = {
                k: v.unflatten(0, (b, way, shot))
                for k, v in self.backbone(support_imgs.flatten(0, 2)).items()
            }
            return self.backbone(query_img), support
        both = self.backbone(episode_images(query_img, support_imgs))
        pairs = {k: split_episode(v, b, way, shot) for k, v in both.items()}
        return {k: q for k, (q, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}

    def pass_logits(
        self, query: dict[str, Tensor], support: dict[str, Tensor], masks: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """1-shot passes: taps of P queries and P supports, masks [P, H, W] -> logits [P, 2, h, w]."""
        fg = (masks == 1).to(next(iter(query.values())).dtype)
        corrs = [
            torch.stack([hypercorrelation(query[n], support[n], fg) for n in g], dim=1) for g in self.groups
        ]
        logits = self.learner(corrs)
        return logits if self.use_original_imgsize else upsample(logits, size, align_corners=True)

    def forward(
        self, query_img: Tensor, support_imgs: Tensor, support_masks: Tensor, class_ids: Tensor
    ) -> dict[str, Tensor]:
        """Design contract; class_ids are unused (class-agnostic) ->
        {"way_logits": [B, way, 2, h, w], "shot_logits": [B, way, shot, 2, h, w] (one per 1-shot pass)}."""
        b, way, shot = support_imgs.shape[:3]
        query, support = self.features(query_img, support_imgs)
        n = way * shot
        logits = self.pass_logits(
            {k: v.repeat_interleave(n, dim=0) for k, v in query.items()},
            {k: v.flatten(0, 2) for k, v in support.items()},
            support_masks.flatten(0, 2),
            tuple(query_img.shape[-2:]),
        ).unflatten(0, (b, way, shot))
        scores = logits[:, :, 0] if shot == 1 else vote_scores(logits)
        return {"way_logits": combine_ways(scores), "shot_logits": logits}

    def loss(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """CE of every pass's logits (upsampled, align_corners=True) vs its way's binary query label."""
        logits = out["shot_logits"]
        b, way, shot = logits.shape[:3]
        label: Tensor = batch["query_label"]
        target = binary_targets(label, way)[:, :, None].expand(b, way, shot, *label.shape[-2:])
        up = upsample(logits.flatten(0, 2).float(), label.shape[-2:], align_corners=True)
        ce = safe_cross_entropy(up, target.flatten(0, 2))
        return {"loss": ce, "ce": ce.detach()}


def vote_counts(logits: Tensor) -> tuple[Tensor, Tensor]:
    """[..., shot, 2, h, w] pass logits -> (foreground votes [..., h, w], the release's divisor [..., 1, 1]:
    the largest vote count of the map, at least 1)."""
    votes = logits.argmax(dim=-3).sum(dim=-3)
    top = votes.flatten(-2).amax(dim=-1).clamp(min=1)
    return votes, top[..., None, None]


def vote_scores(logits: Tensor) -> Tensor:
    """K-shot (bg, fg) scores [B, way, 2, h, w] from the passes' logits [B, way, shot, 2, h, w].

    1-way: (0.5 - 0.25 / largest count, count / largest count), whose argmax is `predict_mask_nshot`'s
    mask exactly. N-way (this toolkit's extension): each way keeps that decision as a gate; a gated
    pixel's foreground score is (count + 0.5 x the passes' mean foreground probability) / shot and the
    background 0.5 / shot, so `combine_ways` gives a pixel two ways claim to the way more of whose
    supports vote for it, and at equal counts to the more confident one. Measured on toy HSNet 2w5s
    (same checkpoint and episodes, docs/methods.md): dividing by each way's own largest count, where
    one stray vote scores 1.0, 9.69 mIoU; count / shot without the tie-break 15.88; this rule 26.98.
    """
    votes, top = vote_counts(logits)
    if logits.shape[1] == 1:
        fg = votes.to(logits.dtype) / top
        bg = (VOTE_THRESHOLD - VOTE_MARGIN / top).to(logits.dtype).expand_as(fg)
        return torch.stack([bg, fg], dim=2)
    shot = logits.shape[2]
    gate = votes.to(logits.dtype) / top >= VOTE_THRESHOLD  # no vote is never gated (largest count >= 1)
    confidence = logits.float().softmax(dim=-3)[..., 1, :, :].mean(dim=2).to(logits.dtype)
    fg = (votes.to(logits.dtype) + 0.5 * confidence) / shot * gate.to(logits.dtype)
    bg = torch.full_like(fg, 0.5 / shot)
    return torch.stack([bg, fg], dim=2)


def predict_mask_nshot(logits: Tensor) -> Tensor:
    """The release's K-shot mask from the passes' logits [B, shot, 2, h, w] -> [B, h, w] in {0, 1}."""
    votes, top = vote_counts(logits)
    if logits.shape[1] == 1:
        return votes
    return (votes.float() / top >= VOTE_THRESHOLD).long()


# The release's recipe (train.py, README): Adam lr 1e-3 (no weight decay), batch 20 at 400 px (batch 40 on
# COCO), frozen ImageNet backbone with BN statistics fixed, CE on the 2-class logits, one 1-way 1-shot
# episode per training pair. It trains "until convergence": --niter 2000 epochs at most, the checkpoint
# of the best validation mIoU kept, runs stopped by hand (README: ~2 days on 4 GPUs for PASCAL, ~1 week
# for COCO). Here that is a fixed budget, 100k steps (2M episodes, ~450 passes over PASCAL fold 0's
# training pairs), with the best validation checkpoint kept: converged means the validation curve
# (results/train plots) is flat by then; raise train.steps if it is not. docs/methods.md has the rest.
HSNET_RELEASE = Recipe(
    optimizer="adam",
    lr=1e-3,
    weight_decay=0.0,
    batch_size=20,
    steps=100_000,
    steps_by_dataset={"coco": 200_000},
    backbone="resnet50_hsnet",
    backbone_frozen=True,
)


@register_model(
    "hsnet",
    official=HSNET_RELEASE,
    # the CPU toy: the release's optimizer on the small backbone (trained: random init), 4D blocks at
    # half width (the mixing blocks' cost goes with the square of the width)
    toy=TOY.replace(optimizer="adam", lr=1e-3, weight_decay=0.0, model_kwargs={"widths": (8, 32, 64)}),
    tiny_kwargs={"backbone": "small", "widths": (8, 16, 32)},
)
def hsnet(**kwargs: Any) -> HSNet:
    """HSNet; kwargs: see `HSNet` (num_classes, backbone, frozen, freeze_bn, layers, use_original_imgsize)."""
    return HSNet(**kwargs)


__all__ = ["CenterPivotConv4d", "HSNet", "HypercorrelationLearner", "hsnet", "predict_mask_nshot"]
