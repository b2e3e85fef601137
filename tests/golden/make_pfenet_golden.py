"""Make tests/data/golden/pfenet.npz by running PFENet's release (dvlab-research/PFENet `model/PFENet.py`).

    python tests/golden/make_pfenet_golden.py --pfenet /work/scratch/pfenet/PFENet

The release's `PFENet` module is imported from the checkout and built with `pretrained=False` (its
`model/resnet.py` and `model/vgg.py` would read ./initmodel/*.pth); this project's `pfenet` model is built
as the test builds it, its weights drawn by `baseline_golden.seeded_state`, and transplanted tensor by
tensor into the release's module, which then runs on the stored episodes (tests/data/golden/inputs.npz).
Nothing of the release is copied; these patches around a CUDA-era, torch-1.x module only, for the time
of the import and the runs:
  - `torch.Tensor.cuda` returns the tensor itself: `PFENet.forward`'s default arguments are CUDA tensors
    built at import time, and its training branch moves the auxiliary loss with `.cuda()`;
  - `cv2` (imported by `model/PFENet.py`, never called by it) is an empty stub module.
Forward hooks on the release's `inner_cls[i]` and `cls` record the auxiliary and main logits of its
training forward (it returns only the argmax and the two losses there).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # the project and the golden helpers, run from anywhere

from baseline_golden import (  # noqa: E402
    GOLDEN_DIR,
    INPUTS,
    REFERENCES,
    VOID,
    disable_dropout,
    episode_subset,
    normalize_images,
    read_golden,
    seeded_state,
    state_digest,
    write_golden,
)
from make_baseline_golden import checkout_commit, reference, transplant  # noqa: E402

from fss_model import build_model  # noqa: E402

COMMAND = "python tests/golden/make_pfenet_golden.py --pfenet <dvlab-research/PFENet checkout>"
# the release's two configurations: PASCAL (deep-stem ResNet-50, scales 60/30/15/8) and COCO (VGG-16 BN,
# scales as fractions of the map: its 1.0/0.5/0.25/0.125, the last 0.2 here, as the 65 px inputs' 5 x 5
# layer3 map would pool to 0 x 0 at 0.125, which the release refuses)
VARIANTS: dict[str, dict[str, Any]] = {
    "resnet": {"backbone": "resnet50_deep", "frozen": True, "freeze_bn": False},
    "vgg": {
        "backbone": "vgg16_bn_pfenet", "frozen": True, "freeze_bn": False,
        "pyramid_bins": [1.0, 0.5, 0.25, 0.2],
    },
}  # fmt: skip
SEEDS = {"resnet": 28, "vgg": 29}
# (variant, mode, shot) of every stored case
CASES = [
    ("resnet", "eval", 1),
    ("resnet", "eval", 5),
    ("resnet", "train", 1),
    ("resnet", "train", 5),
    ("vgg", "eval", 1),
    ("vgg", "train", 5),
]
VGG_SPLIT = (
    0,
    7,
    14,
    24,
    34,
    43,
)  # the release's get_vgg16_layer: layer i = features[VGG_SPLIT[i]:VGG_SPLIT[i+1]]


def case_tag(variant: str, mode: str, shot: int) -> str:
    return f"{variant}_{mode}_1w{shot}s"


def release_inputs(ep: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The release's `SemData` tensors of 1-way episodes: x, s_x [B, shot, 3, H, W], s_y (1 = the class,
    0 = other, 255 = void), y (the same rule for the query)."""

    def binary(full: np.ndarray, cls: np.ndarray) -> torch.Tensor:
        cls = cls.reshape(cls.shape + (1,) * (full.ndim - cls.ndim))
        label = np.where(full == cls, 1, 0)
        return torch.from_numpy(np.where(full == VOID, VOID, label).astype(np.int64))

    return {
        "x": normalize_images(ep["query_img"]),
        "s_x": normalize_images(ep["support_imgs"][:, 0]),
        "s_y": binary(ep["support_full"][:, 0], ep["class_ids"][:, 0]).float(),
        "y": binary(ep["query_full"], ep["class_ids"][:, 0]),
    }


def prefixes(variant: str) -> list[tuple[str, str]]:
    """Release tensor-name prefixes -> this project's."""
    if variant == "resnet":
        stem = [
            ("layer0.0.", "conv1."),
            ("layer0.1.", "bn1."),
            ("layer0.3.", "conv2."),
            ("layer0.4.", "bn2."),
        ]
        stem += [("layer0.6.", "conv3."), ("layer0.7.", "bn3.")]
        body = [(f"layer{i}.", f"layer{i}.") for i in range(1, 5)]
        pairs = [(r, "backbone." + p) for r, p in stem + body]
    else:
        pairs = [
            (f"layer{i}.{j}.", f"backbone.features.{VGG_SPLIT[i] + j}.")
            for i in range(5)
            for j in range(VGG_SPLIT[i + 1] - VGG_SPLIT[i])
        ]
    head = ["down_query.", "down_supp.", "init_merge.", "alpha_conv.", "beta_conv.", "inner_cls.", "res1."]
    return pairs + [(h, h) for h in [*head, "res2.", "cls."]]


def make(root: Path) -> None:
    commit = checkout_commit(root, "pfenet")
    inputs = read_golden(INPUTS)[1]
    arrays: dict[str, np.ndarray] = {}
    models: dict[str, Any] = {}
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    sys.modules["cv2"] = types.ModuleType("cv2")
    try:
        with reference(root, stubs=("cv2",)):
            from model.PFENet import PFENet as Release

            for variant, kwargs in VARIANTS.items():
                torch.manual_seed(0)
                model = seeded_state(build_model("pfenet", **kwargs), SEEDS[variant])
                models[variant] = {
                    "model_kwargs": kwargs,
                    "seed": SEEDS[variant],
                    "sha256": state_digest(model),
                }
                state = {k: v.clone() for k, v in model.state_dict().items()}
                for v, mode, shot in CASES:
                    if v != variant:
                        continue
                    model.load_state_dict(state)
                    scales = list(kwargs.get("pyramid_bins", [60, 30, 15, 8]))
                    ref = Release(
                        layers=50, classes=2, zoom_factor=8, criterion=nn.CrossEntropyLoss(ignore_index=VOID),
                        pretrained=False, shot=shot, ppm_scales=scales, vgg=variant == "vgg",
                    )  # fmt: skip
                    transplant(model, ref, prefixes(variant))
                    arrays.update(run_case(ref, variant, mode, shot, inputs))
    finally:
        torch.Tensor.cuda = cuda  # type: ignore[method-assign]
    header = {
        "method": "pfenet",
        "reference": REFERENCES["pfenet"][0],
        "commit": commit,
        "command": COMMAND,
        "torch": torch.__version__,
        "variants": models,
        "weights": "tests/golden/baseline_golden.py seeded_state(model, seed)",
        "inputs": "inputs.npz (1-way: each episode's first way and its first shots)",
        "cases": [case_tag(*c) for c in CASES],
        "note": (
            "eval: the release's model.eval() forward (logits at the 65 px image size). train: model.train() "
            "with dropout p=0 (backbone BN on batch statistics: query pass, then one pass per shot), y = the "
            "query's 0/1/255 label: main_loss, aux_loss, the logits of `cls` and of every `inner_cls` "
            "(hooks), and the running_mean of backbone layer3's last BN (ResNet) / features.41 (VGG)"
        ),
    }
    write_golden(GOLDEN_DIR / "pfenet.npz", header, arrays)


def run_case(ref: nn.Module, variant: str, mode: str, shot: int, inputs: dict) -> dict[str, np.ndarray]:
    t = case_tag(variant, mode, shot)
    r = release_inputs(episode_subset(inputs, 1, shot))
    with torch.no_grad():
        if mode == "eval":
            out = ref.eval()(r["x"], r["s_x"], r["s_y"], r["y"])
            return {f"{t}/logits": out.numpy()}
        seen: dict[str, torch.Tensor] = {}
        hooks = [ref.cls.register_forward_hook(lambda m, i, o: seen.__setitem__("cls", o))]
        for k, head in enumerate(ref.inner_cls):
            hooks.append(head.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(f"aux{k}", o)))
        _, main_loss, aux_loss = disable_dropout(ref).train()(r["x"], r["s_x"], r["s_y"], r["y"])
        for h in hooks:
            h.remove()
        bn = ref.layer3[-1].bn3 if variant == "resnet" else ref.layer4[7]
        out = {f"{t}/main_loss": np.array(main_loss.item()), f"{t}/aux_loss": np.array(aux_loss.item())}
        out[f"{t}/running_mean"] = bn.running_mean.numpy().copy()
        out.update({f"{t}/{k}": v.numpy() for k, v in seen.items()})
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pfenet", type=Path, required=True, help="checkout of dvlab-research/PFENet")
    args = parser.parse_args(argv)
    make(args.pfenet.resolve())
    print(f"wrote {GOLDEN_DIR / 'pfenet.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
