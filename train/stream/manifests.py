"""Episode manifests (design.md): the test manifest of one fold/way/shot/seed, the training manifest
(train.episodes: manifest), where they live and how they are read. The `episodes` stage
(train.stream.episodes) writes the test manifests; training and evaluation read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from train.stream.draw import draw_test_episodes, draw_train_episodes, episodes_digest
from train.stream.index import read_fold, read_index, read_pairs
from train.stream.shard_io import (
    join_url,
    read_text,
)


class TestSplit(NamedTuple):
    """What test episodes of one fold are drawn from: its novel classes, test.txt pairs and index rows."""

    novel: list[int]
    pairs: dict[str, list[int]]
    image_classes: dict[str, dict[int, int]]


def read_test_split(shards: str, folds: str, fold: int) -> TestSplit:
    """The fold's novel classes, `fold<i>/test.txt` pairs and the test split's index.tsv classes."""
    _, novel = read_fold(folds, fold)
    pairs = read_pairs(read_text(join_url(folds, f"fold{fold}/test.txt")))
    image_classes, _ = read_index(join_url(shards, "test"))
    return TestSplit(novel, pairs, image_classes)


def build_manifest(
    shards: str,
    folds: str,
    dataset: str,
    fold: int,
    way: int,
    shot: int,
    protocol: str,
    seed: int,
    count: int,
    shot_key: str = "shot",
    test: TestSplit | None = None,
) -> dict[str, Any]:
    """The design.md test-episode manifest for one (dataset, fold, way, shot); `shot_key` names the
    params key in errors (`train.shot` for the validation draw); `test`: the fold's `read_test_split`
    when the caller has it already (one read for several seeds)."""
    novel, pairs, image_classes = test or read_test_split(shards, folds, fold)
    episodes = draw_test_episodes(
        pairs, image_classes, novel, way=way, shot=shot, count=count, seed=seed, protocol=protocol,
        shot_key=shot_key,
    )  # fmt: skip
    return {
        "dataset": dataset,
        "fold": fold,
        "way": way,
        "shot": shot,
        "protocol": protocol,
        "seed": seed,
        "sha256_of_episodes": episodes_digest(episodes),
        "episodes": episodes,
    }


def manifest_dir(episodes: str | Path, source: str, dataset: str, protocol: str, fold: int, way: int,
                 shot: int) -> Path:  # fmt: skip
    """The folder of one setting's manifests (the DVC `episodes` stage's output): `seed<k>.json` inside."""
    return Path(episodes, source, dataset, protocol, f"fold{fold}_{way}way_{shot}shot")


def manifest_file(folder: str | Path, seed: int) -> Path:
    return Path(folder, f"seed{seed}.json")


def manifest_files(folder: str | Path) -> list[Path]:
    """The `seed<k>.json` manifests of a setting's folder, by seed."""
    found = [f for f in Path(folder).glob("seed*.json") if f.stem[4:].isdigit()]
    return sorted(found, key=lambda f: int(f.stem[4:]))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest, checked against its own digest (a hand-edited manifest is refused)."""
    manifest = json.loads(Path(path).read_text())
    if episodes_digest(manifest["episodes"]) != manifest["sha256_of_episodes"]:
        raise ValueError(f"{path}: episodes do not match sha256_of_episodes")
    return manifest


def train_manifest(
    folds: str, dataset: str, fold: int, way: int, shot: int, protocol: str, seed: int, per_class: int
) -> dict[str, Any]:
    """The training-episode manifest of a fold, in the test manifests' format (plus "split": "train")."""
    base, _ = read_fold(folds, fold)
    pairs = read_pairs(read_text(join_url(folds, f"fold{fold}/train.txt")))
    episodes = draw_train_episodes(pairs, base, way=way, shot=shot, per_class=per_class, seed=seed)
    return {
        "dataset": dataset,
        "split": "train",
        "fold": fold,
        "way": way,
        "shot": shot,
        "protocol": protocol,
        "seed": seed,
        "episodes_per_class": per_class,
        "sha256_of_episodes": episodes_digest(episodes),
        "episodes": episodes,
    }
