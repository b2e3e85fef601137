"""Shards: byte-identical re-runs whatever the worker count, offsets, index queries, atomic failure."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from raw_fixtures import write_params

from pipeline.config import load_params
from pipeline.masks import DataError
from pipeline.shards import (
    build_shards,
    is_present,
    load_index,
    plan_shards,
    query_index,
    read_shard_with_offsets,
    shard_writer,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("n", "max_samples", "min_shards"), [(10, 3, 1), (130, 500, 64), (5, 500, 64), (1, 2, 1)]
)
def test_plan_shards_respects_size_and_count(n, max_samples, min_shards):
    sizes = plan_shards(n, max_samples, min_shards)
    assert sum(sizes) == n and max(sizes) <= max_samples and max(sizes) - min(sizes) <= 1
    assert len(sizes) == min(n, max(min_shards, -(-n // max_samples)))
    assert plan_shards(0, 3, 64) == []


def test_rerun_is_byte_identical_across_worker_counts(pascal_raw, tmp_path, monkeypatch):
    params = load_params(write_params(tmp_path))
    monkeypatch.setattr("pipeline.shards._WINDOW", 3)  # several pool windows per split
    build_shards(pascal_raw, tmp_path / "a", params, workers=1, progress=False)
    build_shards(pascal_raw, tmp_path / "b", params, workers=2, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".tar"]) == 8
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    with tarfile.open(tmp_path / "a" / "train" / "train-000000.tar") as tar:
        infos = tar.getmembers()
    assert all((i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) == (0, 0, 0, "", "", 0o644) for i in infos)
    assert [i.name.split(".", 1)[1] for i in infos[:3]] == ["jpg", "json", "label.png"]


def test_shard_writer_writes_webdataset_tarwriters_bytes_without_importing_torch():
    samples = [
        {"__key__": "2007_000001", "jpg": b"\xff\xd8" * 700, "json": b"{}", "label.png": b"png"},
        {"__key__": "COCO_val2014_000000042", "label.png": b"", "jpg": bytes(range(256)) * 3, "json": b""},
    ]
    ours, theirs = io.BytesIO(), io.BytesIO()
    offsets = []
    with shard_writer(ours) as writer:
        for sample in samples:
            offsets.append(writer.tarstream.offset)
            writer.write(sample)
    with wds.TarWriter(theirs, encoder=False, user="", group="", mode=0o644, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    assert ours.getvalue() == theirs.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as tar:
        assert [m.offset for m in tar.getmembers()][::3] == offsets
    code = "import sys, pipeline.shards; sys.exit('torch' in sys.modules or 'webdataset' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_manifest_checksums_come_from_the_writing_pass_and_stock_webdataset_reads_the_shards(
    pascal_raw, tmp_path
):
    params = load_params(write_params(tmp_path))
    build_shards(pascal_raw, tmp_path / "out", params, progress=False)
    split_dir = tmp_path / "out" / "train"
    for shard in json.loads((split_dir / "manifest.json").read_text())["shards"]:
        data = (split_dir / shard["name"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest() and shard["bytes"] == len(data)
        samples = list(wds.WebDataset(str(split_dir / shard["name"]), shardshuffle=False))
        assert len(samples) == shard["num_samples"]
        assert all({"jpg", "json", "label.png"} <= set(s) for s in samples)


def test_manifest_index_and_offsets_agree(pascal_raw, tmp_path):
    params = load_params(write_params(tmp_path))
    build_shards(pascal_raw, tmp_path / "out", params, progress=False)
    split_dir = tmp_path / "out" / "test"
    manifest = json.loads((split_dir / "manifest.json").read_text())
    index = load_index(split_dir / "index.tsv")
    assert manifest["num_samples"] == 8 == sum(s["num_samples"] for s in manifest["shards"])
    counted: dict[str, int] = {}
    for shard in manifest["shards"]:
        for cid, n in shard["class_counts"].items():
            counted[cid] = counted.get(cid, 0) + n
    ids, classes = np.unique(index["class_id"], return_counts=True)
    assert counted == {str(c): int(n) for c, n in zip(ids, classes, strict=True)}
    for row in range(len(index["image_id"])):
        # one ranged read at `offset` gives the sample's first member header
        with open(split_dir / index["shard"][row], "rb") as handle:
            handle.seek(int(index["offset"][row]))
            header = tarfile.TarInfo.frombuf(handle.read(512), "utf-8", "surrogateescape")
        assert header.name == f"{index['image_id'][row]}.jpg"
        x0, y0, x1, y1 = (int(index[k][row]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
        h, w = int(index["height"][row]), int(index["width"][row])
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert abs(index["fraction"][row] - index["area_px"][row] / (h * w)) < 1e-6


def test_webdataset_reads_the_shards(pascal_raw, tmp_path):
    params = load_params(write_params(tmp_path))
    build_shards(pascal_raw, tmp_path / "out", params, progress=False)
    urls = [str(p) for p in sorted((tmp_path / "out" / "train").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 8
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["id"] == s["__key__"] and set(s) >= {"jpg", "label.png", "json"}
        label = np.array(Image.open(io.BytesIO(s["label.png"])))
        assert label.shape == (meta["height"], meta["width"])


def test_index_query_area_filter(pascal_raw, tmp_path):
    params = load_params(write_params(tmp_path))
    build_shards(pascal_raw, tmp_path / "out", params, progress=False)
    index = load_index(tmp_path / "out" / "train" / "index.tsv")
    tiny = index["area_px"] < 10  # the fixture's 3x3 objects (~0.2% of the image)
    assert tiny.any() and (~tiny).any()
    rows = query_index(index, min_fraction=0.02)
    assert set(rows) == set(np.flatnonzero(~tiny))
    cls = int(index["class_id"][0])
    rows = query_index(index, cls, min_fraction=0.02)
    assert all(index["class_id"][rows] == cls) and all(index["fraction"][rows] >= 0.02)
    assert not is_present(2047, 4096, min_pixels=2048) and is_present(2048, 10**6, 0.0, 2048)
    assert is_present(200, 10_000, 0.02) and not is_present(199, 10_000, 0.02)


def test_presence_columns_count_the_resized_label(pascal_raw, tmp_path):
    """denet: presence at data.presence_size (the release's resized mask); standard: original size."""
    for protocol, size in (("denet", 24), ("standard", None)):
        params = load_params(write_params(tmp_path), {"protocol": protocol, "sampler.image_size": 24})
        assert params.data.presence_size == size
        out = tmp_path / protocol
        build_shards(pascal_raw, out, params, progress=False)
        assert json.loads((out / "test" / "manifest.json").read_text())["presence_size"] == size
        index = load_index(out / "test" / "index.tsv")
        labels = {}
        for tar in sorted((out / "test").glob("*.tar")):
            for key, _, members in read_shard_with_offsets(tar):
                labels[key] = Image.open(io.BytesIO(members["label.png"]))
        for key, cid, px, total in zip(
            index["image_id"], index["class_id"], index["presence_px"], index["presence_total"], strict=True
        ):
            label = labels[key] if size is None else labels[key].resize((size, size), Image.NEAREST)
            assert px == int((np.asarray(label) == cid).sum()) and total == label.size[0] * label.size[1]
        if size is None:
            assert (index["presence_px"] == index["area_px"]).all()
        else:  # 48 x 40 -> 24 x 24: the fixture's 3x3 objects shrink or vanish
            assert (index["presence_px"] < index["area_px"]).any()


def test_interrupted_split_leaves_nothing_that_looks_complete(pascal_raw, tmp_path):
    params = load_params(write_params(tmp_path))
    out = tmp_path / "out"
    build_shards(pascal_raw, out, params, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (pascal_raw / "benchmark_RELEASE/dataset/cls/2008_000004.mat").write_bytes(b"broken")
    with pytest.raises(DataError):
        build_shards(pascal_raw, out, params, progress=False)
    # the failed rebuild published nothing: the previous complete build is untouched, no temp is left
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "params.yaml", "raw"]


def test_pool_workers_send_no_jpeg_and_the_writer_refuses_a_jpeg_changed_meanwhile(pascal_raw):
    from pipeline.masks import pascal_samples
    from pipeline.shards import _label_chunk, _with_jpeg

    sample = pascal_samples(pascal_raw, "denet")["train"][0]
    (rec,) = _label_chunk([(sample, 20, None, "ignore")])
    assert rec.jpeg == b""  # the image's bytes never go through the pool's pipe
    original = Path(sample.image).read_bytes()
    assert _with_jpeg(rec, sample).jpeg == original
    (rec,) = _label_chunk([(sample, 20, None, "ignore")])
    Path(sample.image).write_bytes(original + b"\x00")  # another file than the one the worker checked
    assert _with_jpeg(rec, sample) == (
        sample,
        f"{sample.image}: image file changed while the shards were written",
    )
