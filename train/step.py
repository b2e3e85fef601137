"""The pieces of a model step that training, evaluation and inference share.

Batch layout: docs/design.md (`query_img`, `support_imgs`, `support_masks`, `class_ids`, labels).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FOCAL_ALPHA = 0.25  # the release's binary focal loss (alpha weights background, 1 - alpha foreground)
FOCAL_GAMMA = 2.0

Batch = dict[str, Any]


def autocast_for(device: torch.device, amp: bool) -> Any:
    """bf16 autocast on CUDA when enabled; a no-op context on CPU."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def forward(model: nn.Module, batch: Batch, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """The model's forward on an episode batch (already normalised on its device)."""
    query = batch["query_img"]
    if channels_last:
        query = query.contiguous(memory_format=torch.channels_last)
    return model(query, batch["support_imgs"], batch["support_masks"], batch["class_ids"])


def upsample_way_logits(way_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, way, 2, h, w] -> [B, way, 2, H, W], bilinear with align_corners=True (the release)."""
    b, way, two, h, w = way_logits.shape
    if (h, w) == tuple(size):
        return way_logits
    flat = way_logits.reshape(b, way * two, h, w).float()
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=True).reshape(b, way, two, *size)


def binary_focal_loss(way_logits: torch.Tensor, query_label: torch.Tensor) -> torch.Tensor:
    """The release's binary focal loss of the way outputs, for models whose `loss` does not report it."""
    from fss_model.layers import binary_focal_loss as focal
    from fss_model.layers import binary_targets

    size = tuple(query_label.shape[-2:])
    logits = upsample_way_logits(way_logits.float(), size).flatten(0, 1)
    target = binary_targets(query_label, way_logits.shape[1]).flatten(0, 1)
    return focal(logits, target, FOCAL_ALPHA, FOCAL_GAMMA)
