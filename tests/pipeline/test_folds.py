"""Fold pair lists on generated data: no novel leak into training, eligibility of test queries, filters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from raw_fixtures import write_params

from pipeline.config import load_params
from pipeline.folds import fold_classes, iter_index_images, query_classes, train_classes, write_folds
from pipeline.shards import build_shards


def build(raw: Path, tmp_path: Path, dataset: str, protocol: str, **rules) -> tuple[Path, Path]:
    params = load_params(write_params(tmp_path), {"dataset": dataset, "protocol": protocol})
    shards, folds = tmp_path / "shards", tmp_path / "folds"
    build_shards(raw, shards, params, progress=False)
    rules = {"min_fraction": params.data.min_fraction, "min_pixels": params.data.min_pixels} | rules
    write_folds(shards, folds, dataset=dataset, protocol=protocol, **rules)
    return shards, folds


def pairs(path: Path) -> list[tuple[str, int]]:
    return [(line[:-4], int(line[-2:])) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("protocol", ["denet", "standard"])
def test_pascal_lists_keep_novel_out_of_training(pascal_raw, tmp_path, protocol):
    # the fixture's images have 1,920 px, under the standard 2,048 px rule: scale it down
    rules = {"min_pixels": 200} if protocol == "standard" else {}
    shards, folds = build(pascal_raw, tmp_path, "pascal", protocol, **rules)
    images = {split: dict(iter_index_images(shards / split / "index.tsv")) for split in ("train", "test")}
    for fold in range(4):
        info = json.loads((folds / f"fold{fold}.json").read_text())
        base, novel = fold_classes("pascal", fold)
        assert (info["base"], info["novel"], info["protocol"]) == (base, novel, protocol)
        train = pairs(folds / f"fold{fold}" / "train.txt")
        test = pairs(folds / f"fold{fold}" / "test.txt")
        assert train and test
        assert all(c in base for _, c in train)  # no novel-class pair leaks into a training list
        assert all(c in novel for _, c in test)
        assert {i for i, _ in train} <= set(images["train"]) and {i for i, _ in test} <= set(images["test"])
        threshold = 0.02 if protocol == "denet" else 0.0
        min_px = 0 if protocol == "denet" else 200
        for image_id, c in train + test:
            split = "train" if (image_id, c) in train else "test"
            px, total = images[split][image_id][c]
            assert px / total >= threshold and px >= min_px
        lines = (folds / f"fold{fold}" / "train.txt").read_text().splitlines()
        assert lines == sorted(lines) and all("__" in line for line in lines)
        # test.txt: every novel class passing the presence rule (the per-way query rules come later)
        expected = {
            (image_id, c)
            for image_id, shown in images["test"].items()
            for c, (px, total) in shown.items()
            if c in novel and px / total >= threshold and px >= min_px
        }
        assert set(test) == expected
        if protocol == "standard":
            assert not {i for i, _ in train} & {i for i, _ in test}  # "aug" train excludes VOC val


def test_area_filter_drops_small_objects(pascal_raw, tmp_path):
    shards, folds = build(pascal_raw, tmp_path, "pascal", "denet")
    everything = [
        (image_id, c)
        for image_id, classes in iter_index_images(shards / "train" / "index.tsv")
        for c in classes
        if c not in fold_classes("pascal", 0)[1]
    ]
    kept = set(pairs(folds / "fold0" / "train.txt"))
    dropped = [p for p in everything if p not in kept]
    assert dropped and all(p in everything for p in kept)
    # relaxing the rule keeps every base pair
    write_folds(shards, tmp_path / "all", dataset="pascal", protocol="denet", min_fraction=0.0)
    assert set(pairs(tmp_path / "all" / "fold0" / "train.txt")) == set(everything)


def test_pair_rules():
    novel = [1, 2, 3, 4, 5]
    # (presence_px, presence_total): class 1 at 30 %, class 2 at 0.5 %, base 7 at 20 %, base 9 at 0.3 %
    classes = {1: (3000, 10_000), 2: (50, 10_000), 7: (2000, 10_000), 9: (30, 10_000)}
    assert train_classes(classes, novel, 0.02, 0) == [7]
    assert train_classes(classes, novel, 0.0, 0, drop_novel_images=True) == []
    assert train_classes({7: (4000, 10_000)}, novel, 0.0, 0, drop_novel_images=True) == [7]
    assert query_classes(classes, novel, 0.0, 0) == [1, 2]  # every present novel class gives a pair
    assert query_classes(classes, novel, 0.02, 0) == [1]  # class 2 is under 2 %
    assert query_classes(classes, novel, 0.0, 2048) == [1]
    # the fraction is the exact division the release makes, at the boundary too
    assert query_classes({1: (200, 10_000)}, novel, 0.02, 0) == [1]
    assert query_classes({1: (199, 10_000)}, novel, 0.02, 0) == []


@pytest.mark.parametrize("coco_split", ["interleaved", "contiguous"])
def test_coco_fold_sets(coco_raw, tmp_path, coco_split):
    _, folds = build(coco_raw, tmp_path, "coco", "standard", coco_split=coco_split, min_pixels=0)
    for fold in range(4):
        info = json.loads((folds / f"fold{fold}.json").read_text())
        base, novel = fold_classes("coco", fold, coco_split)
        assert info["novel"] == novel and info["base"] == base and info["coco_split"] == coco_split
        assert len(novel) == 20 and len(base) == 60
        assert all(c in base for _, c in pairs(folds / f"fold{fold}" / "train.txt"))
        assert all(c in novel for _, c in pairs(folds / f"fold{fold}" / "test.txt"))
    assert json.loads((folds / "fold1.json").read_text())["novel"][:2] == (
        [2, 6] if coco_split == "interleaved" else [21, 22]
    )


def test_a_novel_class_without_a_test_episode_is_named_with_its_reason(pascal_raw, tmp_path, capsys):
    """The fixture's objects have 1,920 px: under the standard 2,048 px rule no novel class keeps a
    test pair, and the folds stage says so per class (fold<i>.json and one line each), never silently."""
    from pipeline.folds import main, missing_reason

    shards, folds = build(pascal_raw, tmp_path, "pascal", "standard")
    assert (tmp_path / "folds" / "fold0" / "test.txt").read_text() == ""
    missing = json.loads((folds / "fold0.json").read_text())["missing_novel"]
    assert sorted(map(int, missing)) == fold_classes("pascal", 0)[1]
    shown = [why for why in missing.values() if why != "no test image shows it"]
    assert shown and all(
        why.startswith("no test image passes the presence rule (>= 2048 px)") for why in shown
    )
    assert all(re.search(r"\d+ show it, the largest with \d+ px \([\d.]+% of its mask\)$", w) for w in shown)
    # relaxed: the fixture's one test image of class 5 passes, still too few for an episode
    write_folds(shards, tmp_path / "relaxed", dataset="pascal", protocol="standard", min_pixels=200)
    relaxed = json.loads((tmp_path / "relaxed" / "fold0.json").read_text())["missing_novel"]
    assert (
        relaxed["5"] == "only 1 test image passes the presence rule (an episode needs a query and a support)"
    )
    assert relaxed["1"] == "no test image shows it"  # the fixture's test split has no aeroplane
    # the stage prints one line per class, naming it
    params = write_params(tmp_path)
    params.write_text(params.read_text() + "dataset: pascal\nprotocol: standard\n")
    assert main(["--shards", str(shards), "--out", str(tmp_path / "cli"), "--params", str(params)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fold 0: novel class")]
    assert len(lines) == len(missing) and "(aeroplane) has no test episode" in lines[0]
    assert missing_reason([(30, 100)], 0, 0.5, 0).endswith(
        "(>= 50% of the mask): 1 show it, the largest with 30 px (30.0% of its mask)"
    )
