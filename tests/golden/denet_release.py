"""What the DENet golden files and the parity tests share: settings, toy fingerprints, the weight transplant.

The golden files under tests/data/denet_golden_*.{json,npz} were made by `make_denet_golden.py`, which
runs the release's own dataset and model code (lizhaoliu-Lec/DENet at RELEASE_COMMIT) on this project's
toy raw data. The tests rebuild the same toy data, run this project's code and compare.

Weights: the release's DENet and this project's DENet get the same fixed-seed random weights, drawn per
*release* parameter name by `seeded_tensor`, so a test can rebuild them without the release's code;
`release_to_project_key` is the transplant (the release's `backbone.layer4.*` has no counterpart: it is
computed by the release but never used by DENet).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path

import numpy as np
import torch

RELEASE_REPO = "lizhaoliu-Lec/DENet"
RELEASE_COMMIT = "446f941b2a0936e90827c085f98ba069c7bb6ccb"
DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = {
    "pools": DATA / "denet_golden_pools.json",
    "flips": DATA / "denet_golden_flips.json",
    "labels": DATA / "denet_golden_labels.npz",
    "forward": DATA / "denet_golden_forward.npz",
    "fiou": DATA / "denet_golden_fiou.npz",
}
# The toy raw data the goldens were made from (pipeline.toy.generate) and the release's img_size.
TOY = {"pascal": {"seed": 0, "scale": 0.3}, "coco": {"seed": 0, "scale": 0.3}}
IMAGE_SIZE = 161  # the toy default sampler.image_size: presence checks and label maps at this size
WEIGHT_SEED = 14
FORWARD_SIZE = 41  # tiny input: ResNet-50 (dilated) -> 6 x 6 features
FORWARD_CASES = {"1w1s": (1, 1), "1w5s": (1, 5), "2w1s": (2, 1)}
VOID_ROWS = (3, 20)  # ignored label rows per episode of the forward inputs (1,558 and 861 valid pixels)
NUM_CLASSES = 21


def read_json_golden(path: Path) -> dict:
    """A golden JSON file; a missing one is an error (never a skip): regenerate with the header's command."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run tests/golden/make_denet_golden.py <release checkout>"
        )
    return json.loads(path.read_text())


def read_npz_golden(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a golden .npz file (the header is stored as JSON text under `header`)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run tests/golden/make_denet_golden.py <release checkout>"
        )
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(str(arrays.pop("header"))), arrays


def _label_bytes(path: Path) -> bytes:
    if path.suffix == ".mat":
        from scipy.io import loadmat

        return np.ascontiguousarray(loadmat(path)["GTcls"][0]["Segmentation"][0]).tobytes()
    from PIL import Image

    return np.asarray(Image.open(path)).tobytes()


def toy_fingerprint(root: Path, dataset: str) -> str:
    """sha256 of what the pools depend on: id lists and decoded label maps (PASCAL) or annotations (COCO).

    Decoded, not file bytes: PNG/JPEG encoders may differ between library versions; the labels do not.
    """
    digest = hashlib.sha256()
    if dataset == "pascal":
        files = sorted(
            [
                *root.glob("VOCdevkit/VOC2012/ImageSets/Segmentation/*.txt"),
                *root.glob("benchmark_RELEASE/dataset/*.txt"),
            ]
        )
        labels = sorted(
            [
                *root.glob("VOCdevkit/VOC2012/SegmentationClass/*.png"),
                *root.glob("benchmark_RELEASE/dataset/cls/*.mat"),
            ]
        )
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
        for path in labels:
            digest.update(path.relative_to(root).as_posix().encode() + _label_bytes(path))
    else:
        for path in sorted(root.glob("annotations/*.json")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- fixed-seed weights and the transplant

_RELEASE_TO_PROJECT = [
    (r"^backbone\.(conv1|bn1|layer[123])\.", r"backbone.\1."),
    (r"^embedding\.0\.", "neck.embed.0."),
    (r"^deeplab_head\.aspp\.convs\.([0-3])\.0\.", r"neck.aspp.branches.\1.0."),
    (r"^deeplab_head\.aspp\.convs\.4\.1\.", "neck.aspp.pool.1."),
    (r"^deeplab_head\.aspp\.project\.0\.", "neck.aspp.project.0."),
    (r"^deeplab_head\.conv1\.", "neck.out.0."),
    (r"^deeplab_head\.bn\.", "neck.out.1."),
    (r"^estimator\.gam\.gate\.([02])\.", r"attention.gate.\1."),
    (r"^estimator\.map\.linear\.", "project."),
    (r"^estimator\.weight$", "class_weight"),
]


def release_to_project_key(key: str) -> str | None:
    """The project's name for a release DENet state_dict key; None for the unused backbone.layer4."""
    if key.startswith("backbone.layer4."):
        return None
    for pattern, repl in _RELEASE_TO_PROJECT:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    raise KeyError(f"release key {key} has no counterpart in the project's DENet")


def seeded_tensor(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int = WEIGHT_SEED
) -> torch.Tensor:
    """Deterministic random values for one parameter/buffer, from its (release) name and shape only.

    Scales keep a 50-layer network finite: weights N(0, 1/fan_in), biases 0.1 N, BatchNorm affine near
    (1, 0), running means near 0 and running variances in [0.5, 1.5].
    """
    if not dtype.is_floating_point:  # num_batches_tracked
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        values = 0.5 + torch.rand(shape, generator=g, dtype=torch.float64)
    elif leaf == "running_mean" or leaf == "bias":
        values = 0.1 * noise
    elif len(shape) == 1:  # BatchNorm weight
        values = 1.0 + 0.1 * noise
    else:
        fan_in = int(np.prod(shape[1:]))
        values = noise / fan_in**0.5
    return values.to(dtype)


def seeded_release_state(
    release_state: dict[str, torch.Tensor], seed: int = WEIGHT_SEED
) -> dict[str, torch.Tensor]:
    """The fixed-seed weights for every key of the release's DENet state_dict."""
    return {k: seeded_tensor(k, tuple(v.shape), v.dtype, seed) for k, v in release_state.items()}


def transplant(release_state: dict[str, torch.Tensor], project_model: torch.nn.Module) -> None:
    """Load release-named weights into the project's DENet, strictly (every project key filled once)."""
    target = project_model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in release_state.items():
        name = release_to_project_key(key)
        if name is None:
            continue
        if name in out:
            raise KeyError(f"two release keys map onto {name}")
        out[name] = value.reshape(target[name].shape)  # the release's 1x1 conv projection is our Linear
    project_model.load_state_dict(out, strict=True)


def project_state_from_seed(project_model: torch.nn.Module, release_shapes: dict[str, list[int]]) -> None:
    """Fill the project's DENet with the same values the release got (shapes as the golden header lists)."""
    dtypes = {k: v.dtype for k, v in project_model.state_dict().items()}
    state = {}
    for key, shape in release_shapes.items():
        name = release_to_project_key(key)
        if name is None:
            continue
        state[key] = seeded_tensor(key, tuple(shape), dtypes[name])
    transplant(state, project_model)


def disable_dropout(model: torch.nn.Module) -> None:
    """p = 0 on every dropout module: train-mode outputs become deterministic, BN stays in train mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
