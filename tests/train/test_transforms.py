"""Paired transforms and decoding: image and mask move together, exact labels, draft mode decodes less."""

import io

import numpy as np
from PIL import Image

from pipeline.shard_format import IGNORE_INDEX
from train.stream.transforms import (
    TrainTransform,
    binary_mask,
    decode_image,
    decode_jpegs_torch,
    decode_label,
    episode_label,
    load_pair,
)


def _pair(w=120, h=80):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = 200  # left half bright
    label = np.zeros((h, w), np.uint8)
    label[:, : w // 2] = 7
    label[:4, :] = IGNORE_INDEX
    jb, pb = io.BytesIO(), io.BytesIO()
    Image.fromarray(img).save(jb, "JPEG", quality=95)
    Image.fromarray(label, "L").save(pb, "PNG")
    return jb.getvalue(), pb.getvalue()


def test_resize_keeps_label_values_and_flip_moves_both():
    jpg, png = _pair()
    img, label = load_pair(jpg, png, 40)
    assert img.shape == (40, 40, 3) and label.shape == (40, 40)
    assert set(np.unique(label)) == {0, 7, IGNORE_INDEX}  # nearest: no blended class ids
    assert img[20, 5].mean() > 150 and (label[20:, :20] == 7).all()
    fimg, flabel = load_pair(jpg, png, 40, flip=True)
    assert np.array_equal(fimg, img[:, ::-1]) and np.array_equal(flabel, label[:, ::-1])
    assert fimg[20, 35].mean() > 150 and (flabel[20:, 20:] == 7).all()


def test_train_transform_is_seeded():
    jpg, png = _pair()
    t = TrainTransform(32)
    a = [t(jpg, png, np.random.default_rng(5))[1] for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    flips = {bool(t(jpg, png, np.random.default_rng(s))[1][5, 0] == 0) for s in range(20)}
    assert flips == {True, False}


def test_draft_mode_decodes_at_reduced_size_only_for_large_jpegs():
    jpg, _ = _pair(640, 480)
    assert decode_image(jpg, 100, reduced=True).size == (160, 120)  # 1/4 scale, still >= 100
    assert decode_image(jpg, 100, reduced=False).size == (640, 480)
    assert decode_image(jpg, 400, reduced=True).size == (640, 480)


def test_palette_label_keeps_indices():
    label = np.array([[0, 3], [255, 20]], np.uint8)
    img = Image.fromarray(label, "P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert np.array_equal(np.asarray(decode_label(buf.getvalue())), label)


def test_masks_and_episode_labels():
    label = np.array([[0, 3, 5], [255, 3, 9]], np.uint8)
    assert binary_mask(label, 3).tolist() == [[0, 1, 0], [255, 1, 0]]
    # PANet's N-way rule: the episode's other classes are neither foreground nor background of a way
    assert binary_mask(label, 3, [3, 5]).tolist() == [[0, 1, 255], [255, 1, 0]]
    assert binary_mask(label, 3, [3]).tolist() == binary_mask(label, 3).tolist()
    assert episode_label(label, [5, 3]).tolist() == [[0, 2, 1], [255, 2, 0]]


def test_torchvision_decode_matches_pil():
    jpg, png = _pair()
    ours = decode_jpegs_torch([jpg, jpg], 40, "cpu")
    pil, _ = load_pair(jpg, png, 40, reduced=False)
    assert ours.shape == (2, 3, 40, 40)
    assert np.abs(ours[0].permute(1, 2, 0).numpy().astype(int) - pil.astype(int)).mean() < 6
