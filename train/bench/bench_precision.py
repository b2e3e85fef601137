"""Does bf16 autocast move the score? One checkpoint on test manifests, fp32 vs bf16 autocast.

    python -m train.bench.bench_precision --shards DIR --checkpoint best.pt --manifest m0.json [m1.json ...]

`train.amp` (bf16 autocast on CUDA) is a speed choice the DENet release does not make (it runs fp32).
This scores the same checkpoint on the same episodes twice, in fp32 and under bf16 autocast (on the CPU
too: torch.autocast("cpu", bfloat16)), and prints both mIoU per manifest. Several manifests drawn with
different seeds give the spread that the choice of test episodes alone causes, to compare against.
A script that prints a table, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from train.checkpoint import build_model_from_checkpoint
from train.device import resolve_device
from train.evaluate import episode_batches, evaluate_model
from train.params import load_params
from train.stream.manifests import read_manifest


def score(model: torch.nn.Module, p, shards: str, manifest: dict, device: str, bf16: bool) -> float:
    """mIoU of `model` on `manifest`, under bf16 autocast on `device` when `bf16`."""
    dev = torch.device(device)
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:  # train.train.autocast_for is a no-op on the CPU: this context is the one that applies
        result = evaluate_model(model, episode_batches(p, shards, manifest), p.protocol, dev, amp=False)
    return float(result["miou"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--manifest", required=True, nargs="+", type=Path)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    device = resolve_device(args.device)
    model, _ = build_model_from_checkpoint(args.checkpoint, map_location="cpu")
    model.to(device)
    print("| manifest | seed | fp32 mIoU | bf16 autocast mIoU | bf16 - fp32 |")
    print("|---|---|---|---|---|")
    for path in args.manifest:
        manifest = read_manifest(path)
        fp32 = score(model, p, args.shards, manifest, device, bf16=False)
        bf16 = score(model, p, args.shards, manifest, device, bf16=True)
        print(f"| {path.name} | {manifest['seed']} | {fp32:.2f} | {bf16:.2f} | {bf16 - fp32:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
