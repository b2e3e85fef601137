"""Procedural few-shot segmentation data written byte-for-byte in the VOC2012, SBD and COCO 2014 layouts.

Each class has its own look (shape family, periodic texture, colour pair) and appears at random
scale and position on cluttered backgrounds whose distractors are aperiodic, so a model trained on
base classes can segment a novel class from a support example while trivial predictors cannot.
The class looks are fixed (they are the classes); the seed only draws the scenes.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import sys
import tarfile
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import scipy.ndimage as ndi
import scipy.sparse
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.archive import publish_tree, record_created
from pipeline.classes import COCO_CATEGORIES, VOC_CLASSES
from pipeline.io import remove_stale_temps, sha256_file, temp_dir, write_json
from pipeline.masks import voc_palette
from pipeline.shard_format import IGNORE_INDEX
from pipeline.sources import COCO_ANN2014, COCO_TRAIN2014, COCO_VAL2014, SBD, SBD_TRAIN_NOVAL, VOC2012

JPEG_QUALITY = 90
SIZE_RANGE = (140, 220)  # image sides in pixels, drawn per image
SHAPES = ("ellipse", "polygon", "star", "ring", "blob", "cross", "arrow")
TEXTURES = ("stripes", "checkers", "dots", "waves", "grid", "rings")
LOOK_SEED = 20_240_601  # class looks are part of the dataset definition, not of the scene seed
# Counts at scale 1 (the --scale knob multiplies them).
PASCAL_COUNTS = {"voc_train": 300, "voc_val": 150, "sbd_train": 500, "sbd_val": 200}
# VOC/SBD ids shared as in the real data: (VOC split, SBD split) -> count. ("train", "val"): SBD val
# images with a VOC2012 train PNG, where the DENet release reads SBD's .mat (docs/protocol.md).
PASCAL_SHARED = {("train", "train"): 50, ("val", "val"): 35, ("val", "train"): 15, ("train", "val"): 15}
COCO_COUNTS = {"train": 1000, "val": 520}  # >= ~15 train and ~8 val images per class (1% rule)
MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: toy"  # fixed: no timestamp


@dataclass(frozen=True)
class Look:
    """The appearance of one class."""

    shape: str
    sides: int
    aspect: float
    texture: str
    angle: float
    period: float
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]


def class_looks(num_classes: int) -> list[Look]:
    """One look per class: 6 textures x 7 shapes cycle together (42 distinct pairs), own colours."""
    rng = np.random.default_rng([LOOK_SEED, num_classes])
    looks = []
    for i in range(num_classes):
        hue_a = rng.uniform(0, 255, 3)
        hue_b = 255 - hue_a + rng.normal(0, 30, 3)  # contrasting partner colour
        looks.append(
            Look(
                shape=SHAPES[i % len(SHAPES)],
                sides=int(rng.integers(3, 8)),
                aspect=float(rng.uniform(0.55, 1.0)),
                texture=TEXTURES[i % len(TEXTURES)],
                angle=float(rng.uniform(0, np.pi)),
                period=float(rng.uniform(5.0, 13.0)),
                colour_a=tuple(int(v) for v in np.clip(hue_a, 0, 255)),
                colour_b=tuple(int(v) for v in np.clip(hue_b, 0, 255)),
            )
        )
    return looks


# ---- geometry ---------------------------------------------------------------------------------


def _outline(look: Look, rng: np.random.Generator) -> np.ndarray:
    """Unit-radius outline (N, 2) of the class's shape family, with per-instance variation."""
    if look.shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        pts = np.stack([np.cos(t), look.aspect * np.sin(t)], 1)
    elif look.shape == "polygon":
        t = np.linspace(0, 2 * np.pi, look.sides, endpoint=False) + rng.uniform(-0.1, 0.1, look.sides)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif look.shape == "star":
        k = look.sides + 2
        t = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False)
        r = np.where(np.arange(2 * k) % 2 == 0, 1.0, 0.45 * look.aspect + 0.1)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif look.shape == "ring":  # a C: outer arc out, inner arc back
        gap = rng.uniform(0.4, 0.9)
        t = np.linspace(gap / 2, 2 * np.pi - gap / 2, 32)
        inner = 0.45 + 0.2 * look.aspect
        pts = np.concatenate(
            [
                np.stack([np.cos(t), np.sin(t)], 1),
                np.stack([inner * np.cos(t[::-1]), inner * np.sin(t[::-1])], 1),
            ]
        )
    elif look.shape == "blob":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        r = np.ones_like(t)
        for freq in (2, 3, 4):
            r += rng.uniform(0.05, 0.18) * np.cos(freq * t + rng.uniform(0, 2 * np.pi))
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1) / r.max()
    elif look.shape == "cross":
        w = 0.2 + 0.2 * look.aspect
        pts = np.array(
            [
                (w, 1),
                (w, w),
                (1, w),
                (1, -w),
                (w, -w),
                (w, -1),
                (-w, -1),
                (-w, -w),
                (-1, -w),
                (-1, w),
                (-w, w),
                (-w, 1),
            ]
        )
    else:  # arrow
        w = 0.15 + 0.25 * look.aspect
        pts = np.array([(-1, w), (0.2, w), (0.2, 0.7), (1, 0), (0.2, -0.7), (0.2, -w), (-1, -w)])
    return pts.astype(np.float64)


def _place(outline: np.ndarray, centre: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    rot = rng.uniform(0, 2 * np.pi)
    stretch = np.array([1.0, rng.uniform(0.8, 1.2)])
    c, s = np.cos(rot), np.sin(rot)
    pts = (outline * stretch) @ np.array([[c, s], [-s, c]])
    return pts * radius + centre


def _clip_polygon(pts: np.ndarray, w: int, h: int) -> list[float]:
    """COCO-style flat polygon, clipped to the image, two decimals as in the real annotations."""
    pts = np.stack([np.clip(pts[:, 0], 0, w - 1), np.clip(pts[:, 1], 0, h - 1)], 1)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def _rasterize(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    """Mask of polygons with COCO's own rasteriser, so the image matches what readers decode."""
    rles = mask_utils.frPyObjects(polygons, h, w)
    with warnings.catch_warnings():  # pycocotools 2.0.x vs numpy 2: a harmless copy= deprecation
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode([mask_utils.merge(rles)])[:, :, 0].astype(bool)


# ---- appearance -------------------------------------------------------------------------------


def _texture(look: Look, h: int, w: int, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 float image of the class texture around `centre`, with per-instance jitter."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = look.angle + rng.uniform(-0.2, 0.2)
    p = look.period * rng.uniform(0.85, 1.15)
    dx, dy = x - centre[0], y - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle) + rng.uniform(0, p)
    v = -dx * np.sin(angle) + dy * np.cos(angle) + rng.uniform(0, p)
    if look.texture == "stripes":
        on = (u / p) % 1.0 < 0.5
    elif look.texture == "checkers":
        on = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    elif look.texture == "dots":
        on = ((u % p) - p / 2) ** 2 + ((v % p) - p / 2) ** 2 < (0.3 * p) ** 2
    elif look.texture == "waves":
        on = np.sin(2 * np.pi * (u / p + 0.35 * np.sin(2 * np.pi * v / (2.5 * p)))) > 0
    elif look.texture == "grid":
        on = ((u % p) < 0.3 * p) | ((v % p) < 0.3 * p)
    else:  # rings
        on = (np.sqrt(dx**2 + dy**2) / p) % 1.0 < 0.5
    a = np.array(look.colour_a, np.float32) + rng.normal(0, 12, 3)
    b = np.array(look.colour_b, np.float32) + rng.normal(0, 12, 3)
    return np.where(on[..., None], a, b)


def _smooth_noise(h: int, w: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Aperiodic low-frequency noise in [0, 1], HxW (bilinear upsampling of a coarse grid)."""
    coarse = Image.fromarray((rng.uniform(0, 255, (cells, cells))).astype(np.uint8))
    return np.asarray(coarse.resize((w, h), Image.BILINEAR), np.float32) / 255.0


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Gradient + blotches + distractor patches that belong to no class (no periodic texture)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (x * np.cos(theta) + y * np.sin(theta)) / max(h, w)
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    img = c0 + (c1 - c0) * ramp[..., None]
    img += (_smooth_noise(h, w, int(rng.integers(3, 8)), rng)[..., None] - 0.5) * rng.uniform(20, 60, 3)
    for _ in range(int(rng.integers(2, 7))):
        centre = rng.uniform([0, 0], [w, h])
        radius = rng.uniform(0.08, 0.3) * min(h, w)
        n = int(rng.integers(3, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.5, 1.0, n)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1) * radius + centre
        patch = _rasterize([_clip_polygon(pts, w, h)], h, w)
        blot = _smooth_noise(h, w, int(rng.integers(4, 12)), rng)[..., None]
        colour = rng.uniform(0, 255, 3) * (0.6 + 0.8 * blot)
        img[patch] = colour[patch]
    return img


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# ---- scenes -----------------------------------------------------------------------------------


@dataclass
class Instance:
    cls: int  # 0-based index into the dataset's classes
    polygons: list[list[float]]
    mask: np.ndarray  # full (unoccluded) mask
    crowd: bool = False


def render_scene(
    rng: np.random.Generator, looks: list[Look], primary: int, sides: tuple[int, int] = SIZE_RANGE
) -> tuple[np.ndarray, list[Instance]]:
    """One image with 1-3 objects (the first of class `primary`), painted in order (later occludes)."""
    h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
    img = _background(h, w, rng)
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    classes = [primary] + [int(rng.integers(len(looks))) for _ in range(count - 1)]
    instances: list[Instance] = []
    side = min(h, w)
    for k, cls in enumerate(classes):
        radius = rng.uniform(0.2, 0.38) * side if k == 0 else rng.uniform(0.13, 0.3) * side
        if instances and rng.random() < 0.5:  # overlap an earlier object on purpose
            near = instances[int(rng.integers(len(instances)))]
            ys, xs = np.nonzero(near.mask)
            j = int(rng.integers(len(xs)))
            centre = np.array([xs[j], ys[j]], np.float64) + rng.normal(0, radius * 0.5, 2)
        else:
            centre = rng.uniform([radius * 0.6, radius * 0.6], [w - radius * 0.6, h - radius * 0.6])
        polygon = _clip_polygon(_place(_outline(looks[cls], rng), centre, radius, rng), w, h)
        mask = _rasterize([polygon], h, w)
        if mask.sum() < 16:
            continue
        img[mask] = _texture(looks[cls], h, w, centre, rng)[mask]
        instances.append(Instance(cls, [polygon], mask))
    return _finish(img, rng), instances


def add_crowd(
    img: np.ndarray, rng: np.random.Generator, looks: list[Look], cls: int
) -> tuple[np.ndarray, Instance]:
    """A cluster of small objects of one class, annotated as one iscrowd region (COCO style)."""
    h, w = img.shape[:2]
    centre = rng.uniform([0.25 * w, 0.25 * h], [0.75 * w, 0.75 * h])
    polygons = []
    for _ in range(int(rng.integers(4, 8))):
        c = centre + rng.normal(0, 0.12 * min(h, w), 2)
        polygons.append(_clip_polygon(_place(_outline(looks[cls], rng), c, 0.06 * min(h, w), rng), w, h))
    mask = _rasterize(polygons, h, w)
    tex = _finish(_texture(looks[cls], h, w, centre, rng), rng)
    out = img.copy()
    out[mask] = tex[mask]
    return out, Instance(cls, polygons, mask, crowd=True)


def semantic_label(instances: list[Instance], h: int, w: int) -> np.ndarray:
    """Class map (0 bg, 1..C) painting instances in order, later over earlier."""
    label = np.zeros((h, w), np.uint8)
    for inst in instances:
        label[inst.mask] = inst.cls + 1
    return label


def _edges(label: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a different label."""
    edge = np.zeros(label.shape, bool)
    dv = label[1:, :] != label[:-1, :]
    dh = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    return edge


def voc_label(label: np.ndarray) -> np.ndarray:
    """VOC's PNG: a void (255) band a few pixels wide on every object border."""
    band = ndi.binary_dilation(_edges(label), iterations=1)
    out = label.copy()
    out[band] = IGNORE_INDEX
    return out


_PALETTE = voc_palette().flatten().tolist()


def encode_voc_png(label: np.ndarray) -> bytes:
    """A palette PNG as VOC publishes its SegmentationClass files (the shards' own label PNG is
    pipeline.masks.encode_png, mode L)."""
    img = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    img.putpalette(_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def encode_sbd_mat(label: np.ndarray, num_classes: int = 20) -> bytes:
    """SBD's cls/<id>.mat: struct GTcls {Boundaries (cell of sparse), Segmentation, CategoriesPresent}."""
    edges = _edges(label)
    cells = np.empty((num_classes, 1), dtype=object)
    for k in range(num_classes):
        cells[k, 0] = scipy.sparse.csc_matrix(edges & (label == k + 1))
    present = np.array([c for c in np.unique(label) if c != 0], np.uint8).reshape(-1, 1)
    buf = io.BytesIO()
    gtcls = {"Boundaries": cells, "Segmentation": label.astype(np.uint8), "CategoriesPresent": present}
    scipy.io.savemat(buf, {"GTcls": gtcls}, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = MAT_HEADER.ljust(116, b" ")  # scipy stamps the creation time here
    return bytes(data)


def _balanced(rng: np.random.Generator, n: int, num_classes: int) -> list[int]:
    """`n` primary classes, each class equally often (up to one), in random order."""
    reps = -(-n // num_classes)
    seq = np.concatenate([rng.permutation(num_classes) for _ in range(reps)])[:n]
    return [int(c) for c in rng.permutation(seq)]


def _scaled(count: int, scale: float) -> int:
    return max(1, round(count * scale))


# ---- PASCAL (VOC2012 + SBD) -------------------------------------------------------------------


def _pascal_splits(rng: np.random.Generator, scale: float) -> tuple[dict[str, list[str]], list[str]]:
    """Image ids for VOC train/val and SBD train/val, with shared ids as in the real data."""
    counts = {k: _scaled(v, scale) for k, v in PASCAL_COUNTS.items()}
    shared = {k: _scaled(v, scale) for k, v in PASCAL_SHARED.items()}
    own = dict(counts)
    for (voc, sbd), n in shared.items():
        own[f"voc_{voc}"] -= n
        own[f"sbd_{sbd}"] -= n
    if min(own.values()) < 0:
        raise ValueError(f"toy: scale {scale} leaves too few images for the shared VOC/SBD ids")
    total = sum(own.values()) + sum(shared.values())
    years = rng.integers(2007, 2012, total)
    numbers = rng.choice(np.arange(1, 9000), total, replace=False)
    ids = [f"{y}_{n:06d}" for y, n in zip(years, numbers, strict=True)]
    order = iter(rng.permutation(ids).tolist())
    splits: dict[str, list[str]] = {k: [] for k in counts}
    for (voc, sbd), n in shared.items():
        for _ in range(n):
            i = next(order)
            splits[f"voc_{voc}"].append(i)
            splits[f"sbd_{sbd}"].append(i)
    for key, n in own.items():
        splits[key].extend(next(order) for _ in range(n))
    return {k: sorted(v) for k, v in splits.items()}, sorted(ids)


def generate_pascal(
    root: Path, seed: int = 0, scale: float = 1.0, sides: tuple[int, int] = SIZE_RANGE
) -> dict[str, int]:
    """Write VOCdevkit/VOC2012 and benchmark_RELEASE/dataset (+ train_noval.txt) under `root`."""
    rng = np.random.default_rng([seed, 0])
    splits, ids = _pascal_splits(rng, scale)
    looks = class_looks(len(VOC_CLASSES))
    primaries = _balanced(rng, len(ids), len(VOC_CLASSES))
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation"):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (sbd / "img", sbd / "cls"):
        folder.mkdir(parents=True, exist_ok=True)
    in_voc = set(splits["voc_train"]) | set(splits["voc_val"])
    in_sbd = set(splits["sbd_train"]) | set(splits["sbd_val"])
    for index, image_id in enumerate(ids):
        scene_rng = np.random.default_rng([seed, 0, index])
        img, instances = render_scene(scene_rng, looks, primaries[index], sides)
        label = semantic_label(instances, *img.shape[:2])
        jpeg = encode_jpeg(img)
        if image_id in in_voc:
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
            (voc / "SegmentationClass" / f"{image_id}.png").write_bytes(encode_voc_png(voc_label(label)))
        if image_id in in_sbd:
            (sbd / "img" / f"{image_id}.jpg").write_bytes(jpeg)
            (sbd / "cls" / f"{image_id}.mat").write_bytes(encode_sbd_mat(label))
    for split in ("train", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "".join(f"{i}\n" for i in splits[f"voc_{split}"])
        )
        (sbd / f"{split}.txt").write_text("".join(f"{i}\n" for i in splits[f"sbd_{split}"]))
    # As published: SBD train images that are not in VOC2012 val.
    noval = sorted(set(splits["sbd_train"]) - set(splits["voc_val"]))
    (sbd / SBD_TRAIN_NOVAL.name).write_text("".join(f"{i}\n" for i in noval))
    return {k: len(v) for k, v in splits.items()} | {"sbd_train_noval": len(noval)}


# ---- COCO 2014 --------------------------------------------------------------------------------


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's iscrowd encoding: run lengths in column-major order, starting with a zero run."""
    flat = mask.astype(np.uint8).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0, *runs]
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def generate_coco(
    root: Path, seed: int = 0, scale: float = 1.0, sides: tuple[int, int] = SIZE_RANGE
) -> dict[str, int]:
    """Write train2014/, val2014/ and annotations/instances_{train,val}2014.json under `root`."""
    rng = np.random.default_rng([seed, 1])
    looks = class_looks(len(COCO_CATEGORIES))
    counts = {k: _scaled(v, scale) for k, v in COCO_COUNTS.items()}
    image_ids = rng.choice(np.arange(1, 581_930), sum(counts.values()), replace=False)
    categories = [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    stats: dict[str, int] = {}
    start, ann_id = 0, 1
    for split, n in counts.items():
        folder = root / f"{split}2014"
        folder.mkdir(parents=True, exist_ok=True)
        primaries = _balanced(rng, n, len(looks))
        images, annotations = [], []
        for k, image_id in enumerate(sorted(int(i) for i in image_ids[start : start + n])):
            scene_rng = np.random.default_rng([seed, 1, image_id])
            img, instances = render_scene(scene_rng, looks, primaries[k], sides)
            if scene_rng.random() < 0.12:
                img, crowd = add_crowd(img, scene_rng, looks, int(scene_rng.integers(len(looks))))
                instances.append(crowd)
            h, w = img.shape[:2]
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            (folder / name).write_bytes(encode_jpeg(img))
            images.append(
                {
                    "license": 1,
                    "file_name": name,
                    "coco_url": f"http://images.cocodataset.org/{split}2014/{name}",
                    "height": h,
                    "width": w,
                    "date_captured": "2013-11-14 11:18:45",
                    "flickr_url": "",
                    "id": image_id,
                }
            )
            for inst in instances:
                if inst.crowd:
                    segmentation: dict | list = uncompressed_rle(inst.mask)
                    rle = mask_utils.frPyObjects(segmentation, h, w)
                else:
                    segmentation = inst.polygons
                    rle = mask_utils.merge(mask_utils.frPyObjects(inst.polygons, h, w))
                annotations.append(
                    {
                        "segmentation": segmentation,
                        "area": float(mask_utils.area(rle)),
                        "iscrowd": int(inst.crowd),
                        "image_id": image_id,
                        "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
                        "category_id": COCO_CATEGORIES[inst.cls][0],
                        "id": ann_id,
                    }
                )
                ann_id += 1
        start += n
        doc = {
            "info": {"description": "FSS toy data in the COCO 2014 format", "version": "1.0", "year": 2014},
            "images": images,
            "licenses": [{"url": "", "id": 1, "name": "toy"}],
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps(doc, separators=(",", ":"))
        )
        stats[split] = len(images)
        stats[f"{split}_annotations"] = len(annotations)
    return stats


# ---- publishing and packaging -----------------------------------------------------------------

GENERATORS = {"pascal": generate_pascal, "coco": generate_coco}
TOPS = {"pascal": ("VOCdevkit", "benchmark_RELEASE"), "coco": ("train2014", "val2014", "annotations")}


def generate(
    root: str | Path,
    dataset: str,
    seed: int = 0,
    scale: float = 1.0,
    sides: tuple[int, int] = SIZE_RANGE,
) -> dict[str, int]:
    """Generate `dataset` into a temp folder and publish its top-level folders into `root` atomically.

    `sides` is the range of image sides in pixels; benchmarks pass VOC-like sides (333-500) so that
    decoding costs what it costs on the real data.
    """
    if dataset not in GENERATORS:
        raise ValueError(f"toy: unknown dataset {dataset!r} (known: {', '.join(GENERATORS)})")
    if scale <= 0:
        raise ValueError(f"toy: scale must be > 0, got {scale}")
    if not 32 <= sides[0] <= sides[1]:
        raise ValueError(f"toy: image sides must satisfy 32 <= low <= high, got {sides}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(root, f"toy-{dataset}")
    owner = f"toy-{dataset}"  # the marker that lets a later run replace these folders (and no others)
    try:
        stats = GENERATORS[dataset](tmp, seed, scale, sides)
        publish_tree(tmp, root, TOPS[dataset], owner)
        record_created(root, owner, f"seed={seed},scale={scale}", TOPS[dataset], TOPS[dataset])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _files(root: Path, top: str, exclude: frozenset[str] = frozenset()) -> list[Path]:
    return sorted(p for p in (root / top).rglob("*") if p.relative_to(root).as_posix() not in exclude)


def _write_tar(path: Path, root: Path, tops: Sequence[str], gz: bool, exclude: frozenset[str]) -> None:
    """Deterministic tar: sorted members, mtime 0, owner 0/'' (gzip header without name or time)."""
    with open(path, "wb") as raw:
        stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for top in tops:
                for p in [root / top, *_files(root, top, exclude)]:
                    info = tarfile.TarInfo(p.relative_to(root).as_posix())
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    if p.is_dir():
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    else:
                        info.size, info.mode = p.stat().st_size, 0o644
                        with open(p, "rb") as handle:
                            tar.addfile(info, handle)
        if gz:
            stream.close()


def _write_zip(path: Path, root: Path, tops: Sequence[str]) -> None:
    """Deterministic zip: sorted entries with a fixed date; JPEGs stored, the rest deflated."""
    with zipfile.ZipFile(path, "w") as zf:
        for top in tops:
            for p in [root / top, *_files(root, top)]:
                name = p.relative_to(root).as_posix() + ("/" if p.is_dir() else "")
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = ((0o40755 if p.is_dir() else 0o100644) << 16) | (
                    0x10 if p.is_dir() else 0
                )
                if p.is_dir():
                    zf.writestr(info, b"")
                else:
                    info.compress_type = zipfile.ZIP_STORED if p.suffix == ".jpg" else zipfile.ZIP_DEFLATED
                    zf.writestr(info, p.read_bytes())


def package(root: str | Path, archives: str | Path, dataset: str) -> dict[str, dict]:
    """Pack a generated toy `dataset` under `root` into archives with the official names.

    Returns {archive name: {"sha256", "size"}}, the digests that the download stage pins.
    """
    root, archives = Path(root), Path(archives)
    archives.mkdir(parents=True, exist_ok=True)
    noval = f"benchmark_RELEASE/dataset/{SBD_TRAIN_NOVAL.name}"
    if dataset == "pascal":
        _write_tar(archives / VOC2012.name, root, ["VOCdevkit"], gz=False, exclude=frozenset())
        _write_tar(archives / SBD.name, root, ["benchmark_RELEASE"], gz=True, exclude=frozenset({noval}))
        shutil.copyfile(root / noval, archives / SBD_TRAIN_NOVAL.name)
        names = [VOC2012.name, SBD.name, SBD_TRAIN_NOVAL.name]
    elif dataset == "coco":
        _write_zip(archives / COCO_TRAIN2014.name, root, ["train2014"])
        _write_zip(archives / COCO_VAL2014.name, root, ["val2014"])
        _write_zip(archives / COCO_ANN2014.name, root, ["annotations"])
        names = [COCO_TRAIN2014.name, COCO_VAL2014.name, COCO_ANN2014.name]
    else:
        raise ValueError(f"toy: unknown dataset {dataset!r} (known: {', '.join(GENERATORS)})")
    return {n: {"sha256": sha256_file(archives / n), "size": (archives / n).stat().st_size} for n in names}


def checksums_path(mirror: str | Path, dataset: str) -> Path:
    """Where the digests of a toy mirror's archives are recorded, beside them."""
    return Path(mirror) / f"{dataset}-checksums.json"


def build_mirror(mirror: str | Path, dataset: str, seed: int, scale: float) -> dict:
    """Generate and package `dataset` into the folder `mirror`, with <dataset>-checksums.json beside them.

    Skipped when that record matches (dataset, seed, scale, this generator's source digest) and every
    archive is there with its recorded size.
    """
    mirror = Path(mirror)
    record_path = checksums_path(mirror, dataset)
    want = {"dataset": dataset, "seed": seed, "scale": scale, "generator": sha256_file(__file__)}
    if record_path.exists():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = {}
        if all(record.get(k) == v for k, v in want.items()) and all(
            (mirror / n).is_file() and (mirror / n).stat().st_size == e["size"]
            for n, e in record.get("archives", {}).items()
        ):
            return record
    mirror.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(mirror)  # what a killed run left
    staging = temp_dir(mirror, f"toy-{dataset}")
    try:
        GENERATORS[dataset](staging, seed, scale)
        record = want | {"archives": package(staging, mirror, dataset)}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json(record_path, record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="write the extracted official layouts here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of images")
    parser.add_argument("--dataset", choices=["pascal", "coco", "all"], default="all")
    parser.add_argument(
        "--archives", type=Path, default=None, help="also pack archives with the official names here"
    )
    args = parser.parse_args(argv)
    for dataset in ["pascal", "coco"] if args.dataset == "all" else [args.dataset]:
        t0 = time.perf_counter()
        try:
            stats = generate(args.root, dataset, args.seed, args.scale)
            if args.archives:
                record = {"dataset": dataset, "seed": args.seed, "scale": args.scale}
                record["archives"] = package(args.root, args.archives, dataset)
                write_json(checksums_path(args.archives, dataset), record)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{dataset}: {stats} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
