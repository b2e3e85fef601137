"""Benchmark the shard writer: images/s on the toy set, per worker count (labelling + tar writing)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pipeline.masks import coco_samples, pascal_samples
from pipeline.shards import write_split


def bench(raw: Path, dataset: str, workers: list[int], repeat: int = 2) -> dict[int, float]:
    """Best-of-`repeat` images/s of `write_split` over the train split, per worker count."""
    samples = (pascal_samples(raw, "denet") if dataset == "pascal" else coco_samples(raw))["train"]
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in workers:
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                write_split(
                    samples, Path(tmp) / f"w{n}", dataset=dataset, protocol="denet", split="train",
                    max_samples=200, min_shards=1, workers=n, progress=False,
                )  # fmt: skip
                best = min(best, time.perf_counter() - t0)
            rates[n] = len(samples) / best
    return rates


def main(argv: list[str] | None = None) -> int:
    """`python -m train.bench.bench_shards [--raw DIR] [--dataset pascal|coco] [--workers 1 2]`."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", default=None, help="raw tree; default: generate the toy set in a temp dir")
    ap.add_argument("--dataset", choices=("pascal", "coco"), default="pascal")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(args.raw) if args.raw else Path(tmp)
        if not args.raw:
            from pipeline.toy import generate

            generate(raw, args.dataset)
        for n, rate in bench(raw, args.dataset, args.workers, args.repeat).items():
            print(f"shard writer, {args.dataset} train, {n} worker(s): {rate:.0f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
