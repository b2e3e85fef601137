"""Parity with PFENet's release: the registry's `pfenet` against tests/data/golden/pfenet.npz.

The golden file holds what dvlab-research/PFENet's own `model/PFENet.py` computed on the stored episodes
with this project's seeded weights transplanted (tests/golden/make_pfenet_golden.py): the deep-stem
ResNet-50 with the PASCAL scales (60, 30, 15, 8) and the VGG-16 BN with fractional scales, in evaluation
(1- and 5-shot logits) and in training (dropout off, backbone BN on batch statistics: main and auxiliary
losses, the main and every scale's auxiliary logits, a BN running mean). Within `TOLERANCE` (1e-4); a
missing golden file is an error, never a skip.
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
from fss_model.layers import upsample

NUM_CLASSES = 21  # what train.train passes for PASCAL (unused by PFENet)


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return read_golden(INPUTS)[1]


@functools.cache
def golden() -> tuple[dict, dict[str, np.ndarray]]:
    head, arrays = read_golden(GOLDEN_DIR / "pfenet.npz")
    assert (head["reference"], head["commit"]) == REFERENCES["pfenet"]
    return head, arrays


@functools.cache
def _seeded(variant: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    spec = golden()[0]["variants"][variant]
    # built as `train.train` builds it: the registry, num_classes and the backbone keys, then the extras
    model = seeded_state(build_model("pfenet", num_classes=NUM_CLASSES, **spec["model_kwargs"]), spec["seed"])
    assert state_digest(model) == spec["sha256"], (
        f"pfenet ({variant})'s parameters changed since its golden file was made: regenerate it with "
        f"{golden()[0]['command']}"
    )
    return model, copy.deepcopy(model.state_dict())


def seeded_model(variant: str) -> torch.nn.Module:
    model, state = _seeded(variant)
    model.load_state_dict(state)
    return model


def episode_batch(inputs: dict[str, np.ndarray], shot: int) -> dict[str, torch.Tensor]:
    """1-way episodes as the sampler hands them over under `protocol: standard` (void stays 255)."""
    ep = episode_subset(inputs, 1, shot)
    cls = ep["class_ids"][:, 0]

    def binary(full: np.ndarray) -> torch.Tensor:
        c = cls.reshape(cls.shape + (1,) * (full.ndim - 1))
        return torch.from_numpy(np.where(full == VOID, VOID, full == c).astype(np.int64))

    return {
        "query_img": normalize_images(ep["query_img"]),
        "support_imgs": normalize_images(ep["support_imgs"]),
        "support_masks": binary(ep["support_full"]),
        "class_ids": torch.from_numpy(ep["class_ids"]),
        "query_label": binary(ep["query_full"]),
    }


def forward(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> dict:
    return model(b["query_img"], b["support_imgs"], b["support_masks"], b["class_ids"])


def close(got: torch.Tensor, expected: np.ndarray, what: str) -> None:
    got_np = got.detach().double().numpy()
    expected = np.asarray(expected, dtype=np.float64).reshape(got_np.shape)
    err = float(np.abs(got_np - expected).max())
    assert err <= TOLERANCE, f"{what}: max abs error {err:.3g} > {TOLERANCE}"


def cases(mode: str) -> list[str]:
    return [c for c in golden()[0]["cases"] if f"_{mode}_" in c]


def case_setting(case: str) -> tuple[str, int]:
    variant, _, ws = case.split("_")
    return variant, int(ws.split("w")[1].rstrip("s"))


@pytest.mark.parametrize("case", cases("eval"))
def test_pfenet_eval_logits_match_the_release(case: str, inputs):
    variant, shot = case_setting(case)
    _, arrays = golden()
    with torch.no_grad():
        out = forward(seeded_model(variant).eval(), episode_batch(inputs, shot))
    assert out["way_logits"].shape[1] == 1
    close(out["way_logits"][:, 0], arrays[f"{case}/logits"], f"pfenet {case} logits")


@pytest.mark.parametrize("case", cases("train"))
def test_pfenet_training_forward_and_losses_match_the_release(case: str, inputs):
    variant, shot = case_setting(case)
    _, arrays = golden()
    model = disable_dropout(seeded_model(variant)).train()
    b = episode_batch(inputs, shot)
    with torch.no_grad():
        out = forward(model, b)
        losses = model.loss(out, b)
    close(losses["main"], arrays[f"{case}/main_loss"], f"pfenet {case} main loss")
    close(losses["aux"], arrays[f"{case}/aux_loss"], f"pfenet {case} auxiliary loss")
    # the release's `cls` output at the feature size, upsampled as its forward does (zoom 8)
    main = upsample(torch.from_numpy(arrays[f"{case}/cls"]), b["query_img"].shape[-2:])
    close(out["pair_logits"][:, 0], main.numpy(), f"pfenet {case} main logits")
    assert len(out["aux_logits"]) == len(model.pyramid_bins)
    for k, aux in enumerate(out["aux_logits"]):
        close(aux[:, 0], arrays[f"{case}/aux{k}"], f"pfenet {case} auxiliary logits of scale {k}")
    bn = model.backbone.layer3[-1].bn3 if variant == "resnet" else model.backbone.features[41]
    close(bn.running_mean, arrays[f"{case}/running_mean"], f"pfenet {case} BN running mean (BN batches)")
