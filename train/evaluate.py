"""Evaluation on fixed test episodes: `python -m train.evaluate` (the DVC `evaluate` stage).

Scores a checkpoint and the trivial predictors with the same code on the same manifests, one
manifest per test seed (params `evaluate.seeds`), and writes three files into `--out`
(design.md, "Evaluation files"): `metrics.json` (short: mIoU, FB-IoU, mean +/- std over seeds,
95% bootstrap interval over episodes, each seed's score and manifest hash), `per_class.json` (IoU per
class name) and `details.json` (everything, per-episode sums included, what `train.report` reads).

`python -m train.evaluate --checkpoint X.pt` alone is enough: the dataset, protocol, fold and model
come from the checkpoint, the rest (way, shot, seeds, paths) from params.yaml, flags override, and
missing manifests are drawn from the shards and fold lists first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fss_model import model_entry
from fss_model.layers import upsample
from pipeline.classes import class_names
from pipeline.config import ConfigError, Params, episodes_dir, folds_dir, shards_dir
from pipeline.io import write_json
from pipeline.protocol import protocol_rules, void_as_background
from train import distributed
from train.checkpoint import build_model_from_checkpoint
from train.device import resolve_device
from train.errors import USER_ERRORS, report
from train.metrics import FewShotIoU, FullIoU, score_episode
from train.params import load_params
from train.stats import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, LEVEL, EpisodeSums, bootstrap_miou, mean_and_std
from train.step import Batch, autocast_for, forward, upsample_way_logits
from train.stream import remote_reads, shards_location
from train.stream.manifests import ManifestError
from train.stream.shard_io import join_url
from train.trivial import TRIVIAL

# what a checkpoint says about the run that trained it, which params.yaml must not contradict
TRAINED_ON = ("source", "dataset", "protocol", "fold")
METRICS_FILE, PER_CLASS_FILE, DETAILS_FILE = "metrics.json", "per_class.json", "details.json"
STANDALONE = "standalone"  # <paths.results>/standalone/...: evaluations run by hand, outside DVC


def episode_batches(
    p: Params, shards: str | Path, manifest: dict[str, Any], batch_size: int | None = None
) -> DataLoader:
    """The manifest's episodes as batches, in manifest order (fetched by key from the test shards).

    Under torchrun each rank gets its own run of whole batches (`distributed.shard_range`).
    """
    from train.stream.by_key import EvalEpisodes, collate_eval

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
        remote=remote_reads(p),
        resize=str(p.evaluate.resize),
    )
    return DataLoader(
        dataset,
        batch_size=size,
        shuffle=False,
        num_workers=p.sampler.workers,
        collate_fn=collate_eval,
    )


@torch.no_grad()
def predict(model: nn.Module, batch: Batch, device: torch.device, amp: bool) -> dict[str, torch.Tensor]:
    """The model's outputs on a batch already on `device`, in eval mode."""
    with autocast_for(device, amp):
        return forward(model, batch)


def way_predictions(way_logits: torch.Tensor, size: tuple[int, int], letterbox: bool = False) -> torch.Tensor:
    """Binary maps [way, H, W] of one episode: upsample (bilinear, align_corners) then argmax.

    `letterbox` (the query went in through `letterbox_pair`): as PFENet's test with `ori_resize`, the
    logits are upsampled to the square of the label's longer side and the label's (H, W) is its top-left
    corner, where the letterboxed image sits.
    """
    side = max(size) if letterbox else None
    full = upsample_way_logits(way_logits.unsqueeze(0).float(), (side, side) if side else size)[0]
    return full[..., : size[0], : size[1]].argmax(dim=1)


def run_episodes(
    model: nn.Module, batches: Iterable[Batch], device: str | torch.device, amp: bool = True
) -> Iterator[tuple[Batch, int, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Yield (batch, j, outputs, way_preds [way, h, w], label [h, w]) for every episode j of every batch.

    Labels are cropped to the episode's `query_size` when the batch carries one (standard protocol:
    original size, padded in the batch); predictions are upsampled to the label's size.
    """
    from train.stream.normalize import normalize

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
            letterbox = bool(batch["letterbox"][j]) if "letterbox" in batch else False
            preds = way_predictions(out["way_logits"][j], tuple(label.shape), letterbox)
            yield batch, j, out, preds, label


def full_prediction(
    logits_full: torch.Tensor, full_label: torch.Tensor, size: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class ids, full label) of one episode for F-IOU, as the release's test() makes them: the
    full logits upsampled (bilinear, align_corners) to the label's size, argmax over classes; void in the
    label counts as background (`denet`'s test masks)."""
    h, w = int(size[0]), int(size[1])
    pred = upsample(logits_full.unsqueeze(0).float(), (h, w))[0].argmax(dim=0)
    return pred.cpu(), void_as_background(full_label[:h, :w]).cpu()


def evaluate_model(
    model: nn.Module,
    batches: Iterable[Batch],
    protocol: str,
    device: str | torch.device,
    amp: bool = True,
) -> dict[str, Any]:
    """FewShotIoU over all episodes, plus `episode_sums` (an EpisodeSums) for the bootstrap.

    Under torchrun the sums of every rank's episodes are all-reduced (integer counts: exactly the
    single-process result) and the per-episode records gathered in rank order, which is manifest
    order (each rank holds a contiguous run of the manifest).
    """
    metric = FewShotIoU()
    full: FullIoU | None = None  # the release's F-IOU: under `denet`, for models with full-label logits
    records: list[tuple[int, ...]] = []
    count = 0
    for batch, j, out, preds, label in run_episodes(model, batches, device, amp):
        if protocol_rules(protocol).release_f_iou and "logits_full" in out:
            full = full or FullIoU(int(out["logits_full"].shape[1]))
            full.update(*full_prediction(out["logits_full"][j], batch["query_full_label"][j], label.shape))
        class_ids = [int(c) for c in batch["class_ids"][j]]
        one = FewShotIoU()  # this episode alone, then added to the total
        ious = score_episode(one, preds.cpu(), label.cpu(), class_ids, protocol)
        if math.isnan(ious[0]):
            # every episode's query was drawn for its first class: without it the scores would lack the
            # episode (and an evaluation without any scored class would report NaN)
            raise ManifestError(
                f"episode {count} (query {batch['query_id'][j]}, classes {class_ids}): the query's label "
                f"holds no pixel of class {class_ids[0]}, the class it was drawn for; the test shards and "
                "the episode manifest do not belong together (rebuild the episodes from these shards)"
            )
        metric.merge(one)
        records += [
            (count, c, one.inter_fg[c], one.union_fg[c], one.inter_bg[c], one.union_bg[c])
            for c in sorted(one.count)
        ]
        count += 1
    distributed.all_reduce_metric(metric)
    if not metric.count:
        raise ManifestError("no episode was scored: the episode manifest is empty")
    result = metric.compute()
    # every rank joins (a rank may have scored no episode, and so holds no matrix): a collective that
    # only some ranks enter would wait for ever
    gathered = distributed.all_gather_object(None if full is None else full.matrix)
    matrices = [m for m in gathered if m is not None]
    if matrices:
        full = FullIoU(int(matrices[0].shape[0]))
        full.matrix = np.sum(matrices, axis=0)
        result["f_iou"] = full.compute()
    offset, merged = 0, []
    for n, part in distributed.all_gather_object((count, records)):
        merged += [(e + offset, *rest) for e, *rest in part]
        offset += n
    result["episode_sums"] = EpisodeSums.from_records(offset, merged)
    return result


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    out = {"miou": round(result["miou"], 4), "fb_iou": round(result["fb_iou"], 4)}
    if "f_iou" in result:
        out["f_iou"] = round(result["f_iou"], 4)
    out["per_class"] = {str(c): round(v, 4) for c, v in sorted(result["per_class"].items())}
    return out


def evaluate_fold(
    p: Params,
    checkpoint: Path,
    manifest_path: Path,
    shards: str | Path,
    trivial: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Score one checkpoint and (optionally) the trivial predictors on one manifest (one fold, one seed)."""
    from train.stream.manifests import read_manifest

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
    trained_fold = (ckpt.get("params") or {}).get("fold")
    if trained_fold is not None and trained_fold != manifest["fold"]:
        raise ConfigError(
            f"manifest {manifest_path} is fold {manifest['fold']}, but {checkpoint} was trained on fold "
            f"{trained_fold} (its test classes would be classes it trained on)"
        )
    ways = model_entry(ckpt["model_name"]).ways
    if manifest["way"] not in ways:
        raise ConfigError(
            f"model {ckpt['model_name']} supports {ways}-way episodes, not {manifest['way']}-way"
        )
    model.to(dev)
    predictors: dict[str, nn.Module] = {"model": model}
    if trivial:
        predictors.update({name: cls() for name, cls in TRIVIAL.items()})
    scores, sums = {}, None
    for name, predictor in predictors.items():
        result = evaluate_model(predictor, episode_batches(p, shards, manifest), p.protocol, dev, p.train.amp)
        scores[name] = _summary(result)
        sums = result["episode_sums"] if name == "model" else sums
    return {
        "fold": manifest["fold"],
        "way": manifest["way"],
        "shot": manifest["shot"],
        "seed": manifest["seed"],
        "episodes": len(manifest["episodes"]),
        "manifest": str(manifest_path),
        "manifest_sha256": manifest["sha256_of_episodes"],
        "checkpoint": str(checkpoint),
        "checkpoint_step": ckpt["step"],
        "model_name": ckpt["model_name"],
        "scores": scores,
        "episode_sums": sums,
        "left_out": manifest.get("left_out", {}),  # novel classes without a test episode, and why
    }


def _per_class(dataset: str, folds: dict[int, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The model's IoU per class and fold: mean over the test seeds, std over them, class names."""
    names = class_names(dataset)
    rows = []
    for fold, seeds in sorted(folds.items()):
        per_seed = [run["scores"]["model"]["per_class"] for run in seeds.values()]
        for c in sorted({int(c) for scores in per_seed for c in scores}):
            values = [scores[str(c)] for scores in per_seed if str(c) in scores]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            rows.append({"fold": fold, "class_id": c, "class": names.get(c, f"class {c}"),
                         "iou": round(float(np.mean(values)), 4), "iou_std": round(std, 4)})  # fmt: skip
    return rows


def _missing(dataset: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The novel classes of each fold that no test episode holds (not in the mean), with the reason."""
    names = class_names(dataset)
    found = {(int(run["fold"]), int(c)): why for run in runs for c, why in run.get("left_out", {}).items()}
    return [{"fold": f, "class_id": c, "class": names.get(c, f"class {c}"), "reason": why}
            for (f, c), why in sorted(found.items())]  # fmt: skip


def summarize(p: Params, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """details.json: the settings, every (fold, seed) evaluation, and the cell over them (design.md).

    Each predictor's cell is the mean over folds of the mean over seeds, with the std over seeds;
    the model's also carries the 95% bootstrap interval over episodes (`train.stats`).
    """
    folds: dict[int, dict[int, dict[str, Any]]] = {}
    for run in runs:
        folds.setdefault(int(run["fold"]), {})[int(run["seed"])] = run
    summary: dict[str, dict[str, Any]] = {}
    for name in runs[0]["scores"]:
        cell: dict[str, Any] = {}
        keys = ["miou", "fb_iou"]
        if all("f_iou" in run["scores"][name] for run in runs):
            keys.append("f_iou")
        for key in keys:
            per_fold = [{s: run["scores"][name][key] for s, run in seeds.items()} for seeds in folds.values()]
            mean, std = mean_and_std(per_fold)
            cell[key], cell[f"{key}_std"] = round(mean, 4), round(std, 4)
        summary[name] = cell
    low, high = bootstrap_miou([[run["episode_sums"] for run in seeds.values()] for seeds in folds.values()])
    summary["model"]["miou_ci95"] = [round(low, 4), round(high, 4)]
    rules = protocol_rules(p.protocol)
    return {
        "source": p.source,
        "dataset": p.dataset,
        "protocol": p.protocol,
        "eval_resolution": "resized" if rules.eval_at_image_size else "original",
        "eval_resize": p.evaluate.resize,
        "void": "background" if rules.eval_void_background else "ignored",
        "way": runs[0]["way"],
        "shot": runs[0]["shot"],
        "model": runs[0]["model_name"],
        "seeds": sorted({int(run["seed"]) for run in runs}),
        "num_folds": len(folds),
        "summary": summary,
        "per_class": _per_class(p.dataset, folds),
        "missing_classes": _missing(p.dataset, runs),
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED, "level": LEVEL},
        "folds": {
            f"fold{fold}": {
                "fold": fold,
                "checkpoint": next(iter(seeds.values()))["checkpoint"],
                "checkpoint_step": next(iter(seeds.values()))["checkpoint_step"],
                "seeds": {
                    str(seed): {
                        **{k: run[k] for k in ("manifest", "manifest_sha256", "episodes", "scores")},
                        "episode_sums": run["episode_sums"].to_json(),
                    }
                    for seed, run in sorted(seeds.items())
                },
            }
            for fold, seeds in sorted(folds.items())
        },
    }


def short_metrics(details: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: the model's cell and, per (fold,) seed, its score and manifest hash (16 hex digits)."""
    cell = details["summary"]["model"]
    out: dict[str, Any] = {  # in `dvc exp show`'s column order: the score first
        "miou": cell["miou"],
        "miou_ci95_low": cell["miou_ci95"][0],
        "miou_ci95_high": cell["miou_ci95"][1],
        "fb_iou": cell["fb_iou"],
        **({"f_iou": cell["f_iou"]} if "f_iou" in cell else {}),
        "miou_std": cell["miou_std"],
        # novel classes in the mean, and those without a test episode (details.json says why)
        "classes_scored": len({(r["fold"], r["class_id"]) for r in details["per_class"]}),
        "classes_missing": len(details.get("missing_classes", [])),
    }
    for fold_key, fold in details["folds"].items():
        for seed, run in fold["seeds"].items():
            key = f"{fold_key}_seed{seed}" if details["num_folds"] > 1 else f"seed{seed}"
            model = run["scores"]["model"]
            out[key] = {
                "miou": model["miou"],
                "fb_iou": model["fb_iou"],
                **({"f_iou": model["f_iou"]} if "f_iou" in model else {}),
                "manifest": run["manifest_sha256"][:16],
            }
    return out


def write_outputs(out: Path, details: dict[str, Any]) -> None:
    """metrics.json, per_class.json and details.json into `out`, each written atomically."""
    write_json(out / METRICS_FILE, short_metrics(details), sort_keys=False)  # dvc exp show's column order
    write_json(out / PER_CLASS_FILE, {"per_class": details["per_class"]})
    write_json(out / DETAILS_FILE, details)


def cell_text(cell: dict[str, Any], seeds: int) -> str:
    """`mIoU ± std [95% CI] / FB-IoU` (the interval only where the cell has one; std "n/a" for one seed)."""
    ci = cell.get("miou_ci95")
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    std = f"{cell['miou_std']:.2f}" if seeds > 1 else "n/a"
    return f"{cell['miou']:.2f} ± {std}{interval} / {cell['fb_iou']:.2f}"


def format_table(details: dict[str, Any]) -> str:
    """Plain-text table: one row per predictor, mIoU / FB-IoU per (fold, seed) and the cell."""
    runs = [(k, s, run) for k, f in details["folds"].items() for s, run in f["seeds"].items()]
    head = ["predictor", *[f"{k} seed{s} mIoU/FB" for k, s, _ in runs], "mIoU ± std [95% CI] / FB"]
    lines = [
        f"{details['model']} on {details['dataset']} {details['way']}-way {details['shot']}-shot, protocol "
        f"{details['protocol']} (eval at {details['eval_resolution']} size, void {details['void']})",
        *(
            f"  {k} seed{s}: manifest sha256 {r['manifest_sha256'][:16]}, {r['episodes']} episodes"
            for k, s, r in runs
        ),
        " | ".join(head),
    ]
    for name, cell in details["summary"].items():
        cells = [f"{r['scores'][name]['miou']:.2f}/{r['scores'][name]['fb_iou']:.2f}" for _, _, r in runs]
        lines.append(" | ".join([name, *cells, cell_text(cell, len(details["seeds"]))]))
    lines.append("per-class IoU (model): " + ", ".join(f"{row['class']} {row['iou']:.1f}"
                                                       for row in details["per_class"]))  # fmt: skip
    lines += [missing_text(row) for row in details.get("missing_classes", [])]
    return "\n".join(lines)


def missing_text(row: dict[str, Any]) -> str:
    """One line for a novel class that is not in the mean: which, and why."""
    return f"not in the mean: fold {row['fold']} {row['class']} (class {row['class_id']}): {row['reason']}"


# ---------------------------------------------------------------- the command line: what to evaluate


def resolve_params(path: str | Path, ckpt: dict[str, Any], flags: dict[str, Any]) -> Params:
    """params.yaml, then what the checkpoint was trained on (source, dataset, protocol, fold, model),
    then the command line's flags (way, shot, seeds)."""
    trained = ckpt.get("params") or {}
    overrides: dict[str, Any] = {k: trained[k] for k in TRAINED_ON if k in trained}
    overrides["model"] = ckpt["model_name"]
    overrides.update(flags)
    return load_params(path, overrides)


def _draw_manifest(p: Params, shards: str, folds: Path, seed: int, path: Path) -> None:
    """Draw a missing manifest exactly as the `episodes` stage would, from the shards and fold lists."""
    from train.stream.manifests import build_manifest

    if not (folds / f"fold{p.fold}.json").exists():
        raise ConfigError(
            f"{folds}: no fold lists to draw test episodes from; run `dvc repro folds` (or `dvc pull "
            "shards folds`), or pass --manifest"
        )
    if distributed.launched():  # ranks would race to write it; one plain run draws it first
        raise ConfigError(f"{path} is missing: draw it first (the same command without torchrun)")
    manifest = build_manifest(
        shards, str(folds), p.dataset, p.fold, p.way, p.shot, p.protocol, seed, int(p.sampler.test_episodes)
    )
    write_json(path, manifest)
    print(f"drew {path}: {len(manifest['episodes'])} episodes, sha256 {manifest['sha256_of_episodes'][:12]}")


def manifests_for(p: Params, given: str | None, shards: str, folds: Path) -> list[Path]:
    """`given` (a manifest, or a folder of seed<k>.json) or the setting's manifests for `evaluate.seeds`
    under paths.episodes, drawn first where missing."""
    from train.stream.manifests import manifest_file, manifest_files

    if given is not None:
        path = Path(given)
        files = manifest_files(path) if path.is_dir() else [path] if path.exists() else []
        if not files:
            raise ConfigError(f"{path}: no manifest there (a seed<k>.json file or a folder of them)")
        return files
    folder = episodes_dir(p)
    for seed in p.evaluate.seeds:
        if not manifest_file(folder, seed).exists():
            _draw_manifest(p, shards, folds, seed, manifest_file(folder, seed))
    return [manifest_file(folder, seed) for seed in p.evaluate.seeds]


def _plan(args: argparse.Namespace) -> tuple[list[tuple[Params, Path, list[Path], str]], Path]:
    """(params, checkpoint, manifests, shards) per checkpoint, and the output folder."""
    from train.checkpoint import load_checkpoint

    if args.manifest and len(args.manifest) != len(args.checkpoint):
        raise ConfigError("give one --manifest per --checkpoint (same fold order), or none")
    flags = {k: v for k, v in (("way", args.way), ("shot", args.shot), ("evaluate.seeds", args.seeds)) if v}
    plans = []
    for i, checkpoint in enumerate(map(Path, args.checkpoint)):
        p = resolve_params(args.params, load_checkpoint(checkpoint), flags)
        shards = shards_location(p, args.shards or shards_dir(p))
        folds = Path(args.folds or folds_dir(p))
        manifests = manifests_for(p, args.manifest[i] if args.manifest else None, shards, folds)
        plans.append((p, checkpoint, manifests, shards))
    first = plans[0][0]
    if len({(q.source, q.dataset, q.protocol, q.model) for q, *_ in plans}) > 1:
        raise ConfigError(
            "the checkpoints come from different datasets, protocols or models: evaluate each alone"
        )
    fold_names = "-".join(str(q.fold) for q, *_ in plans)
    out = Path(args.out) if args.out else Path(
        first.paths.results, STANDALONE, first.source, first.dataset, first.protocol, first.model,
        f"fold{fold_names}_{first.way}way_{first.shot}shot",
    )  # fmt: skip
    return plans, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", nargs="+", required=True, help="one checkpoint per fold")
    parser.add_argument("--manifest", nargs="+", default=None,
                        help="per checkpoint: a manifest or a folder of seed<k>.json (default: the "
                        "setting's manifests under paths.episodes, drawn when missing)")  # fmt: skip
    parser.add_argument("--shards", default=None, help="the shards folder (default: from params paths)")
    parser.add_argument(
        "--folds", default=None, help="fold lists, to draw missing manifests (default: params)"
    )
    parser.add_argument("--out", default=None,
                        help=f"folder for {METRICS_FILE}, {PER_CLASS_FILE}, {DETAILS_FILE} "
                        f"(default: <paths.results>/{STANDALONE}/...)")  # fmt: skip
    parser.add_argument("--way", type=int, default=None, help="default: params way")
    parser.add_argument("--shot", type=int, default=None, help="default: params shot")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: params evaluate.seeds")
    parser.add_argument("--device", default=None, help="default: params train.device")
    parser.add_argument("--no-trivial", action="store_true", help="skip the trivial predictors")
    args = parser.parse_args(argv)
    try:
        plans, out = _plan(args)
        for folder in (out, *out.parents):  # before the compute: the results need a folder to go to
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"--out {out}: {folder} is a file, not a folder; choose another --out")
        runs = [
            evaluate_fold(p, ckpt, m, shards, p.evaluate.trivial and not args.no_trivial, args.device)
            for p, ckpt, manifests, shards in plans
            for m in manifests
        ]
    except USER_ERRORS as exc:  # a bad test shard stops the run (a test set never shrinks): one line
        return report(exc)
    finally:
        main_rank = distributed.is_main()
        distributed.teardown()
    if not main_rank:  # every rank scored its share; rank 0 holds the summed result and writes it
        return 0
    details = summarize(plans[0][0], runs)
    try:
        write_outputs(out, details)
    except OSError as exc:  # a full disk or a folder without write permission, after all the compute
        return report(exc)
    print(format_table(details))
    print(f"wrote {out / METRICS_FILE}, {PER_CLASS_FILE}, {DETAILS_FILE}")
    return 0


def load_details(path: str | Path) -> dict[str, Any]:
    """Read a details.json written by `main` (what the report reads)."""
    data = json.loads(Path(path).read_text())
    if "summary" not in data or "folds" not in data:
        raise ValueError(f"{path} is not an evaluate details file")
    return data


if __name__ == "__main__":
    sys.exit(main())
