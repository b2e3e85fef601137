"""Make tests/data/golden/pfenet_resize.npz by running PFENet's test resize (dvlab-research/PFENet
`util/transform.py` `Resize`, the transform of its configs' `resized_val: True`).

    python tests/golden/make_pfenet_resize_golden.py --pfenet /work/scratch/pfenet/PFENet

The release's `Resize` is called on constant images and labels of the sizes in CASES. Its `cv2` import
is a stub module whose `resize` returns an array of the requested size filled with the input's first
value: the layout the release computes (content size, where it sits, what pads it) is then exact, with
no OpenCV here. Nothing of the release is copied.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from baseline_golden import GOLDEN_DIR, REFERENCES, write_golden  # noqa: E402
from make_baseline_golden import checkout_commit, load_file  # noqa: E402

COMMAND = "python tests/golden/make_pfenet_resize_golden.py --pfenet <PFENet checkout>"
# (image height, width, val_size): VOC's and COCO's usual shapes at 473 and 641, a square image, an image
# smaller than the size (scaled up), and small odd shapes
CASES = (
    (375, 500, 473), (500, 375, 473), (333, 500, 473), (500, 500, 473), (200, 120, 473),
    (427, 640, 641), (480, 640, 641), (640, 427, 641),
    (37, 21, 64), (60, 9, 64), (161, 161, 161), (50, 97, 161),
)  # fmt: skip
IMAGE_VALUE, LABEL_VALUE = 7.0, 1.0


def stub_cv2() -> types.ModuleType:
    """`cv2` whose `resize(src, dsize=(w, h), interpolation)` gives an array of that size filled with src's
    first value."""
    cv2 = types.ModuleType("cv2")

    def resize(src: np.ndarray, dsize: tuple[int, int], interpolation: int = 0) -> np.ndarray:
        return np.full((int(dsize[1]), int(dsize[0]), *src.shape[2:]), src.flat[0], dtype=src.dtype)

    cv2.resize = resize  # type: ignore[attr-defined]
    cv2.INTER_LINEAR, cv2.INTER_NEAREST = 1, 0  # type: ignore[attr-defined]
    return cv2


def make(root: Path) -> None:
    commit = checkout_commit(root, "pfenet")
    saved = sys.modules.get("cv2")
    sys.modules["cv2"] = stub_cv2()
    try:
        release = load_file("pfenet_transform", root / "util" / "transform.py")
        arrays = {}
        for h, w, size in CASES:
            image = np.full((h, w, 3), IMAGE_VALUE, dtype=np.float32)
            label = np.full((h, w), LABEL_VALUE, dtype=np.float32)
            out_image, out_label = release.Resize(size)(image, label)
            arrays[f"image_{h}x{w}_{size}"] = out_image[..., 0].astype(np.uint8)
            arrays[f"label_{h}x{w}_{size}"] = out_label.astype(np.uint8)
    finally:
        sys.modules.pop("pfenet_transform", None)
        if saved is None:
            sys.modules.pop("cv2", None)
        else:
            sys.modules["cv2"] = saved
    header = {
        "method": "pfenet",
        "reference": REFERENCES["pfenet"][0],
        "commit": commit,
        "command": COMMAND,
        "cases": [list(c) for c in CASES],
        "values": {"image": IMAGE_VALUE, "label": LABEL_VALUE},
        "note": (
            "util/transform.py Resize(val_size)(image, label) on constant H x W inputs (cv2.resize stubbed: "
            "an array of the requested size, same value): image_* is the output image's first channel "
            "(7 = content, 0 = padding), label_* the output label (1 = content, 255 = padding)"
        ),
    }
    write_golden(GOLDEN_DIR / "pfenet_resize.npz", header, arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pfenet", type=Path, required=True, help="a dvlab-research/PFENet checkout")
    make(parser.parse_args().pfenet)


if __name__ == "__main__":
    main()
