"""Building blocks shared by the FSS models: mask pooling, ASPP, per-way binary logits, resizing, losses.

Conventions: masks are int maps with 1 = foreground, 0 = background, 255 = ignore (`IGNORE_INDEX`);
ignore pixels never count as foreground. Feature maps are [N, C, h, w].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pipeline.shard_format import IGNORE_INDEX

MAP_EPS = 1e-3  # as released: keeps an empty (fully downsampled-away) mask from dividing by zero


def upsample(x: Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = True) -> Tensor:
    """Bilinear resize of [N, C, h, w] logits/features to `size`.

    align_corners=True as DENet's release (and its CANet, PGNet, AMP); PANet and SG-One call
    `F.interpolate(..., mode="bilinear")` without it, i.e. False.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def foreground_mask(mask: Tensor, size: tuple[int, int] | torch.Size, dtype: torch.dtype) -> Tensor:
    """[N, H, W] mask (1 fg, 0 bg, 255 ignore) -> float [N, 1, h, w] foreground indicator.

    Nearest downsampling as released; 255 maps to 0 *before* resizing so that ignore never acts as
    a huge foreground weight.
    """
    fg = (mask == 1).to(dtype).unsqueeze(1)
    if tuple(fg.shape[-2:]) != tuple(size):
        fg = F.interpolate(fg, size=tuple(size), mode="nearest")
    return fg


def masked_average_pool(features: Tensor, mask: Tensor, eps: float = MAP_EPS) -> Tensor:
    """Masked average pooling: [N, C, h, w] features, [N, H, W] mask -> [N, C] prototypes.

    sum(m * F) / (sum(m) + eps) with m the nearest-downsampled foreground indicator (255 = not fg).
    """
    fg = foreground_mask(mask, features.shape[-2:], features.dtype)
    return (features * fg).sum(dim=(2, 3)) / (fg.sum(dim=(2, 3)) + eps)


def _linear_resize_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """[n_out, n_in] matrix A with A @ x == 1-D linear resize of x (align_corners=False), as F.interpolate."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device).unsqueeze(1)  # n_in signals e_j
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False).squeeze(1).T


def upsampled_masked_pool(features: Tensor, mask: Tensor, eps: float) -> Tensor:
    """PANet's and SG-One's masked average pooling: features bilinearly upsampled to the mask's size.

    features [N, C, h, w], mask float [N, H, W] (the pixel weights, e.g. a 0/1 indicator) -> [N, C] =
    sum_p m(p) * up(F)(p) / (sum_p m(p) + eps), with `up` = `F.interpolate(mode="bilinear")` (align_corners
    False, as both releases call it). Bilinear resizing is linear and separable, up(F) = A_h F A_w^T, so
    the sum equals sum_q F(q) * (A_h^T m A_w)(q): computed at feature resolution, never materialising the
    [N, C, H, W] upsampled map (2 GB for 8 episodes x 5 shots of 512 x 321 x 321 floats).
    """
    h, w = features.shape[-2:]
    big_h, big_w = mask.shape[-2:]
    mask = mask.to(features.dtype)
    weights = _linear_resize_matrix(h, big_h, features).T @ mask @ _linear_resize_matrix(w, big_w, features)
    pooled = torch.einsum("nchw,nhw->nc", features, weights)
    return pooled / (mask.sum(dim=(1, 2))[:, None] + eps)


def uses_batch_statistics(module: nn.Module) -> bool:
    """True when some BatchNorm layer of `module` normalises with the statistics of its current batch.

    Then how images are grouped into backbone passes changes the result: the releases pass queries and
    supports separately (two BN batches), which `encode_episode` follows.
    """
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
        for m in module.modules()
    )


def episode_images(query_img: Tensor, support_imgs: Tensor) -> Tensor:
    """[B, 3, H, W] queries and [B, way, shot, 3, H, W] supports -> one [B + B*way*shot, 3, H, W] batch.

    One backbone pass over queries and supports together: fewer, larger convolutions.
    """
    return torch.cat([query_img, support_imgs.flatten(0, 2)], dim=0)


def split_episode(feats: Tensor, b: int, way: int, shot: int) -> tuple[Tensor, Tensor]:
    """Features of an `episode_images` batch -> query [B, ...] and supports [B, way, shot, ...]."""
    return feats[:b], feats[b:].unflatten(0, (b, way, shot))


def encode_episode(
    encode: Callable[[Tensor], Tensor],
    query_img: Tensor,
    support_imgs: Tensor,
    separate: bool,
    supports_first: bool = False,
) -> tuple[Tensor, Tensor]:
    """query [B, 3, H, W], supports [B, way, shot, 3, H, W] -> encoded query [B, ...], supports
    [B, way, shot, ...].

    separate=True: queries and supports in two passes, as the releases run them; this matters only while
    BatchNorm uses batch statistics (`uses_batch_statistics`): two BN batches, and the running statistics
    updated in the release's order (`supports_first`: DENet's model/head/denet.py:56-73 encodes the
    supports, then the query; PANet and SG-One the query first). separate=False: one pass over both, the
    same computation in fewer, larger convolutions when BN statistics are fixed.
    """
    b, way, shot = support_imgs.shape[:3]
    if not separate:
        return split_episode(encode(episode_images(query_img, support_imgs)), b, way, shot)
    if supports_first:
        supports = encode(support_imgs.flatten(0, 2))
        return encode(query_img), supports.unflatten(0, (b, way, shot))
    return encode(query_img), encode(support_imgs.flatten(0, 2)).unflatten(0, (b, way, shot))


def binary_way_logits(logits_full: Tensor, class_ids: Tensor) -> Tensor:
    """Per-way binary logits from multi-class logits, DENet's rule.

    logits_full [B, C, h, w] (one channel per class row), class_ids [B, way] (row of each way) ->
    [B, way, 2, h, w] with channel 0 = background = max over every other row (background, base
    classes and the other episode classes), channel 1 = foreground = the way's own row.
    """
    b, c, h, w = logits_full.shape
    way = class_ids.shape[1]
    full = logits_full.unsqueeze(1).expand(b, way, c, h, w)
    idx = class_ids.view(b, way, 1, 1, 1).expand(b, way, 1, h, w)
    fg = full.gather(2, idx)
    own_row = F.one_hot(class_ids, c).bool().view(b, way, c, 1, 1)
    # finfo.min rather than -inf keeps bf16/fp16 autocast and gradients finite
    bg = full.masked_fill(own_row, torch.finfo(full.dtype).min).amax(dim=2, keepdim=True)
    return torch.cat([bg, fg], dim=2)


def binary_targets(query_label: Tensor, way: int) -> Tensor:
    """[B, H, W] episode label (0 bg, 1..way, 255) -> [B, way, H, W] binary targets (1 fg, 0 bg, 255)."""
    ways = torch.arange(1, way + 1, device=query_label.device).view(1, way, 1, 1)
    label = query_label.unsqueeze(1)
    target = (label == ways).long()
    return target.masked_fill(label == IGNORE_INDEX, IGNORE_INDEX)


def safe_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean pixel cross-entropy that returns 0 (not NaN) when every pixel is ignored."""
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp(min=1)
    return total / count


def episode_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixel cross-entropy averaged per episode (over its valid pixels), then over the batch.

    The DENet release's loss (trainer/utils.py:270-277): every episode weighs the same whatever its
    number of valid pixels. An episode whose pixels are all ignored adds 0 (the release: NaN).
    """
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    valid = (target != ignore_index).flatten(1).sum(dim=1).clamp(min=1)
    return (ce.flatten(1).sum(dim=1) / valid).mean()


def binary_focal_loss(
    logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Binary focal loss as released: logits [N, 2, H, W] (bg, fg), target [N, H, W] in {0, 1, ignore}.

    Class weights (alpha for background, 1 - alpha for foreground) and a weighted mean over the valid
    pixels, like `nll_loss(weight=...)`; 0 when every pixel is ignored.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    t = target.masked_fill(~valid, 0).unsqueeze(1)
    logp_t = logp.gather(1, t).squeeze(1)
    focal = (1 - logp_t.exp()) ** gamma * logp_t
    weight = torch.where(t.squeeze(1) == 1, 1.0 - alpha, alpha) * valid
    return -(weight * focal).sum() / weight.sum().clamp(min=1e-12)


class ASPP(nn.Module):
    """ASPP without BatchNorm, as in DENet's release (`RegASPP`).

    Branches: 1x1, 3x3 at each of `rates`, image pooling; each conv + ReLU + dropout. The
    concatenation is projected by 1x1 conv + ReLU + dropout to `out_channels`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: tuple[int, ...] = (6, 12, 18),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()

        def branch(kernel: int, dilation: int) -> nn.Sequential:
            pad = dilation if kernel == 3 else 0
            conv = nn.Conv2d(in_channels, out_channels, kernel, padding=pad, dilation=dilation)
            return nn.Sequential(conv, nn.ReLU(inplace=True), nn.Dropout2d(dropout))

        self.branches = nn.ModuleList([branch(1, 1), *(branch(3, r) for r in rates)])
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.project = nn.Sequential(
            nn.Conv2d((len(rates) + 2) * out_channels, out_channels, 1),
            nn.ReLU(inplace=True),
            # plain Dropout as released (element-wise, not channel-wise)
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        # the pooled branch is constant over space: broadcasting == bilinear upsampling of a 1x1 map
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


def concat_levels(feats: list[Tensor]) -> Tensor:
    """Concatenate feature maps along channels at the size of the first (finest) one, bilinear."""
    size = feats[0].shape[-2:]
    return torch.cat([upsample(f, size) for f in feats], dim=1)


def cosine_map(features: Tensor, vectors: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every pixel with every vector: [N, C, h, w], [N, K, C] -> [N, K, h, w]."""
    f = F.normalize(features, dim=1, eps=eps)
    v = F.normalize(vectors.to(features.dtype), dim=2, eps=eps)
    return torch.einsum("nchw,nkc->nkhw", f, v)


class ResidualBlock(nn.Module):
    """relu(x + conv3x3(relu(conv3x3(x)))) without normalisation: CANet's and PGNet's block as released."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))
