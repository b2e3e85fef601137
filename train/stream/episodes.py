"""Episode helpers: pair lists, test-episode manifests (DVC stage), eval episodes fetched by key, normalize.

Stage: `python -m train.stream.episodes --shards DIR --folds DIR --out DIR` reads `fold<i>.json`,
`fold<i>/test.txt` and the test split's index.tsv and writes the fixed test episodes of
(params.fold, params.way, params.shot) as design.md's manifests, one `seed<k>.json` per test seed
in params `evaluate.seeds` (the training `seed` does not draw test episodes).

Fetch by key: evaluation reads each sample with one ranged read: index.tsv gives the shard and the
byte offset of the sample's first tar header; the read ends at the next indexed sample of that
shard (or the end of the shard). The reads of one DataLoader batch go out together on a bounded
thread pool (`EvalEpisodes.__getitems__`, `shard_io.read_ranges`), so a remote store costs about one
round trip per batch, not one per sample. This works the same for local files, `file://`, HTTP `Range`
and s3 (fsspec `cat_file`), needs no extra index file beside index.tsv (unlike `wids`, which
would need its own JSON shard list), and keeps shards as plain WebDataset tars.
A missing, short or corrupt read raises ShardError naming the shard: a test set never shrinks.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import hashlib
import io
import json
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.classes import class_name
from pipeline.config import ConfigError
from pipeline.folds import IGNORE_INDEX
from pipeline.io import write_json
from pipeline.shard_format import check_shard_name, sample_image_problem
from train.stream.shard_io import (
    ShardError,
    check_split_complete,
    join_url,
    parse_tar_fragment,
    read_ranges,
    read_text,
)
from train.stream.transforms import (
    binary_mask,
    decode_batch_images,
    decode_image,
    decode_label,
    episode_label,
    resize_pair,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_KEYS = ("query_label", "query_full_label", "support_masks")  # uint8 in a loader batch


# -- fold pair lists ---------------------------------------------------------------------------
def read_pairs(text: str) -> dict[str, list[int]]:
    """`<image_id>__<class:02d>` lines -> image id -> sorted class ids."""
    out: dict[str, list[int]] = defaultdict(list)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        image_id, sep, cls = line.rpartition("__")
        if not sep:
            raise ValueError(f"pair line {line!r} is not <image_id>__<class>")
        out[image_id].append(int(cls))
    return {k: sorted(v) for k, v in out.items()}


def read_fold(folds: str, fold: int) -> tuple[list[int], list[int]]:
    """(base, novel) from `fold<i>.json`."""
    info = json.loads(read_text(join_url(folds, f"fold{fold}.json")))
    return list(info["base"]), list(info["novel"])


# -- index.tsv ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    shard: str
    start: int
    end: int | None  # None: to the end of the shard


def read_index(split_url: str) -> tuple[dict[str, dict[int, int]], dict[str, Location]]:
    """(image id -> {class id: presence_px}, image id -> byte range in its shard) from a split's index.tsv.

    presence_px: the class's pixels at the presence size (`data.presence_size`), 0 when resizing
    removed them; the query rules read "holds a class" from it.

    The split must belong to a complete dataset (`check_split_complete`); every `shard` cell must be
    a plain file name of the split folder (an index is data, never a path to elsewhere).
    """
    check_split_complete(split_url)
    index_url = join_url(split_url, "index.tsv")
    rows = csv.DictReader(io.StringIO(read_text(index_url)), delimiter="\t")
    classes: dict[str, dict[int, int]] = defaultdict(dict)
    offsets: dict[str, tuple[str, int]] = {}
    for line, row in enumerate(rows, start=2):
        shard = check_shard_name(row["shard"], f"{index_url}:{line}")
        classes[row["image_id"]][int(row["class_id"])] = int(row["presence_px"])
        offsets[row["image_id"]] = (shard, int(row["offset"]))
    per_shard: dict[str, list[int]] = defaultdict(list)
    for shard, off in offsets.values():
        per_shard[shard].append(off)
    for offs in per_shard.values():
        offs.sort()
    locs = {}
    for key, (shard, off) in offsets.items():
        offs = per_shard[shard]
        i = bisect.bisect_right(offs, off)
        locs[key] = Location(shard, off, offs[i] if i < len(offs) else None)
    return dict(classes), locs


# -- test-episode manifest -----------------------------------------------------------------------
def episodes_digest(episodes: list[dict[str, Any]]) -> str:
    """sha256 of the episodes as compact sorted JSON (`separators=(",", ":")`, `sort_keys=True`)."""
    blob = json.dumps(episodes, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def episode_pools(
    pairs: dict[str, list[int]], novel: Sequence[int], protocol: str, way: int
) -> dict[int, list[str]]:
    """Images that may be the query or a support of each novel class, sorted (docs/protocol.md).

    `pairs`: test.txt, every (image, novel class) passing the presence rule. denet 1-way: images where
    exactly one novel class passes it (the release's item_class.pair, dataset/voc_sbd.py:364-372: other
    novel classes below the threshold are allowed). denet 2-way and standard: every pair (the release's
    unlimited_item_class.pair for way > 1, voc_sbd.py:347-348, 373-377).
    """
    novel_set = set(novel)
    pools: dict[int, list[str]] = defaultdict(list)
    for image_id in sorted(pairs):
        present = [c for c in pairs[image_id] if c in novel_set]
        if protocol == "denet" and way == 1 and len(present) != 1:
            continue
        for c in present:
            pools[c].append(image_id)
    return dict(pools)


def query_allowed(query_novel: set[int], episode: Sequence[int], protocol: str) -> bool:
    """The extra query rule for a query already in the first class's pool.

    denet with way > 1: no novel class outside the episode's may show a single pixel at the presence
    size (the release redraws the query until none does, voc_sbd.py:436-446, with whole_item_class.pair
    holding every novel class present at all). 1-way denet and standard: none (PANet-style N-way
    queries hold 1..N of the episode classes).
    """
    if protocol != "denet" or len(episode) == 1:
        return True
    return query_novel <= set(episode)


def novel_in_images(
    pairs: dict[str, list[int]], image_classes: dict[str, dict[int, int]], novel: Sequence[int]
) -> dict[str, set[int]]:
    """Per test.txt image: the novel classes with at least one pixel at the presence size (index.tsv
    presence_px > 0; its own test.txt classes at least): what `query_allowed` checks."""
    novel_set = set(novel)
    return {
        k: {c for c, px in image_classes.get(k, {}).items() if c in novel_set and px > 0}
        | {c for c in cs if c in novel_set}
        for k, cs in pairs.items()
    }


def episode_queries(
    pools: dict[int, list[str]], novel_of: dict[str, set[int]], classes: Sequence[int], protocol: str
) -> list[str]:
    """The images that may be the query of an episode of `classes` (first class's pool, `query_allowed`)."""
    return [k for k in pools[classes[0]] if query_allowed(novel_of[k], classes, protocol)]


def episodes_with_every_way(episodes: list[dict[str, Any]], pairs: dict[str, list[int]]) -> int:
    """How many episodes' queries hold every episode class by the presence rule (test.txt pairs)."""
    return sum(set(ep["classes"]) <= set(pairs.get(ep["query"], ())) for ep in episodes)


def expected_with_every_way(
    pairs: dict[str, list[int]],
    image_classes: dict[str, dict[int, int]],
    novel: Sequence[int],
    *,
    way: int,
    shot: int,
    protocol: str,
) -> float:
    """The share of 2-way episodes whose query holds both classes that the draw's rule implies.

    The release's rule and `draw_test_episodes` alike: first class balanced over the usable classes,
    the second uniform among the others, the query uniform over `episode_queries`. So the exact
    expectation is the mean, over ordered class pairs, of the share of allowed queries holding the
    second class; a drawn manifest is compared with it (`main` prints both).
    """
    if way != 2:
        raise ValueError("expected_with_every_way is defined for 2-way episodes")
    pools = episode_pools(pairs, novel, protocol, way)
    novel_of = novel_in_images(pairs, image_classes, novel)
    usable = sorted(c for c in pools if len(pools[c]) >= shot + 1)
    shares = []
    for first in usable:
        for second in (c for c in usable if c != first):
            queries = episode_queries(pools, novel_of, [first, second], protocol)
            if queries:
                shares.append(sum(second in pairs[q] for q in queries) / len(queries))
    return float(np.mean(shares)) if shares else 0.0


def eval_flips(count: int, images_per_episode: int, seed: int = 0) -> np.ndarray:
    """bool [count, images_per_episode]: which test images are mirrored (the denet protocol).

    The release's test() seeds Python's `random` with 0 (trainers.py fix_randomness) and each episode
    then passes its supports (way-major) and its query through RandomHorizontallyFlip(p=0.5), one
    `random.random() < 0.5` each, in episode order. Here the same stream comes from a local
    `random.Random(seed)`, indexed by the episode's position in the manifest.
    """
    draw = random.Random(seed).random
    return np.array([[draw() < 0.5 for _ in range(images_per_episode)] for _ in range(count)], dtype=bool)


def draw_test_episodes(
    pairs: dict[str, list[int]],
    image_classes: dict[str, dict[int, int]],
    novel: Sequence[int],
    *,
    way: int,
    shot: int,
    count: int,
    seed: int,
    protocol: str,
    shot_key: str = "shot",
) -> list[dict[str, Any]]:
    """Class-balanced fixed test episodes from the fold's test pairs.

    The first class of episode e is the e-th of a seeded round-robin over the novel classes with
    at least shot + 1 images (so classes get counts within one of each other; a class with 2..shot
    images is a ConfigError telling to lower `shot`, one with a single image is left out); the other ways are
    drawn uniformly from the rest. Query and supports of a class come from its `episode_pools` pool; the
    query is a pool image of the first class that passes `query_allowed` (novel classes by index.tsv's
    presence_px > 0); supports of each class are `shot` distinct pool images, never the query (the
    release may draw the query as a support of the other way of a 2-way episode: not here).
    """
    rng = np.random.default_rng([seed, way, shot])
    by_class = episode_pools(pairs, novel, protocol, way)
    novel_of = novel_in_images(pairs, image_classes, novel)
    # a class with 2..shot images could be tested at a lower shot: dropping it would silently change
    # the benchmark's class set, so the user lowers `shot` instead (one image: no episode at any shot)
    short = {c: len(by_class[c]) for c in sorted(by_class) if 2 <= len(by_class[c]) < shot + 1}
    if short:
        c, n = min(short.items(), key=lambda item: (item[1], item[0]))
        raise ConfigError(
            f"params: {shot_key} = {shot} is larger than novel class {c}'s {n} test images allow (a query "
            f"and {n - 1} supports): lower {shot_key} to {n - 1} or less"
        )
    usable = sorted(c for c in by_class if len(by_class[c]) >= shot + 1)
    if len(usable) < way:
        raise ConfigError(
            f"params: only {len(usable)} novel classes have {shot + 1} test images; {way}-way needs {way}: "
            f"lower way (or {shot_key})"
        )
    episodes: list[dict[str, Any]] = []
    order: list[int] = []
    attempts = 0
    while len(episodes) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise ValueError(f"could not draw {count} test episodes that satisfy the {protocol} query rule")
        if not order:
            order = [usable[int(i)] for i in rng.permutation(len(usable))]
        first = order[0]
        rest = [c for c in usable if c != first]
        classes = [first] + [rest[int(i)] for i in rng.choice(len(rest), size=way - 1, replace=False)]
        queries = episode_queries(by_class, novel_of, classes, protocol)
        if not queries:
            continue
        query = queries[int(rng.integers(len(queries)))]
        supports = []
        for c in classes:
            pool = [k for k in by_class[c] if k != query]
            supports.append([pool[int(i)] for i in rng.choice(len(pool), size=shot, replace=False)])
        order.pop(0)
        episodes.append({"query": query, "classes": classes, "supports": supports})
    return episodes


def left_out_classes(
    pairs: dict[str, list[int]], novel: Sequence[int], protocol: str, way: int
) -> dict[str, str]:
    """{class id: why} for the novel classes no test episode can hold (fewer than 2 pool images)."""
    pools = episode_pools(pairs, novel, protocol, way)
    n_pairs = {c: sum(c in cs for cs in pairs.values()) for c in novel}
    out = {}
    for c in novel:
        n_pool = len(pools.get(c, ()))
        if n_pool >= 2:
            continue
        if n_pairs[c] == 0:
            out[str(c)] = "no test pair (the folds stage says why)"
        elif n_pairs[c] == 1:
            out[str(c)] = "1 test pair: an episode needs a query and a support"
        else:
            out[str(c)] = (f"{n_pool} of its {n_pairs[c]} test images show no other novel class "
                           f"(the {protocol} {way}-way query rule)")  # fmt: skip
    return out


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


# -- training-episode manifest (train.episodes: manifest) ---------------------------------------
def draw_train_episodes(
    pairs: dict[str, list[int]],
    base: Sequence[int],
    *,
    way: int,
    shot: int,
    per_class: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The release's fixed training set (dataset/voc_sbd.py:386-463), drawn once from the fold's train.txt.

    For every base class c in sorted order: `per_class` episodes whose query and `shot` supports are
    distinct images of c's pool (train.txt pairs of c), drawn uniformly; a class with n images where
    n^2 < per_class is left out, as released (voc_sbd.py:413-414; it never happens on the real data),
    and so is one with fewer than shot + 1 images. Then one shuffle of the whole list. way > 1 (the
    release trains 1-way only): the other ways' classes are drawn uniformly from the other usable base
    classes, their supports from their pools, never the query.
    """
    rng = np.random.default_rng([seed, way, shot, 7])
    base_set = set(base)
    pools: dict[int, list[str]] = defaultdict(list)
    for image_id in sorted(pairs):
        for c in pairs[image_id]:
            if c in base_set:
                pools[c].append(image_id)
    usable = [c for c in sorted(pools) if len(pools[c]) ** 2 >= per_class and len(pools[c]) >= shot + 1]
    if len(usable) < way:
        raise ConfigError(
            f"params: only {len(usable)} base classes have the images for {per_class} training episodes each "
            f"(n^2 >= train.episodes_per_class and n >= train.shot + 1): lower train.episodes_per_class"
        )
    episodes: list[dict[str, Any]] = []
    for first in usable:
        rest = [c for c in usable if c != first]
        for _ in range(per_class):
            pool = pools[first]
            picks = rng.choice(len(pool), size=shot + 1, replace=False)
            query = pool[int(picks[0])]
            classes = [first] + [rest[int(i)] for i in rng.choice(len(rest), size=way - 1, replace=False)]
            supports = [[pool[int(i)] for i in picks[1:]]]
            for c in classes[1:]:
                others = [k for k in pools[c] if k != query]
                supports.append([others[int(i)] for i in rng.choice(len(others), size=shot, replace=False)])
            episodes.append({"query": query, "classes": classes, "supports": supports})
    return [episodes[int(i)] for i in rng.permutation(len(episodes))]


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


# -- evaluation episodes -----------------------------------------------------------------------
class SampleReader:
    """Fetch samples of a split by image id, one ranged read each, never skipping a bad shard."""

    def __init__(self, split_url: str) -> None:
        self.split_url = split_url
        self.image_classes, self.locations = read_index(split_url)
        manifest_url = join_url(self.split_url, "manifest.json")
        self.shard_bytes = {
            check_shard_name(s["name"], manifest_url): int(s["bytes"])
            for s in json.loads(read_text(manifest_url))["shards"]
        }

    def fetch(self, key: str) -> dict[str, Any]:
        return self.fetch_many([key])[key]

    def fetch_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Samples by key, their ranged reads in flight together (`shard_io.read_ranges`)."""
        unique = list(dict.fromkeys(keys))
        ranges = [self._range(key) for key in unique]
        return {
            key: self._sample(key, url, start, end, data)
            for key, (url, start, end), data in zip(unique, ranges, read_ranges(ranges), strict=True)
        }

    def _range(self, key: str) -> tuple[str, int, int | None]:
        loc = self.locations.get(key)
        if loc is None:
            raise KeyError(f"{key} is not in {self.split_url}/index.tsv")
        end = loc.end if loc.end is not None else self.shard_bytes.get(loc.shard)
        return join_url(self.split_url, loc.shard), loc.start, end

    @staticmethod
    def _sample(key: str, url: str, start: int, end: int | None, data: bytes | Exception) -> dict[str, Any]:
        if isinstance(data, OSError):
            raise ShardError(f"shard {url}: cannot read sample {key}: {data}") from data
        if isinstance(data, Exception):
            raise data
        if end is not None and len(data) != end - start:
            raise ShardError(
                f"shard {url} is truncated: sample {key} needs bytes {start}..{end}, got {len(data)}"
            )
        sample = parse_tar_fragment(data, key, url)
        for ext in ("jpg", "label.png"):
            if ext not in sample:
                raise ShardError(f"shard {url}: sample {key} has no .{ext} member")
        # every ranged read (evaluation, training manifests): a decompression bomb is never decoded
        problem = sample_image_problem(sample)
        if problem:
            raise ShardError(f"shard {url}: sample {key}: {problem}")
        return sample


def eval_query_label(label: np.ndarray, class_ids: Sequence[int], protocol: str) -> np.ndarray:
    """Query label for scoring: 0 bg, k+1 for way k; denet counts void (255) as background."""
    out = episode_label(label, class_ids)
    if protocol == "denet":
        out[out == IGNORE_INDEX] = 0
    return out


def eval_support_mask(
    label: np.ndarray, class_id: int, protocol: str, episode_classes: Sequence[int] = ()
) -> np.ndarray:
    """Support mask for evaluation: 1 fg, 0 bg. Under denet every other pixel is background, void (255)
    and the episode's other classes included (the release's test masks are `mask == class` and hold no
    255, voc_sbd.py:207-209); under standard void and the episode's other classes stay 255
    (`transforms.binary_mask`, PANet's N-way rule)."""
    mask = binary_mask(label, class_id, episode_classes)
    if protocol == "denet":
        mask[mask == IGNORE_INDEX] = 0
    return mask


class EvalEpisodes(Dataset):
    """The manifest's episodes, fetched by key from the test shards; use `collate_eval`.

    Label handling (notes, "Two presets"): images and support masks are resized to `image_size`.
    denet: query labels resized (nearest) to `image_size`, void counted as background.
    standard: query labels at the original size, void kept as 255 (ignored); `collate_eval` pads
    them to the batch's largest size with 255 and `query_size` gives each (h, w) to crop to.
    `query_full_label` holds the raw dataset ids (novel classes kept) at the query label's size.
    `flip`: mirror images with their labels as `eval_flips` says (the denet protocol); `first` is the
    position of this manifest's first episode in the full manifest (a torchrun rank's slice), so that
    every episode keeps its flips however the episodes are split.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        split_url: str,
        image_size: int,
        protocol: str,
        reduced: bool = True,
        flip: bool = False,
        first: int = 0,
    ) -> None:
        self.episodes = manifest["episodes"]
        self.way, self.shot = manifest["way"], manifest["shot"]
        self.reader = SampleReader(split_url)
        self.image_size, self.protocol, self.reduced = image_size, protocol, reduced
        per_episode = self.way * self.shot + 1
        self.flips = (
            eval_flips(first + len(self.episodes), per_episode)[first:]
            if flip
            else np.zeros((len(self.episodes), per_episode), dtype=bool)
        )

    def __len__(self) -> int:
        return len(self.episodes)

    def _load(
        self, sample: dict[str, Any], keep_label_size: bool, flip: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        img = decode_image(sample["jpg"], self.image_size, self.reduced)
        label = decode_label(sample["label.png"])
        img, small = resize_pair(img, label, self.image_size)
        assert small is not None
        label = label if keep_label_size else small
        if flip:  # image and label together, like the release's RandomHorizontallyFlip
            img, label = img.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(img, dtype=np.uint8), np.asarray(label, dtype=np.uint8)

    def _keys(self, i: int) -> list[str]:
        ep = self.episodes[i]
        return [ep["query"], *(k for keys in ep["supports"] for k in keys)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._episode(i, self.reader.fetch_many(self._keys(i)))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A DataLoader batch: the reads of all its episodes go out together (one round trip, not 2 x B)."""
        samples = self.reader.fetch_many([k for i in indices for k in self._keys(i)])
        return [self._episode(i, samples) for i in indices]

    def _episode(self, i: int, samples: dict[str, dict[str, Any]]) -> dict[str, Any]:
        ep = self.episodes[i]
        flips = iter(self.flips[i])  # supports (way-major) first, then the query, as the release draws them
        s_imgs, s_masks = [], []
        for c, keys in zip(ep["classes"], ep["supports"], strict=True):
            for k in keys:
                si, sl = self._load(samples[k], keep_label_size=False, flip=bool(next(flips)))
                s_imgs.append(si)
                s_masks.append(eval_support_mask(sl, c, self.protocol, ep["classes"]))
        img, label = self._load(
            samples[ep["query"]], keep_label_size=self.protocol == "standard", flip=bool(next(flips))
        )
        return {
            "query_img": img,
            "query_label": eval_query_label(label, ep["classes"], self.protocol),
            "query_full_label": label,
            "support_imgs": np.stack(s_imgs),
            "support_masks": np.stack(s_masks),
            "class_ids": list(ep["classes"]),
            "query_id": ep["query"],
            "support_ids": ep["supports"],
        }


def collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch eval episodes; labels of different sizes are padded with 255, `query_size` keeps (h, w)."""
    b = len(items)
    way = len(items[0]["class_ids"])
    shot = len(items[0]["support_ids"][0])
    s = items[0]["query_img"].shape[0]
    hmax = max(it["query_label"].shape[0] for it in items)
    wmax = max(it["query_label"].shape[1] for it in items)
    labels = np.full((b, hmax, wmax), IGNORE_INDEX, dtype=np.uint8)
    full = np.full((b, hmax, wmax), IGNORE_INDEX, dtype=np.uint8)
    for j, it in enumerate(items):
        h, w = it["query_label"].shape
        labels[j, :h, :w] = it["query_label"]
        full[j, :h, :w] = it["query_full_label"]
    q = np.stack([it["query_img"] for it in items]).transpose(0, 3, 1, 2)
    sup = np.stack([it["support_imgs"] for it in items]).reshape(b, way, shot, s, s, 3)
    masks = np.stack([it["support_masks"] for it in items]).reshape(b, way, shot, s, s)
    return {
        "query_img": torch.from_numpy(np.ascontiguousarray(q)),
        "query_label": torch.from_numpy(labels),
        "query_full_label": torch.from_numpy(full),
        "query_size": torch.tensor([it["query_label"].shape for it in items], dtype=torch.int64),
        "support_imgs": torch.from_numpy(np.ascontiguousarray(sup.transpose(0, 1, 2, 5, 3, 4))),
        "support_masks": torch.from_numpy(np.ascontiguousarray(masks)),
        "class_ids": torch.tensor([it["class_ids"] for it in items], dtype=torch.int64),
        "query_id": [it["query_id"] for it in items],
        "support_ids": [it["support_ids"] for it in items],
    }


def normalize(batch: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    """Move tensors to `device`; images become float, ImageNet-normalised, label maps int64.

    Both conversions run on the device after the transfer: loaders ship uint8 (a 321 px batch of 8
    is 7 MB instead of 25 MB with int64 labels through worker IPC, pinned memory and the bus).

    A batch from a `gpu_decode` sampler carries JPEG bytes instead of images: they are decoded on
    `device` first (`train.stream.transforms.decode_batch_images`).
    """
    if "query_jpeg" in batch:
        batch = decode_batch_images(batch, device)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        out[key] = value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1) * 255.0
    for key in ("query_img", "support_imgs"):
        out[key] = (out[key].float() - mean) / std
    for key in LABEL_KEYS:
        out[key] = out[key].long()
    return out


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="dataset shard folder holding train/ and test/")
    parser.add_argument("--folds", required=True, help="folder with fold<i>.json and fold<i>/test.txt")
    parser.add_argument("--out", required=True, help="folder to write seed<k>.json into")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        p = load_params(args.params)
        test = read_test_split(args.shards, args.folds, p.fold)
        manifests = {
            seed: build_manifest(
                args.shards,
                args.folds,
                p.dataset,
                p.fold,
                p.way,
                p.shot,
                p.protocol,
                seed,
                int(p.sampler.test_episodes),
                test=test,
            )
            for seed in p.evaluate.seeds
        }
    except (ValueError, ShardError) as exc:  # ConfigError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for seed, manifest in manifests.items():
        path = manifest_file(args.out, seed)
        write_json(path, manifest)
        print(f"{path}: {len(manifest['episodes'])} episodes, sha256 {manifest['sha256_of_episodes'][:12]}")
    left_out = next(iter(manifests.values()))["left_out"]
    for c, why in left_out.items():
        print(f"fold {p.fold}: novel class {c} ({class_name(p.dataset, int(c))}) has no test episode: {why}")
    if p.way == 2:
        print(both_ways_line(test, p, manifests))
    return 0


def both_ways_line(test: TestSplit, p: Any, manifests: dict[int, dict[str, Any]]) -> str:
    """How often the drawn 2-way queries hold both classes, against what the rule implies."""
    novel, pairs, image_classes = test
    share = expected_with_every_way(pairs, image_classes, novel, way=2, shot=p.shot, protocol=p.protocol)
    drawn = ", ".join(
        f"{episodes_with_every_way(m['episodes'], pairs)} of {len(m['episodes'])} (seed {seed})"
        for seed, m in manifests.items()
    )
    count = len(next(iter(manifests.values()))["episodes"])
    return (
        f"queries holding both classes (presence rule): {drawn}; the {p.protocol} rule implies "
        f"{share * count:.1f} of {count}"
    )


if __name__ == "__main__":
    sys.exit(main())
