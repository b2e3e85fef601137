"""Episodic training: `python -m train.train` (the DVC `train` stage); resumable, bit-identical on resume."""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import fnmatch
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from pipeline.config import ConfigError, Params
from pipeline.io import write_json
from train import distributed
from train.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model_state,
    restore_rng,
    save_checkpoint,
    unwrap,
)
from train.device import COMPILE_MIN_STEPS, compile_mode, resolve_device  # noqa: F401  (re-exported)
from train.errors import USER_ERRORS, report
from train.params import load_params, model_kwargs_from_params
from train.params import write_json as write_params_json
from train.step import Batch, autocast_for, binary_focal_loss, forward
from train.stream import remote_reads, shards_location
from train.validation import make_validator

LAST = "last.pt"
BEST = "best.pt"
TRAIN_EPISODES = "train_episodes.json"  # train.episodes: manifest
PARAMS_JSON = "params.json"  # beside the dvclive metrics: the params the run used, every `auto` resolved


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite and train.nan_policy is `stop`."""


# ---------------------------------------------------------------- params -> explicit arguments (one place)


@dataclass(frozen=True)
class TrainConfig:
    """What the loop needs, as explicit values (built from params by `train_config_from_params`)."""

    steps: int
    lr: float
    optimizer: str = "sgd"  # sgd | rmsprop | adam
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = ()  # steps after which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    lr_schedule: str = "step"  # step (lr_milestones) | poly
    lr_power: float = 0.9  # poly: lr x (1 - step / steps) ** lr_power
    lr_multipliers: tuple[tuple[str, float], ...] = ()  # (parameter-name glob, lr factor), first match wins
    grad_accum: int = 1
    val_every: int = 500
    checkpoint_every: int = 2000
    log_every: int = 10
    amp: bool = True
    channels_last: bool = True
    compile: str = "none"  # a torch.compile mode, or "none"
    device: str = "cpu"
    nan_policy: str = "stop"
    protocol: str = "denet"


def train_config_from_params(p: Params) -> TrainConfig:
    """The loop's settings from params.yaml (`train` section plus the protocol)."""
    t = p.train
    device = resolve_device(t.device)
    return TrainConfig(
        steps=int(t.steps),
        lr=float(t.lr),
        optimizer=t.optimizer,
        momentum=float(t.momentum),
        weight_decay=float(t.weight_decay),
        lr_milestones=tuple(t.lr_milestones),
        lr_gamma=t.lr_gamma,
        lr_schedule=t.lr_schedule,
        lr_power=t.lr_power,
        lr_multipliers=tuple(dict(t.lr_multipliers).items()),
        grad_accum=t.grad_accum,
        val_every=int(t.val_every),
        checkpoint_every=int(t.checkpoint_every),
        log_every=t.log_every,
        amp=t.amp,
        channels_last=t.channels_last,
        compile=compile_mode(t.compile, device, int(t.steps)),
        device=device,
        nan_policy=t.nan_policy,
        protocol=p.protocol,
    )


def params_snapshot(p: Params) -> dict[str, Any]:
    """Plain-dict copy of the resolved params, stored in every checkpoint."""
    return json.loads(json.dumps(dataclasses.asdict(p)))


# params that define the data a run trains on: a checkpoint resumes only under the same values
RESUME_DATA_KEYS = (
    "dataset", "source", "protocol", "fold", "seed", "sampler.image_size", "train.way", "train.shot",
    "train.episodes", "train.episodes_per_class", "train.void", "data.coco_split", "data.min_fraction",
    "data.min_pixels", "data.presence_size", "data.drop_novel_images", "data.pascal_masks", "data.coco_crowd",
)  # fmt: skip


def data_params_changed(saved: dict[str, Any] | None, p: Params) -> list[str]:
    """`key: checkpoint value -> params value` for every RESUME_DATA_KEYS key that differs (a checkpoint
    without params, from an older version, is not compared)."""
    if not saved:
        return []
    now = params_snapshot(p)
    changed = []
    for dotted in RESUME_DATA_KEYS:
        old, new = saved, now
        for name in dotted.split("."):
            old = old.get(name) if isinstance(old, dict) else None
            new = new.get(name) if isinstance(new, dict) else None
        if old is not None and old != new:
            changed.append(f"{dotted}: {old} -> {new}")
    return changed


def parameter_groups(model: nn.Module, multipliers: tuple[tuple[str, float], ...]) -> list[dict[str, Any]]:
    """The trainable parameters in optimizer groups, each with its lr factor.

    A parameter takes the factor of the first glob in `multipliers` its name matches (`fnmatch`), else 1;
    groups come in a fixed order (factor 1 first, then the globs' order), so a resumed optimizer state
    lines up. A glob that matches no trainable parameter is an error: it is a typo or the wrong model.
    """
    by_factor: dict[float, list[nn.Parameter]] = {1.0: []}
    used: set[str] = set()
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        pattern, factor = next(((g, f) for g, f in multipliers if fnmatch.fnmatchcase(name, g)), ("", 1.0))
        used.add(pattern)
        by_factor.setdefault(factor, []).append(param)
    unused = [g for g, _ in multipliers if g not in used]
    if unused:
        raise ConfigError(f"params: train.lr_multipliers: {unused} match no trainable parameter of the model")
    return [{"params": ps, "lr_factor": f} for f, ps in by_factor.items() if ps]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer (SGD, RMSprop or Adam, as `cfg.optimizer`) over the trainable parameters.

    Every group's lr is cfg.lr times its `cfg.lr_multipliers` factor (SG-One's release: biases x2, its
    guidance conv x10 / x20); weight decay applies to every group, as in all the releases.
    """
    groups = [
        {"params": g["params"], "lr": cfg.lr * g["lr_factor"]}
        for g in parameter_groups(model, cfg.lr_multipliers)
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":  # torch's defaults otherwise (alpha 0.99, eps 1e-8), as AMP's release
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":  # torch's defaults otherwise (betas 0.9, 0.999; eps 1e-8), as HSNet's release
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"params: train.optimizer = {cfg.optimizer!r} is not one of sgd | rmsprop | adam")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr factor of every group after k optimizer steps, stepped once per training step; its state is
    saved in every checkpoint.

    step: lr_gamma ** (milestones <= k), like PANet's MultiStepLR (lr x0.1 from step 10,001 and 20,001);
    no milestones = the constant lr of the DENet-era releases. poly: (1 - (k + 1) / steps) ** lr_power,
    PFENet's `poly_learning_rate` (util/util.py), which sets the lr of iteration i (from 1) before its step.
    """
    if cfg.lr_schedule == "poly":
        steps, power = cfg.steps, cfg.lr_power
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.0, 1 - (k + 1) / steps) ** power)
    if cfg.lr_schedule != "step":
        raise ValueError(f"train.lr_schedule = {cfg.lr_schedule!r} is not one of step | poly")
    milestones, gamma = tuple(cfg.lr_milestones), cfg.lr_gamma
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: gamma ** bisect.bisect_right(milestones, k))


# ---------------------------------------------------------------- the loop


@dataclass
class TrainState:
    """What survives a kill: the step reached, the best validation score, skipped steps."""

    step: int = 0
    best_miou: float = -math.inf
    skipped: int = 0


def train_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    cfg: TrainConfig,
    normalize: Callable[[Batch, torch.device], Batch],
    state: TrainState | None = None,
    save: Callable[[TrainState, str], None] | None = None,
    validate: Callable[[nn.Module], float] | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    lines_every: int = 0,
) -> TrainState:
    """Run steps `state.step + 1 .. cfg.steps`; `batches` must yield the batches of those steps in order.

    `save(state, name)` writes a checkpoint (`LAST` every cfg.checkpoint_every steps and at the end,
    `BEST` when `validate(model)` improves); `log(step, values)` records metrics. `scheduler` (None: the
    optimizer's lr stays) is stepped after every step, a skipped one included, so the lr is a function of
    the step reached. Progress: a tqdm bar (`progress`), or with `lines_every` > 0 one plain stderr line
    every that many steps and per validation (what `dvc repro` and queued runs show in their logs).
    """
    state = state or TrainState()
    device = torch.device(cfg.device)
    runner = model if cfg.compile == "none" else torch.compile(model, mode=cfg.compile)
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not progress, dynamic_ncols=True, file=sys.stderr)
    episodes, t0 = 0, time.perf_counter()
    skipped_data: tuple[int, int] | None = None  # (shards, samples) the loaders skipped, when they say
    model.train()
    while state.step < cfg.steps:
        optimizer.zero_grad(set_to_none=True)
        terms: dict[str, float] = {}
        finite = True
        logged = log is not None and ((state.step + 1) % cfg.log_every == 0 or state.step + 1 == cfg.steps)
        for micro in range(cfg.grad_accum):
            # 1. batch to device + normalize (uint8 -> ImageNet-normalised float on the device)
            batch = normalize(next(batches), device)
            episodes += int(batch["query_img"].shape[0])
            skipped_data = batch.get("skipped_data", skipped_data)
            # 2. forward under autocast (bf16 on CUDA only)
            with autocast_for(device, cfg.amp):
                out = forward(runner, batch, cfg.channels_last)
            # 3. the model's own objective; the binary focal loss is logged unless the model reports it
            # (computed on logged steps only: on GPU the step is launch-bound, every kernel counts)
            losses = unwrap(model).loss(out, batch)
            if logged and "focal" not in losses:
                with torch.no_grad():
                    losses["focal"] = binary_focal_loss(out["way_logits"].detach(), batch["query_label"])
            loss = losses["loss"]
            # every rank takes the same branch: DDP's backward is a collective
            if not distributed.all_true(bool(torch.isfinite(loss.detach()).all())):
                finite = False
                if cfg.nan_policy == "stop":
                    bar.close()
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at step {state.step + 1} (queries {batch.get('query_id')}); "
                        "the run stopped: lower train.lr, or set train.nan_policy=skip to skip such steps"
                    )
                for _ in range(cfg.grad_accum - micro - 1):  # drain the step: data stays step-aligned
                    next(batches)
                break
            # read the terms now: the forward is done (the check above synced), while a read after
            # backward() would wait for the whole backward pass
            for k, v in losses.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            # 4. backward, accumulating gradients over cfg.grad_accum batches
            (loss / cfg.grad_accum).backward()
        # 5. optimizer step (a non-finite step under nan_policy=skip changes nothing)
        if finite:
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
            state.skipped += 1
            tqdm.write(f"step {state.step + 1}: non-finite loss, step skipped ({state.skipped} so far)")
        lr = optimizer.param_groups[0]["lr"]  # the lr this step used (group 0: factor 1 when present)
        if scheduler is not None:
            scheduler.step()
        state.step += 1
        # 6. log, validate, checkpoint
        rate = episodes / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        if finite:
            bar.set_postfix(loss=f"{terms['loss']:.4f}", eps=f"{rate:.1f}")
        if lines_every and (state.step % lines_every == 0 or state.step == cfg.steps):
            loss = f"{terms['loss']:.4f}" if finite else "skipped"
            print(
                f"step {state.step}/{cfg.steps}: loss {loss}, {rate:.1f} episodes/s",
                file=sys.stderr,
                flush=True,
            )
        if logged:
            values = {f"train/{k}": v for k, v in terms.items()}
            values.update(
                {"train/episodes_per_s": rate, "train/skipped_steps": float(state.skipped), "train/lr": lr}
            )
            if skipped_data is not None:
                values["train/skipped_shards"], values["train/skipped_samples"] = map(float, skipped_data)
            log(state.step, values)
        if validate is not None and (state.step % cfg.val_every == 0 or state.step == cfg.steps):
            score = validate(model)
            model.train()
            if lines_every:
                best = max(score, state.best_miou)
                print(
                    f"step {state.step}: validation mIoU {score:.2f} (best {best:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
            if log is not None:
                log(state.step, {"val/miou": score})
            if score > state.best_miou:
                state.best_miou = score
                if save is not None:
                    save(state, BEST)
        if save is not None and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
            save(state, LAST)
    bar.close()
    return state


# ---------------------------------------------------------------- wiring: params, data, model, outputs


def training_manifest(p: Params, folds: Path) -> dict[str, Any]:
    """The fixed training episodes of `train.episodes: manifest` (drawn once from train.txt and the seed)."""
    from train.stream.manifests import episodes_per_class, train_manifest

    per_class = episodes_per_class(p, folds)
    return train_manifest(
        str(folds), p.dataset, p.fold, p.train.way, p.train.shot, p.protocol, p.seed, per_class
    )


def train_batches(
    p: Params,
    cfg: TrainConfig,
    shards: str | Path,
    folds: Path,
    start_step: int = 0,
    manifest: dict[str, Any] | None = None,
) -> Iterator[Batch]:
    """The batches of steps `start_step + 1 ..` in the order an uninterrupted run sees them.

    A sampler epoch is `checkpoint_every` steps: its episodes depend only on (seed, epoch), so a run
    resumed from a periodic checkpoint restarts the stream at an epoch boundary and sees the same
    data; from any other step the epoch's first batches are drawn again and dropped.
    `train.episodes: manifest` reads `manifest` (default: `training_manifest`), else the stream.
    """
    from torch.utils.data import DataLoader

    from pipeline.folds import fold_classes
    from train.stream.shard_io import join_url

    base, novel = fold_classes(p.dataset, p.fold, p.data.coco_split)
    rank, world = distributed.rank_world()  # each rank (and each of its workers) reads its own shards
    per_epoch = cfg.checkpoint_every * cfg.grad_accum  # batches
    split = join_url(str(shards), "train")
    if p.train.episodes == "manifest":
        from train.stream.manifest_stream import ManifestEpisodes

        stream: Any = ManifestEpisodes(
            manifest or training_manifest(p, folds),
            split,
            novel,
            batch_size=p.train.batch_size,
            batches_per_epoch=per_epoch,
            image_size=int(p.sampler.image_size),
            protocol=p.protocol,
            void=p.train.void,
            seed=p.seed,
            reduced=p.sampler.decode_reduced,
            rank=rank,
            world_size=world,
            gpu_decode=p.sampler.gpu_decode,
            remote=remote_reads(p),
            augment=p.train.augment,
        )
    else:
        stream = _pool_stream(p, split, folds, base, novel, per_epoch, rank, world)
    first_epoch, skip = divmod(start_step * cfg.grad_accum, per_epoch)
    reader_skips: dict[tuple[int, int], tuple[int, int]] = {}  # (epoch, reader) -> (shards, samples)
    for epoch in itertools.count(first_epoch):
        stream.set_epoch(epoch)
        # pinned host memory makes normalize()'s non_blocking copy asynchronous (train.bench_gpu pins too)
        pin = cfg.device.startswith("cuda")
        loader = DataLoader(stream, batch_size=None, num_workers=p.sampler.workers, pin_memory=pin)
        for i, batch in enumerate(loader):
            reader, shards_skipped, samples_skipped = batch.pop("data_skips")
            reader_skips[epoch, reader] = (shards_skipped, samples_skipped)
            if epoch == first_epoch and i < skip:
                continue
            # this rank's totals since the process started (a damaged shard counts once per epoch)
            batch["skipped_data"] = tuple(sum(counts) for counts in zip(*reader_skips.values(), strict=True))
            yield batch


def _pool_stream(
    p: Params,
    split: str,
    folds: Path,
    base: list[int],
    novel: list[int],
    per_epoch: int,
    rank: int,
    world: int,
) -> Any:
    """`train.episodes: stream`: episodes drawn from bounded per-class pools while the shards stream."""
    from train.stream.index import read_pairs
    from train.stream.sampler import EpisodeStream, dist_rank
    from train.stream.shard_io import shard_urls

    # small data may have fewer shards than readers (ranks x workers): every reader then draws
    # shards with replacement, so none sits idle (disjoint shards need at least one per reader)
    readers = max(1, p.sampler.workers) * dist_rank()[1]
    resampled = len(shard_urls(split)) < readers
    if resampled:
        tqdm.write(f"{split}: fewer shards than the {readers} readers; each reader resamples shards")
    stream = EpisodeStream(
        split,
        read_pairs((folds / f"fold{p.fold}" / "train.txt").read_text()),
        base,
        novel,
        way=p.train.way,
        shot=p.train.shot,
        batch_size=p.train.batch_size,
        image_size=int(p.sampler.image_size),
        pool_size=p.sampler.pool_size,
        protocol=p.protocol,
        void=p.train.void,
        seed=p.seed,
        episodes_per_epoch=per_epoch * p.train.batch_size,
        reduced=p.sampler.decode_reduced,
        gpu_decode=p.sampler.gpu_decode,
        resampled=resampled,
        rank=rank,
        world_size=world,
        remote=remote_reads(p),
        augment=p.train.augment,
    )
    return stream


def run(
    p: Params,
    shards: str | Path,
    folds: Path,
    out_dir: Path,
    live_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    lines_every: int = 0,
) -> TrainState:
    """Train the model described by `p` into `out_dir` (LAST, BEST); dvclive metrics into `live_dir`.

    Under torchrun every rank runs this: DistributedDataParallel syncs the gradients, each rank reads
    its own shards (`train.batch_size` episodes per rank and step), rank 0 alone logs and writes.
    """
    import fss_model
    from train.stream.normalize import normalize

    shards = shards_location(p, shards)
    cfg = train_config_from_params(p)
    info = distributed.setup(cfg.device)
    cfg = dataclasses.replace(cfg, device=str(info.device))  # cuda:LOCAL_RANK under torchrun
    device = info.device
    progress = progress and info.is_main
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / LAST

    # seed once, here: model init and dropout draw from torch's generator, saved in every checkpoint
    torch.manual_seed(p.seed)
    kwargs = model_kwargs_from_params(p)
    model = fss_model.build_model(p.model, **kwargs)
    _load_backbone_weights(model, p)
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    state = TrainState()

    if resume:
        for stale in out_dir.glob(".*.pt.*.tmp"):  # temp files of checkpoint writes that a kill cut short
            stale.unlink()
    # rank 0 reads out_dir (nodes need not share it); every rank acts on its checkpoint or its error
    found = distributed.broadcast_object(_read_last(last, resume) if info.is_main else None)
    if isinstance(found, str):
        raise CheckpointError(found)
    if found is not None:
        ckpt = found
        if ckpt["model_name"] != p.model or ckpt["model_kwargs"] != kwargs:
            raise CheckpointError(
                f"checkpoint {last} was written for {ckpt['model_name']} {ckpt['model_kwargs']}, "
                f"not {p.model} {kwargs}; use another --out"
            )
        changed = data_params_changed(ckpt.get("params"), p)
        if changed:
            raise CheckpointError(
                f"checkpoint {last} was trained on other data ({'; '.join(changed)}): resuming would "
                "train it on the new data under its old name; use another --out, or the checkpoint's params"
            )
        saved_optimizer = (ckpt.get("params") or {}).get("train", {}).get("optimizer", cfg.optimizer)
        if saved_optimizer != cfg.optimizer:
            raise CheckpointError(
                f"checkpoint {last} was trained with train.optimizer={saved_optimizer}, not {cfg.optimizer}; "
                "use another --out"
            )
        load_model_state(model, ckpt, last)
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        else:  # written before schedules existed (constant lr): the schedule's value at that step
            scheduler.last_epoch = ckpt["step"] - 1
            scheduler.step()
        restore_rng(ckpt["rng"])
        extra = ckpt["extra"]
        state = TrainState(step=ckpt["step"], best_miou=extra["best_miou"], skipped=extra["skipped"])
        if info.is_main:
            tqdm.write(f"resuming {last} at step {state.step}")
    elif resume and info.is_main:
        tqdm.write(f"--resume: no checkpoint at {last} yet; starting at step 0")
    if info.world_size > 1:  # after loading: DDP broadcasts rank 0's weights at construction
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    manifest = None
    if p.train.episodes == "manifest":  # drawn once from the seed; kept beside the checkpoints to inspect
        manifest = training_manifest(p, folds)
        if info.is_main:
            write_json(out_dir / TRAIN_EPISODES, manifest)
    batches = train_batches(p, cfg, shards, folds, state.step, manifest)
    validate = make_validator(p, shards, folds, cfg.device, cfg.amp) if cfg.val_every else None
    live = _make_live(live_dir, resume_step=state.step) if info.is_main else None
    if live_dir is not None and info.is_main:  # what this run used, `auto` resolved (dvc exp show/diff)
        per_class = manifest["episodes_per_class"] if manifest else p.train.episodes_per_class
        resolved_train = dataclasses.replace(
            p.train, device=cfg.device, compile=cfg.compile, episodes_per_class=per_class
        )
        write_params_json(dataclasses.replace(p, train=resolved_train), live_dir / PARAMS_JSON)
    snapshot = params_snapshot(p)

    def save(s: TrainState, name: str) -> None:
        if info.is_main:
            save_checkpoint(
                out_dir / name,
                model_name=p.model,
                model_kwargs=kwargs,
                model=model,
                step=s.step,
                optimizer=optimizer,
                scheduler=scheduler,
                rng=capture_rng(),
                params=snapshot,
                extra={"best_miou": s.best_miou, "skipped": s.skipped},
            )
        distributed.barrier()  # no rank runs ahead of a checkpoint being written

    def log(step: int, values: dict[str, float]) -> None:
        if live is None:
            return
        live.step = step
        for k, v in values.items():
            live.log_metric(k, v)
        live.make_summary()

    lines_every = lines_every if info.is_main else 0
    state = train_loop(
        model,
        optimizer,
        batches,
        cfg,
        normalize,
        state,
        save,
        validate,
        log,
        progress,
        scheduler,
        lines_every,
    )
    if live is not None:
        live.end()
    return state


def lines_interval(p: Params) -> int:
    """Steps between progress lines: about 20 per run, a multiple of train.log_every."""
    every = int(p.train.steps) // 20 // p.train.log_every * p.train.log_every
    return max(p.train.log_every, every)


def _read_last(last: Path, resume: bool) -> dict[str, Any] | str | None:
    """The checkpoint to resume from, None to start fresh, or the error message (run on rank 0)."""
    if not last.exists():
        return None
    if not resume:
        return f"{last} exists: pass --resume to continue that run, or delete it to start over"
    try:
        return load_checkpoint(last, map_location="cpu")  # a corrupt file raises: never a silent restart
    except CheckpointError as exc:
        return str(exc)


def _load_backbone_weights(model: nn.Module, p: Params) -> None:
    """Pretrained backbone weights come from files, loaded here and never inside a constructor."""
    if p.backbone.weights in ("none", None):
        return
    from fss_model.backbones import load_weights

    load_weights(model.backbone, p.backbone.weights)


def _make_live(live_dir: Path | None, resume_step: int) -> Any:
    """A dvclive logger; on resume, rows logged after the checkpoint's step are dropped (they are redone)."""
    if live_dir is None:
        return None
    from dvclive import Live

    if resume_step > 0:
        for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
            head, *rows = tsv.read_text().splitlines()
            kept = [r for r in rows if int(r.split("\t", 1)[0]) <= resume_step]
            tsv.write_text("\n".join([head, *kept]) + "\n")
    # dvcyaml=None: the plots are declared in the repo's dvc.yaml, dvclive must not write its own
    return Live(dir=str(live_dir), resume=resume_step > 0, dvcyaml=None, save_dvc_exp=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shards", required=True,
                        help="the shards stage's output (holds train/ and test/), or a URL prefix; "
                        "sampler.shards_url, when set, wins")  # fmt: skip
    parser.add_argument("--folds", required=True, help="the folds stage's output (fold<i>/train.txt)")
    parser.add_argument("--out", required=True, help="checkpoint folder (last.pt, best.pt)")
    parser.add_argument("--live", default=None, help="dvclive folder (metrics.json, plots)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt if present")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params overrides")
    parser.add_argument("--progress", choices=("bar", "lines", "none"), default=None,
                        help="a tqdm bar, a plain stderr line every --progress-every steps, or nothing "
                        "(default: bar on a terminal, else lines)")  # fmt: skip
    parser.add_argument("--progress-every", type=int, default=0,
                        help="steps between progress lines (default: about 20 lines per run)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="the same as --progress none")
    args = parser.parse_args(argv)
    mode = "none" if args.no_progress else args.progress or ("bar" if sys.stderr.isatty() else "lines")
    try:
        overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
        p = load_params(args.params, overrides)
        state = run(
            p,
            args.shards,
            Path(args.folds),
            Path(args.out),
            Path(args.live) if args.live else None,
            resume=args.resume,
            progress=mode == "bar",
            lines_every=(args.progress_every or lines_interval(p)) if mode == "lines" else 0,
        )
    except (*USER_ERRORS, NonFiniteLossError) as exc:  # one line: data, files, params, device, weights
        return report(exc)
    finally:
        main_rank = distributed.is_main()
        distributed.teardown()
    if main_rank:
        best = state.best_miou
        print(f"trained {state.step} steps ({state.skipped} skipped); best validation mIoU {best:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
