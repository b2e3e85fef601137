"""Spread of a test score: mean +/- std over test seeds and a bootstrap interval over episodes.

A score cell is a set of evaluations: one per (fold, test seed), all of the same model and setting.
Its statistic is the mean over folds of the mean over seeds of mIoU. The bootstrap resamples whole
episodes of every evaluation and recomputes mIoU from the resampled per-class intersection and union
sums, the formula of `train.metrics.FewShotIoU` (sums first, then the ratio; never a mean of
per-episode IoUs). Seeds of one fold draw from the same images, so treating them as independent
samples makes the interval, if anything, a little narrow. numpy only; a fixed seed makes it repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
SUMS = ("i_fg", "u_fg", "i_bg", "u_bg")


@dataclass
class EpisodeSums:
    """Per-episode sums of one evaluation: one record per scored way (a way whose class is absent
    from the query adds none), `episodes` counts every episode (a resample draws from all of them)."""

    episodes: int
    episode: np.ndarray  # [R] index of the record's episode, 0..episodes-1
    class_id: np.ndarray  # [R]
    i_fg: np.ndarray  # [R] int64 each
    u_fg: np.ndarray
    i_bg: np.ndarray
    u_bg: np.ndarray

    @classmethod
    def from_records(cls, episodes: int, records: Sequence[Sequence[int]]) -> EpisodeSums:
        """`records`: (episode, class_id, i_fg, u_fg, i_bg, u_bg) tuples."""
        cols = np.asarray(records, dtype=np.int64).reshape(-1, 6).T
        return cls(episodes, *cols)

    def to_json(self) -> dict[str, Any]:
        """Columns as lists (compact in a JSON file)."""
        names = ("episode", "class_id", *SUMS)
        return {"episodes": self.episodes, **{n: getattr(self, n).tolist() for n in names}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeSums:
        cols = [np.asarray(data[n], dtype=np.int64) for n in ("episode", "class_id", *SUMS)]
        return cls(int(data["episodes"]), *cols)

    def matrices(self) -> tuple[list[int], dict[str, np.ndarray]]:
        """(classes, {sum name or "count": [episodes, classes] int64}) for resampling by episode."""
        classes = sorted({int(c) for c in self.class_id})
        column = np.searchsorted(classes, self.class_id)
        out = {}
        for name in (*SUMS, "count"):
            m = np.zeros((self.episodes, len(classes)), dtype=np.int64)
            values = np.ones_like(self.episode) if name == "count" else getattr(self, name)
            np.add.at(m, (self.episode, column), values)
            out[name] = m
        return classes, out


def miou_from_sums(i_fg: np.ndarray, u_fg: np.ndarray, count: np.ndarray) -> np.ndarray:
    """mIoU (percent) over the last axis (classes): classes with count 0 are left out, as in FewShotIoU."""
    iou = 100.0 * i_fg / np.maximum(u_fg, 1)
    scored = count > 0
    n = scored.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (iou * scored).sum(axis=-1) / n, np.nan)


def fb_iou_from_sums(sums: dict[str, np.ndarray]) -> np.ndarray:
    """FB-IoU (percent) over the last axis: foreground and background sums over the scored classes."""
    fg = sums["i_fg"].sum(axis=-1) / np.maximum(sums["u_fg"].sum(axis=-1), 1)
    bg = sums["i_bg"].sum(axis=-1) / np.maximum(sums["u_bg"].sum(axis=-1), 1)
    return 100.0 * (fg + bg) / 2.0


def scores(run: EpisodeSums) -> dict[str, Any]:
    """mIoU, FB-IoU and per-class IoU of all episodes: what FewShotIoU.compute gives for them."""
    classes, m = run.matrices()
    total = {k: v.sum(axis=0) for k, v in m.items()}
    per_class = 100.0 * total["i_fg"] / np.maximum(total["u_fg"], 1)
    return {
        "miou": float(miou_from_sums(total["i_fg"], total["u_fg"], total["count"])),
        "fb_iou": float(fb_iou_from_sums(total)),
        "per_class": {c: float(v) for c, v in zip(classes, per_class, strict=True)},
    }


def mean_and_std(folds: Sequence[dict[int, float]]) -> tuple[float, float]:
    """(mean over folds of the mean over that fold's seeds, std over seeds) of {seed: value} per fold.

    The std is the sample standard deviation (ddof 1) of the per-seed means over the folds that have
    the seed; 0.0 for a single seed.
    """
    mean = float(np.mean([np.mean(list(fold.values())) for fold in folds]))
    seeds = sorted({s for fold in folds for s in fold})
    per_seed = [np.mean([fold[s] for fold in folds if s in fold]) for s in seeds]
    return mean, (float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0)


def bootstrap_miou(
    folds: Sequence[Sequence[EpisodeSums]],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """The `level` percentile interval of the cell statistic under resampling of each run's episodes."""
    rng = np.random.default_rng(seed)
    per_fold = []
    for runs in folds:
        per_seed = []
        for run in runs:
            _, m = run.matrices()
            # how often each episode is drawn in each resample: [samples, episodes]
            draws = rng.multinomial(run.episodes, np.full(run.episodes, 1.0 / run.episodes), size=samples)
            per_seed.append(miou_from_sums(draws @ m["i_fg"], draws @ m["u_fg"], draws @ m["count"]))
        per_fold.append(np.mean(per_seed, axis=0))
    stat = np.mean(per_fold, axis=0)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.nanpercentile(stat, [tail, 100.0 - tail])
    return float(low), float(high)
