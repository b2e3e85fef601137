"""`pipeline.build` end to end on generated raw data, then `pipeline.lists` and the DVC stage CLIs."""

from __future__ import annotations

import json

import pytest
from raw_fixtures import write_params

from pipeline import build, folds, lists, shards
from train.bench import bench_shards

pytestmark = pytest.mark.heavy  # builds whole toy data sets


def test_build_then_lists(pascal_raw, tmp_path, capsys):
    params = write_params(tmp_path)
    argv = [
        "--dataset",
        "pascal",
        "--protocol",
        "denet",
        "--raw",
        str(pascal_raw),
        "--out",
        str(tmp_path / "b"),
    ]
    assert build.main([*argv, "--params", str(params)]) == 0
    out = tmp_path / "b"
    assert json.loads((out / "shards/pascal/train/manifest.json").read_text())["num_samples"] == 8
    capsys.readouterr()
    assert lists.main(["--dataset", "pascal", "--fold", "0", "--split", "val", "--data", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed and printed == (out / "folds/pascal/fold0/test.txt").read_text()
    assert all(line.split("__")[1] in {"01", "02", "03", "04", "05"} for line in printed.splitlines())
    assert lists.main(["--dataset", "coco", "--fold", "0", "--split", "train", "--data", str(out)]) == 2


def test_stage_clis_match_build(pascal_raw, tmp_path):
    """The DVC commands (shards, folds) give the same bytes as `build`."""
    params = str(write_params(tmp_path))
    build.build("pascal", "denet", pascal_raw, tmp_path / "b", params, progress=False)
    assert shards.main(["--raw", str(pascal_raw), "--out", str(tmp_path / "s"), "--params", params]) == 0
    assert (
        folds.main(["--shards", str(tmp_path / "s"), "--out", str(tmp_path / "f"), "--params", params]) == 0
    )
    for rel in ("train/index.tsv", "test/manifest.json", "train/train-000003.tar"):
        assert (tmp_path / "s" / rel).read_bytes() == (tmp_path / "b/shards/pascal" / rel).read_bytes()
    for rel in ("fold2.json", "fold2/train.txt", "fold3/test.txt"):
        assert (tmp_path / "f" / rel).read_bytes() == (tmp_path / "b/folds/pascal" / rel).read_bytes()
    # the folds stage output itself is a valid --data for lists
    assert (
        lists.read_pairs(tmp_path / "f", "pascal", 2, "train")
        == (tmp_path / "f/fold2/train.txt").read_text().split()
    )


def test_lists_default_to_the_folds_stage_output(pascal_raw, tmp_path, capsys, monkeypatch):
    """Without --data, --dataset, --fold: params.yaml's, and the folder `dvc repro` writes the folds to."""
    params = write_params(tmp_path)
    monkeypatch.chdir(tmp_path)  # paths.folds is relative to the repo, as in dvc.yaml
    stage_out = tmp_path / "data/folds/toy/pascal/denet"  # ${paths.folds}/${source}/${dataset}/${protocol}
    shards_out = tmp_path / "s"
    assert shards.main(["--raw", str(pascal_raw), "--out", str(shards_out), "--params", str(params)]) == 0
    assert folds.main(["--shards", str(shards_out), "--out", str(stage_out), "--params", str(params)]) == 0
    capsys.readouterr()
    assert lists.main(["--split", "val", "--params", str(params)]) == 0
    assert capsys.readouterr().out == (stage_out / "fold0/test.txt").read_text()
    assert lists.main(["--split", "train", "--fold", "2"]) == 0  # ./params.yaml
    assert capsys.readouterr().out == (stage_out / "fold2/train.txt").read_text()
    assert lists.main(["--split", "val", "--dataset", "coco"]) == 2  # no coco folds there
    assert "data/folds/toy/coco/denet" in capsys.readouterr().err


def test_bad_input_stops_with_the_file_named(pascal_raw, tmp_path, capsys):
    (pascal_raw / "VOCdevkit/VOC2012/SegmentationClass/2007_000012.png").write_bytes(b"\x89PNG broken")
    argv = [
        "--dataset",
        "pascal",
        "--protocol",
        "standard",
        "--raw",
        str(pascal_raw),
        "--out",
        str(tmp_path / "b"),
    ]
    assert build.main([*argv, "--params", str(write_params(tmp_path))]) == 2
    assert "2007_000012.png: corrupt mask" in capsys.readouterr().err


def test_bench_reports_a_rate(pascal_raw):
    rates = bench_shards.bench(pascal_raw, "pascal", [1], repeat=1)
    assert set(rates) == {1} and rates[1] > 0
