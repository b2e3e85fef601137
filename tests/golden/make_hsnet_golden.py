"""Make HSNet's golden file (tests/data/golden/hsnet.npz) by running the release's own modules.

    python tests/golden/make_hsnet_golden.py --hsnet /work/ref/hsnet

The checkout must be juhongm999/hsnet at the commit `hsnet_golden.REFERENCE` names. For each case of
`hsnet_golden.CASES` this project's HSNet is built through the registry with the seeded golden weights,
transplanted tensor by tensor into the release's `HypercorrSqueezeNetwork` (its `model/hsnet.py`), which
then runs on the baseline golden episodes (tests/data/golden/inputs.npz, 65 px) as its test.py and
train.py call it: the 1-shot forward logits, `compute_objective` against the binary query mask (void 0,
as its dataset makes it; its training forward, use_original_imgsize False) and `predict_mask_nshot` with
5 shots (at the input size, which is the original size here). For the 2-way extension of this
project, the release's 1-shot logits of each way's support are stored as well. Nothing of the release is
copied: its modules are imported and run, with one patch: torchvision's `resnet50/101(pretrained=True)`
and `vgg16(pretrained=True)` build random-init networks (no download; every weight is transplanted).
A fresh release module is built per case, since its `CenterPivotConv4d.prune` caches the support-side
indices of the first input size it sees.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # the project and the golden helpers, run from anywhere

from baseline_golden import INPUTS, episode_subset, normalize_images, read_golden, state_digest, write_golden  # noqa: E402
from hsnet_golden import (  # noqa: E402
    CASES,
    COMMAND,
    GOLDEN,
    REFERENCE,
    RELEASE_BACKBONE,
    SEED,
    SUB,
    release_prefixes,
    seeded_hsnet,
)
from make_baseline_golden import binary, patch_pretrained, reference, transplant  # noqa: E402

SHOTS = 5


def check_commit(root: Path) -> str:
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip()
    if commit != REFERENCE[1]:
        raise SystemExit(
            f"{root} is at {commit or '(not a git checkout)'}, not {REFERENCE[0]} @ {REFERENCE[1]}"
        )
    return commit


def make(root: Path, inputs: dict[str, np.ndarray]) -> None:
    arrays: dict[str, np.ndarray] = {}
    digests: dict[str, str] = {}
    with reference(root):
        import torchvision.models.resnet as tv_resnet
        import torchvision.models.vgg as tv_vgg

        patch_pretrained(tv_resnet, ["resnet50", "resnet101"])
        patch_pretrained(tv_vgg, ["vgg16"])
        from model.hsnet import HypercorrSqueezeNetwork

        for case, kwargs in CASES.items():
            project = seeded_hsnet(kwargs)
            digests[case] = state_digest(project)
            release = HypercorrSqueezeNetwork(
                RELEASE_BACKBONE[kwargs["backbone"]], kwargs["use_original_imgsize"]
            )
            unused = ("backbone.fc.",) if case.startswith("resnet") else ("backbone.classifier.",)
            transplant(project, release, release_prefixes(), unused)
            release.eval()
            arrays.update(run_release(case, release, inputs, kwargs["use_original_imgsize"]))
    head: dict[str, Any] = {
        "method": "hsnet",
        "reference": REFERENCE[0],
        "commit": REFERENCE[1],
        "command": COMMAND,
        "torch": torch.__version__,
        "cases": {k: {"model_kwargs": v, "weights_sha256": digests[k]} for k, v in CASES.items()},
        "seed": SEED,
        "weights": "tests/golden/hsnet_golden.py seeded_hsnet (seeded_state, GroupNorm weight + 1, fg bias)",
        "inputs": "inputs.npz",
        "note": "1-shot: query and first-way first-shot support; <case>/logits at the release's output "
        f"size (image-size outputs every {SUB}th pixel); loss: compute_objective vs the binary query mask "
        f"(void 0); nshot_mask: predict_mask_nshot with {SHOTS} shots; way2_logits: the release's 1-shot "
        "logits of each way's first support (the 2-way extension combines them)",
    }
    write_golden(GOLDEN, head, arrays)


@torch.no_grad()
def run_release(
    case: str, release: Any, inputs: dict[str, np.ndarray], original_size: bool
) -> dict[str, np.ndarray]:
    ep = episode_subset(inputs, 2, SHOTS)
    query = normalize_images(ep["query_img"])
    supports = normalize_images(ep["support_imgs"])  # [B, way, shot, 3, H, W]
    masks = binary(ep["support_full"], ep["class_ids"]).float()  # void 0, as the release's dataset
    query_mask = binary(ep["query_full"], ep["class_ids"][:, 0])
    sub = slice(None) if original_size else slice(None, None, SUB)
    logits = release(query, supports[:, 0, 0], masks[:, 0, 0])
    release.use_original_imgsize = False  # its training forward (train.py builds it so)
    loss = release.compute_objective(release(query, supports[:, 0, 0], masks[:, 0, 0]), query_mask)
    release.use_original_imgsize = original_size
    batch = {"query_img": query, "support_imgs": supports[:, 0], "support_masks": masks[:, 0]}
    if original_size:  # the release reads (w, h) of the original query; here the input is the original
        batch["org_query_imsize"] = [torch.tensor(query.shape[-1]), torch.tensor(query.shape[-2])]
    nshot = release.predict_mask_nshot(batch, nshot=SHOTS)
    way2 = torch.stack([release(query, supports[:, w, 0], masks[:, w, 0]) for w in range(2)], dim=1)
    return {
        f"{case}/logits": logits[..., sub, sub].numpy(),
        f"{case}/loss": np.array(float(loss)),
        f"{case}/nshot_mask": nshot.numpy().astype(np.uint8),
        f"{case}/way2_logits": way2[..., sub, sub].numpy(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hsnet", type=Path, required=True, help="juhongm999/hsnet checkout")
    args = parser.parse_args(argv)
    check_commit(args.hsnet)
    make(args.hsnet.resolve(), read_golden(INPUTS)[1])
    print(f"{GOLDEN.relative_to(HERE.parents[1])}: {GOLDEN.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
