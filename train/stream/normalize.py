"""Loader batches onto the device: images to ImageNet-normalised floats, label maps to int64 (trainer,
validation, evaluation and inference share it)."""

from __future__ import annotations

from typing import Any

import torch

from train.stream.transforms import (
    decode_batch_images,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_KEYS = ("query_label", "query_full_label", "support_masks")  # uint8 in a loader batch


def normalize(batch: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    """Move tensors to `device`; images become float, ImageNet-normalised, label maps int64.

    Both conversions run on the device after the transfer: loaders ship uint8 (a 321 px batch of 8
    is 7 MB instead of 25 MB with int64 labels through worker IPC, pinned memory and the bus).

    A batch from a `gpu_decode` sampler carries JPEG bytes instead of images: they are decoded on
    `device` first (`train.stream.transforms.decode_batch_images`).
    """
    if "query_jpeg" in batch:
        batch = decode_batch_images(batch, device)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        out[key] = value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1) * 255.0
    for key in ("query_img", "support_imgs"):
        out[key] = (out[key].float() - mean) / std
    for key in LABEL_KEYS:
        out[key] = out[key].long()
    return out
