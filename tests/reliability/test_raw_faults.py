"""Bad raw files: the shards stage stops naming the file and the reason, or skips and reports them."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_fixtures import SBD, VOC, make_label, pascal_layout, write_params, write_voc_png

from pipeline import shards as shards_stage
from pipeline.config import load_params
from pipeline.masks import DataError, process
from pipeline.shards import build_shards

HINT = "set data.skip_bad: true"


def _sample(raw: Path, key: str):
    from pipeline.masks import pascal_samples

    return next(s for ss in pascal_samples(raw, "denet").values() for s in ss if s.key == key)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"this is a text file, not a photo", "corrupt image"),
        ("png", r"not a JPEG \(PIL reads PNG\)"),
        (b"", "corrupt image"),
    ],
)
def test_non_image_jpeg_is_named_with_the_reason(pascal_raw, payload, reason):
    path = pascal_raw / VOC / "JPEGImages" / "2007_000001.jpg"
    if payload == "png":
        Image.new("RGB", (48, 40)).save(path, format="PNG")  # a PNG under a .jpg name
    else:
        path.write_bytes(payload)
    with pytest.raises(DataError, match=rf"2007_000001\.jpg: {reason}"):
        process(_sample(pascal_raw, "2007_000001"), 20)


def test_png_mask_with_ids_outside_the_protocol_is_named(pascal_raw):
    label = make_label(pascal_layout(1))
    label[0:4, 0:4] = 21  # PASCAL ids are 1..20 (and 255 void)
    label[36:40, 0:4] = 254
    write_voc_png(pascal_raw / VOC / "SegmentationClass" / "2007_000002.png", label)
    with pytest.raises(DataError, match=r"2007_000002\.png: mask values \[21, 254\] are not classes"):
        process(_sample(pascal_raw, "2007_000002"), 20)


def test_stage_cli_stops_with_one_line_naming_file_and_reason(pascal_raw, tmp_path, capsys):
    (pascal_raw / SBD / "cls" / "2008_000001.mat").write_bytes(b"MATLAB 5.0 MAT-file, cut")
    params = write_params(tmp_path)
    out = tmp_path / "out"
    assert shards_stage.main(["--raw", str(pascal_raw), "--out", str(out), "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert "2008_000001.mat: broken .mat file" in err and HINT in err
    assert not list(out.rglob("manifest.json"))  # nothing that looks complete


def test_skip_bad_skips_counts_and_lists_every_kind_of_fault(pascal_raw, tmp_path):
    (pascal_raw / VOC / "JPEGImages" / "2007_000001.jpg").write_bytes(b"not an image")
    label = make_label(pascal_layout(1))
    label[0:4, 0:4] = 99  # (write_voc_png bands the edges with 255: the inside keeps 99)
    write_voc_png(pascal_raw / VOC / "SegmentationClass" / "2007_000002.png", label)
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="P").save(
        pascal_raw / VOC / "SegmentationClass" / "2007_000003.png"
    )  # 12x10 mask for a 48x40 image
    (pascal_raw / SBD / "cls" / "2008_000003.mat").write_bytes(b"\x00" * 64)
    # pascal_masks voc: VOC's PNG for 2007_000002 in both splits (under "list" its test copy is SBD's .mat)
    params = load_params(write_params(tmp_path, skip_bad=True, pascal_masks="voc"))
    results = build_shards(pascal_raw, tmp_path / "out", params, workers=1, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())  # beside the split folders
    problems = {r["id"]: r["problem"] for r in report["skipped"]}
    # 2007_000002 is in both splits (VOC train, SBD val): skipped in each
    assert report["count"] == 5 == len(report["skipped"]) and len(problems) == 4
    assert "2007_000001.jpg: corrupt image" in problems["2007_000001"]
    assert "2007_000002.png: mask values [99]" in problems["2007_000002"]
    assert "2007_000003.png: mask size 12x10 differs" in problems["2007_000003"]
    assert "2008_000003.mat: broken .mat file" in problems["2008_000003"]
    kept = results["train"].num_samples + results["test"].num_samples
    manifests = [json.loads((tmp_path / "out" / s / "manifest.json").read_text()) for s in ("train", "test")]
    assert sum(m["num_samples"] for m in manifests) == kept
    assert not {k for m in manifests for k in problems if k in json.dumps(m)}  # none of them in a shard


def test_coco_annotation_of_a_missing_image_file(coco_raw, tmp_path):
    data = json.loads((coco_raw / "annotations" / "instances_val2014.json").read_text())
    missing = data["images"][1]["file_name"]
    (coco_raw / "val2014" / missing).unlink()
    strict = load_params(write_params(tmp_path), {"dataset": "coco"})
    with pytest.raises(DataError, match=rf"{missing}: image file is missing"):
        build_shards(coco_raw, tmp_path / "strict", strict, workers=1, progress=False)
    lenient = load_params(write_params(tmp_path, skip_bad=True), {"dataset": "coco"})
    build_shards(coco_raw, tmp_path / "out", lenient, workers=1, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["count"] == 1 and report["skipped"][0]["id"] == Path(missing).stem
    assert "image file is missing" in report["skipped"][0]["problem"]


def test_malformed_coco_json_names_the_file(coco_raw, tmp_path):
    ann = coco_raw / "annotations" / "instances_train2014.json"
    ann.write_text(json.dumps({"images": [], "annotations": {}, "categories": []}))
    params = load_params(write_params(tmp_path, skip_bad=True), {"dataset": "coco"})
    # not a per-image fault: even skip_bad stops, since the whole split would be lost
    with pytest.raises(DataError, match=r"instances_train2014\.json: not a COCO instances file"):
        build_shards(coco_raw, tmp_path / "out", params, workers=1, progress=False)
