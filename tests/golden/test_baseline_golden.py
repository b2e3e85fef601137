"""Parity with the reference implementations: each baseline against its golden file (tests/data/golden/).

The golden files were made by running the references' own modules (DENet's CANet, PGNet and AMP; PANet;
SG-One) with this project's weights transplanted (tests/golden/make_baseline_golden.py). Here the
project's module is rebuilt with the same seeded weights and run on the same episodes; forward outputs
and losses must agree within `TOLERANCE` (1e-4). A missing golden file is an error, never a skip.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from baseline_golden import (
    GOLDEN_DIR,
    INPUTS,
    REFERENCES,
    TOLERANCE,
    VOID,
    disable_dropout,
    episode_subset,
    normalize_images,
    read_golden,
    seeded_state,
    state_digest,
)

from fss_model import build_model
from fss_model.pairwise import encode_episode
from train.stream.transforms import binary_mask, episode_label

SUB = 4  # image-size outputs are stored at every 4th pixel


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return read_golden(INPUTS)[1]


@pytest.fixture(autouse=True)
def _no_grad():
    """Values only: no autograd graph (BatchNorm still updates its running statistics in train mode)."""
    with torch.no_grad():
        yield


def golden(method: str) -> tuple[dict, dict[str, np.ndarray]]:
    head, arrays = read_golden(GOLDEN_DIR / f"{method}.npz")
    repo, commit = REFERENCES["denet" if method in ("canet", "pgnet", "amp") else method]
    assert (head["reference"], head["commit"]) == (repo, commit)
    return head, arrays


@functools.cache
def _seeded(method: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    head = golden(method)[0]
    model = seeded_state(build_model(method, **head["model_kwargs"]), head["seed"])
    assert state_digest(model) == head["weights_sha256"], (
        f"{method}'s parameters (names or shapes) changed since its golden file was made: "
        f"regenerate it with {head['command']}"
    )
    return model, copy.deepcopy(model.state_dict())


def seeded_model(head: dict) -> torch.nn.Module:
    """The method's module with the golden file's weights (built once, its state reset at every call)."""
    model, state = _seeded(head["method"])
    model.load_state_dict(state)
    return model


def batch(ep: dict[str, np.ndarray], query_label: np.ndarray) -> dict[str, torch.Tensor]:
    """The episodes as this project's sampler hands them over under `protocol: denet` (support void ->
    background, the episode's other classes 255 in a way's support mask)."""
    full = np.where(ep["support_full"] == VOID, 0, ep["support_full"])
    b, way, shot = full.shape[:3]
    masks = np.stack([
        binary_mask(full[i, w, k], int(ep["class_ids"][i, w]), ep["class_ids"][i].tolist())
        for i in range(b) for w in range(way) for k in range(shot)
    ]).reshape(full.shape)  # fmt: skip
    return {
        "query_img": normalize_images(ep["query_img"]),
        "support_imgs": normalize_images(ep["support_imgs"]),
        "support_masks": torch.from_numpy(masks.astype(np.int64)),
        "class_ids": torch.from_numpy(ep["class_ids"]),
        "query_label": torch.from_numpy(query_label.astype(np.int64)),
        "query_full_label": torch.from_numpy(ep["query_full"].astype(np.int64)),
    }


def binary_query(ep: dict[str, np.ndarray]) -> np.ndarray:
    """The releases' 1-way query mask: 1 = the episode's class, else 0 (void too)."""
    return (ep["query_full"] == ep["class_ids"][:, :1, None]).astype(np.int64)


def forward(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return model(b["query_img"], b["support_imgs"], b["support_masks"], b["class_ids"])


def close(got: torch.Tensor | float, expected: np.ndarray, what: str) -> None:
    got_np = np.asarray(got.detach().numpy() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64).reshape(got_np.shape)
    err = float(np.abs(got_np - expected).max())
    assert err <= TOLERANCE, f"{what}: max abs error {err:.3g} > {TOLERANCE}"


def setting(case: str) -> tuple[int, int]:
    way, shot = case.split("_")[1].rstrip("s").split("w")
    return int(way), int(shot)


# ------------------------------------------------------------------------------- DENet's CANet / PGNet


@pytest.mark.parametrize("method", ["canet", "pgnet"])
def test_canet_pgnet_match_the_denet_release(method: str, inputs):
    head, arrays = golden(method)
    for case in head["cases"]:
        way, shot = setting(case)
        ep = episode_subset(inputs, way, shot)
        b = batch(ep, binary_query(ep))
        model = seeded_model(head)
        if case.startswith("eval"):
            out = forward(model.eval(), b)
            close(out["pair_logits"], arrays[f"{case}/pair_logits"], f"{method} {case} pair logits")
            if way > 1:  # the release's process_nway on the label-size logits
                close(
                    out["way_logits"][..., ::SUB, ::SUB], arrays[f"{case}/way_logits_sub"], f"{method} {case}"
                )
        else:  # BatchNorm on batch statistics: query and support passes as the release runs them
            out = forward(disable_dropout(model).train(), b)
            close(out["pair_logits"], arrays[f"{case}/pair_logits"], f"{method} {case} pair logits")
            close(model.loss(out, b)["loss"], arrays[f"{case}/loss"], f"{method} {case} loss")
            bn = model.encoder.backbone.layer3[5].bn3
            close(bn.running_mean, arrays[f"{case}/running_mean"], f"{method} {case} BN running mean")


# ------------------------------------------------------------------------------------------- DENet AMP


def test_amp_matches_the_denet_release_including_the_imprinting_drift(inputs):
    head, arrays = golden("amp")
    assert head["model_kwargs"]["imprinting"] == "release"
    model = seeded_model(head)
    # training: plain segmentation of the queries, CE against the base-class label
    ep = episode_subset(inputs, 1, 1)
    b = batch(ep, binary_query(ep))
    b["query_full_label"] = torch.from_numpy(arrays["train/label"].astype(np.int64))
    out = forward(model.train(), b)
    close(out["base_logits"], arrays["train/base_logits"], "amp training logits")
    close(model.loss(out, b)["loss"], arrays["train/loss"], "amp training loss")
    # test: two batches in a row; the second starts from the background rows the first wrote back
    model.eval()
    for case in ("eval_1w1s", "eval_1w5s"):
        ep = episode_subset(inputs, *setting(case))
        out = forward(model, batch(ep, binary_query(ep)))
        close(out["logits_full"], arrays[f"{case}/logits_full"], f"amp {case} logits")
        close(out["way_logits"][:, 0], arrays[f"{case}/binary_logits"], f"amp {case} binary logits")
        rows = torch.stack([c.weight[0].flatten()[:256] for c in model.classifiers])
        close(rows, arrays[f"{case}/background_rows"], f"amp {case} background rows after the batch")


# ----------------------------------------------------------------------------------------------- PANet


def test_panet_matches_its_release_for_1_and_2_ways(inputs):
    head, arrays = golden("panet")
    for case in head["cases"]:
        way, shot = setting(case)
        ep = episode_subset(inputs, way, shot)
        labels = np.stack([episode_label(ep["query_full"][i], ep["class_ids"][i].tolist()) for i in range(2)])
        b = batch(ep, labels)
        model = seeded_model(head).train()
        out = forward(model, b)
        close(out["logits"][..., ::SUB, ::SUB], arrays[f"{case}/logits_sub"], f"panet {case} logits")
        losses = model.loss(out, b)
        close(losses["ce"], arrays[f"{case}/ce"], f"panet {case} query loss")
        close(losses["align"], arrays[f"{case}/align"], f"panet {case} alignment loss")


# ---------------------------------------------------------------------------------------------- SG-One


def test_sgone_matches_its_release(inputs):
    head, arrays = golden("sgone")
    model = seeded_model(head).train()
    for case in head["cases"]:
        ep = episode_subset(inputs, *setting(case))
        b = batch(ep, binary_query(ep))
        out = forward(model, b)
        query, supports = encode_episode(model.encode, b["query_img"], b["support_imgs"], separate=False)
        exit_logits = model.pair_logits(query, supports[:, 0], b["support_masks"][:, 0])
        close(exit_logits, arrays[f"{case}/exit_logits"], f"sgone {case} exit logits (padding 1)")
        softmax = out["pair_logits"][:, 0].softmax(dim=1)[..., ::SUB, ::SUB]
        close(softmax, arrays[f"{case}/softmax_sub"], f"sgone {case} prediction")
        if f"{case}/loss" in arrays:
            close(model.loss(out, b)["loss"], arrays[f"{case}/loss"], f"sgone {case} loss")
