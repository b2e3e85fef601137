"""Paired image/label transforms and decoding (PIL, PIL draft mode for JPEG, optional GPU decode)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

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


EVAL_RESIZES = ("square", "letterbox")  # evaluate.resize: how test images reach the square input


def letterbox_size(h: int, w: int, size: int) -> tuple[int, int]:
    """The content size of PFENet's test resize (util/transform.py `Resize.find_new_hw`): the long side
    scaled to `size`, the short side by the same ratio (int), then both floored to a multiple of 8."""
    ratio = size / max(h, w)
    new_h, new_w = (size, int(w * ratio)) if h >= w else (int(h * ratio), size)
    return new_h // 8 * 8, new_w // 8 * 8


def letterbox_pair(
    img: Image.Image, label: Image.Image | None, size: int
) -> tuple[Image.Image, Image.Image | None]:
    """PFENet's test resize (`resized_val: True`, the release's configs): image (bilinear) and label
    (nearest) resized to `letterbox_size`, pasted top-left on a size x size square of 0 (image, before
    normalisation) and 255 (label)."""
    new_h, new_w = letterbox_size(img.height, img.width, size)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(img.resize((new_w, new_h), Image.BILINEAR), (0, 0))
    if label is None:
        return canvas, None
    padded = Image.new("L", (size, size), IGNORE_INDEX)
    padded.paste(label.resize((new_w, new_h), Image.NEAREST), (0, 0))
    return canvas, padded


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


AUGMENTATIONS = ("flip", "pfenet")  # train.augment: the recipes' training transforms
# PFENet's train.py: RandScale(0.9, 1.1), RandRotate(+-10, p 0.5, padded with the ImageNet mean and 255),
# RandomGaussianBlur (5 x 5, p 0.5), RandomHorizontalFlip, Crop(train_h, 'rand') (util/transform.py)
PFENET_SCALE = (0.9, 1.1)
PFENET_ROTATE = 10.0  # degrees, either way
PFENET_BLUR_SIGMA = 1.1  # cv2.GaussianBlur((5, 5), 0): sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8
PFENET_CROP_KEEP = 0.85  # a crop is redrawn (up to 30 times) while it keeps < 85% of the class's pixels
PFENET_CROP_TRIES = 30
MEAN_RGB = (124, 116, 104)  # the ImageNet mean x 255: the release's padding colour


class TrainTransform:
    """A training recipe's transform of one sample, by name (`augment`):

    - "flip" (DENet, and the default): square resize to `size`, random horizontal flip (`flip_p`);
    - "pfenet": PFENet's, on the decoded image: random scale 0.9-1.1, rotation +-10 degrees (p 0.5),
      Gaussian blur (p 0.5), horizontal flip (p 0.5), a random `size` x `size` crop (padded with the
      mean colour / 255 when smaller; redrawn while it keeps < 85% of `keep_class`'s pixels).

    Randomness comes from the caller's `np.random.Generator`, so a seeded sampler reproduces it.
    """

    def __init__(self, size: int, flip_p: float = 0.5, reduced: bool = True, augment: str = "flip") -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment {augment!r} is not one of {' | '.join(AUGMENTATIONS)}")
        self.size = size
        self.flip_p = flip_p
        self.reduced = reduced
        self.augment = augment

    def __call__(
        self, jpg: bytes, png: bytes, rng: np.random.Generator, keep_class: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.augment == "pfenet":
            img = decode_image(jpg, self.size, self.reduced)
            return pfenet_augment(img, decode_label(png), self.size, rng, keep_class)
        return load_pair(jpg, png, self.size, bool(rng.random() < self.flip_p), self.reduced)

    def label_only(self, png: bytes, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """The label half of `__call__` (same draw) and the flip its image must get on the device."""
        if self.augment != "flip":
            raise ValueError(f"augment {self.augment!r} runs on the CPU only: set sampler.gpu_decode false")
        flip = bool(rng.random() < self.flip_p)
        label = decode_label(png)
        if label.size != (self.size, self.size):
            label = label.resize((self.size, self.size), Image.NEAREST)
        if flip:
            label = label.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(label, dtype=np.uint8), flip


def pfenet_augment(
    img: Image.Image, label: Image.Image, size: int, rng: np.random.Generator, keep_class: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """PFENet's training transform (see `TrainTransform`) -> uint8 [size, size, 3] image and label."""
    scale = rng.uniform(*PFENET_SCALE)
    w, h = img.size
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    img, label = img.resize(new, Image.BILINEAR), label.resize(new, Image.NEAREST)
    if rng.random() < 0.5:
        angle = rng.uniform(-PFENET_ROTATE, PFENET_ROTATE)
        img = img.rotate(angle, Image.BILINEAR, fillcolor=MEAN_RGB)
        label = label.rotate(angle, Image.NEAREST, fillcolor=IGNORE_INDEX)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(PFENET_BLUR_SIGMA))
    if rng.random() < 0.5:
        img, label = img.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
    image, mask = np.asarray(img, dtype=np.uint8), np.asarray(label, dtype=np.uint8)
    pad_h, pad_w = max(size - mask.shape[0], 0), max(size - mask.shape[1], 0)
    if pad_h or pad_w:  # centred, as the release's copyMakeBorder
        pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        image = np.stack([np.pad(image[..., c], pads, constant_values=MEAN_RGB[c]) for c in range(3)], -1)
        mask = np.pad(mask, pads, constant_values=IGNORE_INDEX)
    total = int((mask == keep_class).sum()) if keep_class is not None else 0
    for _ in range(PFENET_CROP_TRIES + 1):
        y = int(rng.integers(0, mask.shape[0] - size + 1))
        x = int(rng.integers(0, mask.shape[1] - size + 1))
        crop = mask[y : y + size, x : x + size]
        if keep_class is None or (crop == keep_class).sum() >= PFENET_CROP_KEEP * total:
            break
    return np.ascontiguousarray(image[y : y + size, x : x + size]), np.ascontiguousarray(crop)


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
