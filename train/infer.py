"""Inference panels (`python -m train.infer`, the DVC `infer` stage) on test episodes, or your own images.

Manifest mode writes, per manifest (1-way, 2-way, ...), PNG panels of the first N episodes and of the
K lowest-IoU ones (each from a different query image) into `<out>/<way>way_<shot>shot/`, and an
`index.html` showing them with their IoU. A panel shows every support with its mask, the query with its
ground truth, the query with the prediction (ground truth outlined over it), and the full-class
prediction; class names are the dataset's (VOC / COCO), a legend says which colour is what, masks are
outlined so they stay visible on any texture, and every image keeps its aspect ratio.
Own-images mode: `--query q.jpg --support s.jpg --mask m.png` (the query has no ground truth).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.classes import class_name
from pipeline.errors import UserError
from pipeline.shard_format import IGNORE_INDEX, image_size_problem
from train.checkpoint import build_model_from_checkpoint
from train.device import resolve_device
from train.errors import USER_ERRORS, report
from train.metrics import FewShotIoU, score_episode
from train.params import load_params

log = logging.getLogger(__name__)


class InputError(UserError, ValueError):
    """A user's image or mask that cannot serve as an episode; the message names the file."""


# One meaning per colour and style: a way's colour is its class; a fill is a prediction, an outline a
# ground truth (support masks and the query's); white is ignored pixels. Both way colours read on
# black and on white.
WAY_COLOURS = np.array([[255, 40, 40], [60, 170, 255], [40, 220, 40]], dtype=np.float32)
IGNORE_COLOUR = np.array([255, 255, 255], dtype=np.float32)
ALPHA = 0.5
DISPLAY_SIDE = 240  # px of an image's longer side in a panel
NO_GROUND_TRUTH = "no ground truth"
NOT_IN_QUERY = "not in query"  # a way whose class the query does not show: no IoU, not scored
FONT = 11  # legend and tile titles, in points, readable when the panel is shown at page width
# the full-class map's colours, by class id: matplotlib's tab20 without its reds and blues (the ways')
_TAB20 = matplotlib.colormaps["tab20"].colors
FULL_COLOURS = 255 * np.array([c for i, c in enumerate(_TAB20) if i not in (0, 1, 6, 7)], dtype=np.float32)


def _shift_or(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour in `mask` (a one-pixel dilation)."""
    pad = np.pad(mask, 1)
    return pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:] | mask


def _boundary(fg: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour."""
    return fg & _shift_or(~fg)


def outline(out: np.ndarray, fg: np.ndarray, colour: np.ndarray) -> None:
    """Draw `fg`'s contour in place: a coloured line inside, a black line outside it.

    The pair of lines stays visible on light, dark and busy textures alike.
    """
    inner = _boundary(fg)
    inner |= _boundary(fg & ~inner)  # two pixels wide
    out[inner] = colour
    out[_shift_or(fg) & ~fg] = 0.0


def overlay(img: np.ndarray, preds: list[np.ndarray] = (), truths: list[np.ndarray] = ()) -> np.ndarray:
    """HxWx3 uint8 image: each way's prediction filled and its ground truth outlined in the way's colour,
    ground-truth ignore pixels (255) white."""
    out = img.astype(np.float32)
    for w, mask in enumerate(preds):
        fg = mask == 1
        out[fg] = (1 - ALPHA) * out[fg] + ALPHA * WAY_COLOURS[w % len(WAY_COLOURS)]
    for w, mask in enumerate(truths):
        ignore = mask == IGNORE_INDEX
        out[ignore] = (1 - ALPHA) * out[ignore] + ALPHA * IGNORE_COLOUR
        outline(out, mask == 1, WAY_COLOURS[w % len(WAY_COLOURS)])
    return out.clip(0, 255).astype(np.uint8)


def full_colour(class_id: int) -> np.ndarray:
    """The full-class map's colour of a dataset class id."""
    return FULL_COLOURS[(int(class_id) - 1) % len(FULL_COLOURS)]


def full_class_tile(img: np.ndarray, full_pred: np.ndarray) -> np.ndarray:
    """The full-class prediction over the query in grey: each class filled in its own colour, outlined."""
    grey = np.repeat(img.astype(np.float32).mean(axis=2, keepdims=True), 3, axis=2)
    out = 0.6 * grey + 0.4 * 255.0  # light grey: every class colour reads on it
    for cid in (int(c) for c in np.unique(full_pred) if 0 < c < IGNORE_INDEX):
        fg = full_pred == cid
        out[fg] = 0.3 * out[fg] + 0.7 * full_colour(cid)
        outline(out, fg, full_colour(cid))
    return out.clip(0, 255).astype(np.uint8)


def display_size(hw: tuple[int, int], side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(h, w) with the longer side `side` and the aspect ratio of `hw`."""
    h, w = hw
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_image(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An HxWx3 uint8 image resized (bilinear) to (h, w)."""
    if img.shape[:2] == tuple(hw):
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map resized (nearest) to (h, w)."""
    if mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST))


def full_prediction(
    out: dict[str, torch.Tensor], j: int, class_ids: list[int], size: tuple[int, int]
) -> np.ndarray:
    """Dataset-id map of episode j: argmax of `logits_full` when the model has one, else the ways'."""
    from train.step import upsample_way_logits

    if "logits_full" in out:
        logits = out["logits_full"][j : j + 1].float()
        up = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        return up[0].argmax(0).cpu().numpy().astype(np.uint8)
    way = upsample_way_logits(out["way_logits"][j : j + 1].float(), size)[0]  # [way, 2, H, W]
    margin = way[:, 1] - way[:, 0]
    best = margin.argmax(0)
    ids = torch.tensor(class_ids, device=best.device)[best]
    return torch.where(margin.max(0).values > 0, ids, 0).cpu().numpy().astype(np.uint8)


def to_uint8_image(img: torch.Tensor) -> np.ndarray:
    """A normalised [3, H, W] tensor back to HxWx3 uint8 (ImageNet mean/std undone)."""
    from train.stream.normalize import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = (img.detach().float().cpu() * std + mean) * 255.0
    return x.clamp(0, 255).byte().permute(1, 2, 0).numpy()


@dataclass(order=True)
class Panel:
    """Everything one panel shows; ordered by IoU so a heap keeps the worst ones."""

    iou: float
    index: int
    query_id: str = field(compare=False)
    class_ids: list[int] = field(compare=False)
    ious: list[float] = field(compare=False)
    query: np.ndarray = field(compare=False, repr=False)  # HxWx3 at the image's aspect ratio
    gt: np.ndarray | None = field(compare=False, repr=False)  # [way, H, W] binary (255 ignore); None: none
    preds: np.ndarray = field(compare=False, repr=False)  # [way, H, W]
    full_pred: np.ndarray = field(compare=False, repr=False)  # [H, W] dataset class ids
    supports: list[list[tuple[np.ndarray, np.ndarray]]] = field(compare=False, repr=False)
    dataset: str = field(default="pascal", compare=False)
    labels: list[str] | None = field(default=None, compare=False)  # way names given (own images)

    @property
    def names(self) -> list[str]:
        """The name of each way's class: given `labels`, else the dataset's (VOC / COCO names)."""
        return self.labels or [class_name(self.dataset, c) for c in self.class_ids]


def iou_text(panel: Panel) -> str:
    """Each way's IoU, or `<class> not in query` for a way whose class the query does not show."""
    return ", ".join(f"{name} {NOT_IN_QUERY}" if math.isnan(v) else f"{v:.1f}"
                     for name, v in zip(panel.names, panel.ious, strict=True))  # fmt: skip


def tile_titles(panel: Panel) -> list[str]:
    """The title of each tile of `draw_panel`, in order."""
    titles = [
        f"support: {name}" + (f" ({k + 1}/{len(shots)})" if len(shots) > 1 else "")
        for name, shots in zip(panel.names, panel.supports, strict=True)
        for k in range(len(shots))
    ]
    if panel.gt is None:
        titles.append(f"query: {NO_GROUND_TRUTH}")
        titles.append("prediction")
    else:
        titles.append("query + ground truth")
        titles.append(f"prediction (IoU {iou_text(panel)})")
    titles.append("full-class prediction")
    return titles


def legend_entries(panel: Panel) -> list[tuple[str, np.ndarray]]:
    """(label, RGB 0-255) of the panel's legend: each way, ignore, full-class colours."""
    truth = "outline: support mask" + (", ground truth" if panel.gt is not None else "")
    entries = [(f"way {w + 1}: {name} (fill: prediction; {truth})", WAY_COLOURS[w % len(WAY_COLOURS)])
               for w, name in enumerate(panel.names)]  # fmt: skip
    if panel.gt is not None and bool((panel.gt == IGNORE_INDEX).any()):
        entries.append(("ignored pixels (void, other episode classes)", IGNORE_COLOUR))
    for cid in sorted(int(c) for c in np.unique(panel.full_pred) if 0 < c < IGNORE_INDEX):
        entries.append((f"full-class: {class_name(panel.dataset, cid)}", full_colour(cid)))
    return entries


def _panel_from(batch: dict[str, Any], j: int, out: dict, preds: torch.Tensor, label: torch.Tensor,
                ious: list[float], index: int, dataset: str,
                sizes: dict[str, tuple[int, int]]) -> Panel:  # fmt: skip
    """One episode's panel; images and masks are resized to their original aspect ratio (`sizes`)."""
    class_ids = [int(c) for c in batch["class_ids"][j]]
    query_id = str(batch["query_id"][j])
    shown = display_size(sizes.get(query_id, tuple(label.shape)))
    lab = resize_nearest(label.cpu().numpy(), shown)
    gt = np.stack([np.where(lab == IGNORE_INDEX, IGNORE_INDEX, lab == w + 1) for w in range(len(class_ids))])
    query = resize_image(to_uint8_image(batch["query_img"][j]), shown)
    preds_np = preds.cpu().numpy().astype(np.uint8)
    supports = []
    for w in range(len(class_ids)):
        shots = []
        for k in range(batch["support_imgs"].shape[2]):
            sid = str(batch["support_ids"][j][w][k])
            s_hw = display_size(sizes.get(sid, tuple(batch["support_masks"].shape[-2:])))
            img = resize_image(to_uint8_image(batch["support_imgs"][j, w, k]), s_hw)
            shots.append((img, resize_nearest(batch["support_masks"][j, w, k].cpu().numpy(), s_hw)))
        supports.append(shots)
    valid = [v for v in ious if not math.isnan(v)]
    return Panel(
        iou=float(np.mean(valid)) if valid else math.nan,
        index=index,
        query_id=query_id,
        class_ids=class_ids,
        ious=ious,
        query=query,
        gt=gt.astype(np.uint8),
        preds=np.stack([resize_nearest(m, shown) for m in preds_np]),
        full_pred=resize_nearest(full_prediction(out, j, class_ids, tuple(label.shape)), shown),
        supports=supports,
        dataset=dataset,
    )


def draw_panel(panel: Panel, path: Path, title: str = "") -> None:
    """One PNG: supports (mask outlined), query + ground truth outlined (or "no ground truth"), prediction
    filled with the ground truth outlined, full-class prediction, and the legend below."""
    from matplotlib.patches import Patch

    tiles: list[np.ndarray] = []
    for w, shots in enumerate(panel.supports):
        for img, mask in shots:
            tiles.append(overlay(img, truths=[np.zeros_like(mask)] * w + [mask]))
    truths = [] if panel.gt is None else list(panel.gt)
    tiles.append(overlay(panel.query, truths=truths))
    tiles.append(overlay(panel.query, list(panel.preds), truths))
    tiles.append(full_class_tile(panel.query, panel.full_pred))
    widths = [t.shape[1] / t.shape[0] for t in tiles]  # each tile as wide as its aspect ratio needs
    entries = legend_entries(panel)
    rows = -(-len(entries) // 2)  # two legend columns
    fig, axes = plt.subplots(1, len(tiles), figsize=(2.6 * sum(widths) + 0.4, 3.6 + 0.3 * rows),
                             gridspec_kw={"width_ratios": widths})  # fmt: skip
    for ax, name, tile in zip(np.atleast_1d(axes), tile_titles(panel), tiles, strict=True):
        ax.imshow(tile)
        ax.set_title(name, fontsize=FONT - 1, wrap=True)
        ax.axis("off")
    handles = [Patch(facecolor=colour / 255.0, edgecolor="black", label=label) for label, colour in entries]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=FONT, frameon=False)
    names = ", ".join(panel.names)
    fig.suptitle(title or f"{panel.query_id}: {names}", fontsize=FONT)
    fig.tight_layout(rect=(0, 0.3 * rows / (3.6 + 0.3 * rows) + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")  # the legend may be wider than the tiles
    plt.close(fig)


class WorstCases:
    """The `k` lowest-scoring episodes, at most one per query image (its worst), as failure cases.

    Many test episodes share a query image; without this the failure cases would show one hard image
    several times instead of `k` different failures.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.kept: dict[str, tuple[float, int, Any]] = {}  # query id -> (score, index, item)

    def wants(self, score: float, query: str) -> bool:
        """Whether an episode with this score and query would be kept (build its panel only then)."""
        if self.k <= 0 or not math.isfinite(score):
            return False
        if query in self.kept:
            return score < self.kept[query][0]
        return len(self.kept) < self.k or score < max(v[0] for v in self.kept.values())

    def add(self, score: float, index: int, query: str, item: Any) -> None:
        if not self.wants(score, query):
            return
        self.kept[query] = (score, index, item)
        if len(self.kept) > self.k:
            drop = max(self.kept, key=lambda q: (self.kept[q][0], self.kept[q][1]))
            del self.kept[drop]

    def items(self) -> list[Any]:
        """The kept items, lowest score first (ties: manifest order)."""
        return [v[2] for v in sorted(self.kept.values(), key=lambda v: (v[0], v[1]))]


def collect_panels(
    model: nn.Module, batches: Any, protocol: str, device: str, amp: bool, first: int, worst: int,
    dataset: str = "pascal", sizes: dict[str, tuple[int, int]] | None = None,
) -> tuple[list[Panel], list[Panel], dict[str, Any]]:  # fmt: skip
    """(the first `first` episodes, the `worst` lowest-IoU ones from distinct queries, the metric)."""
    from train.evaluate import run_episodes

    metric = FewShotIoU()
    examples: list[Panel] = []
    failures = WorstCases(worst)
    for index, (batch, j, out, preds, label) in enumerate(run_episodes(model, batches, device, amp)):
        class_ids = [int(c) for c in batch["class_ids"][j]]
        ious = score_episode(metric, preds.cpu(), label.cpu(), class_ids, protocol)
        valid = [v for v in ious if not math.isnan(v)]
        score = float(np.mean(valid)) if valid else math.inf
        query = str(batch["query_id"][j])
        keep_worst = failures.wants(score, query)
        if index >= first and not keep_worst:
            continue
        panel = _panel_from(batch, j, out, preds, label, ious, index, dataset, sizes or {})
        if index < first:
            examples.append(panel)
        if keep_worst:
            failures.add(score, index, query, panel)
    return examples, failures.items(), metric.compute()


def evaluated_scores(
    details: dict[str, Any], manifest: dict[str, Any]
) -> tuple[dict[int, list[float]], dict[str, Any]] | None:
    """({episode: IoU of each scored way}, the model's scores) of `manifest` from evaluate's details.json.

    The evaluation is found by the manifest's hash; None when details.json did not score this manifest.
    A way whose class is absent from the query has no record (as in `score_episode`: NaN, left out).
    """
    from train.stats import EpisodeSums

    for fold in details.get("folds", {}).values():
        for run in fold["seeds"].values():
            if run["manifest_sha256"] != manifest["sha256_of_episodes"]:
                continue
            sums = EpisodeSums.from_json(run["episode_sums"])
            per_episode: dict[int, list[float]] = {}
            for e, i, u in zip(sums.episode.tolist(), sums.i_fg.tolist(), sums.u_fg.tolist(), strict=True):
                per_episode.setdefault(e, []).append(100.0 * i / u if u else math.nan)
            return per_episode, run["scores"]["model"]
    return None


def choose_episodes(
    per_episode: dict[int, list[float]], queries: list[str], first: int, worst: int
) -> tuple[list[int], list[int]]:
    """(the first `first` episodes, the `worst` lowest-scoring ones from distinct queries), as indexes."""
    failures = WorstCases(worst)
    for index, query in enumerate(queries):
        valid = [v for v in per_episode.get(index, []) if not math.isnan(v)]
        failures.add(float(np.mean(valid)) if valid else math.inf, index, query, index)
    return list(range(min(first, len(queries)))), failures.items()


def render_episodes(
    model: nn.Module, p: Any, shards: str, manifest: dict[str, Any], indexes: list[int], device: str,
    sizes: dict[str, tuple[int, int]],
) -> dict[int, Panel]:  # fmt: skip
    """Panels of the manifest's episodes `indexes` only (the model runs on those alone), by index."""
    from torch.utils.data import DataLoader, Subset

    from train.evaluate import run_episodes
    from train.stream import remote_reads
    from train.stream.by_key import EvalEpisodes, collate_eval
    from train.stream.shard_io import join_url

    # the whole manifest's dataset, so that each episode keeps its flips (by its place in the manifest)
    split, size, flip = join_url(str(shards), "test"), int(p.sampler.image_size), bool(p.evaluate.flip)
    reduced, remote, resize = p.sampler.decode_reduced, remote_reads(p), str(p.evaluate.resize)
    protocol = manifest["protocol"]
    dataset = EvalEpisodes(manifest, split, size, protocol, reduced, flip=flip, remote=remote, resize=resize)
    loader = DataLoader(Subset(dataset, indexes), batch_size=p.evaluate.batch_size, collate_fn=collate_eval)
    episodes = run_episodes(model, loader, device, p.train.amp)
    panels = {}
    for index, (batch, j, out, preds, label) in zip(indexes, episodes, strict=True):
        class_ids = [int(c) for c in batch["class_ids"][j]]
        ious = score_episode(FewShotIoU(), preds.cpu(), label.cpu(), class_ids, manifest["protocol"])
        dataset_name = manifest.get("dataset", p.dataset)
        panels[index] = _panel_from(batch, j, out, preds, label, ious, index, dataset_name, sizes)
    return panels


def image_sizes(split_url: str) -> dict[str, tuple[int, int]]:
    """Image id -> original (height, width), from a split's index.tsv (panels keep the aspect ratio)."""
    from pipeline.shard_format import index_rows
    from train.stream.shard_io import join_url, read_text

    url = join_url(split_url, "index.tsv")
    return {
        row["image_id"]: (row["height"], row["width"])
        for _, row in index_rows(read_text(url).splitlines(), url)
    }


HOW_TO_READ = (
    "Each way's colour is its class. A fill is the model's prediction; an outline is a ground truth "
    "(the support masks, the query's); white marks ignored pixels. The last tile is the full-class "
    f"prediction, one colour per class. \u201c<class> {NOT_IN_QUERY}\u201d: that way's class is not in the "
    "query image, so it has no IoU and is not scored (its prototype still competes for the pixels)."
)


def write_index(out_dir: Path, sections: list[tuple[str, str, list[tuple[str, Panel]]]], title: str) -> Path:
    """index.html: `title`, how to read the panels, then one section per (setting, kind) with each panel."""
    parts = ["<!doctype html><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1400px} img{max-width:100%} figure{margin:1em 0}"
             "</style>", f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(HOW_TO_READ)}</p>"]  # fmt: skip
    for heading, note, panels in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(note)}</p>")
        for rel, p in panels:
            what = ", ".join(p.names)
            caption = f"#{p.index} {p.query_id}: {what}: " + (
                NO_GROUND_TRUTH if p.gt is None else f"IoU {iou_text(p)}"
            )
            parts.append(f"<figure><img src='{html.escape(rel)}'><figcaption>{html.escape(caption)}"
                         "</figcaption></figure>")  # fmt: skip
    path = out_dir / "index.html"
    path.write_text("\n".join(parts) + "\n")
    return path


def infer_manifests(
    checkpoint: Path, manifests: list[Path], shards: str | Path, out_dir: Path,
    params_file: str = "params.yaml", episodes: int | None = None, worst: int | None = None,
    device: str | None = None, scores: Path | None = None,
) -> Path:  # fmt: skip
    """Panels and index.html for each manifest; returns the index path.

    `scores`: the evaluate stage's details.json. Where it scored a manifest, its per-episode sums pick
    the failure cases and the model runs on the chosen episodes only; else every episode is scored here.
    """
    from train.evaluate import episode_batches
    from train.stream import shards_location
    from train.stream.manifests import manifest_files, read_manifest
    from train.stream.shard_io import join_url

    p = load_params(params_file)
    shards = shards_location(p, shards)  # sampler.shards_url, when set, as in train and evaluate
    first = p.infer.episodes if episodes is None else episodes
    keep = p.infer.worst if worst is None else worst
    dev = resolve_device(device or p.train.device)
    model, ckpt = build_model_from_checkpoint(checkpoint)
    model.to(dev)
    sizes = image_sizes(join_url(str(shards), "test"))
    details = json.loads(scores.read_text()) if scores is not None else {}
    sections = []
    for mpath in (first_manifest(m, manifest_files) for m in manifests):
        manifest = read_manifest(mpath)
        setting = f"{manifest['way']}way_{manifest['shot']}shot"
        evaluated = evaluated_scores(details, manifest)
        if evaluated is None:  # no evaluation of this manifest to read: score every episode here
            examples, worst_panels, result = collect_panels(
                model, episode_batches(p, shards, manifest), manifest["protocol"], dev, p.train.amp, first,
                keep, manifest.get("dataset", p.dataset), sizes,
            )  # fmt: skip
        else:
            per_episode, result = evaluated
            queries = [ep["query"] for ep in manifest["episodes"]]
            shown, failing = choose_episodes(per_episode, queries, first, keep)
            panels = render_episodes(model, p, shards, manifest, sorted({*shown, *failing}), dev, sizes)
            examples, worst_panels = [panels[i] for i in shown], [panels[i] for i in failing]
        note = (f"fold {manifest['fold']}, {len(manifest['episodes'])} episodes, mIoU {result['miou']:.2f}, "
                f"FB-IoU {result['fb_iou']:.2f}, manifest sha256 {manifest['sha256_of_episodes'][:16]}, "
                f"checkpoint step {ckpt['step']}")  # fmt: skip
        kinds = (("examples", examples), ("failure cases (lowest IoU, one per query image)", worst_panels))
        for kind, panels in kinds:
            tag = "worst" if kind.startswith("failure") else "example"
            rels = []
            for panel in panels:
                rel = f"{setting}/{tag}_{panel.index:05d}.png"
                draw_panel(panel, out_dir / rel)
                rels.append((rel, panel))
            sections.append((f"{setting}: {kind}", note, rels))
    title = f"{ckpt['model_name']} on test episodes (checkpoint {checkpoint}, step {ckpt['step']})"
    return write_index(out_dir, sections, title)


def first_manifest(path: Path, manifest_files: Any) -> Path:
    """A manifest file, or the first seed's of a setting's folder (the `episodes` stage's output)."""
    if not path.is_dir():
        return path
    found = manifest_files(path)
    if not found:
        raise FileNotFoundError(f"{path}: no seed<k>.json manifest in this folder")
    return found[0]


def open_user_image(path: Path) -> Image.Image:
    """A user's image file, refused (InputError naming it) beyond MAX_IMAGE_PIXELS before decoding."""
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:  # PIL's own bound, met before ours: name the file too
        raise InputError(f"{path}: image is too large to decode ({exc})") from exc
    problem = image_size_problem(*img.size)
    if problem:
        img.close()
        raise InputError(f"{path}: {problem}")
    return img


def read_user_mask(path: Path, image: Path) -> np.ndarray:
    """The object of a support mask as a uint8 map (1 object, 0 background) at `image`'s size.

    A cut-out PNG (an alpha channel that is not fully opaque) is read by its alpha: opaque = object.
    Any other mask: pixels > 0 are the object. A mask whose size differs from its image is resized
    (nearest) with a warning; a mask without any object pixel is refused (InputError).
    """
    with open_user_image(image) as im:
        size = im.size
    with open_user_image(path) as m:
        alpha = m.mode in ("RGBA", "LA", "PA") or (m.mode == "P" and "transparency" in m.info)
        a = np.asarray(m.convert("RGBA").getchannel("A")) if alpha else None
        cutout = a is not None and bool((a < 255).any())
        obj = (a > 127) if cutout else (np.asarray(m.convert("L")) > 0)
    if not obj.any():
        kind = "its alpha channel is fully transparent" if cutout else "all its pixels are 0"
        raise InputError(f"mask {path} marks no object ({kind}): give a mask whose object pixels are > 0")
    mask = obj.astype(np.uint8)
    if (mask.shape[1], mask.shape[0]) != size:
        log.warning(
            "mask %s is %dx%d but its image %s is %dx%d: the mask is resized to the image (nearest)",
            path, mask.shape[1], mask.shape[0], image, *size,
        )  # fmt: skip
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return mask


def load_user_episode(
    query: Path, supports: list[Path], masks: list[Path], size: int, class_id: int
) -> dict[str, Any]:
    """A 1-way K-shot batch (design.md dict, uint8) from image files (masks: see `read_user_mask`)."""

    def image(path: Path) -> torch.Tensor:
        with open_user_image(path) as im:
            img = im.convert("RGB").resize((size, size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def mask(path: Path, image: Path) -> torch.Tensor:
        m = np.asarray(Image.fromarray(read_user_mask(path, image)).resize((size, size), Image.NEAREST))
        if not m.any():
            raise InputError(f"the object of mask {path} is too small: it vanishes at {size}x{size} px")
        return torch.from_numpy(m.copy())

    q = image(query)
    zero_label = torch.zeros(1, size, size, dtype=torch.uint8)
    return {
        "query_img": q.unsqueeze(0),
        "query_label": zero_label,
        "query_full_label": zero_label.clone(),
        "support_imgs": torch.stack([image(s) for s in supports]).view(1, 1, len(supports), 3, size, size),
        "support_masks": torch.stack([mask(m, s) for m, s in zip(masks, supports, strict=True)]).view(
            1, 1, len(masks), size, size
        ),
        "class_ids": torch.tensor([[class_id]], dtype=torch.int64),
        "query_id": [query.stem],
        "support_ids": [[s.stem for s in supports]],
    }


def infer_user_images(
    checkpoint: Path, query: Path, supports: list[Path], masks: list[Path], out_dir: Path,
    class_id: int | None = None, device: str = "cpu", class_label: str = "object",
) -> Path:  # fmt: skip
    """Segment the support's object in `query`; writes panel.png, prediction.png and index.html.

    `class_label` names the object in the panel and the page (the model does not know its class).
    """
    from train.evaluate import predict, way_predictions
    from train.stream.normalize import normalize

    if len(supports) != len(masks) or not supports:
        raise InputError("give one --mask per --support (and at least one)")
    device = resolve_device(device)
    model, ckpt = build_model_from_checkpoint(checkpoint)
    model.to(device).eval()
    snapshot = ckpt.get("params") or {}
    size = int(snapshot.get("sampler", {}).get("image_size", 321))
    if class_id is None:
        # any row works (it is replaced by the prototype); a novel one keeps base rows intact
        from pipeline.folds import novel_classes

        class_id = novel_classes(snapshot.get("dataset", "pascal"), int(snapshot.get("fold", 0)))[0]
    batch = normalize(load_user_episode(query, supports, masks, size, class_id), device)
    out = predict(model, batch, torch.device(device), amp=True)
    with open_user_image(query) as im:
        raw = np.asarray(im.convert("RGB"))
    h, w = raw.shape[:2]
    preds = way_predictions(out["way_logits"][0], (h, w)).cpu().numpy().astype(np.uint8)
    shown = display_size((h, w))
    shots = []
    for k, path in enumerate(supports):
        with open_user_image(path) as im:
            s_hw = display_size((im.height, im.width))
        shots.append((resize_image(to_uint8_image(batch["support_imgs"][0, 0, k]), s_hw),
                      resize_nearest(batch["support_masks"][0, 0, k].cpu().numpy(), s_hw)))  # fmt: skip
    panel = Panel(
        iou=math.nan, index=0, query_id=query.stem, class_ids=[class_id], ious=[math.nan],
        query=resize_image(raw, shown), gt=None, preds=resize_nearest(preds[0], shown)[None],
        full_pred=resize_nearest(full_prediction(out, 0, [class_id], (h, w)), shown), supports=[shots],
        dataset=snapshot.get("dataset", "pascal"), labels=[class_label],
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    draw_panel(panel, out_dir / "panel.png", f"{query.name}: {class_label}, {NO_GROUND_TRUTH}")
    Image.fromarray(preds[0] * 255).save(out_dir / "prediction.png")
    return write_index(out_dir, [("your images", f"checkpoint {checkpoint} step {ckpt['step']}",
                                  [("panel.png", panel)])], f"{class_label} in {query.name}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="results/<model>/<run>/")
    parser.add_argument(
        "--manifest", nargs="*", default=[],
        help="test-episode manifests (1-way, 2-way, ...), or a setting's folder (its first seed)",
    )  # fmt: skip
    parser.add_argument("--shards", help="the shards stage's output (manifest mode)")
    parser.add_argument(
        "--episodes", type=int, default=None, help="panels per manifest (params infer.episodes)"
    )
    parser.add_argument("--worst", type=int, default=None, help="failure cases kept (params infer.worst)")
    parser.add_argument("--scores", type=Path, default=None,
                        help="evaluate's details.json: its per-episode scores pick the failure cases, so "
                        "only the shown episodes run (default: score every episode here)")  # fmt: skip
    parser.add_argument("--query", type=Path, help="own-images mode: the query image")
    parser.add_argument("--support", type=Path, nargs="*", default=[], help="support image(s)")
    parser.add_argument("--mask", type=Path, nargs="*", default=[], help="support mask(s), > 0 = object")
    parser.add_argument("--class-id", type=int, default=None, help="W row the prototype replaces")
    parser.add_argument("--class-name", default="object", help="own-images mode: what the object is called")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    try:
        if args.query is not None:
            index = infer_user_images(
                Path(args.checkpoint), args.query, args.support, args.mask, Path(args.out), args.class_id,
                args.device or "cpu", args.class_name,
            )  # fmt: skip
        else:
            if not args.manifest or not args.shards:
                parser.error("give --manifest and --shards, or --query/--support/--mask")
            index = infer_manifests(
                Path(args.checkpoint), [Path(m) for m in args.manifest], args.shards, Path(args.out),
                args.params, args.episodes, args.worst, args.device, args.scores,
            )  # fmt: skip
    except USER_ERRORS as exc:  # one line: bad images, files, params, device, checkpoint
        return report(exc)
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
