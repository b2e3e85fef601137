"""Does training under bf16 autocast move the score? The same toy run trained in fp32 and in bf16, per seed.

    python -m train.bench.bench_bf16_training --shards DIR --folds DIR --out DIR [--steps 600] [--seeds 0 1]

`train.amp` trains under bf16 autocast on CUDA; the DENet release trains in fp32. `bench_precision` scores
one fp32-trained checkpoint both ways; this trains each seed twice, once in fp32 and once with the whole
run inside `torch.autocast(<device>, bfloat16)` (on the CPU too, where `train.amp` is a no-op), then scores
every run's last checkpoint in fp32 on one fixed test manifest (no checkpoint selection: one validation,
at the last step). The seeds' spread is the yardstick for the fp32-bf16 difference. Prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.io import write_json
from train import train as tr
from train.checkpoint import build_model_from_checkpoint
from train.evaluate import episode_batches, evaluate_model
from train.params import load_params
from train.stream.manifests import build_manifest


def train_once(p, shards: str, folds: Path, out: Path, bf16: bool) -> tuple[Path, float]:
    """One training run into `out`; (last checkpoint, seconds)."""
    ctx = torch.autocast(p.train.device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with ctx:
        tr.run(p, shards, folds, out, progress=False)
    return out / tr.LAST, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--folds", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="a folder for the runs' checkpoints")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--episodes", type=int, default=300, help="test episodes of the fixed manifest")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                    help="one per process lets the runs go in parallel")  # fmt: skip
    args = ap.parse_args(argv)
    base = {"train.steps": args.steps, "train.val_every": args.steps, "train.checkpoint_every": args.steps,
            "train.device": "cpu"}  # fmt: skip
    p0 = load_params(args.params, base)
    manifest = build_manifest(
        args.shards, str(args.folds), p0.dataset, p0.fold, 1, 1, p0.protocol, 0, args.episodes
    )
    write_json(args.out / "test_manifest.json", manifest)
    rows = []
    for seed in args.seeds:
        for bf16 in [kind == "bf16" for kind in args.precisions]:
            p = load_params(args.params, {**base, "seed": seed})
            last, seconds = train_once(
                p, args.shards, args.folds, args.out / f"seed{seed}_{'bf16' if bf16 else 'fp32'}", bf16
            )
            model, _ = build_model_from_checkpoint(last, map_location="cpu")
            miou = evaluate_model(model, episode_batches(p, args.shards, manifest), p.protocol, "cpu", False)[
                "miou"
            ]
            rows.append((seed, "bf16" if bf16 else "fp32", float(miou), seconds))
            print(f"seed {seed} {rows[-1][1]}: test mIoU {miou:.2f} ({seconds:.0f} s training)", flush=True)
    if len(args.precisions) < 2:
        return 0
    fp32 = {s: m for s, kind, m, _ in rows if kind == "fp32"}
    bf16 = {s: m for s, kind, m, _ in rows if kind == "bf16"}
    print("| seed | fp32 | bf16 | bf16 - fp32 |\n|---|---|---|---|")
    for s in args.seeds:
        print(f"| {s} | {fp32[s]:.2f} | {bf16[s]:.2f} | {bf16[s] - fp32[s]:+.2f} |")
    diff = np.mean([bf16[s] - fp32[s] for s in args.seeds])
    spread = {k: max(v.values()) - min(v.values()) for k, v in (("fp32", fp32), ("bf16", bf16))}
    print(
        f"mean bf16 - fp32: {diff:+.2f}; spread over seeds: fp32 {spread['fp32']:.2f}, "
        f"bf16 {spread['bf16']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
