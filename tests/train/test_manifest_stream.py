"""Training from a fixed episode manifest: the release's set, reshuffled every pass, read by key."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from train.stream.index import read_fold
from train.stream.manifest_stream import ManifestEpisodes
from train.stream.manifests import train_manifest
from train.stream.transforms import decode_label

SIZE = 32


def make(data, batches_per_epoch=3, **kw):
    manifest = train_manifest(str(data["folds"]), "pascal", 0, 1, 1, "denet", seed=0, per_class=2)
    _, novel = read_fold(str(data["folds"]), 0)
    opts = {"batch_size": 4, "batches_per_epoch": batches_per_epoch, "image_size": SIZE, "seed": 0}
    return manifest, ManifestEpisodes(manifest, str(data["shards"] / "train"), novel, **(opts | kw))


def ids(batch):
    return [(q, tuple(c), tuple(map(tuple, s))) for q, c, s in zip(
        batch["query_id"], batch["class_ids"].tolist(), batch["support_ids"], strict=True
    )]  # fmt: skip


def test_manifest_is_the_release_set_drawn_once(tiny_data):
    manifest, _ = make(tiny_data)
    eps = manifest["episodes"]
    assert manifest["split"] == "train" and manifest["episodes_per_class"] == 2
    counts = Counter(e["classes"][0] for e in eps)
    assert set(counts.values()) == {2}  # per base class (the release: 1000)
    base, _ = read_fold(str(tiny_data["folds"]), 0)
    assert set(counts) <= set(base)


@pytest.mark.parametrize("workers", [0, 2])
def test_passes_cover_the_manifest_and_reshuffle(tiny_data, workers):
    manifest, ds = make(tiny_data)
    n = len(manifest["episodes"])
    first, second = ds.order(0), ds.order(1)
    assert sorted(first) == list(range(n)) and not np.array_equal(first, second)  # reshuffled every pass
    seen = [ds.episode_at(i) for i in range(n)]
    assert Counter((e.query, e.class_ids[0]) for e in seen) == Counter(
        (e["query"], e["classes"][0]) for e in manifest["episodes"]
    )
    # the loader yields global batches in order whatever the worker count; set_epoch moves on
    single = [ids(b) for b in ds]
    ds.set_epoch(1)
    loaded = [ids(b) for b in DataLoader(ds, batch_size=None, num_workers=workers)]
    assert len(single) == len(loaded) == 3
    expected = [[(e.query, tuple(e.class_ids), tuple(map(tuple, e.supports))) for e in
                 (ds.episode_at(p) for p in range(g * 4, g * 4 + 4))] for g in (3, 4, 5)]  # fmt: skip
    assert loaded == expected


def test_ranks_take_interleaved_global_batches(tiny_data):
    _, alone = make(tiny_data, rank=0, world_size=1)
    _, r0 = make(tiny_data, rank=0, world_size=2)
    _, r1 = make(tiny_data, rank=1, world_size=2)
    steps = [ids(b) for b in alone]
    both = [ids(b) for pair in zip(r0, r1, strict=True) for b in pair]
    assert both[: len(steps)] == steps  # step k of rank r is global batch k * world + r


def test_labels_and_flips(tiny_data):
    _, novel = read_fold(str(tiny_data["folds"]), 0)
    _, still = make(tiny_data, flip_p=0.0)
    _, flipping = make(tiny_data)
    for a, b in zip(still, flipping, strict=True):
        assert ids(a) == ids(b)
        for j in range(4):
            same = np.array_equal(a["query_img"][j].numpy(), b["query_img"][j].numpy())
            mirrored = np.array_equal(a["query_img"][j].flip(-1).numpy(), b["query_img"][j].numpy())
            assert same or mirrored
            full = a["query_full_label"][j].numpy()
            raw = np.asarray(
                decode_label(still.reader.fetch(a["query_id"][j])["label.png"]).resize(
                    (SIZE, SIZE), Image.NEAREST
                )
            )
            assert (full[np.isin(raw, novel)] == 255).all() and (
                full[raw == 255] == 0
            ).all()  # void: background
