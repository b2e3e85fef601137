"""Remote shards from ordinary servers and bad links: Range-less servers, trickles, stalls, endless bodies.

Servers bind to 127.0.0.1 (tests/reliability/faults.py). The limits are set small here
(`min_bytes_per_s`, `rate_window_s`) so a test takes seconds; the defaults end a 50 B/s link in one
30 s window of waiting (docs/reliability.md gives the measured time).
"""

import logging
import time
from pathlib import Path

import pytest
from faults import copy_shards, fold0_stream, ranged_http, rangeless_http, slow_http
from train_helpers import fresh_checkpoint, tiny_params

from pipeline.io import write_json
from pipeline.netread import NetLimits
from train import evaluate as ev
from train.stream import shard_io
from train.stream.by_key import SampleReader
from train.stream.manifests import build_manifest
from train.stream.shard_cache import ShardCache
from train.stream.shard_io import RemoteReads, ShardError

FAST = {"sampler.min_bytes_per_s": 1000, "sampler.rate_window_s": 1.0}


@pytest.fixture(autouse=True)
def fresh_range_memo(monkeypatch):
    """Each test meets its servers for the first time (the Range-less memo is per process)."""
    monkeypatch.setattr(shard_io, "_ignores_range", {})
    monkeypatch.setattr(shard_io, "RETRY_BACKOFF_S", 0.01)


def _checkpoint_and_manifest(tiny_data, tmp_path: Path, episodes: int) -> tuple[Path, Path]:
    ckpt = tmp_path / "c.pt"
    fresh_checkpoint(ckpt)
    manifest = build_manifest(
        str(tiny_data["shards"]), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", 0, episodes
    )
    write_json(tmp_path / "m.json", manifest)
    return ckpt, tmp_path / "m.json"


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_from_a_rangeless_server_moves_each_test_shard_about_once(tiny_data, tmp_path, workers):
    """Python's http.server answers every ranged read with the whole shard: each shard is fetched
    once into the cache (also with 2 loader processes), and the score equals the local one bit for bit."""
    ckpt, manifest = _checkpoint_and_manifest(tiny_data, tmp_path, episodes=60)
    local = ev.evaluate_fold(tiny_params(**{"sampler.workers": workers}), ckpt, manifest, tiny_data["shards"],
                             trivial=False)  # fmt: skip
    test = tiny_data["shards"] / "test"
    shard_bytes = sum(f.stat().st_size for f in test.glob("*.tar"))
    with rangeless_http(tiny_data["shards"]) as (url, sent, gets):
        p = tiny_params(**{"sampler.shards_url": url, "sampler.workers": workers,
                           "sampler.cache_dir": str(tmp_path / "cache")})  # fmt: skip
        remote = ev.evaluate_fold(p, ckpt, manifest, tiny_data["shards"], trivial=False)
    moved = sum(n for path, n in sent.items() if path.startswith("/test/") and path.endswith(".tar"))
    ratio, n_gets = moved / shard_bytes, sum(g for path, g in gets.items() if path.endswith(".tar"))
    print(
        f"\nworkers={workers}: {moved} of {shard_bytes} test-shard bytes moved ({ratio:.2f}x), {n_gets} GETs"
    )
    assert remote["scores"] == local["scores"]
    assert moved <= 2 * shard_bytes


def _test_tar_bytes(sent: dict[str, int]) -> int:
    return sum(n for path, n in sent.items() if path.startswith("/test/") and path.endswith(".tar"))


def test_cache_remote_serves_the_second_evaluation_pass_from_local_copies(tiny_data, tmp_path):
    """`sampler.cache_remote: true` over a server that honours Range: the first pass moves each test
    shard once, whole; the second sends no test-shard byte; both score as local. Without the option
    (the default) nothing is cached and the second pass reads by range again."""
    ckpt, manifest = _checkpoint_and_manifest(tiny_data, tmp_path, episodes=60)
    local = ev.evaluate_fold(tiny_params(**{"sampler.workers": 0}), ckpt, manifest, tiny_data["shards"],
                             trivial=False)  # fmt: skip
    test_shards = list((tiny_data["shards"] / "test").glob("*.tar"))
    shard_bytes = sum(f.stat().st_size for f in test_shards)
    moved = {}
    for keep in (True, False):
        cache = tmp_path / f"cache-{keep}"
        with ranged_http(tiny_data["shards"]) as (url, sent, _):
            p = tiny_params(**{"sampler.shards_url": url, "sampler.workers": 0,
                               "sampler.cache_dir": str(cache), "sampler.cache_remote": keep})  # fmt: skip
            first = ev.evaluate_fold(p, ckpt, manifest, tiny_data["shards"], trivial=False)
            after_first = _test_tar_bytes(sent)
            second = ev.evaluate_fold(p, ckpt, manifest, tiny_data["shards"], trivial=False)
            moved[keep] = (after_first, _test_tar_bytes(sent) - after_first)
        assert first["scores"] == second["scores"] == local["scores"]
        assert len(list(cache.glob("*.tar"))) == (len(test_shards) if keep else 0)
    print(f"\ntest shards {shard_bytes} bytes; moved (1st pass, 2nd pass): cache_remote {moved[True]}, "
          f"default {moved[False]}")  # fmt: skip
    assert moved[True] == (shard_bytes, 0)
    assert moved[False][1] > 0


def test_a_rangeless_shard_larger_than_the_cache_is_read_as_a_bounded_stream(tiny_data, tmp_path):
    """No room in the cache: the body is skipped to the sample and cut after it, never held whole."""
    local = SampleReader(str(tiny_data["shards"] / "test"))
    key = sorted(local.locations)[-1]
    with rangeless_http(tiny_data["shards"]) as (url, _, _):
        tiny_cache = RemoteReads(cache=ShardCache(str(tmp_path / "cache"), max_bytes=1024))
        got = SampleReader(f"{url}/test", tiny_cache).fetch(key)
    assert got["jpg"] == local.fetch(key)["jpg"] and got["label.png"] == local.fetch(key)["label.png"]
    assert not any((tmp_path / "cache").glob("*.tar"))


def test_an_endless_body_is_a_shard_error_not_memory(tiny_data, tmp_path, caplog):
    """A server that ignores Range and never ends its body: the read stops at the manifest's bytes."""
    reader_local = SampleReader(str(tiny_data["shards"] / "test"))
    key = sorted(reader_local.locations)[0]
    with slow_http(tiny_data["shards"], endless=True) as url:
        remote = RemoteReads(cache=ShardCache(str(tmp_path / "cache")))
        with pytest.raises(ShardError, match=r"goes on beyond the manifest's \d+ bytes"):
            SampleReader(f"{url}/test", remote).fetch(key)
        # a training stream of the same server: every shard is skipped with that cause, then it stops
        # (an epoch longer than the split holds: every shard is read to its end, where the cause shows)
        stream = fold0_stream(tiny_data, f"{url}/train", remote=remote, episodes_per_epoch=100_000)
        with caplog.at_level(logging.WARNING), pytest.raises(ShardError, match="no readable shard"):
            for _ in stream:
                pass
    skipped = [r.message for r in caplog.records if "skipping shard" in r.message]
    assert skipped and all("goes on beyond the manifest's" in m for m in skipped)
    assert not list((tmp_path / "cache").glob("*.part*"))


def test_more_members_per_key_than_the_format_allows_is_a_shard_error(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(shard_io.MAX_MEMBERS_PER_KEY + 1):
            info = tarfile.TarInfo(f"k1.m{i}")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    with pytest.raises(ShardError, match=f"sample k1 has more than {shard_io.MAX_MEMBERS_PER_KEY} members"):
        list(shard_io.read_shard(str(tmp_path / "s.tar")))


def _timed_evaluation(tiny_data, tmp_path, url: str, capsys) -> tuple[int, str, float]:
    ckpt, manifest = _checkpoint_and_manifest(tiny_data, tmp_path, episodes=8)
    params = tmp_path / "params.yaml"
    from train_helpers import write_params

    params = write_params(tmp_path, **FAST, **{"sampler.shards_url": url, "sampler.workers": 0,
                                               "sampler.cache_dir": str(tmp_path / "cache")})  # fmt: skip
    argv = ["--params", str(params), "--shards", str(tiny_data["shards"]), "--checkpoint", str(ckpt),
            "--manifest", str(manifest), "--out", str(tmp_path / "r"), "--no-trivial"]  # fmt: skip
    start = time.monotonic()
    code = ev.main(argv)
    return code, capsys.readouterr().err, time.monotonic() - start


@pytest.mark.parametrize("stall", [False, True], ids=["50B/s", "stalled"])
def test_evaluation_over_a_trickling_link_stops_with_one_line(tiny_data, tmp_path, capsys, stall):
    """50 bytes/s (or headers, then nothing) never trips a socket timeout; the rate floor ends it."""
    with slow_http(tiny_data["shards"], rate=50, stall=stall) as url:
        code, err, took = _timed_evaluation(tiny_data, tmp_path, url, capsys)
    print(f"\n{'stalled' if stall else '50 B/s'} link: evaluation stopped after {took:.1f} s: {err.strip()}")
    assert code == 2 and err.count("\n") == 1
    assert f"{url}/test/test-" in err and " bytes in " in err and "sampler.min_bytes_per_s" in err
    assert took < 30  # a 1 s window of waiting, plus the model and the start
    assert not (tmp_path / "r").exists()


def test_training_skips_a_trickling_shard_with_a_warning_and_a_count(tiny_data, tmp_path, caplog):
    shards = copy_shards(tiny_data, tmp_path)
    limits = NetLimits(min_bytes_per_s=1000, window_s=0.5)
    remote = RemoteReads(limits, ShardCache(str(tmp_path / "cache")))
    with slow_http(shards, rate=50) as url, caplog.at_level(logging.WARNING):
        # every shard trickles: each is skipped (one line each), then the sampler stops naming the cause
        stream = fold0_stream(tiny_data, f"{url}/train", remote=remote, episodes_per_epoch=4)
        with pytest.raises(Exception):  # noqa: B017 -- the sampler's own "no usable shard" error
            next(iter(stream))
    slow = [r.message for r in caplog.records if "skipping shard" in r.message and "B/s" in r.message]
    assert slow and all(" bytes in " in m and f"{url}/train/train-" in m for m in slow)


def test_a_download_over_a_trickling_link_stops_with_one_line(tmp_path):
    from pipeline.download import DownloadError, fetch
    from pipeline.sources import Source

    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "x.tar").write_bytes(bytes(10_000))
    source = Source(name="x.tar", url="http://unused/x.tar", md5=None)
    limits = NetLimits(min_bytes_per_s=1000, window_s=0.5, where="download")
    with slow_http(tmp_path / "srv", rate=50) as url:
        start = time.monotonic()
        with pytest.raises(
            DownloadError, match=r"x\.tar: http://127\.0\.0\.1:\d+/x\.tar: \d+ bytes in"
        ) as info:
            fetch(source, tmp_path / "a", f"{url}/", retries=5, progress=False, limits=limits)
        took = time.monotonic() - start
    assert "download.min_bytes_per_s" in str(info.value) and "\n" not in str(info.value)
    assert took < 10  # one window of waiting, no retry of a link that is too slow


def test_a_fifo_in_place_of_a_shard_is_refused(tiny_data, tmp_path):
    import os

    shards = copy_shards(tiny_data, tmp_path)
    reader = SampleReader(str(shards / "test"))
    key = sorted(reader.locations)[0]
    shard = shards / "test" / reader.locations[key].shard
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(ShardError, match="not a regular file"):
        reader.fetch(key)
    with pytest.raises(ShardError, match="not a regular file"):
        list(shard_io.read_shard(str(shard)))
