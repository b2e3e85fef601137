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
from pipeline.masks import voc_palette
from pipeline.shard_format import IGNORE_INDEX, image_size_problem
from train.checkpoint import build_model_from_checkpoint
from train.device import resolve_device
from train.errors import USER_ERRORS, report
from train.metrics import FewShotIoU, score_episode
from train.params import load_params

log = logging.getLogger(__name__)
WAY_COLOURS = np.array([[255, 40, 40], [40, 120, 255], [40, 220, 40]], dtype=np.float32)
GT_OUTLINE = np.array([255, 230, 0], dtype=np.float32)  # ground truth drawn over the prediction
IGNORE_COLOUR = np.array([255, 255, 255], dtype=np.float32)
ALPHA = 0.45
DISPLAY_SIDE = 240  # px of an image's longer side in a panel
NO_GROUND_TRUTH = "no ground truth"

PALETTE = voc_palette()


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


def overlay(img: np.ndarray, masks: list[np.ndarray], outlines: list[np.ndarray] = ()) -> np.ndarray:
    """HxWx3 uint8 image, each binary mask tinted and outlined in its way's colour, ignore pixels white;
    `outlines` (ground truth over a prediction) are drawn as contours only, in GT_OUTLINE."""
    out = img.astype(np.float32)
    for w, mask in enumerate(masks):
        fg = mask == 1
        colour = WAY_COLOURS[w % len(WAY_COLOURS)]
        out[fg] = (1 - ALPHA) * out[fg] + ALPHA * colour
        outline(out, fg, colour)
        ignore = mask == IGNORE_INDEX
        out[ignore] = (1 - ALPHA) * out[ignore] + ALPHA * IGNORE_COLOUR
    for mask in outlines:
        outline(out, mask == 1, GT_OUTLINE)
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

    @property
    def names(self) -> list[str]:
        """The name of each way's class (VOC / COCO names)."""
        return [class_name(self.dataset, c) for c in self.class_ids]


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
        ious = ", ".join("-" if math.isnan(v) else f"{v:.1f}" for v in panel.ious)
        titles.append(f"prediction (IoU {ious})")
    titles.append("full-class prediction")
    return titles


def legend_entries(panel: Panel) -> list[tuple[str, np.ndarray]]:
    """(label, RGB 0-255) of the panel's legend: each way, ground truth, ignore, full-class colours."""
    entries = [(f"way {w + 1}: {name} (fill + outline)", WAY_COLOURS[w % len(WAY_COLOURS)])
               for w, name in enumerate(panel.names)]  # fmt: skip
    if panel.gt is not None:
        entries.append(("ground truth (outline over the prediction)", GT_OUTLINE))
        if bool((panel.gt == IGNORE_INDEX).any()):
            entries.append(("ignored pixels (void, other episode classes)", IGNORE_COLOUR))
    for cid in sorted(int(c) for c in np.unique(panel.full_pred) if 0 < c < IGNORE_INDEX):
        entries.append((f"full-class: {class_name(panel.dataset, cid)}", PALETTE[cid].astype(np.float32)))
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
    """One PNG: supports (mask outlined), query + ground truth (or "no ground truth"), prediction with the
    ground truth outlined, full-class prediction (VOC palette), and the legend below."""
    from matplotlib.patches import Patch

    tiles: list[np.ndarray] = []
    for w, shots in enumerate(panel.supports):
        for img, mask in shots:
            tiles.append(overlay(img, [np.zeros_like(mask)] * w + [mask]))
    if panel.gt is None:
        tiles.append(panel.query)
        tiles.append(overlay(panel.query, list(panel.preds)))
    else:
        tiles.append(overlay(panel.query, list(panel.gt)))
        tiles.append(overlay(panel.query, list(panel.preds), outlines=list(panel.gt)))
    tiles.append(PALETTE[panel.full_pred])
    widths = [t.shape[1] / t.shape[0] for t in tiles]  # each tile as wide as its aspect ratio needs
    fig, axes = plt.subplots(
        1, len(tiles), figsize=(2.4 * sum(widths) + 0.4, 3.4), gridspec_kw={"width_ratios": widths}
    )
    for ax, name, tile in zip(np.atleast_1d(axes), tile_titles(panel), tiles, strict=True):
        ax.imshow(tile)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    handles = [Patch(facecolor=colour / 255.0, edgecolor="black", label=label)
               for label, colour in legend_entries(panel)]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=7, frameon=False)
    names = ", ".join(panel.names)
    fig.suptitle(title or f"{panel.query_id}: {names}", fontsize=9)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
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


def image_sizes(split_url: str) -> dict[str, tuple[int, int]]:
    """Image id -> original (height, width), from a split's index.tsv (panels keep the aspect ratio)."""
    from pipeline.shard_format import index_rows
    from train.stream.shard_io import join_url, read_text

    url = join_url(split_url, "index.tsv")
    return {
        row["image_id"]: (row["height"], row["width"])
        for _, row in index_rows(read_text(url).splitlines(), url)
    }


def write_index(out_dir: Path, sections: list[tuple[str, str, list[tuple[str, Panel]]]]) -> Path:
    """index.html: one section per (setting, kind) with each panel and its IoU."""
    parts = ["<!doctype html><meta charset='utf-8'><title>FSS inference</title>",
             "<style>body{font-family:sans-serif} img{max-width:100%} figure{margin:1em 0}</style>",
             f"<h1>{html.escape(out_dir.name)}</h1>"]  # fmt: skip
    for heading, note, panels in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(note)}</p>")
        for rel, p in panels:
            ious = ", ".join("-" if math.isnan(v) else f"{v:.1f}" for v in p.ious)
            what = ", ".join(p.names)
            caption = f"#{p.index} {p.query_id}: {what}: " + (
                NO_GROUND_TRUTH if p.gt is None else f"IoU {ious}"
            )
            parts.append(f"<figure><img src='{html.escape(rel)}'><figcaption>{html.escape(caption)}"
                         "</figcaption></figure>")  # fmt: skip
    path = out_dir / "index.html"
    path.write_text("\n".join(parts) + "\n")
    return path


def infer_manifests(
    checkpoint: Path, manifests: list[Path], shards: str | Path, out_dir: Path,
    params_file: str = "params.yaml", episodes: int | None = None, worst: int | None = None,
    device: str | None = None,
) -> Path:  # fmt: skip
    """Panels and index.html for each manifest; returns the index path."""
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
    sections = []
    for mpath in (first_manifest(m, manifest_files) for m in manifests):
        manifest = read_manifest(mpath)
        setting = f"{manifest['way']}way_{manifest['shot']}shot"
        examples, worst_panels, result = collect_panels(
            model, episode_batches(p, shards, manifest), manifest["protocol"], dev, p.train.amp, first, keep,
            manifest.get("dataset", p.dataset), sizes,
        )  # fmt: skip
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
    return write_index(out_dir, sections)


def first_manifest(path: Path, manifest_files: Any) -> Path:
    """A manifest file, or the first seed's of a setting's folder (the `episodes` stage's output)."""
    if not path.is_dir():
        return path
    found = manifest_files(path)
    if not found:
        raise FileNotFoundError(f"{path}: no seed<k>.json manifest in this folder")
    return found[0]


def open_user_image(path: Path) -> Image.Image:
    """A user's image file, refused (ValueError naming it) beyond MAX_IMAGE_PIXELS before decoding."""
    img = Image.open(path)
    problem = image_size_problem(*img.size)
    if problem:
        img.close()
        raise ValueError(f"{path}: {problem}")
    return img


def read_user_mask(path: Path, image: Path) -> np.ndarray:
    """The object of a support mask as a uint8 map (1 object, 0 background) at `image`'s size.

    A cut-out PNG (an alpha channel that is not fully opaque) is read by its alpha: opaque = object.
    Any other mask: pixels > 0 are the object. A mask whose size differs from its image is resized
    (nearest) with a warning; a mask without any object pixel is refused (ValueError).
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
        raise ValueError(f"mask {path} marks no object ({kind}): give a mask whose object pixels are > 0")
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
            raise ValueError(f"the object of mask {path} is too small: it vanishes at {size}x{size} px")
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
    class_id: int | None = None, device: str = "cpu",
) -> Path:  # fmt: skip
    """Segment the support's object in `query`; writes panel.png, prediction.png and index.html."""
    from train.evaluate import predict, way_predictions
    from train.stream.normalize import normalize

    if len(supports) != len(masks) or not supports:
        raise ValueError("give one --mask per --support (and at least one)")
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
        dataset=snapshot.get("dataset", "pascal"),
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    draw_panel(panel, out_dir / "panel.png", f"{query.name}: {NO_GROUND_TRUTH}")
    Image.fromarray(preds[0] * 255).save(out_dir / "prediction.png")
    return write_index(out_dir, [("your images", f"checkpoint {checkpoint} step {ckpt['step']}",
                                  [("panel.png", panel)])])  # fmt: skip


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
    parser.add_argument("--query", type=Path, help="own-images mode: the query image")
    parser.add_argument("--support", type=Path, nargs="*", default=[], help="support image(s)")
    parser.add_argument("--mask", type=Path, nargs="*", default=[], help="support mask(s), > 0 = object")
    parser.add_argument("--class-id", type=int, default=None, help="W row the prototype replaces")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    try:
        if args.query is not None:
            index = infer_user_images(
                Path(args.checkpoint), args.query, args.support, args.mask, Path(args.out), args.class_id,
                args.device or "cpu",
            )  # fmt: skip
        else:
            if not args.manifest or not args.shards:
                parser.error("give --manifest and --shards, or --query/--support/--mask")
            index = infer_manifests(
                Path(args.checkpoint), [Path(m) for m in args.manifest], args.shards, Path(args.out),
                args.params, args.episodes, args.worst, args.device,
            )  # fmt: skip
    except USER_ERRORS as exc:  # one line: bad images, files, params, device, checkpoint
        return report(exc)
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
