"""Toy data read back with independent readers (PIL, scipy.io.loadmat, pycocotools) in official formats."""

from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.ndimage as ndi
import scipy.sparse
from PIL import Image
from pycocotools.coco import COCO

from pipeline import toy
from pipeline.io import sha256_file
from pipeline.masks import voc_palette

# pycocotools 2.0.x under numpy 2 warns on every decode; the readers are still exact.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

VOC = "VOCdevkit/VOC2012"
SBD = "benchmark_RELEASE/dataset"


@pytest.fixture(scope="module")
def pascal(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pascal")
    toy.generate(root, "pascal", seed=3, scale=0.2)
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    toy.generate(root, "coco", seed=3, scale=0.15)
    return root


def ids(path: Path) -> list[str]:
    return path.read_text().split()


def tree_digest(root: Path) -> dict[str, str]:
    """Digests of the generated files (not the `.extracted/` marker, which records their mtimes)."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and ".extracted" not in p.parts)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def test_voc_layout_and_png_format(pascal: Path) -> None:
    voc = pascal / VOC
    train, val = ids(voc / "ImageSets/Segmentation/train.txt"), ids(voc / "ImageSets/Segmentation/val.txt")
    assert len(train) == 60 and len(val) == 30 and not set(train) & set(val)
    assert sorted(p.stem for p in (voc / "JPEGImages").iterdir()) == sorted(train + val)
    palette = voc_palette().flatten().tolist()
    assert palette[3:9] == [128, 0, 0, 0, 128, 0]  # aeroplane, bicycle as in VOC
    sizes, values = set(), set()
    for image_id in train + val:
        assert len(image_id) == 11 and image_id[4] == "_"
        img = Image.open(voc / "JPEGImages" / f"{image_id}.jpg")
        png = Image.open(voc / "SegmentationClass" / f"{image_id}.png")
        assert img.format == "JPEG" and img.mode == "RGB"
        assert png.format == "PNG" and png.mode == "P" and png.size == img.size
        assert png.getpalette()[: 3 * 21] == palette[: 3 * 21]
        label = np.asarray(png)
        values |= set(np.unique(label).tolist())
        assert (label == 255).any()  # void band on object borders
        # The void band separates every object from the background: no fg pixel touches bg directly.
        fg, bg = (label > 0) & (label < 255), label == 0
        assert not (fg[:, 1:] & bg[:, :-1]).any() and not (fg[1:, :] & bg[:-1, :]).any()
        sizes.add(img.size)
    assert values <= set(range(21)) | {255} and len(values) > 15
    assert len(sizes) > 20  # sizes vary per image
    assert all(toy.SIZE_RANGE[0] <= s <= toy.SIZE_RANGE[1] for size in sizes for s in size)


def test_sbd_mat_reads_like_the_real_one(pascal: Path) -> None:
    sbd = pascal / SBD
    train, val = ids(sbd / "train.txt"), ids(sbd / "val.txt")
    assert len(train) == 100 and len(val) == 40
    for image_id in train[:15] + val[:5]:
        mat = scipy.io.loadmat(sbd / "cls" / f"{image_id}.mat", struct_as_record=False, squeeze_me=True)
        gt = mat["GTcls"]
        assert set(gt._fieldnames) == {"Segmentation", "Boundaries", "CategoriesPresent"}
        seg = gt.Segmentation
        img = Image.open(sbd / "img" / f"{image_id}.jpg")
        assert seg.dtype == np.uint8 and seg.shape == (img.size[1], img.size[0])
        assert seg.max() <= 20 and not (seg == 255).any()  # SBD has no void band
        present = np.atleast_1d(gt.CategoriesPresent).tolist()
        assert present == [c for c in np.unique(seg).tolist() if c != 0]
        assert len(gt.Boundaries) == 20
        for k, boundary in enumerate(gt.Boundaries):
            assert scipy.sparse.issparse(boundary) and boundary.shape == seg.shape
            assert (boundary.nnz > 0) == ((k + 1) in present)


def test_voc_and_sbd_share_ids_as_the_real_data(pascal: Path) -> None:
    voc, sbd = pascal / VOC, pascal / SBD
    voc_train, voc_val = (
        ids(voc / "ImageSets/Segmentation/train.txt"),
        ids(voc / "ImageSets/Segmentation/val.txt"),
    )
    sbd_train, sbd_val = ids(sbd / "train.txt"), ids(sbd / "val.txt")
    shared = (set(voc_train) | set(voc_val)) & (set(sbd_train) | set(sbd_val))
    assert len(shared) == 23
    assert set(voc_val) & set(sbd_train)  # some SBD train images are VOC val: train_noval drops them
    assert set(voc_train) & set(sbd_val)  # some SBD val images have a VOC train PNG (DENet reads the .mat)
    noval = ids(sbd / "train_noval.txt")
    assert noval == sorted(set(sbd_train) - set(voc_val))
    for image_id in sorted(shared)[:5]:
        same_img = (voc / "JPEGImages" / f"{image_id}.jpg").read_bytes() == (
            sbd / "img" / f"{image_id}.jpg"
        ).read_bytes()
        assert same_img
        png = np.asarray(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
        seg = scipy.io.loadmat(sbd / "cls" / f"{image_id}.mat", squeeze_me=True, struct_as_record=False)[
            "GTcls"
        ]
        keep = png != 255
        assert (png[keep] == seg.Segmentation[keep]).all()  # one scene, two annotation formats


def test_every_class_is_present_in_train_and_test(pascal: Path) -> None:
    counts = {"train": Counter(), "test": Counter()}
    voc, sbd = pascal / VOC, pascal / SBD
    test_ids = set(ids(voc / "ImageSets/Segmentation/val.txt")) | set(ids(sbd / "val.txt"))
    # every image once: SBD's .mat (no void band), or VOC's PNG for VOC-only images
    paths = {p.stem: p for p in (voc / "SegmentationClass").iterdir()}
    paths.update({p.stem: p for p in (sbd / "cls").iterdir()})
    for stem, path in sorted(paths.items()):
        if path.suffix == ".mat":
            seg = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
        else:
            seg = np.asarray(Image.open(path))
        area = np.bincount(seg.ravel(), minlength=256)[1:21] / seg.size
        split = "test" if stem in test_ids else "train"
        counts[split].update(int(c) + 1 for c in np.flatnonzero(area >= 0.02))  # DENet's presence rule
    assert all(counts["train"][c] >= 3 for c in range(1, 21)), counts["train"]
    assert all(counts["test"][c] >= 1 for c in range(1, 21)), counts["test"]


def test_voc_val_images_pass_the_standard_rule_for_their_balanced_primary_class(pascal: Path) -> None:
    """The standard protocol's test set is VOC val with its PNGs: each image shows some class with
    >= 2048 non-void pixels at the original size (its primary object), and those classes are balanced."""
    primaries = Counter()
    for stem in ids(pascal / VOC / "ImageSets/Segmentation/val.txt"):
        seg = np.asarray(Image.open(pascal / VOC / "SegmentationClass" / f"{stem}.png"))
        pixels = np.bincount(seg.ravel(), minlength=256)[1:21]
        assert pixels.max() >= 2048, (stem, pixels.max())
        primaries[int(pixels.argmax()) + 1] += 1
    per_class = [primaries[c] for c in range(1, 21)]
    assert sum(per_class) == 30 and max(per_class) - min(per_class) <= 3, per_class  # scale 0.2: 30 images


def test_the_primary_object_is_never_too_small_whatever_its_shape() -> None:
    """Every shape family, on the smallest image: the primary keeps PRIMARY_MIN_PX inside the border."""
    looks = toy.class_looks(20)
    for cls in range(len(looks)):
        for k in range(3):
            img, instances = toy.render_scene(np.random.default_rng([cls, k]), looks, cls, sides=(140, 140))
            label = toy.voc_label(toy.semantic_label(instances, *img.shape[:2]))
            assert instances[-1].cls == cls  # painted last: nothing occludes it
            assert (label == cls + 1).sum() >= 2048, (toy.SHAPES[cls % len(toy.SHAPES)], k)


def test_class_looks_are_distinct() -> None:
    for num in (20, 80):
        looks = toy.class_looks(num)
        keys = {(lk.shape, lk.texture, lk.colour_a) for lk in looks}
        assert len(keys) == num
        assert {lk.texture for lk in looks} == set(toy.TEXTURES) and {lk.shape for lk in looks} == set(
            toy.SHAPES
        )


def test_coco_annotations_read_with_pycocotools(coco: Path) -> None:
    api = COCO(str(coco / "annotations/instances_train2014.json"))
    cats = api.loadCats(api.getCatIds())
    assert (
        len(cats) == 80
        and cats[0]["name"] == "person"
        and cats[-1]
        == {
            "supercategory": "indoor",
            "id": 90,
            "name": "toothbrush",
        }
    )
    assert {c["id"] for c in cats} == set(range(1, 91)) - {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    kinds, per_image, mixed_overlap = Counter(), Counter(), 0
    for img in api.loadImgs(api.getImgIds()):
        path = coco / "train2014" / img["file_name"]
        assert img["file_name"] == f"COCO_train2014_{img['id']:012d}.jpg"
        assert Image.open(path).size == (img["width"], img["height"])
        anns = api.loadAnns(api.getAnnIds(imgIds=img["id"]))
        per_image[len(anns)] += 1
        masks = []
        for ann in anns:
            m = api.annToMask(ann)
            assert m.shape == (img["height"], img["width"]) and m.sum() == pytest.approx(ann["area"], abs=1)
            kind = "rle" if isinstance(ann["segmentation"], dict) else "polygon"
            assert (kind == "rle") == (ann["iscrowd"] == 1)
            kinds[kind] += 1
            masks.append((ann["category_id"], m.astype(bool)))
        mixed_overlap += any(
            ca != cb and (ma & mb).any() for i, (ca, ma) in enumerate(masks) for cb, mb in masks[i + 1 :]
        )
    assert kinds["polygon"] > 100 and kinds["rle"] >= 3
    assert sum(n for k, n in per_image.items() if k >= 2) > 20  # several instances per image
    assert mixed_overlap > 5  # overlapping objects of different classes


def test_coco_classes_cover_both_splits(coco: Path) -> None:
    for split in ("train", "val"):
        doc = json.loads((coco / f"annotations/instances_{split}2014.json").read_text())
        present = Counter(a["category_id"] for a in doc["annotations"])
        # Each image's first object cycles through the classes: all 80 once there are 80 images.
        assert len(present) >= min(80, len(doc["images"]))
        assert len(list((coco / f"{split}2014").iterdir())) == len(doc["images"])
    train = {
        i["id"] for i in json.loads((coco / "annotations/instances_train2014.json").read_text())["images"]
    }
    val = {i["id"] for i in json.loads((coco / "annotations/instances_val2014.json").read_text())["images"]}
    assert not train & val


def test_same_seed_same_bytes_and_archives(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        toy.generate(tmp_path / name, "pascal", seed=7 if name != "c" else 8, scale=0.06)
    a, b, c = (tree_digest(tmp_path / n) for n in "abc")
    assert a == b and a != c
    sums = [toy.package(tmp_path / n, tmp_path / f"arch-{n}", "pascal") for n in "ab"]
    assert sums[0] == sums[1]
    with tarfile.open(tmp_path / "arch-a" / "benchmark.tgz") as tar:
        members = tar.getmembers()
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    assert members[0].name == "benchmark_RELEASE"
    assert "benchmark_RELEASE/dataset/train_noval.txt" not in {m.name for m in members}  # published apart
    assert (tmp_path / "arch-a" / "train_noval.txt").read_bytes() == (
        tmp_path / "a" / SBD / "train_noval.txt"
    ).read_bytes()
    with tarfile.open(tmp_path / "arch-a" / "VOCtrainval_11-May-2012.tar") as tar:
        assert tar.getnames()[0] == "VOCdevkit"


def test_sides_set_the_image_size_range(tmp_path: Path) -> None:
    """Benchmarks ask for VOC-sized images; COCO images and their annotations follow the same range."""
    toy.generate(tmp_path / "p", "pascal", scale=0.03, sides=(333, 500))
    sizes = [Image.open(f).size for f in (tmp_path / "p" / VOC / "JPEGImages").glob("*.jpg")]
    assert sizes and all(333 <= s <= 500 for size in sizes for s in size)
    assert max(max(size) for size in sizes) > toy.SIZE_RANGE[1]
    toy.generate(tmp_path / "c", "coco", scale=0.01, sides=(300, 320))
    images = json.loads((tmp_path / "c" / "annotations/instances_val2014.json").read_text())["images"]
    assert images and all(300 <= i["height"] <= 320 and 300 <= i["width"] <= 320 for i in images)
    with pytest.raises(ValueError, match="image sides"):
        toy.generate(tmp_path / "bad", "pascal", scale=0.03, sides=(500, 333))


def test_coco_zips_are_deterministic(tmp_path: Path, coco: Path) -> None:
    first = toy.package(coco, tmp_path / "x", "coco")
    second = toy.package(coco, tmp_path / "y", "coco")
    assert first == second and set(first) == {"train2014.zip", "val2014.zip", "annotations_trainval2014.zip"}
    with zipfile.ZipFile(tmp_path / "x" / "annotations_trainval2014.zip") as zf:
        assert zf.namelist() == [
            "annotations/",
            "annotations/instances_train2014.json",
            "annotations/instances_val2014.json",
        ]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert (
        hashlib.sha256((tmp_path / "x" / "val2014.zip").read_bytes()).hexdigest()
        == first["val2014.zip"]["sha256"]
    )


def test_cli_writes_layout_and_archives(tmp_path: Path, capsys) -> None:
    argv = ["--root", str(tmp_path / "r"), "--seed", "1", "--scale", "0.05", "--dataset", "pascal"]
    assert toy.main([*argv, "--archives", str(tmp_path / "a")]) == 0
    assert (tmp_path / "r" / VOC / "ImageSets/Segmentation/train.txt").is_file()
    record = json.loads(toy.checksums_path(tmp_path / "a", "pascal").read_text())
    assert set(record["archives"]) == {"VOCtrainval_11-May-2012.tar", "benchmark.tgz", "train_noval.txt"}
    assert toy.main(["--root", str(tmp_path / "r"), "--scale", "0"]) == 1
    assert "scale must be > 0" in capsys.readouterr().err


def _texture_features(img: np.ndarray) -> np.ndarray:
    """Hand-made per-pixel features (smoothed colour, oriented edge energy): no learning at all."""
    x = img.astype(np.float32) / 255
    gray = x.mean(2)
    feats = [ndi.gaussian_filter(x[..., k], 3) for k in range(3)]
    for theta in np.linspace(0, np.pi, 4, endpoint=False):
        edge = np.cos(theta) * ndi.sobel(gray, 1) + np.sin(theta) * ndi.sobel(gray, 0)
        feats.append(ndi.gaussian_filter(np.abs(ndi.gaussian_filter(edge, 1.5)), 4))
    return np.stack(feats, -1)


def test_one_shot_is_learnable_and_trivial_predictors_score_low(pascal: Path) -> None:
    """A support-prototype predictor on fixed features beats all-fg and copy-support by a wide margin."""
    voc = pascal / VOC
    labels = {
        i: np.asarray(Image.open(voc / "SegmentationClass" / f"{i}.png"))
        for split in ("train", "val")  # the probe learns nothing, so every image can be a query
        for i in ids(voc / f"ImageSets/Segmentation/{split}.txt")
    }
    features = {i: _texture_features(np.asarray(Image.open(voc / "JPEGImages" / f"{i}.jpg"))) for i in labels}
    pools = {c: [i for i, lab in labels.items() if (lab == c).mean() >= 0.02] for c in range(1, 21)}
    inter, union = Counter(), Counter()
    for c, pool in pools.items():
        for q, s in zip(pool, pool[1:] + pool[:1], strict=True):
            if q == s:
                continue
            qf, sf = features[q], features[s]
            mu, sd = sf.reshape(-1, sf.shape[-1]).mean(0), sf.reshape(-1, sf.shape[-1]).std(0) + 1e-6
            qf, sf = (qf - mu) / sd, (sf - mu) / sd
            sl, ql = labels[s], labels[q]
            fg, bg = sf[sl == c].mean(0), sf[(sl != c) & (sl != 255)].mean(0)
            proto = ((qf - fg) ** 2).sum(-1) < ((qf - bg) ** 2).sum(-1)
            copy = np.asarray(Image.fromarray(sl == c).resize(ql.shape[::-1], Image.NEAREST))
            gt, valid = ql == c, ql != 255
            for name, pred in (("proto", proto), ("all_fg", np.ones_like(gt)), ("copy", copy)):
                inter[name, c] += int((pred & gt & valid).sum())
                union[name, c] += int(((pred | gt) & valid).sum())
    classes = [c for c in range(1, 21) if union["proto", c]]
    assert len(classes) >= 15
    miou = {
        n: 100 * np.mean([inter[n, c] / union[n, c] for c in classes]) for n in ("proto", "all_fg", "copy")
    }
    assert miou["all_fg"] < 20 and miou["copy"] < 20, miou
    assert miou["proto"] > 25 and miou["proto"] > 2 * max(miou["all_fg"], miou["copy"]), miou
