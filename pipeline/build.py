"""Run the data stages in order without DVC: raw -> shards (+ index, manifests) -> folds."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.folds import write_folds
from pipeline.io import remove_stale_temps
from pipeline.shards import build_shards


def build(
    dataset: str,
    protocol: str,
    raw: str | Path,
    out: str | Path,
    params_file: str | Path = "params.yaml",
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Shards into `out/shards/<dataset>/<split>/`, folds into `out/folds/<dataset>/`; returns timings."""
    params = load_params(params_file, {"dataset": dataset, "protocol": protocol})
    out = Path(out)
    shards_dir, folds_dir = out / "shards" / dataset, out / "folds" / dataset
    t0 = time.perf_counter()
    results = build_shards(raw, shards_dir, params, workers, progress)
    t1 = time.perf_counter()
    for folder in [folds_dir, *folds_dir.glob("fold*/")]:
        remove_stale_temps(folder)  # list files a killed build left half written
    write_folds(
        shards_dir,
        folds_dir,
        dataset=dataset,
        protocol=protocol,
        coco_split=params.data.coco_split,
        min_fraction=float(params.data.min_fraction),
        min_pixels=int(params.data.min_pixels),
        drop_novel_images=params.data.drop_novel_images,
    )
    t2 = time.perf_counter()
    images = sum(r.num_samples for r in results.values())
    return {"images": images, "shards_s": t1 - t0, "folds_s": t2 - t1}


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.build --dataset pascal|coco --protocol denet|standard --raw DIR --out DIR`."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", choices=("pascal", "coco"), required=True)
    ap.add_argument("--protocol", choices=("denet", "standard"), required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params.yaml", help="other knobs (data.*) come from here")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)

    def work() -> int:
        t = build(args.dataset, args.protocol, args.raw, args.out, args.params, args.workers)
        done = f"shards {t['shards_s']:.1f} s, folds {t['folds_s']:.1f} s"
        print(f"build: {t['images']} images, {done} -> {args.out}")
        return 0

    return run_stage("build", work)


if __name__ == "__main__":
    sys.exit(main())
