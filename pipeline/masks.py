"""Raw VOC / SBD / COCO readers: which images form each split, and one validated label map per image.

Protocol facts (docs/protocol.md, "Class ids, folds and sources" and "Data"):
- class ids: VOC 1..20, COCO's 80 category ids renumbered 1..80 in sorted order, 0 background,
  255 void/ignore;
- PASCAL masks: `pascal_masks="voc"` (standard) takes VOC2012's PNG where one exists, else SBD's
  `cls/<id>.mat` (struct `GTcls`, field `Segmentation`); `"list"` (denet) takes each image from the
  split's own lists, VOC's first, as the DENet release does (dataset/voc_sbd.py:101-102, 129-148): an
  SBD-val image with a VOC2012 *train* PNG is a test image read from SBD's `.mat` and `img/`;
- image sets per preset: `denet` trains on VOC2012 train + SBD train_noval and tests on VOC2012
  val + SBD val; `standard` trains on VOC train + SBD (train + val) - VOC val ("aug") and tests on
  VOC2012 val;
- COCO: non-crowd instances are painted in annotation order (later over earlier, as DENet does);
  `coco_crowd="ignore"` (standard) then makes every crowd region 255, over any instance, because a
  crowd box holds unlabelled objects of its class that must count neither as foreground nor as
  background; `"background"` (denet) leaves crowd regions unpainted, as the release does
  (dataset/coco.py:386-389, `iscrowd=False`).
Each label map also gets its class areas at `presence_size` (nearest resize to a square, the size the
DENet release checks presence at: dataset/voc_sbd.py:353-359 reads masks through its SquareScale).
"""

from __future__ import annotations

import io
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import NUM_CLASSES
from pipeline.protocol import protocol_rules
from pipeline.shard_format import IGNORE_INDEX, image_size_problem

SPLITS = ("train", "test")
VOC_DIR = Path("VOCdevkit/VOC2012")
SBD_DIR = Path("benchmark_RELEASE/dataset")
COCO_IMAGE_DIRS = {"train": "train2014", "test": "val2014"}
COCO_ANNOTATIONS = {
    "train": "annotations/instances_train2014.json",
    "test": "annotations/instances_val2014.json",
}

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A bad raw file: the message names the file and the problem."""


@dataclass(frozen=True)
class Sample:
    """Where one image and its annotation live; small and picklable, sent to pool workers."""

    key: str  # image id, used as the WebDataset key
    split: str
    image: str  # JPEG path
    mask: str  # PNG / .mat path, or the COCO annotation json (named in errors)
    kind: str  # "png" | "mat" | "coco"
    height: int = 0  # COCO: the size the annotation file declares
    width: int = 0
    anns: tuple[tuple[int, int, Any], ...] = field(default=())  # COCO: (class id, iscrowd, segmentation)


@dataclass
class Labeled:
    """One processed image: the bytes that go into the shard and the stats that go into the index."""

    key: str
    split: str
    jpeg: bytes
    png: bytes
    height: int
    width: int
    areas: dict[int, int]  # class id -> pixels, every class with area > 0
    bboxes: dict[int, tuple[int, int, int, int]]  # class id -> (x0, y0, x1, y1), x1/y1 exclusive
    ignore_px: int
    presence_areas: dict[int, int]  # class id -> pixels of the map at the presence size (0: resized away)
    presence_total: int  # pixels of the map at the presence size

    def meta(self) -> dict[str, Any]:
        """The sample's `.json` member (docs/design.md)."""
        return {
            "id": self.key,
            "split": self.split,
            "height": self.height,
            "width": self.width,
            "classes": {str(c): a for c, a in sorted(self.areas.items())},
            "ignore_px": self.ignore_px,
        }


# ---------------------------------------------------------------- image sets


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: image-set list is missing")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def pascal_image_sets(raw: str | Path, protocol: str) -> dict[str, list[str]]:
    """Train and test image ids of PASCAL-5i under `protocol` (docs/protocol.md, "Data").

    SBD's `train_noval.txt` (SBD train minus VOC2012 val, 5,623 ids) is a separate download; when it
    is absent it is computed here as SBD train minus VOC2012 val, which is how it was made.
    """
    raw = Path(raw)
    voc_train = _read_ids(raw / VOC_DIR / "ImageSets/Segmentation/train.txt")
    voc_val = _read_ids(raw / VOC_DIR / "ImageSets/Segmentation/val.txt")
    sbd_train = _read_ids(raw / SBD_DIR / "train.txt")
    sbd_val = _read_ids(raw / SBD_DIR / "val.txt")
    noval_file = raw / SBD_DIR / "train_noval.txt"
    if noval_file.is_file():
        sbd_noval = _read_ids(noval_file)
    else:
        log.info("%s is absent: computing it as SBD train minus VOC2012 val", noval_file)
        sbd_noval = sorted(set(sbd_train) - set(voc_val))
    lists = {"voc_train": voc_train, "voc_val": voc_val, "sbd_train": sbd_train, "sbd_val": sbd_val,
             "sbd_train_noval": sbd_noval}  # fmt: skip
    rules = protocol_rules(protocol)

    def union(names: tuple[str, ...]) -> set[str]:
        return set().union(*(lists[n] for n in names))

    train = union(rules.pascal_train) - union(rules.pascal_train_minus)
    return {"train": sorted(train), "test": sorted(union(rules.pascal_test))}


def pascal_samples(raw: str | Path, protocol: str, pascal_masks: str = "voc") -> dict[str, list[Sample]]:
    """Samples per split; the mask source follows `pascal_masks` (module docstring): "voc" = VOC's PNG
    where one exists, else SBD's `.mat`; "list" = VOC's PNG and JPEG for ids on the split's VOC list,
    SBD's `.mat` and `img/` JPEG for the others."""
    raw = Path(raw)
    if pascal_masks not in ("voc", "list"):
        raise ValueError(f"pascal_masks {pascal_masks!r} is not voc | list")
    voc_lists = {
        "train": set(_read_ids(raw / VOC_DIR / "ImageSets/Segmentation/train.txt")),
        "test": set(_read_ids(raw / VOC_DIR / "ImageSets/Segmentation/val.txt")),
    }
    out: dict[str, list[Sample]] = {}
    for split, ids in pascal_image_sets(raw, protocol).items():
        samples = []
        for key in ids:
            png = raw / VOC_DIR / "SegmentationClass" / f"{key}.png"
            voc_jpg = raw / VOC_DIR / "JPEGImages" / f"{key}.jpg"
            sbd_jpg = raw / SBD_DIR / "img" / f"{key}.jpg"
            if pascal_masks == "list":  # JPEG and mask from the dataset whose list names the image
                from_voc = key in voc_lists[split]
                jpg = voc_jpg if from_voc else sbd_jpg
            else:
                from_voc = png.is_file()
                jpg = voc_jpg if voc_jpg.is_file() else sbd_jpg
            if from_voc:
                samples.append(Sample(key, split, str(jpg), str(png), "png"))
            else:
                mat = raw / SBD_DIR / "cls" / f"{key}.mat"
                samples.append(Sample(key, split, str(jpg), str(mat), "mat"))
        out[split] = samples
    return out


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{path}: not a COCO instances file (no '{key}' list)")
    return data


def coco_category_map(categories: list[dict[str, Any]]) -> dict[int, int]:
    """COCO category id -> dataset class id 1..80, in sorted category-id order (docs/protocol.md)."""
    ids = sorted(int(c["id"]) for c in categories)
    return {cat: i + 1 for i, cat in enumerate(ids)}


def coco_samples(
    raw: str | Path, skip_bad: bool = False, bad: list[dict[str, str]] | None = None
) -> dict[str, list[Sample]]:
    """Samples per split: COCO train2014 -> train, val2014 -> test, one per image in the json.

    An annotation pointing at a missing image id or an unknown category is an error (or, with
    `skip_bad`, recorded in `bad` and dropped).
    """
    raw = Path(raw)
    out: dict[str, list[Sample]] = {}
    for split in SPLITS:
        ann_path = raw / COCO_ANNOTATIONS[split]
        data = _load_json(ann_path)
        cat_map = coco_category_map(data["categories"])
        if len(cat_map) != NUM_CLASSES["coco"]:
            raise DataError(f"{ann_path}: {len(cat_map)} categories, expected {NUM_CLASSES['coco']}")
        images = {int(im["id"]): im for im in data["images"]}
        per_image: dict[int, list[tuple[int, int, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            problem = None
            if int(ann.get("image_id", -1)) not in images:
                problem = f"annotation {ann.get('id')} points at missing image id {ann.get('image_id')}"
            elif int(ann.get("category_id", -1)) not in cat_map:
                problem = f"annotation {ann.get('id')} has unknown category {ann.get('category_id')}"
            elif "segmentation" not in ann:
                problem = f"annotation {ann.get('id')} has no segmentation"
            if problem:
                if not skip_bad:
                    raise DataError(f"{ann_path}: {problem}")
                if bad is not None:
                    bad.append({"split": split, "file": str(ann_path), "problem": problem})
                continue
            per_image[int(ann["image_id"])].append(
                (cat_map[int(ann["category_id"])], int(ann.get("iscrowd", 0)), ann["segmentation"])
            )
        samples = []
        for image_id, im in images.items():
            name = str(im["file_name"])
            samples.append(
                Sample(
                    key=Path(name).stem,
                    split=split,
                    image=str(raw / COCO_IMAGE_DIRS[split] / name),
                    mask=str(ann_path),
                    kind="coco",
                    height=int(im["height"]),
                    width=int(im["width"]),
                    anns=tuple(per_image.get(image_id, ())),
                )
            )
        del data, images, per_image
        out[split] = sorted(samples, key=lambda s: s.key)
    return out


# ---------------------------------------------------------------- label maps


def read_jpeg(path: str | Path) -> tuple[bytes, int, int]:
    """The file's bytes (kept as they are) and its (height, width), after a full decode check."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise DataError(f"{path}: not a JPEG (PIL reads {im.format})")
            width, height = im.size
            _check_size(path, width, height)  # from the header: a decompression bomb is never decoded
            # a reduced-size decode still reads every entropy-coded byte, so truncation shows
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode ({exc})") from None
    except Exception as exc:
        raise DataError(f"{path}: corrupt image ({exc})") from None
    return data, height, width


def _check_size(path: str | Path, width: int, height: int) -> None:
    problem = image_size_problem(width, height)
    if problem:
        raise DataError(f"{path}: {problem}")


def voc_label(path: str | Path) -> np.ndarray:
    """VOC2012 SegmentationClass PNG: palette indices are the class ids (255 = void band)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(f"{path}: mask mode {im.mode}, expected a palette (P) or L PNG")
            _check_size(path, *im.size)
            return np.array(im, dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: mask too large to decode ({exc})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: mask file is missing") from None
    except Exception as exc:
        raise DataError(f"{path}: corrupt mask ({exc})") from None


def sbd_label(path: str | Path) -> np.ndarray:
    """SBD `cls/<id>.mat`: `GTcls.Segmentation` is the HxW class map (no void band)."""
    from scipy.io import loadmat

    if not Path(path).is_file():
        raise DataError(f"{path}: mask file is missing")
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except Exception as exc:
        raise DataError(f"{path}: broken .mat file ({type(exc).__name__}: {exc})") from None
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise DataError(f"{path}: GTcls.Segmentation is {seg.dtype} {seg.shape}, expected an integer HxW map")
    _check_size(path, seg.shape[1], seg.shape[0])
    if seg.min() < 0 or seg.max() > 255:
        raise DataError(f"{path}: GTcls.Segmentation holds values outside 0..255")
    return seg.astype(np.uint8)


def coco_label(
    anns: tuple[tuple[int, int, Any], ...], height: int, width: int, crowd: str = "ignore"
) -> np.ndarray:
    """Paint non-crowd instances in annotation order (later over earlier), then crowd regions as 255
    (`crowd="ignore"`) or not at all (`crowd="background"`, the DENet release)."""
    from pycocotools import mask as mask_utils

    if crowd not in ("ignore", "background"):
        raise ValueError(f"coco crowd rule {crowd!r} is not ignore | background")
    label = np.zeros((height, width), dtype=np.uint8)
    for crowd_pass in (0, 1) if crowd == "ignore" else (0,):
        for cid, iscrowd, seg in anns:
            if bool(iscrowd) != bool(crowd_pass):
                continue
            if isinstance(seg, list):  # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width)) if seg else None
            elif isinstance(seg.get("counts"), list):  # uncompressed RLE (crowd)
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            if rle is None:
                continue
            m = mask_utils.decode(rle)
            if m.shape != (height, width):
                raise ValueError(f"segmentation of size {m.shape} for an image of {(height, width)}")
            label[m > 0] = IGNORE_INDEX if crowd_pass else cid
    return label


def validate_label(label: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Values must be 0, 1..num_classes or 255; anything else means a wrong or foreign mask."""
    values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    bad = [int(v) for v in values if v > num_classes and v != IGNORE_INDEX]
    if bad:
        raise DataError(f"{path}: mask values {bad[:5]} are not classes (allowed 0..{num_classes}, 255)")


def label_stats(label: np.ndarray) -> tuple[dict[int, int], dict[int, tuple[int, int, int, int]], int]:
    """Per-class area and bounding box (x0, y0, x1, y1; x1/y1 exclusive) and the ignore-pixel count."""
    counts = np.bincount(label.ravel(), minlength=256)
    areas, bboxes = {}, {}
    for cid in np.flatnonzero(counts[1:IGNORE_INDEX]) + 1:
        m = label == cid
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        areas[int(cid)] = int(counts[cid])
        bboxes[int(cid)] = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return areas, bboxes, int(counts[IGNORE_INDEX])


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC colour map: class id bits spread over the high bits of R, G and B."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def encode_png(label: np.ndarray) -> bytes:
    """A shard's label PNG: mode "L" with fixed settings, so the bytes depend on the label only
    (the toy data's VOC-style palette PNG is pipeline.toy.encode_voc_png)."""
    buf = io.BytesIO()
    Image.fromarray(label, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def presence_stats(label: np.ndarray, size: int | None) -> tuple[dict[int, int], int]:
    """Per-class pixels of `label` resized (PIL nearest) to size x size, and that map's pixel count;
    at the original size when `size` is None. Nearest resizing picks source pixels, so these counts
    do not depend on any later per-value relabelling (void or novel -> 0 / 255)."""
    if size is not None and label.shape != (size, size):
        label = np.asarray(Image.fromarray(label, mode="L").resize((size, size), Image.NEAREST))
    counts = np.bincount(label.ravel(), minlength=256)
    return {int(c): int(counts[c]) for c in np.flatnonzero(counts[1:IGNORE_INDEX]) + 1}, int(label.size)


def make_label(sample: Sample, num_classes: int, coco_crowd: str = "ignore") -> np.ndarray:
    """The label map of `sample`, from the source its kind names."""
    if sample.kind == "png":
        return voc_label(sample.mask)
    if sample.kind == "mat":
        return sbd_label(sample.mask)
    if sample.kind == "coco":
        _check_size(f"{sample.mask} (image {sample.key})", sample.width, sample.height)  # before painting
        try:
            return coco_label(sample.anns, sample.height, sample.width, coco_crowd)
        except Exception as exc:
            raise DataError(f"{sample.mask}: bad segmentation for image {sample.key} ({exc})") from None
    raise ValueError(f"unknown sample kind {sample.kind!r}")


def process(
    sample: Sample, num_classes: int, presence_size: int | None = None, coco_crowd: str = "ignore"
) -> Labeled:
    """Read, check and label one image; raises DataError naming the file on any problem."""
    jpeg, height, width = read_jpeg(sample.image)
    label = make_label(sample, num_classes, coco_crowd)
    if label.shape != (height, width):
        raise DataError(
            f"{sample.mask}: mask size {label.shape[1]}x{label.shape[0]} differs from image "
            f"{sample.image} size {width}x{height}"
        )
    validate_label(label, num_classes, sample.mask)
    areas, bboxes, ignore_px = label_stats(label)
    presence, total = presence_stats(label, presence_size)
    presence = {c: presence.get(c, 0) for c in areas}
    return Labeled(
        sample.key,
        sample.split,
        jpeg,
        encode_png(label),
        height,
        width,
        areas,
        bboxes,
        ignore_px,
        presence,
        total,
    )


def process_or_error(args: tuple[Sample, int, int | None, str]) -> Labeled | tuple[Sample, str]:
    """Pool entry point: the result, or (sample, message) so the parent decides to stop or skip."""
    sample, num_classes, presence_size, coco_crowd = args
    try:
        return process(sample, num_classes, presence_size, coco_crowd)
    except DataError as exc:
        return sample, str(exc)
