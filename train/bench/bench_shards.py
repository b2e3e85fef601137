"""Benchmark the shard writer: images/s and CPU per sample of `write_split` (labelling + tar writing)
per worker count, and the cost of importing `pipeline.shards`; with `--baseline REV`, the same for a
git revision, side by side in alternating rounds, after checking that both write the same samples.

Each measurement runs in a fresh child process started in the code's folder, so the revision's own
modules are the ones imported. CPU is the child's user + system time plus that of its reaped pool
workers, over `write_split` alone.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.shards import read_shard_with_offsets

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json, resource, sys, time
from pathlib import Path

def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

raw, dataset, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
workers, presence = int(sys.argv[4]), int(sys.argv[5])
c0, r0 = cpu(), rss_mb()
from pipeline.masks import coco_samples, pascal_samples
from pipeline.shards import write_split
c1, r1 = cpu(), rss_mb()
samples = (pascal_samples(raw, "denet") if dataset == "pascal" else coco_samples(raw))["train"]
t0, c2 = time.perf_counter(), cpu()
write_split(samples, out, dataset=dataset, protocol="denet", split="train", max_samples=200, min_shards=1,
            workers=workers, progress=False, presence_size=presence)
print(json.dumps({"n": len(samples), "wall_s": time.perf_counter() - t0, "cpu_s": cpu() - c2,
                  "import_cpu_s": c1 - c0, "import_rss_mb": r1 - r0, "torch": "torch" in sys.modules}))
"""


def run_once(code: Path, raw: Path, dataset: str, out: Path, workers: int, presence: int) -> dict:
    """One `write_split` of the train split in a child process started in `code`."""
    cmd = [sys.executable, "-c", CHILD, str(raw), dataset, str(out), str(workers), str(presence)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"write_split failed in {code}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def bench(
    raw: Path, dataset: str, workers: list[int], repeat: int = 2, presence: int = 321
) -> dict[int, float]:
    """Best-of-`repeat` images/s of `write_split` over the train split of `raw`, per worker count."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in workers:
            runs = [
                run_once(REPO, Path(raw), dataset, Path(tmp) / f"w{n}-{i}", n, presence)
                for i in range(repeat)
            ]
            rates[n] = max(r["n"] / r["wall_s"] for r in runs)
    return rates


def read_back(split_dir: Path) -> dict[str, tuple[bytes, bytes, bytes]]:
    """key -> (JPEG bytes, JSON bytes, decoded label map bytes) of every sample in the split's shards."""
    out = {}
    for shard in sorted(split_dir.glob("train-*.tar")):
        for key, _, members in read_shard_with_offsets(shard):
            label = np.asarray(Image.open(io.BytesIO(members["label.png"])))
            out[key] = (members["jpg"], members["json"], label.tobytes())
    return out


def index_rows(split_dir: Path) -> list[list[str]]:
    """index.tsv's rows without the offset column (offsets move when member sizes change)."""
    return [line.split("\t")[:-1] for line in (split_dir / "index.tsv").read_text().splitlines()]


def shard_hashes(split_dir: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((split_dir / "manifest.json").read_text())["shards"]]


def export_revision(rev: str, into: Path) -> Path:
    """`git archive` of `rev` into `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    """`python -m train.bench.bench_shards [--baseline REV] [--workers 1 2] [--rounds 3]`."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", default=None, help="raw tree; default: generate the toy set in a temp dir")
    ap.add_argument("--dataset", choices=("pascal", "coco"), default="pascal")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default=None, help="git revision to measure side by side")
    ap.add_argument("--sides", type=int, nargs=2, default=(333, 500), help="toy image sides (VOC-like)")
    ap.add_argument("--presence-size", type=int, default=321, help="data.presence_size (official denet: 321)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(args.raw) if args.raw else Path(tmp) / "raw"
        if not args.raw:
            from pipeline.toy import generate

            generate(raw, args.dataset, sides=tuple(args.sides))
        codes = {"this checkout": REPO}
        if args.baseline:
            baseline = export_revision(args.baseline, Path(tmp) / "baseline")
            codes = {f"baseline {args.baseline}": baseline, **codes}
        runs: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.rounds):
            for n in args.workers:
                for label, code in codes.items():
                    out = Path(tmp) / f"out-{r}-{n}-{len(label)}"
                    runs.setdefault((label, n), []).append(
                        run_once(code, raw, args.dataset, out, n, args.presence_size)
                    )
        # what was written: the same samples read back from every code; byte-identical across workers
        last = args.rounds - 1
        ours = [Path(tmp) / f"out-{last}-{n}-{len('this checkout')}" for n in args.workers]
        assert len({tuple(shard_hashes(d)) for d in ours}) == 1, "shards differ between worker counts"
        if args.baseline:
            theirs = Path(tmp) / f"out-{last}-{args.workers[0]}-{len(f'baseline {args.baseline}')}"
            assert read_back(theirs) == read_back(ours[0]), "the baseline's samples read back differently"
            assert index_rows(theirs) == index_rows(ours[0]), "index.tsv differs from the baseline's"
            size = {d: sum(p.stat().st_size for p in d.glob("train-*.tar")) for d in (theirs, ours[0])}
            change = size[ours[0]] / size[theirs] - 1
            print(f"same samples read back as from the baseline; shard bytes {change:+.1%}")
        n_samples = runs[next(iter(runs))][0]["n"]
        sides = "given raw tree" if args.raw else f"toy, {args.sides[0]}-{args.sides[1]} px"
        print(f"{args.dataset} train, {n_samples} images ({sides}), median of {args.rounds} rounds:")
        for (label, n), rs in runs.items():
            wall = statistics.median(x["wall_s"] for x in rs)
            cpu_ms = statistics.median(x["cpu_s"] for x in rs) * 1e3 / n_samples
            imp = rs[0]
            print(
                f"  {label}, {n} worker(s): {n_samples / wall:.0f} images/s, {cpu_ms:.2f} CPU-ms/image; "
                f"import pipeline.shards {imp['import_cpu_s']:.2f} CPU-s, +{imp['import_rss_mb']:.0f} MB RSS"
                f"{' (torch)' if imp['torch'] else ''}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
