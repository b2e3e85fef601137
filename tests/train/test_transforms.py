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


def test_pfenet_augment_crops_to_size_pads_with_ignore_and_keeps_the_class():
    from train.stream.transforms import MEAN_RGB

    img = np.full((60, 120, 3), 200, np.uint8)  # shorter than the crop: padded with the mean colour / 255
    label = np.zeros((60, 120), np.uint8)
    label[20:40, 30:90] = 7
    jb, pb = io.BytesIO(), io.BytesIO()
    Image.fromarray(img).save(jb, "PNG")
    Image.fromarray(label, "L").save(pb, "PNG")
    t = TrainTransform(96, augment="pfenet")
    for seed in range(8):
        out, mask = t(jb.getvalue(), pb.getvalue(), np.random.default_rng(seed), keep_class=7)
        assert out.shape == (96, 96, 3) and mask.shape == (96, 96)
        assert set(np.unique(mask)) <= {0, 7, IGNORE_INDEX}  # nearest everywhere: no blended ids
        assert (mask == IGNORE_INDEX).any() and (mask == 7).any()
        rows = (mask == IGNORE_INDEX).all(axis=1)  # whole padded rows: the mean colour (blur softens edges)
        assert np.abs(out[rows][2:-2].astype(int) - MEAN_RGB).max() <= 12
    a = t(jb.getvalue(), pb.getvalue(), np.random.default_rng(3), keep_class=7)
    b = t(jb.getvalue(), pb.getvalue(), np.random.default_rng(3), keep_class=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_pfenet_crop_is_redrawn_while_it_keeps_under_85_percent_of_the_class():
    from train.stream.transforms import pfenet_augment

    img = Image.fromarray(np.full((200, 200, 3), 90, np.uint8))
    label = np.zeros((200, 200), np.uint8)
    label[110:150, 110:150] = 5  # a 40 px object off-centre: many 100 px crops cut it

    def kept(keep_class: int | None) -> list[int]:
        rngs = (np.random.default_rng(s) for s in range(20))
        crops = (pfenet_augment(img, Image.fromarray(label, "L"), 100, r, keep_class)[1] for r in rngs)
        return [int((crop == 5).sum()) for crop in crops]

    assert min(kept(5)) >= 0.85 * 0.9**2 * 40 * 40 * 0.9  # 85% of the object at scale >= 0.9 (rotation: 0.9)
    assert min(kept(None)) == 0  # without the rule some crops miss it


def test_unknown_augment_and_gpu_decode_are_refused():
    import pytest

    with pytest.raises(ValueError, match=r"augment 'mixup' is not one of flip \| pfenet"):
        TrainTransform(32, augment="mixup")
    with pytest.raises(ValueError, match="gpu_decode"):
        TrainTransform(32, augment="pfenet").label_only(_pair()[1], np.random.default_rng(0))
