"""Fold class sets for PASCAL-5i and COCO-20i, and the training-label rule for novel classes.

Facts (../shared/fss-notes.md section 2): PASCAL-5i fold i holds out classes 5i+1..5i+5.
COCO-20i interleaved (FWB; used by DENet, HSNet, BAM) holds out {i+1, i+5, ..., i+77};
contiguous (PANet) holds out 20i+1..20i+20. Class ids are the dataset ids (VOC 1..20, COCO 1..80).
"""

from __future__ import annotations

import numpy as np

from pipeline.config import NUM_CLASSES

IGNORE_INDEX = 255
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


def training_label(label: np.ndarray, novel: list[int], protocol: str) -> np.ndarray:
    """The label a training query shows: novel classes become 255 (denet) or background (standard)."""
    fill = {"denet": IGNORE_INDEX, "standard": 0}[protocol]
    out = label.copy()
    out[np.isin(label, novel)] = fill
    return out
