"""Paired image/label transforms and decoding (PIL, PIL draft mode for JPEG, optional GPU decode)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from pipeline.shard_format import IGNORE_INDEX


def decode_image(data: bytes, size: int | None = None, reduced: bool = True) -> Image.Image:
    """An RGB PIL image from JPEG/PNG bytes.

    With `reduced` and a target `size`, a JPEG is decoded by libjpeg at the smallest 1/2, 1/4 or 1/8
    scale that is still >= `size` on both sides (PIL draft mode): the resize that follows needs no
    more pixels, and a 500 px VOC image decodes ~1.5x faster for a 321 px target. Images already
    near the target size decode as usual.
    """
    img = Image.open(io.BytesIO(data))
    if reduced and size is not None and img.format == "JPEG":
        img.draft("RGB", (size, size))
    return img.convert("RGB")


def decode_label(data: bytes) -> Image.Image:
    """A mode-"L" label map from PNG bytes (values 0 background, class ids, 255 ignore)."""
    img = Image.open(io.BytesIO(data))
    if img.mode != "L":  # a palette PNG keeps its indices; never map colours to grey levels
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    return img


def resize_pair(
    img: Image.Image, label: Image.Image | None, size: int
) -> tuple[Image.Image, Image.Image | None]:
    """Square resize, aspect not kept (the DENet recipe): bilinear image, nearest label."""
    img = img.resize((size, size), Image.BILINEAR) if img.size != (size, size) else img
    if label is not None and label.size != (size, size):
        label = label.resize((size, size), Image.NEAREST)
    return img, label


def load_pair(
    jpg: bytes,
    png: bytes,
    size: int,
    flip: bool = False,
    reduced: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode, square-resize and optionally mirror one sample: uint8 [H, W, 3] image and [H, W] label.

    The image and its label always move together (one flip decision for both).
    """
    img, label = resize_pair(decode_image(jpg, size, reduced), decode_label(png), size)
    assert label is not None
    if flip:  # PIL mirrors in C; a numpy [:, ::-1] copy of an HWC image costs ~10x more
        img, label = img.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.uint8), np.asarray(label, dtype=np.uint8)


class TrainTransform:
    """The DENet training recipe for one sample: square resize to `size`, random horizontal flip.

    Randomness comes from the caller's `np.random.Generator`, so a seeded sampler reproduces it.
    """

    def __init__(self, size: int, flip_p: float = 0.5, reduced: bool = True) -> None:
        self.size = size
        self.flip_p = flip_p
        self.reduced = reduced

    def __call__(self, jpg: bytes, png: bytes, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return load_pair(jpg, png, self.size, bool(rng.random() < self.flip_p), self.reduced)

    def label_only(self, png: bytes, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """The label half of `__call__` (same draw) and the flip its image must get on the device."""
        flip = bool(rng.random() < self.flip_p)
        label = decode_label(png)
        if label.size != (self.size, self.size):
            label = label.resize((self.size, self.size), Image.NEAREST)
        if flip:
            label = label.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(label, dtype=np.uint8), flip


def binary_mask(label: np.ndarray, class_id: int, episode_classes: Sequence[int] = ()) -> np.ndarray:
    """A support mask: 1 where `label == class_id`, 255 where ignored, else 0.

    Pixels of the episode's other classes (`episode_classes`, the N-way episode's class ids) are 255 too:
    neither foreground nor background of this way, PANet's N-way rule (`dataloaders/customized.py`
    getMask: its background excludes every episode class, its alignment loss ignores them). Methods that
    use only the foreground (DENet, CANet, PGNet, SG-One) see no difference; at 1-way there is none.
    """
    mask = (label == class_id).astype(np.uint8)
    mask[label == IGNORE_INDEX] = IGNORE_INDEX
    for other in episode_classes:
        if other != class_id:
            mask[label == other] = IGNORE_INDEX
    return mask


def episode_label(label: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """0 background, k+1 for the k-th episode class, 255 kept; other classes become background."""
    out = np.zeros_like(label)
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    for k, cid in enumerate(class_ids):
        out[label == cid] = k + 1
    return out


def decode_jpegs_torch(datas: Sequence[bytes], size: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 [N, 3, size, size] from JPEG bytes with torchvision.io.decode_jpeg (nvJPEG on "cuda").

    Pays when the CPU is the bottleneck and a GPU is idle between steps: the loader then ships the
    encoded bytes and the train process decodes and resizes a whole batch on the device.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    imgs = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    out = [
        torch.nn.functional.interpolate(
            im[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        for im in imgs
    ]
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)


def decode_batch_images(batch: dict, device: str | torch.device) -> dict:
    """Fill `query_img` / `support_imgs` (uint8, on `device`) of a batch made with `gpu_decode`.

    The loader shipped JPEG bytes (`query_jpeg`, `support_jpegs`) and per-image flips (`img_flips`,
    [B, 1 + way * shot], query first); one batched nvJPEG call decodes them all, then each image is
    resized and mirrored like its label was on the CPU.
    """
    b, way, shot = batch["support_masks"].shape[:3]
    size = int(batch["query_label"].shape[-1])
    jpegs = [j for q, sup in zip(batch["query_jpeg"], batch["support_jpegs"], strict=True) for j in (q, *sup)]
    imgs = decode_jpegs_torch(jpegs, size, device)
    flips = batch["img_flips"].reshape(-1).to(imgs.device)
    imgs = torch.where(flips[:, None, None, None], imgs.flip(-1), imgs).view(b, 1 + way * shot, 3, size, size)
    out = {k: v for k, v in batch.items() if k not in ("query_jpeg", "support_jpegs", "img_flips")}
    out["query_img"] = imgs[:, 0]
    out["support_imgs"] = imgs[:, 1:].reshape(b, way, shot, 3, size, size)
    return out
