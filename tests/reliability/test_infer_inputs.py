"""`infer` on a user's own images: the support mask the model gets is the object the user marked, or
the user is told why not (a resized mask warns, an empty mask is refused, a cut-out's alpha is read)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_helpers import fresh_checkpoint, write_params

from train import infer

SIZE = 65  # tiny_params' sampler.image_size


def _photo(path: Path, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(1, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _fraction(path: Path, mask: Path) -> float:
    batch = infer.load_user_episode(path, [path], [mask], SIZE, class_id=1)
    return float(batch["support_masks"].float().mean())


def test_an_alpha_cut_out_is_read_as_its_mask(tmp_path):
    photo = _photo(tmp_path / "s.jpg")
    rgba = np.dstack([np.asarray(Image.open(photo)), np.zeros((40, 48), np.uint8)])
    rgba[:, :24, 3] = 255  # the object is the opaque left half; the colours are everywhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    assert _fraction(photo, tmp_path / "cutout.png") == pytest.approx(0.5, abs=0.02)
    # an opaque RGBA mask is read by its colours, as before
    opaque = np.zeros((40, 48, 4), np.uint8)
    opaque[..., 3] = 255
    opaque[:10, :, :3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    assert _fraction(photo, tmp_path / "opaque.png") == pytest.approx(0.25, abs=0.02)


def test_a_mask_of_another_size_is_resized_with_a_warning(tmp_path, caplog):
    photo = _photo(tmp_path / "s.jpg")
    small = np.zeros((20, 24), np.uint8)
    small[:, :12] = 1
    Image.fromarray(small).save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING, logger="train.infer"):
        assert _fraction(photo, tmp_path / "m.png") == pytest.approx(0.5, abs=0.02)
    assert any("m.png is 24x20 but its image" in r.message and "48x40" in r.message for r in caplog.records)


def test_an_empty_mask_is_refused(tmp_path, capsys):
    photo = _photo(tmp_path / "s.jpg")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"empty\.png marks no object \(all its pixels are 0\)"):
        infer.load_user_episode(photo, [photo], [tmp_path / "empty.png"], SIZE, class_id=1)
    transparent = np.zeros((40, 48, 4), np.uint8)
    Image.fromarray(transparent, "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(ValueError, match="its alpha channel is fully transparent"):
        infer.load_user_episode(photo, [photo], [tmp_path / "clear.png"], SIZE, class_id=1)
    # from the command line: one line, exit 2, nothing written
    fresh_checkpoint(tmp_path / "c.pt", snapshot=True)
    argv = ["--params", str(write_params(tmp_path)), "--checkpoint", str(tmp_path / "c.pt"),
            "--out", str(tmp_path / "out"), "--query", str(photo), "--support", str(photo),
            "--mask", str(tmp_path / "empty.png")]  # fmt: skip
    assert infer.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty.png marks no object" in err[0]
    assert not (tmp_path / "out").exists()
