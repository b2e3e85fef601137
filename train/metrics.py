"""Few-shot segmentation metric: per-class foreground IoU sums (mIoU) and FB-IoU (docs/protocol.md)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from pipeline.protocol import protocol_rules, void_as_background
from pipeline.shard_format import IGNORE_INDEX

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def eval_target(label: ArrayLike, protocol: str) -> ArrayLike:
    """The label a protocol scores: void (255) counted as background (`eval_void_background`) or ignored."""
    return void_as_background(label) if protocol_rules(protocol).eval_void_background else label


def _counts(pred: ArrayLike, gt: ArrayLike) -> tuple[int, int, int, int]:
    """(I_fg, U_fg, I_bg, U_bg) of one binary map over the pixels whose gt is not IGNORE_INDEX."""
    p = _as_numpy(pred)
    g = _as_numpy(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same shape")
    valid = g != IGNORE_INDEX
    pf = (p == 1) & valid
    gf = (g == 1) & valid
    pb = (p == 0) & valid
    gb = (g == 0) & valid
    return (
        int((pf & gf).sum()),
        int((pf | gf).sum()),
        int((pb & gb).sum()),
        int((pb | gb).sum()),
    )


def binary_iou(pred: ArrayLike, gt: ArrayLike) -> float:
    """Foreground IoU (0..100) of one binary map; NaN when prediction and ground truth are both empty."""
    i_fg, u_fg, _, _ = _counts(pred, gt)
    return 100.0 * i_fg / u_fg if u_fg else float("nan")


class FewShotIoU:
    """Accumulates intersections and unions per class over episodes, then takes the ratios.

    `update(pred, gt, class_id)` takes one way of one episode: integer HxW maps with 1 foreground,
    0 background and 255 ignore (the caller applies the protocol with `eval_target`). A way whose
    class is absent from the query (no foreground pixel in `gt`) adds nothing.
    """

    def __init__(self) -> None:
        self.inter_fg: dict[int, int] = defaultdict(int)
        self.union_fg: dict[int, int] = defaultdict(int)
        self.inter_bg: dict[int, int] = defaultdict(int)
        self.union_bg: dict[int, int] = defaultdict(int)
        self.count: dict[int, int] = defaultdict(int)

    def update(self, pred: ArrayLike, gt: ArrayLike, class_id: int) -> bool:
        """Add one way's binary map; returns False (and adds nothing) when its class is absent."""
        if not (_as_numpy(gt) == 1).any():
            return False
        i_fg, u_fg, i_bg, u_bg = _counts(pred, gt)
        c = int(class_id)
        self.inter_fg[c] += i_fg
        self.union_fg[c] += u_fg
        self.inter_bg[c] += i_bg
        self.union_bg[c] += u_bg
        self.count[c] += 1
        return True

    def compute(self) -> dict:
        """{"miou", "fb_iou", "per_class"} in percent; per_class maps class id -> IoU (sums first)."""
        classes = sorted(self.count)
        per_class = {c: 100.0 * self.inter_fg[c] / max(self.union_fg[c], 1) for c in classes}
        if not classes:
            return {"miou": float("nan"), "fb_iou": float("nan"), "per_class": {}}
        fg = sum(self.inter_fg[c] for c in classes) / max(sum(self.union_fg[c] for c in classes), 1)
        bg = sum(self.inter_bg[c] for c in classes) / max(sum(self.union_bg[c] for c in classes), 1)
        return {
            "miou": float(np.mean(list(per_class.values()))),
            "fb_iou": 100.0 * (fg + bg) / 2.0,
            "per_class": per_class,
        }

    _SUMS = ("inter_fg", "union_fg", "inter_bg", "union_bg", "count")

    def max_class_id(self) -> int:
        """The largest class id scored so far (-1 before any update)."""
        return max(self.count, default=-1)

    def sums_tensor(self, size: int) -> torch.Tensor:
        """The sums as int64 [5, size]: one row per sum, one column per class id (for an all-reduce)."""
        out = torch.zeros(len(self._SUMS), size, dtype=torch.int64)
        for row, name in enumerate(self._SUMS):
            for c, v in getattr(self, name).items():
                out[row, c] = v
        return out

    def load_sums_tensor(self, sums: torch.Tensor) -> None:
        """Replace the sums with a `sums_tensor` layout (e.g. summed over ranks); unseen classes stay out."""
        rows = sums.tolist()
        for row, name in enumerate(self._SUMS):
            setattr(self, name, defaultdict(int, {c: v for c, v in enumerate(rows[row]) if rows[-1][c]}))

    def merge(self, other: FewShotIoU) -> None:
        """Add another accumulator's sums (e.g. from a parallel worker)."""
        for name in self._SUMS:
            mine, theirs = getattr(self, name), getattr(other, name)
            for c, v in theirs.items():
                mine[c] += v


def score_episode(
    metric: FewShotIoU, way_preds: ArrayLike, query_label: ArrayLike, class_ids: list[int], protocol: str
) -> list[float]:
    """Score every way of one episode under its own class; returns each way's IoU (NaN if skipped).

    `way_preds` [way, H, W] binary maps; `query_label` [H, W] with 0 bg, 1..way the episode's
    classes and 255 void (counted as background or ignored by `protocol`).
    """
    label = _as_numpy(eval_target(query_label, protocol))
    preds = _as_numpy(way_preds)
    ious = []
    for w, class_id in enumerate(class_ids):
        gt = np.where(label == IGNORE_INDEX, IGNORE_INDEX, (label == w + 1).astype(label.dtype))
        added = metric.update(preds[w], gt, int(class_id))
        ious.append(binary_iou(preds[w], gt) if added else float("nan"))
    return ious
