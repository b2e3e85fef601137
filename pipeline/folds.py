"""Fold class sets for PASCAL-5i and COCO-20i, and the training-label rule for novel classes.

Facts (docs/protocol.md, "Class ids, folds and sources"): PASCAL-5i fold i holds out classes 5i+1..5i+5.
COCO-20i interleaved (FWB; used by DENet, HSNet, BAM) holds out {i+1, i+5, ..., i+77};
contiguous (PANet) holds out 20i+1..20i+20. Class ids are the dataset ids (VOC 1..20, COCO 1..80).

The folds stage (`python -m pipeline.folds --shards DIR --out DIR`) turns the per-class index into
per-fold (image, class) pair lists (docs/protocol.md, "Data"):
- train: base-class pairs that pass the presence rule, from the train split; an image with no base
  class left gives no pair, so it is dropped (denet); with `drop_novel_images` (BAM's option for
  the standard preset) an image showing any pixel of a novel class is dropped too;
- test: every novel-class pair that passes the presence rule, from the test split (the DENet
  release's 2-way pool, `unlimited_item_class.pair`); the per-way query and support rules of each
  protocol are applied when episodes are drawn (`train.stream.draw.episode_pools`).
The presence rule reads index.tsv's presence columns (class pixels at `data.presence_size`).
The void / novel rules of training masks are `training_label` and `binary_label` below, applied by
the sampler.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.config import NUM_CLASSES, ConfigError, load_params
from pipeline.io import atomic_write, write_json
from pipeline.protocol import protocol_rules, void_as_background
from pipeline.shard_format import index_rows

NUM_FOLDS = 4


def novel_classes(dataset: str, fold: int, coco_split: str = "interleaved") -> list[int]:
    """The held-out (test) class ids of `fold`."""
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold {fold} is out of range 0..{NUM_FOLDS - 1}")
    num = NUM_CLASSES[dataset]
    per_fold = num // NUM_FOLDS
    if dataset == "coco" and coco_split == "interleaved":
        return list(range(fold + 1, num + 1, NUM_FOLDS))
    if coco_split not in ("interleaved", "contiguous"):
        raise ValueError(f"coco_split {coco_split!r} is not interleaved | contiguous")
    return list(range(per_fold * fold + 1, per_fold * (fold + 1) + 1))


def fold_classes(dataset: str, fold: int, coco_split: str = "interleaved") -> tuple[list[int], list[int]]:
    """(base, novel) class ids of `fold`; base = every other foreground class."""
    novel = novel_classes(dataset, fold, coco_split)
    base = [c for c in range(1, NUM_CLASSES[dataset] + 1) if c not in set(novel)]
    return base, novel


VOIDS = ("background", "ignore")


def _void(label: np.ndarray, void: str) -> np.ndarray:
    if void not in VOIDS:
        raise ValueError(f"void rule {void!r} is not background | ignore")
    return void_as_background(label) if void == "background" else label.copy()


def training_label(label: np.ndarray, novel: list[int], protocol: str, void: str = "ignore") -> np.ndarray:
    """The full label a training query shows (the multi-class loss's target).

    void (255, VOC's border band; COCO crowd under coco_crowd=ignore): background with
    `void="background"` (the DENet release maps 255 to 0 before anything else, voc_sbd.py:207-211),
    else kept as 255; then novel classes become 255 (denet, voc_sbd.py:212-217) or background (standard).
    """
    out = _void(label, void)
    out[np.isin(label, novel)] = protocol_rules(protocol).train_novel_label
    return out


def binary_label(label: np.ndarray, novel: list[int], void: str = "ignore") -> np.ndarray:
    """The label that a training episode's binary masks (query and supports) are cut from.

    Novel classes are background: the release's binary masks are `mask == class` of its fold mask
    (voc_sbd.py:511-514, 537-540), so a novel object counts as background there, as under the
    standard protocol; void follows `void` as in `training_label`.
    """
    out = _void(label, void)
    out[np.isin(label, novel)] = 0
    return out


# ---------------------------------------------------------------- pair lists


def iter_index_images(path: str | Path) -> Iterator[tuple[str, dict[int, tuple[int, int]]]]:
    """(image id, {class id: (presence_px, presence_total)}) per image of an `index.tsv`, streamed.

    The shard writer emits an image's rows together, so memory stays flat for any dataset size.
    """
    with open(path) as handle:
        rows = (row for _, row in index_rows(handle, str(path)))
        for image_id, group in itertools.groupby(rows, key=lambda r: r["image_id"]):
            yield image_id, {r["class_id"]: (r["presence_px"], r["presence_total"]) for r in group}


def pair_name(image_id: str, class_id: int) -> str:
    """HSNet list style: `<image_id>__<class:02d>`."""
    return f"{image_id}__{class_id:02d}"


def _present(stats: tuple[int, int], min_fraction: float, min_pixels: int) -> bool:
    """pixels >= min_pixels and pixels / total >= min_fraction, the float division the release makes."""
    area, total = stats
    return area >= min_pixels and area / total >= min_fraction


def train_classes(
    classes: dict[int, tuple[int, int]],
    novel: list[int],
    min_fraction: float,
    min_pixels: int,
    drop_novel_images: bool = False,
) -> list[int]:
    """Base classes of one training image that give pairs (empty = image dropped)."""
    if drop_novel_images and any(c in novel for c in classes):
        return []
    return [c for c, s in sorted(classes.items()) if c not in novel and _present(s, min_fraction, min_pixels)]


def query_classes(
    classes: dict[int, tuple[int, int]], novel: list[int], min_fraction: float, min_pixels: int
) -> list[int]:
    """Novel classes of one test image that pass the presence rule (its test.txt pairs)."""
    return [c for c in sorted(classes) if c in novel and _present(classes[c], min_fraction, min_pixels)]


def write_folds(
    shards_dir: str | Path,
    out: str | Path,
    *,
    dataset: str,
    protocol: str,
    coco_split: str = "interleaved",
    min_fraction: float = 0.0,
    min_pixels: int = 0,
    drop_novel_images: bool = False,
) -> dict[int, tuple[int, int]]:
    """`fold<i>.json` and `fold<i>/{train,test}.txt` for all folds; returns {fold: (#train, #test)}."""
    shards_dir, out = Path(shards_dir), Path(out)
    for split in ("train", "test"):
        if not (shards_dir / split / "manifest.json").is_file():
            raise FileNotFoundError(f"{shards_dir / split}: no manifest.json (shards stage unfinished)")
    folds = [fold_classes(dataset, f, coco_split) for f in range(NUM_FOLDS)]
    pairs: dict[str, list[list[str]]] = {"train": [[] for _ in folds], "test": [[] for _ in folds]}
    for image_id, classes in iter_index_images(shards_dir / "train" / "index.tsv"):
        for f, (_, novel) in enumerate(folds):
            for c in train_classes(classes, novel, min_fraction, min_pixels, drop_novel_images):
                pairs["train"][f].append(pair_name(image_id, c))
    for image_id, classes in iter_index_images(shards_dir / "test" / "index.tsv"):
        for f, (_, novel) in enumerate(folds):
            for c in query_classes(classes, novel, min_fraction, min_pixels):
                pairs["test"][f].append(pair_name(image_id, c))
    counts = {}
    for f, (base, novel) in enumerate(folds):
        for split in ("train", "test"):
            with atomic_write(out / f"fold{f}" / f"{split}.txt", "w") as handle:
                handle.writelines(line + "\n" for line in sorted(pairs[split][f]))
        info = {"fold": f, "dataset": dataset, "protocol": protocol, "coco_split": coco_split}
        info |= {"novel": novel, "base": base, "min_fraction": min_fraction, "min_pixels": min_pixels}
        info |= {"drop_novel_images": drop_novel_images}
        info |= {"num_train_pairs": len(pairs["train"][f]), "num_test_pairs": len(pairs["test"][f])}
        write_json(out / f"fold{f}.json", info)  # last: its presence means the fold is complete
        counts[f] = (len(pairs["train"][f]), len(pairs["test"][f]))
    return counts


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.folds --shards DIR --out DIR`; rules from params.yaml (dataset, protocol, data)."""
    ap = argparse.ArgumentParser(description="per-fold class sets and (image, class) pair lists")
    ap.add_argument("--shards", required=True, help="the shards stage's output (holds train/ and test/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        p = load_params(args.params)
    except ConfigError as exc:
        print(f"folds: {exc}", file=sys.stderr)
        return 2
    counts = write_folds(
        args.shards,
        args.out,
        dataset=p.dataset,
        protocol=p.protocol,
        coco_split=p.data.coco_split,
        min_fraction=float(p.data.min_fraction),
        min_pixels=int(p.data.min_pixels),
        drop_novel_images=p.data.drop_novel_images,
    )
    for f, (n_train, n_test) in counts.items():
        print(f"fold {f}: {n_train} train pairs, {n_test} test pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
