"""Tiny raw PASCAL (VOC2012 + SBD) and COCO 2014 trees in the official layouts, made by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

H, W = 40, 48
VOC = Path("VOCdevkit/VOC2012")
SBD = Path("benchmark_RELEASE/dataset")
VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
VOC_VAL = ["2007_000010", "2007_000011", "2007_000012", "2007_000013"]
SBD_ONLY_TRAIN = ["2008_000001", "2008_000002", "2008_000003", "2008_000004"]
SBD_ONLY_VAL = ["2008_000020", "2008_000021", "2008_000022"]
SBD_TRAIN = ["2007_000001", "2007_000010", *SBD_ONLY_TRAIN]  # 2007_000010 is VOC val: not in train_noval
SBD_VAL = ["2007_000002", *SBD_ONLY_VAL]  # 2007_000002 is VOC train
# COCO: 80 category ids out of 1..90, with gaps like the real file
COCO_CAT_IDS = [c for c in range(1, 91) if c not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


def pascal_layout(index: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(class, (y0, y1, x0, x1)) rectangles of image `index`: one large, one medium, one tiny (< 2%)."""
    a, b, c = index % 20 + 1, (index * 7 + 3) % 20 + 1, (index * 3 + 11) % 20 + 1
    return [(a, (2, 22, 2, 30)), (b, (24, 38, 20, 46)), (c, (5, 8, 40, 43))]


def make_label(layout: list[tuple[int, tuple[int, int, int, int]]]) -> np.ndarray:
    label = np.zeros((H, W), dtype=np.uint8)
    for cid, (y0, y1, x0, x1) in layout:
        label[y0:y1, x0:x1] = cid
    return label


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (W, H)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def write_voc_png(path: Path, label: np.ndarray) -> None:
    """Palette PNG with a 255 band around objects, like VOC's void border."""
    band = label.copy()
    edge = np.zeros_like(label, dtype=bool)
    edge[:-1] |= label[:-1] != label[1:]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    band[edge] = 255
    im = Image.fromarray(band, mode="P")
    im.putpalette([v for i in range(256) for v in (i, (i * 7) % 256, (i * 13) % 256)])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_sbd_mat(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.unique(label[(label > 0) & (label < 255)]).astype(np.uint8)
    savemat(path, {"GTcls": {"Segmentation": label, "CategoriesPresent": present}})


def make_pascal_raw(root: Path, with_noval: bool = False) -> Path:
    """VOC2012 + SBD with VOC/SBD overlaps, PNG for VOC ids and .mat for SBD-only ids."""
    all_ids = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    for i, key in enumerate(all_ids):
        label = make_label(pascal_layout(i))
        if key in VOC_TRAIN + VOC_VAL:
            write_jpeg(root / VOC / "JPEGImages" / f"{key}.jpg", i)
            write_voc_png(root / VOC / "SegmentationClass" / f"{key}.png", label)
        if key in SBD_TRAIN + SBD_VAL:
            write_jpeg(root / SBD / "img" / f"{key}.jpg", i)
            write_sbd_mat(root / SBD / "cls" / f"{key}.mat", label)
    sets = root / VOC / "ImageSets/Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (root / SBD / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (root / SBD / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    if with_noval:
        (root / SBD / "train_noval.txt").write_text("2008_000001\n2008_000002\n")
    return root


def coco_annotations(split: str, images: int) -> dict:
    """Polygons, compressed RLE, an uncompressed-RLE crowd and overlapping classes."""
    from pycocotools import mask as mask_utils

    prefix = {"train": "COCO_train2014_", "test": "COCO_val2014_"}[split]
    base_id = {"train": 100, "test": 500}[split]
    imgs, anns = [], []
    for i in range(images):
        image_id = base_id + i
        imgs.append({"id": image_id, "file_name": f"{prefix}{image_id:012d}.jpg", "height": H, "width": W})
        cat_a = COCO_CAT_IDS[(i * 5) % 80]
        cat_b = COCO_CAT_IDS[(i * 5 + 3) % 80]
        cat_c = COCO_CAT_IDS[(i * 11 + 1) % 80]
        poly = [[2.0, 2.0, 30.0, 2.0, 30.0, 25.0, 2.0, 25.0]]
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat_a,
                "iscrowd": 0,
                "segmentation": poly,
            }
        )
        m = np.zeros((H, W), dtype=np.uint8, order="F")
        m[15:35, 20:44] = 1  # overlaps the polygon: painted later, so it wins there
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat_b,
                "iscrowd": 0,
                "segmentation": rle,
            }
        )
        crowd = np.zeros((H, W), dtype=np.uint8)
        crowd[30:38, 2:14] = 1
        crowd[20:24, 24:30] = 1  # over the second instance: becomes 255
        counts, prev, run = [], 0, 0
        for v in crowd.ravel(order="F"):
            if v != prev:
                counts.append(run)
                run, prev = 0, v
            run += 1
        counts.append(run)
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat_c,
                "iscrowd": 1,
                "segmentation": {"counts": counts, "size": [H, W]},
            }
        )
    cats = [{"id": c, "name": f"cat{c}", "supercategory": "x"} for c in COCO_CAT_IDS]
    return {"images": imgs, "annotations": anns, "categories": cats}


def make_coco_raw(root: Path, train_images: int = 5, test_images: int = 4) -> Path:
    """train2014/, val2014/ and annotations/instances_{train,val}2014.json."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n, folder, name in (
        ("train", train_images, "train2014", "instances_train2014.json"),
        ("test", test_images, "val2014", "instances_val2014.json"),
    ):
        data = coco_annotations(split, n)
        for k, im in enumerate(data["images"]):
            write_jpeg(root / folder / im["file_name"], 1000 + k + (0 if split == "train" else 500))
        (root / "annotations" / name).write_text(json.dumps(data))
    return root


def write_params(tmp_path: Path, **data: object) -> Path:
    """A params.yaml for the toy source with `data.*` overrides; 2 samples per shard by default."""
    import yaml

    section = {"workers": 1, "shard_max_samples": 2, "min_shards": 1} | data
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": section}))
    return path
