"""Shared layers: masked average pooling, ASPP, focal loss, resizing, binary targets."""

from __future__ import annotations

import torch
import torch.nn as nn

from fss_model.layers import (
    ASPP,
    IGNORE_INDEX,
    binary_focal_loss,
    binary_targets,
    masked_average_pool,
    safe_cross_entropy,
    upsample,
)


def test_masked_average_pool_downsamples_nearest_and_ignores_255():
    feats = torch.arange(2 * 2 * 2, dtype=torch.float32).view(1, 2, 2, 2)  # channel 0: 0..3, 1: 4..7
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [255, 255, 1, 1], [255, 255, 1, 1]])[None]
    # nearest 4x4 -> 2x2 picks the top-left of each 2x2 cell: [[1, 0], [255, 1]] -> fg at (0,0), (1,1)
    got = masked_average_pool(feats, mask)
    expected = torch.tensor([[(0 + 3) / (2 + 1e-3), (4 + 7) / (2 + 1e-3)]])
    torch.testing.assert_close(got, expected)
    assert torch.equal(masked_average_pool(feats, torch.full((1, 4, 4), IGNORE_INDEX)), torch.zeros(1, 2))


def test_aspp_has_five_branches_no_batchnorm_and_keeps_size():
    aspp = ASPP(8, 16, rates=(6, 12, 18), dropout=0.5).eval()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in aspp.modules())
    convs = [m for m in aspp.modules() if isinstance(m, nn.Conv2d)]
    dilations = sorted(m.dilation[0] for m in convs if m.kernel_size == (3, 3))
    assert dilations == [6, 12, 18]
    assert aspp.project[0].in_channels == 5 * 16
    assert aspp(torch.randn(2, 8, 9, 9)).shape == (2, 16, 9, 9)


def test_binary_focal_loss_matches_the_formula():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]]).T.reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    p = torch.softmax(logits[0, :, 0, :2], dim=0)
    pt = torch.stack([p[0, 0], p[1, 1]])
    weights = torch.tensor([0.25, 0.75])
    expected = -(weights * (1 - pt) ** 2 * pt.log()).sum() / weights.sum()
    torch.testing.assert_close(binary_focal_loss(logits, target), expected)
    assert binary_focal_loss(logits, torch.full_like(target, IGNORE_INDEX)) == 0


def test_cross_entropy_with_every_pixel_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    assert safe_cross_entropy(logits, torch.full((1, 2, 2), IGNORE_INDEX)) == 0
    label = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    reference = nn.functional.cross_entropy(logits, label, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(safe_cross_entropy(logits, label), reference)


def test_upsample_is_bilinear_align_corners():
    x = torch.tensor([[[[0.0, 1.0]]]])
    assert torch.allclose(upsample(x, (1, 3)), torch.tensor([[[[0.0, 0.5, 1.0]]]]))
    assert upsample(x, (1, 2)) is x


def test_binary_targets_per_way():
    label = torch.tensor([[[0, 1, 2, IGNORE_INDEX]]])
    t = binary_targets(label, 2)
    assert t.tolist() == [[[[0, 1, 0, 255]], [[0, 0, 1, 255]]]]
