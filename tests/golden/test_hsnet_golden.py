"""Parity with HSNet's release (juhongm999/hsnet): this project's `hsnet` against tests/data/golden/hsnet.npz.

The golden file was made by the release's own `HypercorrSqueezeNetwork` with this project's seeded weights
transplanted (tests/golden/make_hsnet_golden.py). Here the registry's HSNet is rebuilt with the same
weights and run on the same episodes: 1-shot logits and loss within `TOLERANCE` (1e-4), the 5-shot vote
mask pixel for pixel. A missing golden file is an error, never a skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from baseline_golden import (
    INPUTS,
    TOLERANCE,
    VOID,
    episode_subset,
    normalize_images,
    read_golden,
    state_digest,
)
from hsnet_golden import CASES, GOLDEN, REFERENCE, SUB, cached_hsnet

from fss_model.hsnet import predict_mask_nshot
from fss_model.layers import upsample
from fss_model.pairwise import combine_ways

SHOTS = 5


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict[str, np.ndarray]]:
    head, arrays = read_golden(GOLDEN)
    assert (head["reference"], head["commit"]) == REFERENCE
    return head, arrays


@pytest.fixture(scope="module")
def episodes() -> dict[str, torch.Tensor]:
    """The golden episodes as this project's sampler hands them over: support masks 1 = the way's class,
    255 = void (the release's masks make void 0: the model must not count it as foreground)."""
    ep = episode_subset(read_golden(INPUTS)[1], 2, SHOTS)
    cls = ep["class_ids"][:, :, None, None, None]
    masks = np.where(ep["support_full"] == VOID, 255, (ep["support_full"] == cls).astype(np.int64))
    query = (ep["query_full"] == ep["class_ids"][:, :1, None]).astype(np.int64)  # void 0, as released
    return {
        "query_img": normalize_images(ep["query_img"]),
        "support_imgs": normalize_images(ep["support_imgs"]),
        "support_masks": torch.from_numpy(masks.astype(np.int64)),
        "class_ids": torch.from_numpy(ep["class_ids"]),
        "query_label": torch.from_numpy(query),
    }


def model_for(case: str, head: dict) -> torch.nn.Module:
    model = cached_hsnet(case)
    assert state_digest(model) == head["cases"][case]["weights_sha256"], (
        f"hsnet's parameters (names or shapes) changed since its golden file was made: regenerate it with "
        f"{head['command']}"
    )
    return model


def run(model: torch.nn.Module, ep: dict[str, torch.Tensor], way: int, shot: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(
            ep["query_img"],
            ep["support_imgs"][:, :way, :shot],
            ep["support_masks"][:, :way, :shot],
            ep["class_ids"][:, :way],
        )


def close(got: torch.Tensor, expected: np.ndarray, what: str) -> None:
    err = float(np.abs(got.double().numpy() - np.asarray(expected, np.float64).reshape(got.shape)).max())
    assert err <= TOLERANCE, f"{what}: max abs error {err:.3g} > {TOLERANCE}"


def sub(x: torch.Tensor, case: str) -> torch.Tensor:
    """Image-size outputs are stored at every SUB-th pixel; decoder-size ones (use_original_imgsize) whole."""
    return x if CASES[case]["use_original_imgsize"] else x[..., ::SUB, ::SUB]


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_shot_logits_and_loss_match_the_release(case: str, golden, episodes):
    head, arrays = golden
    model = model_for(case, head)
    out = run(model, episodes, 1, 1)
    close(sub(out["way_logits"][:, 0], case), arrays[f"{case}/logits"], f"{case} 1-shot logits")
    with torch.no_grad():
        loss = model.loss(out, {"query_label": episodes["query_label"]})["loss"]
    close(loss.reshape(1), arrays[f"{case}/loss"], f"{case} loss")


@pytest.mark.parametrize("case", sorted(CASES))
def test_five_shot_vote_matches_predict_mask_nshot(case: str, golden, episodes):
    head, arrays = golden
    model = model_for(case, head)
    out = run(model, episodes, 1, SHOTS)
    expected = torch.from_numpy(arrays[f"{case}/nshot_mask"].astype(np.int64))
    size = tuple(episodes["query_img"].shape[-2:])
    # the rule on the passes' logits at the release's vote size (the input size here)
    passes = upsample(out["shot_logits"][:, 0].flatten(0, 1), size).unflatten(0, (-1, SHOTS))
    mask = predict_mask_nshot(passes)
    assert 0.2 < float(expected.float().mean()) < 0.8  # the votes decide: not all one class
    assert torch.equal(mask, expected), f"{case}: {int((mask != expected).sum())} pixels differ"
    if not CASES[case]["use_original_imgsize"]:  # the votes at the input size: the way logits' argmax
        pipeline = out["way_logits"][:, 0].argmax(dim=1)
        assert torch.equal(pipeline, expected), f"{case}: {int((pipeline != expected).sum())} pixels differ"


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_way_combines_the_release_one_way_passes(case: str, golden, episodes):
    head, arrays = golden
    out = run(model_for(case, head), episodes, 2, 1)
    release = torch.from_numpy(arrays[f"{case}/way2_logits"])
    close(sub(out["shot_logits"][:, :, 0], case), release.numpy(), f"{case} 2-way passes")
    close(sub(out["way_logits"], case), combine_ways(release).numpy(), f"{case} 2-way logits")
