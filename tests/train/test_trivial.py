"""Trivial predictors: model-shaped outputs whose scores are known by hand."""

import numpy as np
import pytest
import torch

from train.metrics import FewShotIoU, score_episode
from train.trivial import TRIVIAL, AllBackground, AllForeground, SupportMask


def _episode(way: int = 2, shot: int = 3):
    masks = torch.zeros(1, way, shot, 4, 4, dtype=torch.int64)
    masks[0, 0, :2, :2, :2] = 1  # 2 of 3 shots vote for the top-left square
    masks[0, 0, 2, 2:, 2:] = 1
    masks[0, 0, 0, 3, 0] = 255
    return torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, way, shot, 3, 4, 4), masks


@pytest.mark.parametrize("name", sorted(TRIVIAL))
def test_output_matches_model_contract(name):
    q, s, m = _episode()
    out = TRIVIAL[name]()(q, s, m, torch.tensor([[3, 4]]))
    assert out["way_logits"].shape == (1, 2, 2, 8, 8) and out["way_logits"].dtype == torch.float32


def test_predictions_by_hand():
    q, s, m = _episode()
    cls = torch.tensor([[3, 4]])
    fg = AllForeground()(q, s, m, cls)["way_logits"].argmax(2)
    bg = AllBackground()(q, s, m, cls)["way_logits"].argmax(2)
    sup = SupportMask()(q, s, m, cls)["way_logits"].argmax(2)
    assert fg.all() and not bg.any()
    expect = torch.zeros(8, 8, dtype=torch.int64)
    expect[:4, :4] = 1  # majority of shots, nearest-resized 4 -> 8
    assert torch.equal(sup[0, 0], expect) and not sup[0, 1].any()
    # scored by the metric: all-foreground IoU = object fraction, all-background = 0
    label = np.zeros((8, 8), int)
    label[:2, :] = 1
    for pred, want in ((fg, 25.0), (bg, 0.0), (sup, 100 * 8 / 24)):
        metric = FewShotIoU()
        score_episode(metric, pred[0].numpy(), label, [3, 4], "standard")
        assert metric.compute()["miou"] == pytest.approx(want)
