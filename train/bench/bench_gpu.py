"""Training-throughput benchmark: episodes/s of a model step with synthetic tensors and fed by the shards.

`python -m train.bench.bench_gpu [--size 321 --batch 8 --backbone resnet50 --workers 12 --compile MODE]`
prints one table:
1. train step on synthetic tensors already on the device (the model's ceiling), at the batch and at
   twice the batch (a launch-bound step gains ~2x from the larger batch);
2. eval forward on synthetic tensors;
3. for toy shards it builds in a temp folder, with VOC-sized images (333-500 px): the data path
   alone (loader + transfer + normalisation) and the train step fed by it, with CPU decode and,
   on CUDA, with JPEG decoding on the GPU (`gpu_decode`);
4. the trainer's own loop (`train.train.train_loop`) fed the same way, which adds what the step of
   rows 1-3 leaves out (the per-step finite-loss check and the read of the logged loss terms).
A script, not a test: it runs on CPU too (use a small --size / --backbone there)."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import fss_model
from pipeline.build import build
from pipeline.folds import fold_classes
from pipeline.toy import generate
from train.step import autocast_for, forward
from train.stream.index import read_pairs
from train.stream.normalize import normalize
from train.stream.sampler import EpisodeStream
from train.train import TrainConfig, build_optimizer, train_loop


def synthetic_batch(b: int, way: int, shot: int, size: int, num_classes: int) -> dict[str, Any]:
    """A CPU episode batch in the design.md layout with random content (uint8 images)."""
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, num_classes, (b, size, size), generator=g)
    return {
        "query_img": torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
        "support_imgs": torch.randint(0, 256, (b, way, shot, 3, size, size), dtype=torch.uint8, generator=g),
        "support_masks": torch.randint(0, 2, (b, way, shot, size, size), generator=g),
        "query_label": torch.randint(0, way + 1, (b, size, size), generator=g),
        "query_full_label": label,
        "class_ids": torch.arange(1, way + 1).repeat(b, 1),
    }


def timed_steps(
    model: torch.nn.Module,
    batches: Iterator[dict[str, Any]],
    device: torch.device,
    steps: int,
    warmup: int,
    train: bool,
    runner: torch.nn.Module | None = None,
) -> float:
    """Episodes/s over `steps` batches after `warmup`; a train step includes backward and SGD.

    `runner` is what runs the forward (the `torch.compile`d model); the loss is `model.loss`.
    """
    runner = model if runner is None else runner
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    model.train(train)
    episodes, start = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, episodes = time.perf_counter(), 0
        batch = normalize(next(batches), device)
        with torch.set_grad_enabled(train), autocast_for(device, True):
            out = forward(runner, batch, channels_last=True)
            if train:
                loss = model.loss(out, batch)["loss"]
        if train:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        episodes += batch["query_label"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return episodes / (time.perf_counter() - start)


def timed_loader(batches: Iterator[dict[str, Any]], device: torch.device, steps: int, warmup: int) -> float:
    """Episodes/s of the data path alone: batches moved to the device and normalised, no model."""
    for _ in range(warmup):
        normalize(next(batches), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, episodes = time.perf_counter(), 0
    for _ in range(steps):
        episodes += normalize(next(batches), device)["query_label"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return episodes / (time.perf_counter() - start)


def timed_trainer(
    model: torch.nn.Module,
    batches: Iterator[dict[str, Any]],
    device: torch.device,
    steps: int,
    warmup: int,
    batch_size: int,
    compile_mode: str,
) -> float:
    """Episodes/s of `train.train.train_loop` itself (finite-loss check, logged terms, compile)."""
    cfg = TrainConfig(steps=warmup + steps, lr=1e-4, device=str(device), compile=compile_mode, log_every=1)
    stamps: list[float] = []

    def log(step: int, values: dict[str, float]) -> None:
        stamps.append(time.perf_counter())  # the loop has synced on the loss by then

    train_loop(model, build_optimizer(model, cfg), batches, cfg, normalize, log=log, progress=False)
    return steps * batch_size / (stamps[-1] - stamps[warmup - 1])


def repeat(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    while True:
        yield batch


def shard_batches(
    data: Path, args: argparse.Namespace, gpu_decode: bool, pin_memory: bool
) -> Iterator[dict[str, Any]]:
    """Endless training batches from the toy shards under `data` (fold 0, base classes)."""
    base, novel = fold_classes("pascal", 0)
    stream = EpisodeStream(
        str(data / "shards" / "pascal" / "train"),
        read_pairs((data / "folds" / "pascal" / "fold0" / "train.txt").read_text()),
        base,
        novel,
        batch_size=args.batch,
        image_size=args.size,
        episodes_per_epoch=10**7,
        resampled=True,  # the toy split has fewer shards than workers
        gpu_decode=gpu_decode,
    )
    loader = DataLoader(
        stream, batch_size=None, num_workers=args.workers, pin_memory=pin_memory, persistent_workers=True
    )
    yield from loader


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="denet")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--frozen", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--size", type=int, default=321)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--toy-scale", type=float, default=0.3)
    ap.add_argument(
        "--sides", type=int, nargs=2, default=(333, 500), help="toy image sides in px (VOC-like default)"
    )
    ap.add_argument("--release-steps", type=int, default=150_000, help="for the time-per-fold column")
    ap.add_argument(
        "--compile",
        default="none",
        choices=("none", "default", "reduce-overhead", "max-autotune"),
        help="torch.compile mode, as train.compile takes it (its auto: reduce-overhead for long runs)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = fss_model.build_model(
        args.model, num_classes=21, backbone=args.backbone, frozen=args.frozen, freeze_bn=True
    )
    model = model.to(device).to(memory_format=torch.channels_last)
    runner = model if args.compile == "none" else torch.compile(model, mode=args.compile)
    rows: list[tuple[str, float]] = []
    for batch in (args.batch, 2 * args.batch):  # a step that is launch-bound gains ~2x with 2x the batch
        synthetic = repeat(synthetic_batch(batch, 1, 1, args.size, 21))
        eps = timed_steps(model, synthetic, device, args.steps, args.warmup, True, runner)
        rows.append((f"train, synthetic tensors, batch {batch}", eps))
    synthetic = repeat(synthetic_batch(args.batch, 1, 1, args.size, 21))
    eps = timed_steps(model, synthetic, device, args.steps, args.warmup, False, runner)
    rows.append((f"eval, synthetic tensors, batch {args.batch}", eps))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate(Path(tmp) / "raw", "pascal", seed=0, scale=args.toy_scale, sides=tuple(args.sides))
        build("pascal", "denet", Path(tmp) / "raw", Path(tmp) / "data", progress=False)
        print(f"toy data built in {time.perf_counter() - t0:.1f} s")
        # GPU decode: JPEG bytes travel from the workers, torchvision decodes them on the device.
        for gpu in [False, True] if device.type == "cuda" else [False]:
            batches = shard_batches(Path(tmp) / "data", args, gpu, device.type == "cuda")
            how = f"shards ({args.workers} workers, {'GPU' if gpu else 'CPU'} decode)"
            rows.append((f"data only, {how}", timed_loader(batches, device, args.steps, args.warmup)))
            eps = timed_steps(model, batches, device, args.steps, args.warmup, True, runner)
            rows.append((f"train, {how}", eps))
        for gpu in [False, True] if device.type == "cuda" else [False]:
            batches = shard_batches(Path(tmp) / "data", args, gpu, device.type == "cuda")
            eps = timed_trainer(model, batches, device, args.steps, args.warmup, args.batch, args.compile)
            how = f"shards ({args.workers} workers, {'GPU' if gpu else 'CPU'} decode)"
            rows.append((f"train, {how}, train.train.train_loop", eps))
    print(
        f"\n{args.model} / {args.backbone} frozen={args.frozen}, {args.size} px, batch {args.batch}, "
        f"1-way 1-shot, bf16={device.type == 'cuda'}, channels_last, compile={args.compile}, device {device}"
        f" ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'})"
    )
    print(f"toy images {args.sides[0]}-{args.sides[1]} px, {args.workers} loader workers")
    print(f"| measurement | episodes/s | minutes for {args.release_steps} steps x {args.batch} |")
    print("|---|---|---|")
    for name, eps in rows:
        minutes = f"{args.release_steps * args.batch / eps / 60:.0f}" if name.startswith("train") else "-"
        print(f"| {name} | {eps:.1f} | {minutes} |")


if __name__ == "__main__":
    main()
