"""Streaming training episodes: contents, fold hygiene, disjoint readers, determinism, memory, bad shards."""

import io
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.shard_format import IGNORE_INDEX
from train.stream.index import read_fold, read_index, read_pairs
from train.stream.normalize import normalize
from train.stream.sampler import EpisodeStream
from train.stream.shard_io import ShardError, open_stream, read_shard, shard_urls, tar_samples
from train.stream.transforms import load_pair

SIZE = 32


def make_stream(data: dict[str, Path], shards: str | None = None, **kw) -> EpisodeStream:
    base, novel = read_fold(str(data["folds"]), 0)
    pairs = read_pairs((data["folds"] / "fold0" / "train.txt").read_text())
    opts = {
        "way": 1,
        "shot": 1,
        "batch_size": 4,
        "image_size": SIZE,
        "pool_size": 8,
        "episodes_per_epoch": 16,
    }
    opts.update(kw)
    return EpisodeStream(shards or str(data["shards"] / "train"), pairs, base, novel, **opts)


def all_samples(data: dict[str, Path]) -> dict[str, dict]:
    urls = shard_urls(str(data["shards"] / "train"))
    return {s["__key__"]: s for url, _ in urls for s in read_shard(url)}


@pytest.mark.parametrize(("way", "shot"), [(1, 1), (2, 2)])
def test_episode_contents_follow_the_fold(tiny_data, way, shot):
    ds = make_stream(tiny_data, way=way, shot=shot, flip_p=0.0)
    base, novel = read_fold(str(tiny_data["folds"]), 0)
    pairs = read_pairs((tiny_data["folds"] / "fold0" / "train.txt").read_text())
    samples = all_samples(tiny_data)
    batches = list(ds)
    assert len(batches) == 4
    for batch in batches:
        assert batch["query_img"].shape == (4, 3, SIZE, SIZE) and batch["query_img"].dtype == torch.uint8
        assert batch["support_imgs"].shape == (4, way, shot, 3, SIZE, SIZE)
        assert batch["support_masks"].shape == (4, way, shot, SIZE, SIZE)
        for b in range(4):
            classes = batch["class_ids"][b].tolist()
            assert set(classes) <= set(base) and not set(classes) & set(novel)
            assert len(set(classes)) == way
            query = batch["query_id"][b]
            assert classes[0] in pairs[query]  # the 2-way rule: the query holds the first class
            _, qlabel = load_pair(samples[query]["jpg"], samples[query]["label.png"], SIZE)
            full = batch["query_full_label"][b].numpy()
            assert not np.isin(full, novel).any()  # denet: novel classes are 255 in the training label
            assert np.array_equal(full == IGNORE_INDEX, (qlabel == IGNORE_INDEX) | np.isin(qlabel, novel))
            qlab = batch["query_label"][b].numpy()
            for k, c in enumerate(classes):
                assert np.array_equal(qlab == k + 1, qlabel == c)
            assert set(np.unique(qlab)) <= {0, *range(1, way + 1), IGNORE_INDEX}
            for k, c in enumerate(classes):
                for s, sid in enumerate(batch["support_ids"][b][k]):
                    assert sid != query and c in pairs[sid]
                    img, label = load_pair(samples[sid]["jpg"], samples[sid]["label.png"], SIZE)
                    mask = batch["support_masks"][b, k, s].numpy()
                    assert np.array_equal(mask == 1, label == c) and (mask == 1).any()
                    # void, and the episode's other classes (PANet's N-way rule), are 255
                    others = [o for o in classes if o != c]
                    assert np.array_equal(
                        mask == IGNORE_INDEX, (label == IGNORE_INDEX) | np.isin(label, others)
                    )
                    assert np.array_equal(batch["support_imgs"][b, k, s].permute(1, 2, 0).numpy(), img)
                assert len(set(batch["support_ids"][b][k])) == shot


@pytest.mark.parametrize("void", ["background", "ignore"])
def test_void_and_novel_rules_of_the_training_labels(tiny_data, void):
    """Full label: void -> 0 (the release) or 255, novel -> 255. Binary masks (query_label,
    support_masks): novel -> 0, as the release cuts them `mask == class`; void as in the full label."""
    _, novel = read_fold(str(tiny_data["folds"]), 0)
    samples = all_samples(tiny_data)
    fill = 0 if void == "background" else IGNORE_INDEX
    seen_void = seen_novel = 0
    for batch in make_stream(tiny_data, void=void, flip_p=0.0, episodes_per_epoch=64):
        for b in range(4):
            query = batch["query_id"][b]
            _, raw = load_pair(samples[query]["jpg"], samples[query]["label.png"], SIZE)
            full, binary = batch["query_full_label"][b].numpy(), batch["query_label"][b].numpy()
            is_void, is_novel = raw == IGNORE_INDEX, np.isin(raw, novel)
            assert (full[is_void] == fill).all() and (binary[is_void] == fill).all()
            assert (full[is_novel] == IGNORE_INDEX).all() and (binary[is_novel] == 0).all()
            sid = batch["support_ids"][b][0][0]
            _, sraw = load_pair(samples[sid]["jpg"], samples[sid]["label.png"], SIZE)
            mask = batch["support_masks"][b, 0, 0].numpy()
            assert (mask[sraw == IGNORE_INDEX] == fill).all() and (mask[np.isin(sraw, novel)] == 0).all()
            seen_void, seen_novel = seen_void + is_void.sum(), seen_novel + is_novel.sum()
    assert seen_void and seen_novel


def test_standard_protocol_turns_novel_classes_into_background(tiny_data):
    ds = make_stream(tiny_data, protocol="standard")
    _, novel = read_fold(str(tiny_data["folds"]), 0)
    for batch in ds:
        assert not np.isin(batch["query_full_label"].numpy(), novel).any()


def test_same_seed_same_stream_other_seed_other_stream(tiny_data):
    a, b, c = (list(make_stream(tiny_data, seed=s)) for s in (3, 3, 4))
    for x, y in zip(a, b, strict=True):
        assert x["query_id"] == y["query_id"] and x["support_ids"] == y["support_ids"]
        assert torch.equal(x["query_img"], y["query_img"]) and torch.equal(
            x["support_masks"], y["support_masks"]
        )
    assert [x["query_id"] for x in a] != [x["query_id"] for x in c]
    ds = make_stream(tiny_data, seed=3)
    ds.set_epoch(1)
    assert [x["query_id"] for x in ds] != [x["query_id"] for x in a]


def _shard_of(data: dict[str, Path]) -> dict[str, str]:
    _, locs = read_index(str(data["shards"] / "train"))
    return {k: loc.shard for k, loc in locs.items()}


def test_ranks_and_workers_read_disjoint_shards(tiny_data):
    shard_of = _shard_of(tiny_data)
    seen: dict[int, set[str]] = {}
    for rank in (0, 1):
        ds = make_stream(tiny_data, rank=rank, world_size=2, episodes_per_epoch=24)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        per_batch = []
        for batch in loader:
            ids = set(batch["query_id"]) | {s for way in batch["support_ids"] for ids in way for s in ids}
            per_batch.append({shard_of[i] for i in ids})
        assert len(per_batch) == 6  # 24 episodes per rank, batches of 4, split over 2 workers
        # DataLoader alternates workers: even batches come from worker 0, odd ones from worker 1
        w0, w1 = set().union(*per_batch[0::2]), set().union(*per_batch[1::2])
        assert w0 and w1 and not w0 & w1
        seen[rank] = w0 | w1
    assert not seen[0] & seen[1]
    # the same split straight from the shard sequence: 4 readers, 6 shards, each shard once
    ds = make_stream(tiny_data)
    owned = [set(next(iter([list(zip(range(10), ds.shard_sequence(g, 4), strict=False))]))) for g in range(4)]
    names = [{u for _, u in o} for o in owned]
    assert sum(len(n) for n in names) == 6 and len(set().union(*names)) == 6


def test_fewer_shards_than_readers_is_a_clear_error(tiny_data):
    ds = make_stream(tiny_data, rank=0, world_size=4)
    with pytest.raises(ShardError, match="shards for 8 readers"):
        list(DataLoader(ds, batch_size=None, num_workers=2))
    # resampling is the documented way out
    ds = make_stream(tiny_data, rank=0, world_size=8, resampled=True)
    assert len(list(ds)) == 4


def test_memory_is_bounded_by_the_pools(tiny_data):
    ds = make_stream(tiny_data, pool_size=2, episodes_per_epoch=200, episodes_per_sample=0.5)
    n = sum(1 for _ in ds)
    assert n == 50
    assert ds.stats["samples_read"] > 100  # the stream went round the 60 images more than once
    assert 0 < ds.stats["peak_buffered"] <= 2 * len(ds.base)
    assert max(len(p) for p in ds._pools.pools.values()) == 2


def test_class_draw_is_uniform_over_ready_classes(tiny_data):
    ds = make_stream(tiny_data, episodes_per_epoch=800, batch_size=8, pool_size=4, image_size=8)
    counts: dict[int, int] = {}
    for batch in ds:
        for c in batch["class_ids"][:, 0].tolist():
            counts[c] = counts.get(c, 0) + 1
    ready = ds._pools.ready
    assert set(counts) == set(ready) and len(ready) >= 10
    expected = 800 / len(ready)
    assert all(abs(v - expected) < 0.5 * expected for v in counts.values()), counts


def test_truncated_shard_is_skipped_with_a_warning(tiny_data, tmp_path, caplog):
    train = tmp_path / "train"
    shutil.copytree(tiny_data["shards"] / "train", train)
    shutil.copy(tiny_data["shards"] / "complete.json", tmp_path)  # the dataset's completion record
    bad = train / "train-000002.tar"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2 + 100])
    ds = make_stream(tiny_data, shards=str(train), episodes_per_epoch=80)
    with caplog.at_level(logging.WARNING, logger="train.stream.sampler"):
        assert len(list(ds)) == 20
    assert str(bad) in ds.stats["skipped_shards"]
    assert any("skipping shard" in r.message and str(bad) in r.message for r in caplog.records)


def test_every_shard_cut_stops_the_reader_though_each_gave_samples(tiny_data, tmp_path, caplog):
    """Samples read before a shard's damage do not make it readable: a row of cut shards ends the pass."""
    train = tmp_path / "train"
    shutil.copytree(tiny_data["shards"] / "train", train)
    shutil.copy(tiny_data["shards"] / "complete.json", tmp_path)
    shards = sorted(train.glob("*.tar"))
    for shard in shards:  # the last member cut: every sample before it is whole
        with tarfile.open(shard) as tar:
            last = tar.getmembers()[-1]
        shard.write_bytes(shard.read_bytes()[: last.offset_data + last.size // 2])
    ds = make_stream(tiny_data, shards=str(train), episodes_per_epoch=100_000)
    no_row_left = pytest.raises(ShardError, match=f"no readable shard among {len(shards)}")
    with caplog.at_level(logging.WARNING, logger="train.stream.sampler"), no_row_left:
        list(ds)
    assert ds.stats["samples_read"] > 0  # samples of the cut shards were kept, and did not hide the row
    assert len(ds.stats["skipped_shards"]) == len(shards) + 1


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_checked_reader_matches_tarfile_and_stops_at_a_cut(tmp_path, fmt):
    # names over ustar's 100 bytes become GNU long-name and pax-path headers (ustar has no such header)
    long = "L" * (90 if fmt == tarfile.USTAR_FORMAT else 150)
    members = [("k.jpg", b"x" * 700), ("k.json", b"{}"), ("k.label.png", b""), (f"{long}.jpg", b"y")]
    if fmt == tarfile.PAX_FORMAT:
        members.append(("\u00fcn\u00ef.txt", b"1"))
    path = tmp_path / "s.tar"
    with tarfile.open(path, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    read = list(read_shard(str(path)))
    expected = {}
    for name, data in members:
        key, _, ext = name.partition(".")
        expected.setdefault(key, {"__key__": key, "__url__": str(path)})[ext] = data
    assert read == list(expected.values())
    path.write_bytes(path.read_bytes()[:900])  # inside k.jpg's data: no sample is complete
    with pytest.raises(ShardError, match=rf"shard {path} is truncated or corrupt"):
        list(read_shard(str(path)))


def test_a_shard_cut_at_a_header_boundary_is_truncated_not_short(tmp_path):
    """tarfile's stream mode ends quietly at a cut between two members: the manifest's count says."""
    path = tmp_path / "s.tar"
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in ("a", "b", "c"):
            for ext in ("jpg", "json", "label.png"):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))
    with tarfile.open(path) as tar:
        cut = tar.getmember("c.jpg").offset  # the first header of the third sample
    path.write_bytes(path.read_bytes()[:cut])
    assert [s["__key__"] for s in read_shard(str(path))] == ["a", "b"]  # what tarfile alone sees
    problems = []
    samples = list(
        tar_samples([{"url": str(path)}], lambda e: problems.append(e) or True, expected={str(path): 3})
    )
    assert [str(e) for e in problems] == [f"shard {path}: 2 of the manifest's 3 samples, then the file ends"]
    assert [s["__key__"] for s in samples] == ["a"]  # the last sample read may be cut: it is dropped
    whole = list(
        tar_samples([{"url": str(path)}], lambda e: problems.append(e) or True, expected={str(path): 2})
    )
    assert [s["__key__"] for s in whole] == ["a", "b"] and len(problems) == 1


def test_stock_webdataset_reads_a_shard_as_the_sampler_does(tiny_data):
    import webdataset as wds

    url = shard_urls(str(tiny_data["shards"] / "train"))[1][0]
    stock = list(wds.WebDataset(url, shardshuffle=False))
    ours = list(read_shard(url))
    assert len(stock) == 10 and [s["__key__"] for s in stock] == [s["__key__"] for s in ours]
    for a, b in zip(stock, ours, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("__")} == {
            k: v for k, v in b.items() if not k.startswith("__")
        }


def test_skip_counters_reach_the_main_process_from_loader_workers(tiny_data, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(tiny_data["shards"] / "train", train)
    shutil.copy(tiny_data["shards"] / "complete.json", tmp_path)
    for name in ("train-000001.tar", "train-000004.tar"):  # one damaged shard for each worker's set
        (train / name).write_bytes((train / name).read_bytes()[:700])
    ds = make_stream(tiny_data, shards=str(train), episodes_per_epoch=40)
    last: dict[int, tuple[int, int]] = {}
    for batch in DataLoader(ds, batch_size=None, num_workers=2):
        reader, shards, samples = batch["data_skips"]
        last[reader] = (shards, samples)
    assert set(last) == {0, 1}  # both workers reported; the main process's own stats stay empty
    assert sum(s for s, _ in last.values()) >= 2 and ds.stats["skipped_shards"] == []


def test_gpu_decode_option_gives_the_same_episodes(tiny_data):
    cpu = list(make_stream(tiny_data, seed=2))
    dev = list(make_stream(tiny_data, seed=2, gpu_decode=True))
    for a, b in zip(cpu, dev, strict=True):
        assert "query_img" not in b and len(b["query_jpeg"]) == 4
        assert a["support_ids"] == b["support_ids"] and torch.equal(a["query_label"], b["query_label"])
        assert torch.equal(a["support_masks"], b["support_masks"])
        decoded = normalize(b, "cpu")  # torchvision decode on the CPU here; nvJPEG with device="cuda"
        expected = normalize(a, "cpu")
        assert decoded["support_imgs"].shape == expected["support_imgs"].shape
        # same flips and geometry: the images agree up to the two resamplers' rounding
        assert (decoded["query_img"] - expected["query_img"]).abs().mean() < 0.15
        assert (decoded["support_imgs"] - expected["support_imgs"]).abs().mean() < 0.15


def test_shard_urls_file_scheme_and_pipe_needs_permission(tiny_data):
    path = tiny_data["shards"] / "train" / "train-000000.tar"
    local = [s["__key__"] for s in read_shard(str(path))]
    via_file = [s["__key__"] for s in read_shard(f"file://{path}")]
    assert local == via_file and len(local) == 10
    with pytest.raises(ShardError, match="allow_pipe"):
        open_stream(f"pipe:cat {path}")
    with pytest.raises(ShardError, match="allow_pipe"):
        list(read_shard(f"pipe:cat {path}"))
    piped = [s["__key__"] for s in read_shard(f"pipe:cat {path}", allow_pipe=True)]
    assert piped == local
    ds = make_stream(
        tiny_data, shards=[f"file://{u}" for u, _ in shard_urls(str(tiny_data["shards"] / "train"))]
    )
    assert len(list(ds)) == 4


def test_stream_with_workers_is_reproducible(tiny_data):
    def ids(seed):
        loader = DataLoader(
            make_stream(tiny_data, seed=seed, episodes_per_epoch=16), batch_size=None, num_workers=2
        )
        return [(b["query_id"], b["support_ids"], int(b["query_img"].sum())) for b in loader]

    first = ids(7)
    assert len(first) == 4 and ids(7) == first and ids(8) != first


def _png(label: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(label, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("void", "support", "query", "full"),
    [  # a void pixel in: a support mask, the query label, the query's full label
        ("background", 0, 0, 0),  # the DENet release
        ("ignore", IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX),  # the standard protocol
        ("query_ignore", 0, IGNORE_INDEX, IGNORE_INDEX),  # PANet's release
        ("foreground", 1, 1, 0),  # SG-One's release
    ],
)
def test_each_void_rule_reaches_the_masks(void, support, query, full):
    from train.stream.sampler import Episode, EpisodeDecoder

    label = np.zeros((8, 8), np.uint8)
    label[2:5, 2:5], label[0, :], label[7, 7] = 6, IGNORE_INDEX, 2  # class 6, a void row, a novel pixel
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, format="JPEG")
    sample = {"a": (buf.getvalue(), _png(label)), "b": (buf.getvalue(), _png(label))}
    decoder = EpisodeDecoder([1, 2, 3, 4, 5], "denet", void, 8, flip_p=0.0)
    out = decoder(Episode([6], "a", [["b"]]), sample.__getitem__, np.random.default_rng(0))
    assert out["support_masks"][0][0, 0] == support and out["support_masks"][0][3, 3] == 1
    assert out["query_label"][0, 0] == query and out["query_label"][3, 3] == 1
    assert out["query_full_label"][0, 0] == full and out["query_full_label"][3, 3] == 6
    assert out["query_full_label"][7, 7] == IGNORE_INDEX and out["query_label"][7, 7] == 0  # novel
    if void == "foreground":
        with pytest.raises(ValueError, match="1-way"):
            decoder(Episode([6, 7], "a", [["b"], ["b"]]), sample.__getitem__, np.random.default_rng(0))
