"""Scale-out benchmark: training and evaluation episodes/s of one loader process from local tars, HTTP, S3.

`python -m train.bench.bench_storage`: synthetic 500x375 JPEGs (bench_loader's data) at `image_size` 321,
`workers=0`, served on 127.0.0.1 by aiohttp's static file handler (honours `Range`) and by moto's S3
server, each in its own process. Evaluation runs the same episodes twice with one reader, for each
remote store once as by default (one ranged read per sample) and once with `sampler.cache_remote`
(whole shards kept in a fresh shard cache on first touch). Prints one table and the ratios to local;
a script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from train.bench.bench_loader import served_by_process, write_synthetic
from train.stream.by_key import EvalEpisodes, collate_eval
from train.stream.index import read_fold, read_pairs
from train.stream.manifests import build_manifest
from train.stream.sampler import EpisodeStream
from train.stream.shard_cache import ShardCache
from train.stream.shard_io import RemoteReads

TESTS = Path(__file__).resolve().parents[2] / "tests" / "train"


def _serve_aiohttp(root: str, port_out: Any) -> None:
    import asyncio

    from aiohttp import web

    async def main() -> None:
        app = web.Application()
        app.router.add_static("/", root, follow_symlinks=True)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def range_http_server(root: Path) -> Iterator[str]:
    """aiohttp's static files (Range -> 206) at http://127.0.0.1:<port>, in its own process."""
    with served_by_process(_serve_aiohttp, str(root)) as port:
        yield f"http://127.0.0.1:{port}"


def _serve_moto(folder: str, port_out: Any) -> None:
    from storage_servers import moto_s3

    with moto_s3({"shards": Path(folder)}) as endpoint:
        port_out.send(endpoint)
        time.sleep(10**6)


@contextlib.contextmanager
def s3_server(shards: Path) -> Iterator[str]:
    """moto's S3 server holding `shards` under `s3://<BUCKET>/shards`, in its own process (remote
    storage never takes the loader's GIL); AWS_* variables point this process at it."""
    from storage_servers import BUCKET, S3_ENV

    saved = dict(os.environ)
    with served_by_process(_serve_moto, str(shards)) as endpoint:
        try:
            os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
            yield f"s3://{BUCKET}/shards"
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _cpu_s() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its live child processes (the servers)."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.times()
    kids = 0.0
    for task in os.listdir("/proc/self/task"):
        for pid in Path(f"/proc/self/task/{task}/children").read_text().split():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                kids += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return me.user + me.system, kids


def _rate(batches: Iterator[dict[str, Any]], seconds: float, warmup: int = 2) -> tuple[float, float, float]:
    """(episodes/s, client CPU-ms and server CPU-ms per episode) over `seconds` after `warmup` batches."""
    for _ in range(warmup):
        next(batches)
    (c0, s0), t0, n = _cpu_s(), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        n += len(next(batches)["query_id"])
    (c1, s1), wall = _cpu_s(), time.perf_counter() - t0
    return n / wall, (c1 - c0) * 1e3 / n, (s1 - s0) * 1e3 / n


def measure(
    shards: str, folds: Path, args: argparse.Namespace, remote: RemoteReads, training: bool = True
) -> dict[str, tuple[float, float, float]]:
    """Training (when `training`), evaluation (first pass) and evaluation again (second pass over the
    same episodes) of one process reading `shards` (a dataset folder or URL): `_rate`'s triple each."""
    out = {}
    if training:
        base, novel = read_fold(str(folds), 0)
        pairs = read_pairs((folds / "fold0" / "train.txt").read_text())
        stream = EpisodeStream(
            f"{shards}/train", pairs, base, novel, batch_size=8, image_size=args.size, pool_size=32,
            episodes_per_epoch=10**9, resampled=True,
        )  # fmt: skip
        out["training"] = _rate(iter(stream), args.seconds)
    manifest = build_manifest(shards, str(folds), "pascal", 0, 1, 1, "denet", 0, args.eval_episodes)
    episodes = EvalEpisodes(manifest, f"{shards}/test", args.size, "denet", remote=remote)
    for name in ("evaluation, 1st pass", "evaluation, 2nd pass"):  # one reader: the cache serves pass 2
        loader = DataLoader(episodes, batch_size=8, num_workers=0, collate_fn=collate_eval)
        n = len(episodes)
        batches = iter(loader)
        (c0, s0), t0 = _cpu_s(), time.perf_counter()
        for _ in batches:
            pass
        (c1, s1), wall = _cpu_s(), time.perf_counter() - t0
        out[name] = (n / wall, (c1 - c0) * 1e3 / n, (s1 - s0) * 1e3 / n)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--eval-episodes", type=int, default=300, help="episodes per evaluation pass")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(TESTS))  # the tests' moto helper: one way to start a local S3
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic(Path(tmp) / "data", n_train=240, n_test=120, size=(500, 375), shard_max=30)
        shards, folds = paths["shards"], paths["folds"]

        def remote(name: str, keep: bool) -> RemoteReads:  # a fresh, empty cache per row
            return RemoteReads(cache=ShardCache(str(Path(tmp) / f"cache-{name}")), cache_remote=keep)

        rows = {"local tars": measure(str(shards), folds, args, remote("local", False))}
        cached: dict[str, int] = {}  # shards in each cache_remote row's cache: proof the cache was used
        stores = {"HTTP (aiohttp, Range)": range_http_server(shards.parent), "S3 (moto)": s3_server(shards)}
        for name, server in stores.items():
            with server as url:
                where = url if url.startswith("s3:") else f"{url}/{shards.name}"
                rows[name] = measure(where, folds, args, remote(name, False))
                kept = f"{name.split()[0]} + cache_remote"
                rows[kept] = measure(where, folds, args, remote(kept, True), training=False)
                cached[kept] = len(list((Path(tmp) / f"cache-{kept}").glob("*.tar")))
    print(f"\none process, workers=0, size {args.size}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("episodes/s (ratio to local); CPU-ms per episode in the loader process / in the server process")
    local = rows["local tars"]
    for name, row in rows.items():
        for what, (rate, client, server) in row.items():
            ratio = rate / local[what][0]
            print(f"{name:24s} {what:22s} {rate:8.1f} ({ratio:.2f})   {client:6.1f} / {server:6.1f}")
    print("shards in the cache after the cache_remote rows:", cached)


if __name__ == "__main__":
    main()
