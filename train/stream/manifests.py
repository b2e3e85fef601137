"""Episode manifests (design.md): the test manifest of one fold/way/shot/seed, the training manifest
(train.episodes: manifest), where they live and how they are read. The `episodes` stage
(train.stream.episodes) writes the test manifests; training and evaluation read them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.classes import class_name
from pipeline.config import AUTO, ConfigError, Params
from pipeline.errors import UserError
from train.stream.draw import draw_test_episodes, draw_train_episodes, episodes_digest, left_out_classes
from train.stream.index import read_fold, read_index, read_pairs
from train.stream.shard_io import (
    join_url,
    read_text,
)


class ManifestError(UserError, ValueError):
    """An episode manifest that is empty, altered, or does not belong to the shards it is read with."""


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
        "left_out": left_out_classes(pairs, novel, protocol, way),  # novel classes without an episode
        "episodes": episodes,
    }


def manifest_file(folder: str | Path, seed: int) -> Path:
    return Path(folder, f"seed{seed}.json")


def manifest_files(folder: str | Path) -> list[Path]:
    """The `seed<k>.json` manifests of a setting's folder, by seed."""
    found = [f for f in Path(folder).glob("seed*.json") if f.stem[4:].isdigit()]
    return sorted(found, key=lambda f: int(f.stem[4:]))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest, checked against its own digest (a hand-edited manifest is refused)."""
    manifest = json.loads(Path(path).read_text())
    problem = manifest_problem(manifest)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    if episodes_digest(manifest["episodes"]) != manifest["sha256_of_episodes"]:
        raise ManifestError(f"{path}: episodes do not match sha256_of_episodes")
    return manifest


def manifest_problem(manifest: Any) -> str | None:
    """What makes `manifest` unusable (a wrong type or shape, said in a few words), or None."""
    if not isinstance(manifest, dict):
        return "not a manifest (a JSON object)"
    kinds = {
        "way": int,
        "shot": int,
        "fold": int,
        "protocol": str,
        "sha256_of_episodes": str,
        "episodes": list,
    }
    for key, kind in kinds.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            return f"{key} = {manifest.get(key)!r} must be a {kind.__name__}"
    way, shot = manifest["way"], manifest["shot"]
    for i, ep in enumerate(manifest["episodes"]):
        ok = (
            isinstance(ep, dict) and isinstance(ep.get("query"), str)
            and isinstance(ep.get("classes"), list) and len(ep["classes"]) == way
            and all(isinstance(c, int) for c in ep["classes"])
            and isinstance(ep.get("supports"), list) and len(ep["supports"]) == way
            and all(isinstance(s, list) and len(s) == shot and all(isinstance(k, str) for k in s)
                    for s in ep["supports"])
        )  # fmt: skip
        if not ok:
            return f"episode {i} is not {{query, {way} classes, {way} lists of {shot} supports}}"
    return None


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


RELEASE_EPISODES_PER_CLASS = 1000  # the release's fixed set: 1000 training episodes per base class


def episodes_per_class(p: Params, folds: Path) -> int:
    """`train.episodes_per_class`, with `auto` resolved to what the fold's training pairs allow.

    auto: the release's 1000 where every base class has the images for it (n^2 >= 1000 for n images,
    the manifest draw's rule), else n^2 of the base class with the fewest images (n >= train.shot + 1),
    so that every base class trains; one line says which and why.
    """
    if p.train.episodes_per_class != AUTO:
        return int(p.train.episodes_per_class)
    base, _ = read_fold(str(folds), p.fold)
    pairs = read_pairs(read_text(join_url(str(folds), f"fold{p.fold}/train.txt")))
    counts = {c: sum(c in cs for cs in pairs.values()) for c in base}
    usable = {c: n for c, n in counts.items() if n >= p.train.shot + 1}
    if not usable:
        raise ConfigError(f"{folds}: no base class of fold {p.fold} has {p.train.shot + 1} training images")
    fewest, n = min(usable.items(), key=lambda item: (item[1], item[0]))
    if n * n >= RELEASE_EPISODES_PER_CLASS:
        return RELEASE_EPISODES_PER_CLASS
    name = class_name(p.dataset, fewest)
    print(
        f"train.episodes_per_class auto: {n * n} (base class {name} has {n} training images, n^2 = "
        f"{n * n}; the release's {RELEASE_EPISODES_PER_CLASS} needs 32 per class)",
        file=sys.stderr,
    )
    return n * n
