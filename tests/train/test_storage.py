"""Shards from shared storage: HTTP and S3 (moto) equal local, dropped connections, failing shards."""

import logging
from pathlib import Path

import pytest
import torch
from storage_servers import BUCKET, flaky_http, moto_s3
from train_helpers import tiny_params

from pipeline.config import ConfigError
from train import evaluate as ev
from train import train as tr
from train.checkpoint import load_checkpoint
from train.stream import shard_io
from train.stream.by_key import SampleReader
from train.stream.sampler import EpisodeStream
from train.stream.shard_io import ShardError, read_shard, shard_urls

pytestmark = pytest.mark.heavy  # HTTP and S3 servers in their own processes

PREFIX = "fss/shards/toy/pascal/denet"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(shard_io, "RETRY_BACKOFF_S", 0.01)


@pytest.fixture(scope="module")
def s3_url(tiny_data):
    """s3:// prefix holding the tiny train/ and test/ splits (manifests, index.tsv, tars)."""
    with moto_s3({PREFIX: tiny_data["shards"]}):
        yield f"s3://{BUCKET}/{PREFIX}"


def _samples(url: str) -> dict[str, dict]:
    return {s["__key__"]: s for u, _ in shard_urls(url) for s in read_shard(u)}


def _stream(tiny_data, shards, **kw) -> EpisodeStream:
    from pipeline.folds import fold_classes
    from train.stream.index import read_pairs

    base, novel = fold_classes("pascal", 0, "interleaved")
    pairs = read_pairs((tiny_data["folds"] / "fold0" / "train.txt").read_text())
    args = {"batch_size": 4, "image_size": 33, "pool_size": 8, "episodes_per_epoch": 16, **kw}
    return EpisodeStream(shards, pairs, base, novel, **args)


def test_s3_and_http_streams_equal_local_bytes(tiny_data, s3_url):
    local = _samples(str(tiny_data["shards"] / "train"))
    assert _samples(f"{s3_url}/train") == {
        k: {**v, "__url__": v["__url__"].replace(str(tiny_data["shards"]), s3_url)} for k, v in local.items()
    }
    with flaky_http(tiny_data["shards"], {}) as (url, _):
        remote = _samples(f"{url}/train")
    assert {k: v["jpg"] for k, v in remote.items()} == {k: v["jpg"] for k, v in local.items()}
    # brace patterns (webdataset notation) list the shards without a manifest
    pattern = f"{s3_url}/train/train-{{000000..000005}}.tar"
    assert [u for u, _ in shard_urls(pattern)] == [u for u, _ in shard_urls(f"{s3_url}/train")]


def test_stream_reads_shards_as_a_stream_not_a_download(tiny_data):
    name = "train-000001.tar"
    with flaky_http(tiny_data["shards"] / "train", {}) as (url, log):
        samples = read_shard(f"{url}/{name}")
        first = next(samples)
        samples.close()
    size = (tiny_data["shards"] / "train" / name).stat().st_size
    assert first["__key__"] and len(log) == 1 and log[0][1] is None  # one plain GET, read lazily
    assert size > 0


def test_dropped_connection_mid_shard_is_resumed_where_it_stopped(tiny_data, caplog):
    names = [f"train-{i:06d}.tar" for i in range(6)]
    local = _samples(str(tiny_data["shards"] / "train"))
    with (
        caplog.at_level(logging.WARNING, logger="train.stream.shard_io"),
        flaky_http(tiny_data["shards"], dict.fromkeys(names, 1)) as (url, log),
    ):
        got = _samples(f"{url}/train")
    assert {k: v["label.png"] for k, v in got.items()} == {k: v["label.png"] for k, v in local.items()}
    resumed = [rng for path, rng in log if rng and path.endswith(".tar")]
    assert len(resumed) == 6 and all(int(r.removeprefix("bytes=").rstrip("-")) > 0 for r in resumed)
    assert sum("reconnecting" in r.message for r in caplog.records) == 6


def test_shard_that_keeps_failing_is_skipped_in_training_with_a_count(tiny_data, caplog):
    with (
        caplog.at_level(logging.WARNING, logger="train.stream.sampler"),
        flaky_http(tiny_data["shards"], {"train-000003.tar": -1}) as (url, log),
    ):
        ds = _stream(tiny_data, f"{url}/train", episodes_per_epoch=60)
        batches = list(ds)
    assert len(batches) == 15
    bad = f"{url}/train/train-000003.tar"
    skipped = ds.stats["skipped_shards"]  # once per pass over this reader's shards
    assert set(skipped) == {bad} and len(skipped) >= 1
    attempts = [p for p, _ in log if p.endswith("train-000003.tar")]
    assert len(attempts) == (shard_io.RETRIES + 1) * len(skipped)
    assert any("skipping shard" in r.message and bad in r.message and "1 skipped" in r.message
               for r in caplog.records)  # fmt: skip


def test_sample_fetch_retries_then_fails_in_evaluation(tiny_data):
    reader_local = SampleReader(str(tiny_data["shards"] / "test"))
    key = sorted(reader_local.locations)[0]
    shard = reader_local.locations[key].shard
    with flaky_http(tiny_data["shards"], {shard: 2}) as (url, _):
        got = SampleReader(f"{url}/test").fetch(key)  # two drops, then a good read
    assert got["jpg"] == reader_local.fetch(key)["jpg"]
    with flaky_http(tiny_data["shards"], {shard: -1}) as (url, log), pytest.raises(ShardError, match=shard):
        SampleReader(f"{url}/test").fetch(key)
    assert len([p for p, _ in log if p.endswith(shard)]) == shard_io.RETRIES + 1


def test_credentials_in_a_shards_url_are_refused():
    with pytest.raises(ConfigError, match=r"sampler\.shards_url"):
        tiny_params(sampler__shards_url="https://user:secret@lab.example/fss")
    assert tiny_params(sampler__shards_url="s3://bucket/fss").sampler.shards_url == "s3://bucket/fss"


def _train_and_evaluate(tiny_data, out: Path, shards_url: str | None) -> tuple[dict, dict]:
    p = tiny_params(
        sampler__shards_url=shards_url, train__steps=2, train__val_every=2, train__checkpoint_every=2
    )
    tr.run(p, tiny_data["shards"], tiny_data["folds"], out, progress=False)
    manifest = out / "manifest.json"
    from pipeline.io import write_json
    from train.stream.manifests import build_manifest

    write_json(manifest, build_manifest(str(tiny_data["shards"]), str(tiny_data["folds"]),
                                        "pascal", 0, 1, 1, "denet", 0, 6))  # fmt: skip
    result = ev.evaluate_fold(p, out / tr.LAST, manifest, tiny_data["shards"], trivial=False)
    return load_checkpoint(out / tr.LAST)["model"], result["scores"]


def test_train_and_evaluate_from_s3_and_http_equal_local(tiny_data, s3_url, tmp_path):
    local_w, local_s = _train_and_evaluate(tiny_data, tmp_path / "local", None)
    s3_w, s3_s = _train_and_evaluate(tiny_data, tmp_path / "s3", s3_url)
    with flaky_http(tiny_data["shards"], {"train-000000.tar": 1}) as (url, log):
        http_w, http_s = _train_and_evaluate(tiny_data, tmp_path / "http", url)
    assert any(p.endswith("/test/index.tsv") for p, _ in log)  # evaluation read through HTTP
    for weights in (s3_w, http_w):
        assert all(torch.equal(local_w[k], weights[k]) for k in local_w)
    assert s3_s == local_s == http_s


def test_gopen_handler_resumes_at_the_byte_reached(tiny_data):
    """webdataset's own `gopen` opens http(s) with train.shard_io's handler: a connection dropped
    half-way is reopened with `Range: bytes=<bytes already read>-`, and the bytes equal the file's."""
    from webdataset.gopen import gopen

    name = "train-000002.tar"
    data = (tiny_data["shards"] / "train" / name).read_bytes()
    with flaky_http(tiny_data["shards"] / "train", {name: 1}) as (url, log), gopen(f"{url}/{name}") as stream:
        assert stream.read() == data
    assert [rng for _, rng in log] == [None, f"bytes={len(data) // 2}-"]  # the server cut at len // 2


def test_concurrent_ranged_reads_equal_sequential_ones(tiny_data):
    reader = SampleReader(str(tiny_data["shards"] / "test"))
    keys = sorted(reader.locations)
    local = [reader._range(k) for k in keys]
    with flaky_http(tiny_data["shards"], {}) as (url, log):
        remote = SampleReader(f"{url}/test")
        ranges = [remote._range(k) for k in keys]
        together = shard_io.read_ranges(ranges)
        one_by_one = [shard_io.read_range(*r) for r in ranges]
        samples = remote.fetch_many(keys[::-1])
    assert together == one_by_one == [shard_io.read_range(*r) for r in local]
    assert len([p for p, rng in log if rng and p.endswith(".tar")]) == 3 * len(keys)  # one GET per sample
    assert list(samples) == keys[::-1]
    assert all(samples[k]["label.png"] == reader.fetch(k)["label.png"] for k in keys)
