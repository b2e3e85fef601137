"""Episode helpers: pair lists, test-episode manifests (DVC stage), eval episodes fetched by key, normalize.

Stage: `python -m train.episodes --shards DIR --folds DIR --out DIR` reads `fold<i>.json`,
`fold<i>/test.txt` and the test split's index.tsv and writes the fixed test episodes of
(params.fold, params.way, params.shot) as design.md's manifests, one `seed<k>.json` per test seed
in params `evaluate.seeds` (the training `seed` does not draw test episodes).

Fetch by key: evaluation reads each sample with one ranged read: index.tsv gives the shard and the
byte offset of the sample's first tar header; the read ends at the next indexed sample of that
shard (or the end of the shard). This works the same for local files, `file://`, HTTP `Range`
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
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import ConfigError
from pipeline.folds import IGNORE_INDEX
from pipeline.io import write_json
from pipeline.shard_format import check_shard_name, encoded_image_problem
from train.shard_io import (
    ShardError,
    check_split_complete,
    join_url,
    parse_tar_fragment,
    read_range,
    read_text,
)
from train.transforms import (
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
    """(image id -> {class id: area_px}, image id -> byte range in its shard) from a split's index.tsv.

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
        classes[row["image_id"]][int(row["class_id"])] = int(row["area_px"])
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


def query_allowed(query_novel: set[int], episode: Sequence[int], protocol: str) -> bool:
    """The query rule of the notes' presets for a query already holding the episode's first class.

    denet: 1-way, exactly one novel class (the episode's); 2-way, no novel class outside the
    episode's. standard: any pair from test.txt (PANet: 1..N of the episode classes, others allowed).
    """
    return query_novel <= set(episode) if protocol == "denet" else True


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
    drawn uniformly from the rest. The query holds the first class (a test.txt pair) and passes
    `query_allowed` (novel classes by index.tsv, i.e. any area > 0); supports of each class are
    `shot` distinct test.txt images of that class, never the query.
    """
    rng = np.random.default_rng([seed, way, shot])
    novel_set = set(novel)
    by_class: dict[int, list[str]] = defaultdict(list)
    for image_id in sorted(pairs):
        for c in pairs[image_id]:
            if c in novel_set:
                by_class[c].append(image_id)
    # novel classes of each candidate image by index.tsv (area > 0), the pair's own classes at least
    novel_of = {
        k: {c for c in image_classes.get(k, {}) if c in novel_set} | {c for c in cs if c in novel_set}
        for k, cs in pairs.items()
    }
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
        queries = [k for k in by_class[first] if query_allowed(novel_of[k], classes, protocol)]
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
) -> dict[str, Any]:
    """The design.md test-episode manifest for one (dataset, fold, way, shot); `shot_key` names the
    params key in errors (`train.shot` for the validation draw)."""
    _, novel = read_fold(folds, fold)
    pairs = read_pairs(read_text(join_url(folds, f"fold{fold}/test.txt")))
    image_classes, _ = read_index(join_url(shards, "test"))
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
        loc = self.locations.get(key)
        if loc is None:
            raise KeyError(f"{key} is not in {self.split_url}/index.tsv")
        url = join_url(self.split_url, loc.shard)
        end = loc.end if loc.end is not None else self.shard_bytes.get(loc.shard)
        try:
            data = read_range(url, loc.start, end)
        except OSError as exc:
            raise ShardError(f"shard {url}: cannot read sample {key}: {exc}") from exc
        if end is not None and len(data) != end - loc.start:
            raise ShardError(
                f"shard {url} is truncated: sample {key} needs bytes {loc.start}..{end}, got {len(data)}"
            )
        sample = parse_tar_fragment(data, key, url)
        for ext in ("jpg", "label.png"):
            if ext not in sample:
                raise ShardError(f"shard {url}: sample {key} has no .{ext} member")
        return sample


def check_sample_size(sample: dict[str, Any]) -> None:
    """ShardError naming shard and key when the sample's image or label header is unreadable or
    exceeds MAX_IMAGE_PIXELS: a decompression bomb is never decoded."""
    for ext in ("jpg", "label.png"):
        problem = encoded_image_problem(sample[ext])
        if problem:
            raise ShardError(f"shard {sample['__url__']}: sample {sample['__key__']}: .{ext}: {problem}")


def eval_query_label(label: np.ndarray, class_ids: Sequence[int], protocol: str) -> np.ndarray:
    """Query label for scoring: 0 bg, k+1 for way k; denet counts void (255) as background."""
    out = episode_label(label, class_ids)
    if protocol == "denet":
        out[out == IGNORE_INDEX] = 0
    return out


class EvalEpisodes(Dataset):
    """The manifest's episodes, fetched by key from the test shards; use `collate_eval`.

    Label handling (notes, "Two presets"): images and support masks are resized to `image_size`.
    denet: query labels resized (nearest) to `image_size`, void counted as background.
    standard: query labels at the original size, void kept as 255 (ignored); `collate_eval` pads
    them to the batch's largest size with 255 and `query_size` gives each (h, w) to crop to.
    `query_full_label` holds the raw dataset ids (novel classes kept) at the query label's size.
    """

    def __init__(
        self, manifest: dict[str, Any], split_url: str, image_size: int, protocol: str, reduced: bool = True
    ) -> None:
        self.episodes = manifest["episodes"]
        self.way, self.shot = manifest["way"], manifest["shot"]
        self.reader = SampleReader(split_url)
        self.image_size, self.protocol, self.reduced = image_size, protocol, reduced

    def __len__(self) -> int:
        return len(self.episodes)

    def _load(self, key: str, keep_label_size: bool) -> tuple[np.ndarray, np.ndarray]:
        sample = self.reader.fetch(key)
        check_sample_size(sample)
        img = decode_image(sample["jpg"], self.image_size, self.reduced)
        label = decode_label(sample["label.png"])
        img, small = resize_pair(img, label, self.image_size)
        assert small is not None
        return np.asarray(img, dtype=np.uint8), np.asarray(
            label if keep_label_size else small, dtype=np.uint8
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        ep = self.episodes[i]
        img, label = self._load(ep["query"], keep_label_size=self.protocol == "standard")
        s_imgs, s_masks = [], []
        for c, keys in zip(ep["classes"], ep["supports"], strict=True):
            for k in keys:
                si, sl = self._load(k, keep_label_size=False)
                s_imgs.append(si)
                s_masks.append(binary_mask(sl, c, ep["classes"]))
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
    `device` first (`train.transforms.decode_batch_images`).
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
