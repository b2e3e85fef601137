"""Shared by the baseline golden files' maker and their parity test: inputs, seeded weights, file format.

The golden files (tests/data/golden/) hold what each reference implementation computed on fixed inputs
with the weights of this project's module transplanted into it. The weights are not stored: both sides
draw them from a seed with `seeded_state` (every tensor from its own name, so the draw does not depend
on module order), and the header keeps a digest of them, so a changed parameter name or shape is
reported as "regenerate", never as a parity failure.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
INPUTS = GOLDEN_DIR / "inputs.npz"
SIZE = 65  # px: stride-8 maps of 9 x 9 (VGG pool5 of AMP 3 x 3), the smallest size every head runs at
WAY, SHOT, EPISODES = 2, 5, 2  # the stored episodes; 1-way / 1-shot cases take the first ways / shots
VOID = 255
TOLERANCE = 1e-4  # max abs difference allowed between this project and a reference
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCES = {  # the checkouts the golden files were made from
    "denet": ("lizhaoliu-Lec/DENet", "446f941b2a0936e90827c085f98ba069c7bb6ccb"),
    "panet": ("kaixin96/PANet", "1695bf37c2f7585323e09cfcfb3bef8d4fff1b86"),
    "sgone": ("xiaomengyc/SG-One", "7436ca48dc824a2416afb762e26aa701d150361f"),
    "pfenet": ("dvlab-research/PFENet", "a5056754d232829644e84d36b1e1d30818bd4c4f"),
}


# ------------------------------------------------------------------------------------------ weights


def seeded_state(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and BatchNorm statistic of `model` from `seed` and the tensor's name.

    Conv/linear weights ~ N(0, 1 / fan_in) (activations neither vanish nor explode through the
    unnormalised VGGs and the ResNets' residual chains), biases ~ N(0, 0.1^2), BN weight 1 + N(0, 0.1^2),
    BN bias N(0, 0.1^2), running mean N(0, 0.1^2), running var U(0.5, 1.5). Returns `model`.
    """
    with torch.no_grad():
        for module_name, module in model.named_modules():
            is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
            tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            for name, tensor in tensors:
                if not tensor.is_floating_point():
                    continue  # num_batches_tracked
                full = f"{module_name}.{name}" if module_name else name
                g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(full.encode()))
                noise = torch.randn(tensor.shape, generator=g)
                if is_bn and name == "running_var":
                    value = 0.5 + torch.rand(tensor.shape, generator=g)
                elif is_bn and name == "weight":
                    value = 1.0 + 0.1 * noise
                elif tensor.ndim >= 2:
                    value = noise / math.sqrt(tensor[0].numel())
                else:
                    value = 0.1 * noise
                tensor.copy_(value.to(tensor.dtype))
    return model


def state_digest(model: nn.Module) -> str:
    """sha256 of the state_dict (names, shapes, float32 bytes): what the golden file's weights were."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def disable_dropout(model: nn.Module) -> nn.Module:
    """p = 0 in every dropout layer: train-mode runs (BatchNorm on batch statistics) become deterministic."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


# ------------------------------------------------------------------------------------------- inputs


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random axis-aligned ellipse as a bool [size, size] map."""
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    ry, rx = rng.uniform(0.12, 0.35, 2) * size
    y, x = np.mgrid[:size, :size]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _label(rng: np.random.Generator, classes: list[int], distractor: int) -> np.ndarray:
    """A label map: background 0, blobs of `classes` and a distractor class, a void band on a border."""
    label = np.zeros((SIZE, SIZE), np.uint8)
    for c in [distractor, *classes]:
        if rng.random() < 0.9 or c == classes[0]:
            label[_blob(rng, SIZE)] = c
    label[:, : int(rng.integers(1, 4))] = VOID  # VOC-like void band
    return label


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """The stored episodes: uint8 images and dataset-id label maps (0 bg, class ids, 255 void).

    Episode e has classes class_ids[e]; a way's supports always show its class, sometimes the other way's
    and a distractor class (so PANet's N-way background rule matters); the query shows the first way's.
    """
    rng = np.random.default_rng(seed)
    class_ids = np.array([[3, 7], [12, 5]], dtype=np.int64)
    distractor = [9, 15]
    query_full = np.stack(
        [_label(rng, [int(c[0]), int(c[1])], d) for c, d in zip(class_ids, distractor, strict=True)]
    )
    support_full = np.stack(
        [
            np.stack(
                [
                    np.stack([_label(rng, [int(c[w]), int(c[1 - w])], d) for _ in range(SHOT)])
                    for w in range(WAY)
                ]
            )
            for c, d in zip(class_ids, distractor, strict=True)
        ]
    )
    return {
        "query_img": rng.integers(0, 256, (EPISODES, 3, SIZE, SIZE), dtype=np.uint8),
        "support_imgs": rng.integers(0, 256, (EPISODES, WAY, SHOT, 3, SIZE, SIZE), dtype=np.uint8),
        "query_full": query_full,
        "support_full": support_full,
        "class_ids": class_ids,
    }


def normalize_images(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float ImageNet-normalised, as every release and `episodes.normalize`."""
    x = torch.from_numpy(images).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def episode_subset(inputs: dict[str, np.ndarray], way: int, shot: int) -> dict[str, np.ndarray]:
    """The stored episodes cut to `way` ways and `shot` shots."""
    return {
        "query_img": inputs["query_img"],
        "support_imgs": inputs["support_imgs"][:, :way, :shot],
        "query_full": inputs["query_full"],
        "support_full": inputs["support_full"][:, :way, :shot],
        "class_ids": inputs["class_ids"][:, :way],
    }


# ------------------------------------------------------------------------ episodes from the sampler

SAMPLER_INPUTS = GOLDEN_DIR / "inputs_sampler.npz"
SAMPLER_SIZE = 97  # px: a second size (stride-8 maps of 13 x 13), the sampler's `image_size`
SAMPLER_SEED = 8  # each episode e draws its flips from np.random.default_rng([SAMPLER_SEED, e])


def decode_sampler_episodes(arrays: dict[str, np.ndarray], void: str = "background") -> dict[str, np.ndarray]:
    """The stored 1-way 1-shot training episodes, decoded by this project's `EpisodeDecoder` (square
    resize to SAMPLER_SIZE, flips from the seeded generator, `protocol: denet` label rules with `void`)
    from the stored JPEG / PNG bytes of their toy samples.

    Returns the episodes in `make_inputs`' layout (images, and the dataset-id labels as resized and
    flipped, void kept: what a reference applies its own mask rule to) and the decoder's own label
    outputs `support_masks`, `query_label`, `query_full_label` (what this project's models train on).
    """
    from train.stream.sampler import Episode, EpisodeDecoder

    meta = json.loads(str(arrays["sampler_meta"].reshape(-1)[0]))  # 0-d as made, 1-d as stored
    decoder = EpisodeDecoder(meta["novel"], "denet", void, meta["image_size"], flip_p=0.5)
    raw: list[np.ndarray] = []
    transform = decoder.transform

    def recording(
        jpg: bytes, png: bytes, rng: np.random.Generator, keep_class: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        img, label = transform(jpg, png, rng, keep_class)
        raw.append(label)
        return img, label

    decoder.transform = recording  # type: ignore[assignment]

    def sample(key: str) -> tuple[bytes, bytes]:
        return arrays[f"sample/{key}/jpg"].tobytes(), arrays[f"sample/{key}/png"].tobytes()

    outs = []
    for e, ep in enumerate(meta["episodes"]):
        episode = Episode([ep["class"]], ep["query"], [[ep["support"]]])
        outs.append(decoder(episode, sample, np.random.default_rng([SAMPLER_SEED, e])))
    n = len(outs)
    s = meta["image_size"]
    return {
        "query_img": np.stack([o["query_img"].transpose(2, 0, 1) for o in outs]),
        "support_imgs": np.stack([o["support_imgs"].transpose(0, 3, 1, 2) for o in outs]).reshape(
            n, 1, 1, 3, s, s
        ),
        "query_full": np.stack(raw[0::2]),
        "support_full": np.stack(raw[1::2]).reshape(n, 1, 1, s, s),
        "class_ids": np.array([[ep["class"]] for ep in meta["episodes"]], dtype=np.int64),
        "support_masks": np.stack([o["support_masks"] for o in outs]).reshape(n, 1, 1, s, s),
        "query_label": np.stack([o["query_label"] for o in outs]),
        "query_full_label": np.stack([o["query_full_label"] for o in outs]),
    }


# ------------------------------------------------------------------------------------------- format


def write_golden(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """An .npz with a JSON `header` entry beside the arrays (no pickles: np.load(allow_pickle=False))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"header": np.array(json.dumps(header, indent=1, sort_keys=True))}
    payload.update({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    with open(path, "wb") as f:
        np.savez_compressed(f, **payload)


def read_golden(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a golden file; a missing file is an error naming the command that makes it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"golden file {path} is missing: make it with `python tests/golden/make_baseline_golden.py "
            "--denet <DENet checkout> --panet <PANet checkout> --sgone <SG-One checkout>`"
        )
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays.pop("header")))
    return header, arrays
