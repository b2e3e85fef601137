"""Scale-out benchmark: training and evaluation episodes/s of one loader process from local tars, HTTP, S3.

`python -m train.bench.bench_storage`: synthetic 500x375 JPEGs (bench_loader's data) at `image_size` 321,
`workers=0`, served on 127.0.0.1 by aiohttp's static file handler (honours `Range`) and by moto's S3
server, each in its own process. Prints one table and the ratios to local; a script, not a test.
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


def _rate(batches: Iterator[dict[str, Any]], seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        next(batches)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        n += len(next(batches)["query_id"])
    return n / (time.perf_counter() - t0)


def measure(shards: str, folds: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(training, evaluation) episodes/s of one process reading `shards` (a dataset folder or URL)."""
    base, novel = read_fold(str(folds), 0)
    pairs = read_pairs((folds / "fold0" / "train.txt").read_text())
    stream = EpisodeStream(
        f"{shards}/train", pairs, base, novel, batch_size=8, image_size=args.size, pool_size=32,
        episodes_per_epoch=10**9, resampled=True,
    )  # fmt: skip
    train = _rate(iter(stream), args.seconds)
    manifest = build_manifest(shards, str(folds), "pascal", 0, 1, 1, "denet", 0, 1000)
    episodes = EvalEpisodes(manifest, f"{shards}/test", args.size, "denet")
    loader = DataLoader(episodes, batch_size=8, num_workers=0, collate_fn=collate_eval)
    return train, _rate(iter(loader), args.seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(TESTS))  # the tests' moto helper: one way to start a local S3
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic(Path(tmp) / "data", n_train=240, n_test=120, size=(500, 375), shard_max=30)
        shards, folds = paths["shards"], paths["folds"]
        rows = {"local tars": measure(str(shards), folds, args)}
        with range_http_server(shards.parent) as url:
            rows["HTTP (aiohttp, Range)"] = measure(f"{url}/{shards.name}", folds, args)
        with s3_server(shards) as s3_url:
            rows["S3 (moto, own process)"] = measure(s3_url, folds, args)
    print(f"\none process, workers=0, size {args.size}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'':24s} {'training':>10s} {'evaluation':>11s}   episodes/s (ratio to local)")
    local = rows["local tars"]
    for name, (tr, ev) in rows.items():
        print(f"{name:24s} {tr:10.1f} {ev:11.1f}   ({tr / local[0]:.2f}, {ev / local[1]:.2f})")


if __name__ == "__main__":
    main()
