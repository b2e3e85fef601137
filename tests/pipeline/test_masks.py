"""Label maps against independent reads (PIL, scipy.io.loadmat, pycocotools annToMask) and bad inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_fixtures import (
    SBD,
    SBD_ONLY_TRAIN,
    SBD_ONLY_VAL,
    VOC,
    VOC_TRAIN,
    VOC_VAL,
    H,
    make_label,
    write_params,
)
from scipy.io import loadmat, savemat

from pipeline.config import load_params
from pipeline.masks import (
    DataError,
    coco_category_map,
    coco_label,
    coco_samples,
    encode_png,
    label_counts,
    pascal_image_sets,
    pascal_samples,
    presence_stats,
    process,
)
from pipeline.shards import build_shards, read_shard_with_offsets


def shard_labels(split_dir: Path) -> dict[str, tuple[np.ndarray, bytes, dict]]:
    out = {}
    for tar in sorted(split_dir.glob("*.tar")):
        for key, _, members in read_shard_with_offsets(tar):
            label = np.array(Image.open(io.BytesIO(members["label.png"])))
            out[key] = (label, members["jpg"], json.loads(members["json"]))
    return out


def test_pascal_image_sets_follow_the_presets(pascal_raw):
    denet = pascal_image_sets(pascal_raw, "denet")
    standard = pascal_image_sets(pascal_raw, "standard")
    # train_noval absent: SBD train minus VOC val, so VOC val id 2007_000010 stays out of denet train
    assert denet["train"] == sorted(set(VOC_TRAIN) | {"2007_000001", *SBD_ONLY_TRAIN})
    assert denet["test"] == sorted(set(VOC_VAL) | {"2007_000002", *SBD_ONLY_VAL})
    assert not set(denet["train"]) & set(VOC_VAL)
    assert standard["test"] == VOC_VAL
    assert not set(standard["train"]) & set(standard["test"])  # the "aug" set excludes VOC val
    assert set(standard["train"]) == set(VOC_TRAIN) | set(SBD_ONLY_TRAIN) | set(SBD_ONLY_VAL)


def test_train_noval_file_is_used_when_present(pascal_raw):
    (pascal_raw / SBD / "train_noval.txt").write_text("2008_000001\n")
    assert pascal_image_sets(pascal_raw, "denet")["train"] == sorted([*VOC_TRAIN, "2008_000001"])


@pytest.mark.parametrize("pascal_masks", ["voc", "list"])
def test_pascal_masks_match_independent_reads(pascal_raw, tmp_path, pascal_masks):
    params = load_params(write_params(tmp_path), {"protocol": "denet", "data.pascal_masks": pascal_masks})
    build_shards(pascal_raw, tmp_path / "out", params, progress=False)
    sources = {s.key: s for ss in pascal_samples(pascal_raw, "denet", pascal_masks).values() for s in ss}
    seen = shard_labels(tmp_path / "out" / "train") | shard_labels(tmp_path / "out" / "test")
    assert set(seen) == set(sources)
    test_ids = set(shard_labels(tmp_path / "out" / "test"))
    # voc: VOC's PNG wherever one exists; list (DENet's release): a test image from SBD val with a VOC
    # train PNG (2007_000002) is read from SBD's .mat and img/
    from_voc = set(VOC_TRAIN + VOC_VAL) - ({"2007_000002"} if pascal_masks == "list" else set())
    assert "2007_000002" in test_ids
    for key, (label, jpg, meta) in seen.items():
        if key in from_voc:
            assert sources[key].kind == "png"
            expected = np.array(Image.open(pascal_raw / VOC / "SegmentationClass" / f"{key}.png"))
            assert (expected == 255).any()  # the void band survives
            jpg_path = pascal_raw / VOC / "JPEGImages" / f"{key}.jpg"
        else:
            assert sources[key].kind == "mat"
            expected = loadmat(pascal_raw / SBD / "cls" / f"{key}.mat")["GTcls"]["Segmentation"][0, 0]
            jpg_path = pascal_raw / SBD / "img" / f"{key}.jpg"
        np.testing.assert_array_equal(label, expected)
        assert jpg == jpg_path.read_bytes()  # original bytes, never re-encoded
        areas = {int(c): int((label == int(c)).sum()) for c in meta["classes"]}
        assert meta["classes"] == {str(c): a for c, a in areas.items()} and min(areas.values()) > 0
        assert meta["ignore_px"] == int((label == 255).sum()) and meta["height"] == H


@pytest.mark.parametrize("crowd", ["ignore", "background"])
def test_coco_masks_match_ann_to_mask(coco_raw, tmp_path, crowd):
    from pycocotools.coco import COCO

    params = load_params(write_params(tmp_path), {"dataset": "coco", "data.coco_crowd": crowd})
    build_shards(coco_raw, tmp_path / "out", params, workers=2, progress=False)
    for split, name in (("train", "instances_train2014.json"), ("test", "instances_val2014.json")):
        coco = COCO(str(coco_raw / "annotations" / name))
        cat_map = {c: i + 1 for i, c in enumerate(sorted(coco.getCatIds()))}
        seen = shard_labels(tmp_path / "out" / split)
        assert len(seen) == len(coco.getImgIds())
        for image_id in coco.getImgIds():
            info = coco.loadImgs(image_id)[0]
            expected = np.zeros((info["height"], info["width"]), dtype=np.uint8)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
            for ann in sorted(anns, key=lambda a: a["id"]):  # annotation order, later over earlier
                if not ann["iscrowd"]:
                    expected[coco.annToMask(ann) > 0] = cat_map[ann["category_id"]]
            for ann in anns:
                if ann["iscrowd"] and crowd == "ignore":  # background: crowd regions stay unpainted
                    expected[coco.annToMask(ann) > 0] = 255
            label = seen[Path(info["file_name"]).stem][0]
            np.testing.assert_array_equal(label, expected)
            assert (label == 255).any() == (crowd == "ignore") and 0 < label[label < 255].max() <= 80


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (375, 500), (640, 427)])
def test_label_png_reads_back_exactly_and_its_counts_match_bincount(shape):
    rng = np.random.default_rng(shape)
    label = rng.choice(np.array([0, 1, 7, 20, 80, 255], dtype=np.uint8), size=shape)
    label[: shape[0] // 2] = 3  # runs, as label maps hold, and noise
    png = encode_png(label)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), label)
    assert encode_png(label.copy()) == png  # bytes depend on the label only
    np.testing.assert_array_equal(label_counts(label), np.bincount(label.ravel(), minlength=256))
    resized = np.asarray(Image.fromarray(label).resize((161, 161), Image.NEAREST))
    counts = np.bincount(resized.ravel(), minlength=256)
    expected = {c: int(counts[c]) for c in range(1, 255) if counts[c]}
    assert presence_stats(label, 161) == (expected, 161 * 161)


def test_coco_annotations_are_held_as_float64_arrays_equal_to_the_parsed_json(coco_raw):
    ann_file = coco_raw / "annotations" / "instances_val2014.json"
    data = json.loads(ann_file.read_text())
    # two decimals, as in COCO's files: float32 would change them
    data["annotations"][0]["segmentation"] = [[2.37, 2.11, 30.93, 2.05, 30.41, 25.67, 2.29, 25.83]]
    ann_file.write_text(json.dumps(data))
    samples = coco_samples(coco_raw)
    parsed = json.loads(ann_file.read_text())
    by_image: dict[int, list] = {}
    for ann in parsed["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["segmentation"])
    names = {Path(im["file_name"]).stem: im["id"] for im in parsed["images"]}
    polygons = crowds = 0
    for sample in samples["test"]:
        segs = [seg for _, _, seg in sample.anns]
        assert len(segs) == len(by_image.get(names[sample.key], []))
        for held, original in zip(segs, by_image.get(names[sample.key], []), strict=True):
            if isinstance(original, list):
                assert all(isinstance(p, np.ndarray) and p.dtype == np.float64 for p in held)
                assert [p.tolist() for p in held] == original  # every parsed value, exactly
                polygons += 1
            elif isinstance(original["counts"], list):  # uncompressed RLE (crowd)
                assert isinstance(held["counts"], np.ndarray) and held["counts"].dtype == np.uint32
                assert held["counts"].tolist() == original["counts"]
                crowds += 1
            else:
                assert held == original  # compressed RLE: a string already
    assert polygons > 0 and crowds > 0


def test_coco_overlap_and_crowd_rules():
    # on explicit polygons: later instance over earlier, crowd (255) over both, whatever the order
    first = (3, 0, [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]])
    second = (7, 0, [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]])
    crowd = (9, 1, [[3.0, 3.0, 6.0, 3.0, 6.0, 6.0, 3.0, 6.0]])
    label = coco_label((crowd, first, second), 6, 6)
    assert label[0, 0] == 3 and label[2, 2] == 7  # overlap goes to the later annotation
    assert label[4, 4] == 255 and label[1, 5] == 0  # crowd region is ignore, even over an instance
    assert coco_label((second, first), 6, 6)[2, 2] == 3
    # the DENet release's rule: crowd regions are not painted at all
    label = coco_label((crowd, first, second), 6, 6, crowd="background")
    assert label[4, 4] == 7 and label[5, 5] == 7 and label[0, 0] == 3 and (label != 255).all()


def test_coco_categories_are_renumbered_in_sorted_order():
    cats = [{"id": i} for i in (90, 1, 5, 3)]
    assert coco_category_map(cats) == {1: 1, 3: 2, 5: 3, 90: 4}


# ---------------------------------------------------------------- bad input


def one_sample(raw: Path, key: str):
    return next(s for ss in pascal_samples(raw, "denet").values() for s in ss if s.key == key)


def test_corrupt_jpeg_is_named(pascal_raw):
    path = pascal_raw / VOC / "JPEGImages" / "2007_000003.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"2007_000003\.jpg: corrupt image"):
        process(one_sample(pascal_raw, "2007_000003"), 20)


def test_broken_mat_is_named(pascal_raw):
    (pascal_raw / SBD / "cls" / "2008_000002.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(DataError, match=r"2008_000002\.mat: broken \.mat"):
        process(one_sample(pascal_raw, "2008_000002"), 20)


def test_wrong_mask_values_are_named(pascal_raw):
    label = make_label([(21, (0, 5, 0, 5))])
    savemat(pascal_raw / SBD / "cls" / "2008_000003.mat", {"GTcls": {"Segmentation": label}})
    with pytest.raises(DataError, match=r"2008_000003\.mat: mask values \[21\]"):
        process(one_sample(pascal_raw, "2008_000003"), 20)


def test_size_mismatch_is_named(pascal_raw):
    label = np.zeros((10, 10), dtype=np.uint8)
    Image.fromarray(label, mode="P").save(pascal_raw / VOC / "SegmentationClass" / "2007_000004.png")
    with pytest.raises(DataError, match=r"2007_000004\.png: mask size 10x10 differs from image"):
        process(one_sample(pascal_raw, "2007_000004"), 20)


def test_missing_image_is_named(pascal_raw):
    (pascal_raw / SBD / "img" / "2008_000004.jpg").unlink()
    with pytest.raises(DataError, match=r"2008_000004\.jpg: image file is missing"):
        process(one_sample(pascal_raw, "2008_000004"), 20)


def test_broken_coco_json_and_dangling_annotation(coco_raw):
    ann_file = coco_raw / "annotations" / "instances_val2014.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["image_id"] = 999999
    ann_file.write_text(json.dumps(data))
    with pytest.raises(
        DataError, match=r"instances_val2014\.json: annotation 1 points at missing image id 999999"
    ):
        coco_samples(coco_raw)
    bad: list[dict[str, str]] = []
    samples = coco_samples(coco_raw, skip_bad=True, bad=bad)
    assert len(bad) == 1 and sum(len(s.anns) for s in samples["test"]) == len(data["annotations"]) - 1
    ann_file.write_text(ann_file.read_text()[:-20])
    with pytest.raises(DataError, match=r"instances_val2014\.json: not valid JSON"):
        coco_samples(coco_raw)


def test_skip_bad_lists_the_files_in_report(pascal_raw, tmp_path):
    (pascal_raw / SBD / "cls" / "2008_000002.mat").write_bytes(b"not a mat")
    (pascal_raw / VOC / "JPEGImages" / "2007_000011.jpg").write_bytes(b"\xff\xd8 broken")
    params = load_params(write_params(tmp_path), {"data.skip_bad": False})
    with pytest.raises(DataError, match=r"2008_000002\.mat"):
        build_shards(pascal_raw, tmp_path / "strict", params, progress=False)
    assert not (tmp_path / "strict" / "train" / "manifest.json").exists()
    params = load_params(write_params(tmp_path, skip_bad=True))
    results = build_shards(pascal_raw, tmp_path / "out", params, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["count"] == 2
    assert {(r["split"], r["id"]) for r in report["skipped"]} == {
        ("train", "2008_000002"),
        ("test", "2007_000011"),
    }
    manifest = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
    assert manifest["num_samples"] == results["train"].num_samples == 8 - 1
