"""Shared by HSNet's golden file maker and its parity test: the reference, the cases, the seeded weights.

The episodes are the baseline golden inputs (tests/data/golden/inputs.npz, 65 px); the weights are drawn
by `baseline_golden.seeded_state` on this project's module (GroupNorm weights then shifted by 1, so the
4D blocks' activations are not scaled down 10x per layer; the foreground bias by FG_BIAS_SHIFT) and
transplanted into the release's.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn as nn
from baseline_golden import GOLDEN_DIR, seeded_state

from fss_model import build_model

REFERENCE = ("juhongm999/hsnet", "6b1bc12b3ff9f3950f49c55ab6f089e8d9e0d191")
GOLDEN = GOLDEN_DIR / "hsnet.npz"
COMMAND = "python tests/golden/make_hsnet_golden.py --hsnet <juhongm999/hsnet checkout>"
SEED = 28
# case -> (this project's constructor kwargs, the release's backbone, use_original_imgsize)
CASES: dict[str, dict[str, Any]] = {
    "resnet50": {"backbone": "resnet50_hsnet", "use_original_imgsize": True},
    "vgg16": {"backbone": "vgg16_hsnet", "use_original_imgsize": False},
}
# Added to the foreground bias of the last decoder conv: with the seeded weights the foreground logit
# leads by ~0.36 / 0.39 on average on the golden episodes (every pixel foreground, so the 5-shot vote
# would test nothing); shifted, about half of the pixels go each way and the votes differ between shots
FG_BIAS_SHIFT = {"resnet50_hsnet": -0.36, "vgg16_hsnet": -0.39}
RELEASE_BACKBONE = {"resnet50_hsnet": "resnet50", "vgg16_hsnet": "vgg16"}
SUB = 4  # image-size outputs are stored at every 4th pixel


def seeded_hsnet(kwargs: dict[str, Any]) -> nn.Module:
    """HSNet built through the registry (as `dvc repro` builds it) with the golden weights, in eval mode."""
    model = seeded_state(build_model("hsnet", **kwargs), SEED)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.add_(1.0)
        model.learner.decoder2[-1].bias[1] += FG_BIAS_SHIFT[kwargs["backbone"]]
    return model.eval()


@functools.cache
def cached_hsnet(case: str) -> nn.Module:
    return seeded_hsnet(CASES[case])


def release_prefixes() -> list[tuple[str, str]]:
    """Release tensor-name prefix -> this project's (`transplant`'s mapping)."""
    learner = [
        ("encoder_layer4.", "squeeze.0."),
        ("encoder_layer3.", "squeeze.1."),
        ("encoder_layer2.", "squeeze.2."),
        ("encoder_layer4to3.", "mix.0."),
        ("encoder_layer3to2.", "mix.1."),
        ("decoder1.", "decoder1."),
        ("decoder2.", "decoder2."),
    ]
    return [("backbone.", "backbone."), *((f"hpn_learner.{r}", f"learner.{p}") for r, p in learner)]
