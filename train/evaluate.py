"""Evaluation on fixed test episodes: `python -m train.evaluate` (the DVC `evaluate` stage).

Reads checkpoints and test-episode manifests, scores the model and the trivial predictors with the
same code on the same episodes, prints a table and writes a DVC metrics JSON: per fold the manifest
hash, per-class IoU, mIoU and FB-IoU (notes section 3) for each predictor, and the mean over folds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fss_model import model_entry
from pipeline.config import ConfigError, Params, load_params
from pipeline.io import write_json
from train import distributed
from train.checkpoint import CheckpointError, build_model_from_checkpoint
from train.device import resolve_device
from train.metrics import FewShotIoU, score_episode
from train.shard_io import ShardError, join_url
from train.train import autocast_for, forward, shards_location, upsample_way_logits
from train.trivial import TRIVIAL

Batch = dict[str, Any]
VAL_SEED_OFFSET = 1  # the validation draw uses seed + 1: a different draw from the test episodes


def episode_batches(
    p: Params, shards: str | Path, manifest: dict[str, Any], batch_size: int | None = None
) -> DataLoader:
    """The manifest's episodes as batches, in manifest order (fetched by key from the test shards).

    Under torchrun each rank gets its own run of whole batches (`distributed.shard_range`).
    """
    from train.episodes import EvalEpisodes, collate_eval

    size = batch_size or p.evaluate.batch_size
    mine = distributed.shard_range(len(manifest["episodes"]), size)
    dataset = EvalEpisodes(
        {**manifest, "episodes": manifest["episodes"][mine.start : mine.stop]},
        join_url(str(shards), "test"),
        int(p.sampler.image_size),
        p.protocol,
        p.sampler.decode_reduced,
        flip=bool(p.evaluate.flip),
        first=mine.start,  # flips belong to the episode's place in the whole manifest
    )
    return DataLoader(
        dataset,
        batch_size=size,
        shuffle=False,
        num_workers=p.sampler.workers,
        collate_fn=collate_eval,
    )


def validation_episodes(p: Params, shards: str | Path, folds: Path) -> dict[str, Any]:
    """Episodes that pick the best checkpoint during training.

    Default: a separate draw (seed + 1) of novel-class episodes whose queries avoid the queries of the
    test draw of the training setting; when that leaves too few images (small data sets, where the
    test draw uses every image), the draw falls back to the same images, still other episodes.
    `train.select_on_test`: the test draw itself (what the release does).
    """
    from train import episodes as ep

    test = ep.build_manifest(
        str(shards), str(folds), p.dataset, p.fold, p.train.way, p.train.shot, p.protocol, p.seed,
        int(p.sampler.test_episodes), shot_key="train.shot",
    )  # fmt: skip
    if p.train.select_on_test:
        return test
    _, novel = ep.read_fold(str(folds), p.fold)
    pairs = ep.read_pairs((folds / f"fold{p.fold}" / "test.txt").read_text())
    test_queries = {e["query"] for e in test["episodes"]}
    image_classes, _ = ep.read_index(join_url(str(shards), "test"))
    draw = {"way": p.train.way, "shot": p.train.shot, "count": int(p.sampler.val_episodes),
            "seed": p.seed + VAL_SEED_OFFSET, "protocol": p.protocol, "shot_key": "train.shot"}  # fmt: skip
    try:
        held_out = {k: v for k, v in pairs.items() if k not in test_queries}
        episodes = ep.draw_test_episodes(held_out, image_classes, novel, **draw)
    except ValueError:
        print("validation: too few images besides the test queries; other episodes of the same images")
        episodes = ep.draw_test_episodes(pairs, image_classes, novel, **draw)
    return {**test, "seed": p.seed + VAL_SEED_OFFSET, "episodes": episodes,
            "sha256_of_episodes": ep.episodes_digest(episodes)}  # fmt: skip


@torch.no_grad()
def predict(model: nn.Module, batch: Batch, device: torch.device, amp: bool) -> dict[str, torch.Tensor]:
    """The model's outputs on a batch already on `device`, in eval mode."""
    with autocast_for(device, amp):
        return forward(model, batch)


def way_predictions(way_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary maps [way, H, W] of one episode: upsample (bilinear, align_corners) then argmax."""
    return upsample_way_logits(way_logits.unsqueeze(0).float(), size)[0].argmax(dim=1)


def run_episodes(
    model: nn.Module, batches: Iterable[Batch], device: str | torch.device, amp: bool = True
) -> Iterator[tuple[Batch, int, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Yield (batch, j, outputs, way_preds [way, h, w], label [h, w]) for every episode j of every batch.

    Labels are cropped to the episode's `query_size` when the batch carries one (standard protocol:
    original size, padded in the batch); predictions are upsampled to the label's size.
    """
    from train.episodes import normalize

    device = torch.device(device)
    model.eval()
    for raw in batches:
        batch = normalize(raw, device)
        out = predict(model, batch, device, amp)
        sizes = batch.get("query_size")
        for j in range(batch["query_img"].shape[0]):
            label = batch["query_label"][j]
            if sizes is not None:
                h, w = (int(v) for v in sizes[j])
                label = label[:h, :w]
            preds = way_predictions(out["way_logits"][j], tuple(label.shape))
            yield batch, j, out, preds, label


def evaluate_model(
    model: nn.Module,
    batches: Iterable[Batch],
    protocol: str,
    device: str | torch.device,
    amp: bool = True,
    episodes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """FewShotIoU over all episodes; `episodes`, when given, receives one record per episode.

    Under torchrun the sums of every rank's episodes are all-reduced first (integer counts: exactly
    the single-process result); `episodes` then holds this rank's records only.
    """
    metric = FewShotIoU()
    for batch, j, _, preds, label in run_episodes(model, batches, device, amp):
        class_ids = [int(c) for c in batch["class_ids"][j]]
        ious = score_episode(metric, preds.cpu(), label.cpu(), class_ids, protocol)
        if episodes is not None:
            episodes.append({"query": batch["query_id"][j], "classes": class_ids, "iou": ious})
    distributed.all_reduce_metric(metric)
    return metric.compute()


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "miou": round(result["miou"], 4),
        "fb_iou": round(result["fb_iou"], 4),
        "per_class": {str(c): round(v, 4) for c, v in sorted(result["per_class"].items())},
    }


def evaluate_fold(
    p: Params,
    checkpoint: Path,
    manifest_path: Path,
    shards: str | Path,
    trivial: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Score one fold's checkpoint and (optionally) the trivial predictors on one manifest."""
    from train.episodes import read_manifest

    manifest = read_manifest(manifest_path)
    if manifest["protocol"] != p.protocol or manifest["dataset"] != p.dataset:
        raise ConfigError(
            f"manifest {manifest_path} is {manifest['dataset']}/{manifest['protocol']}, "
            f"params say {p.dataset}/{p.protocol}"
        )
    shards = shards_location(p, shards)
    # under torchrun: joins the process group and takes GPU LOCAL_RANK
    dev = distributed.setup(resolve_device(device or p.train.device)).device
    model, ckpt = build_model_from_checkpoint(checkpoint, map_location="cpu")
    ways = model_entry(ckpt["model_name"]).ways
    if manifest["way"] not in ways:
        raise ConfigError(
            f"model {ckpt['model_name']} supports {ways}-way episodes, not {manifest['way']}-way"
        )
    model.to(dev)
    predictors: dict[str, nn.Module] = {"model": model}
    if trivial:
        predictors.update({name: cls() for name, cls in TRIVIAL.items()})
    scores = {}
    for name, predictor in predictors.items():
        result = evaluate_model(predictor, episode_batches(p, shards, manifest), p.protocol, dev, p.train.amp)
        scores[name] = _summary(result)
    return {
        "fold": manifest["fold"],
        "way": manifest["way"],
        "shot": manifest["shot"],
        "episodes": len(manifest["episodes"]),
        "manifest": str(manifest_path),
        "manifest_sha256": manifest["sha256_of_episodes"],
        "checkpoint": str(checkpoint),
        "checkpoint_step": ckpt["step"],
        "model_name": ckpt["model_name"],
        "scores": scores,
    }


def summarize(p: Params, folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics file: settings, protocol, each fold, and the mean over the folds present."""
    names = list(folds[0]["scores"])
    mean = {
        name: {
            key: round(float(np.mean([f["scores"][name][key] for f in folds])), 4)
            for key in ("miou", "fb_iou")
        }
        for name in names
    }
    return {
        "source": p.source,
        "dataset": p.dataset,
        "protocol": p.protocol,
        "eval_resolution": "resized" if p.protocol == "denet" else "original",
        "void": "background" if p.protocol == "denet" else "ignored",
        "way": folds[0]["way"],
        "shot": folds[0]["shot"],
        "model": p.model,
        "folds": {f"fold{f['fold']}": f for f in folds},
        "mean": mean,
        "num_folds": len(folds),
    }


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text table: one row per predictor, mIoU / FB-IoU per fold and the mean."""
    folds = summary["folds"]
    head = ["predictor", *[f"{k} mIoU/FB" for k in folds], "mean mIoU/FB"]
    lines = [
        f"{summary['dataset']} {summary['way']}-way {summary['shot']}-shot, protocol {summary['protocol']} "
        f"(eval at {summary['eval_resolution']} size, void {summary['void']})",
        *(
            f"  {k}: manifest sha256 {f['manifest_sha256'][:16]}, {f['episodes']} episodes"
            for k, f in folds.items()
        ),
        " | ".join(head),
    ]
    for name, mean in summary["mean"].items():
        cells = [f"{f['scores'][name]['miou']:.2f}/{f['scores'][name]['fb_iou']:.2f}" for f in folds.values()]
        lines.append(" | ".join([name, *cells, f"{mean['miou']:.2f}/{mean['fb_iou']:.2f}"]))
    first = next(iter(folds.values()))
    per_class = first["scores"]["model"]["per_class"]
    lines.append("per-class IoU (model, " + next(iter(folds)) + "): "
                 + ", ".join(f"{c}: {v:.1f}" for c, v in per_class.items()))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shards", required=True, help="the shards stage's output (holds test/)")
    parser.add_argument("--checkpoint", nargs="+", required=True, help="one checkpoint per fold")
    parser.add_argument("--manifest", nargs="+", required=True, help="one test-episode manifest per fold")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--device", default=None, help="default: params train.device")
    parser.add_argument("--no-trivial", action="store_true", help="skip the trivial predictors")
    args = parser.parse_args(argv)
    if len(args.checkpoint) != len(args.manifest):
        parser.error("give one --manifest per --checkpoint (same fold order)")
    try:
        p = load_params(args.params)
        trivial = p.evaluate.trivial and not args.no_trivial
        folds = [
            evaluate_fold(p, Path(c), Path(m), args.shards, trivial, args.device)
            for c, m in zip(args.checkpoint, args.manifest, strict=True)
        ]
    except (ConfigError, CheckpointError, ValueError, ShardError) as exc:
        # a bad test shard stops the run (a test set never shrinks); raised in a DataLoader worker, the
        # message carries the worker's traceback, whose last line is the error itself
        print(f"error: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    finally:
        main_rank = distributed.is_main()
        distributed.teardown()
    if not main_rank:  # every rank scored its share; rank 0 holds the summed result and writes it
        return 0
    summary = summarize(p, folds)
    write_json(args.out, summary)
    print(format_table(summary))
    print(f"wrote {args.out}")
    return 0


def load_metrics(path: Path) -> dict[str, Any]:
    """Read a metrics file written by `main` (used by the report)."""
    data = json.loads(Path(path).read_text())
    if "mean" not in data or "folds" not in data:
        raise ValueError(f"{path} is not an evaluate metrics file")
    return data


if __name__ == "__main__":
    sys.exit(main())
