"""PFENet's test resize (`evaluate.resize: letterbox`) equals the release's `util/transform.py` `Resize`
(its configs' `resized_val: True`): the content size, where it sits and what pads it, against
tests/data/golden/pfenet_resize.npz (made by tests/golden/make_pfenet_resize_golden.py); and the
prediction goes back to the original-size label as the release's test.py does with `ori_resize`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from baseline_golden import GOLDEN_DIR, REFERENCES, read_golden
from PIL import Image

from train.evaluate import way_predictions
from train.stream.transforms import letterbox_pair, letterbox_size

HEADER, ARRAYS = read_golden(GOLDEN_DIR / "pfenet_resize.npz")
CASES = [tuple(c) for c in HEADER["cases"]]


def test_the_golden_file_names_the_release_commit():
    assert (HEADER["reference"], HEADER["commit"]) == REFERENCES["pfenet"]


@pytest.mark.parametrize(("h", "w", "size"), CASES, ids=[f"{h}x{w}@{s}" for h, w, s in CASES])
def test_letterbox_equals_the_releases_test_resize(h: int, w: int, size: int):
    image_value, label_value = (int(v) for v in HEADER["values"].values())
    image = Image.new("RGB", (w, h), (image_value,) * 3)
    label = Image.new("L", (w, h), label_value)
    out_image, out_label = letterbox_pair(image, label, size)
    assert out_label is not None
    assert np.array_equal(np.asarray(out_image)[..., 0], ARRAYS[f"image_{h}x{w}_{size}"])
    assert np.array_equal(np.asarray(out_label), ARRAYS[f"label_{h}x{w}_{size}"])
    rows, cols = np.nonzero(ARRAYS[f"label_{h}x{w}_{size}"] == label_value)
    assert letterbox_size(h, w, size) == (rows.max() + 1, cols.max() + 1)


def test_letterboxed_predictions_go_back_to_the_original_label_as_the_release_does():
    """A 40 x 80 query at 64 px sits in the top 32 rows; logits saying foreground on the top 16 rows (the
    upper half of the content) must give the upper half of the 40 x 80 label: the release upsamples to the
    80 x 80 square of the longer side and reads its top-left 40 x 80. Squashing would give the top quarter."""
    assert letterbox_size(40, 80, 64) == (32, 64)
    logits = torch.zeros(1, 2, 64, 64)
    logits[0, 1, :16] = 1.0  # foreground row 1 over the top 16 rows
    logits[0, 0, 16:] = 1.0
    letterboxed = way_predictions(logits, (40, 80), letterbox=True)[0]
    squashed = way_predictions(logits, (40, 80))[0]
    assert letterboxed.shape == squashed.shape == (40, 80)
    assert letterboxed[:19].all() and not letterboxed[21:].any()
    assert squashed[:9].all() and not squashed[11:].any()
