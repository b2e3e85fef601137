"""Inference panels (`python -m train.infer`) on manifest episodes, worst cases included, or your own images.

Manifest mode writes, per manifest (1-way, 2-way, ...), PNG panels of the first N episodes and of the
K lowest-IoU ones into `<out>/<way>way_<shot>shot/`, and an `index.html` showing them with their IoU.
Panel: supports with their mask, query with ground truth, query with prediction, the full-class
prediction (dataset ids, VOC palette). Own-images mode: `--query q.jpg --support s.jpg --mask m.png`.
"""

from __future__ import annotations

import argparse
import heapq
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

from pipeline.config import load_params
from pipeline.masks import voc_palette
from pipeline.shard_format import image_size_problem
from train.checkpoint import build_model_from_checkpoint
from train.device import resolve_device
from train.errors import USER_ERRORS, report
from train.metrics import IGNORE_INDEX, FewShotIoU, score_episode

log = logging.getLogger(__name__)
WAY_COLOURS = np.array([[255, 40, 40], [40, 120, 255], [40, 220, 40]], dtype=np.float32)
ALPHA = 0.5


PALETTE = voc_palette()


def overlay(img: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """HxWx3 uint8 image with each binary mask tinted in its way's colour; ignore pixels in white."""
    out = img.astype(np.float32)
    for w, mask in enumerate(masks):
        fg = mask == 1
        colour = WAY_COLOURS[w % len(WAY_COLOURS)]
        out[fg] = (1 - ALPHA) * out[fg] + ALPHA * colour
        out[_boundary(fg)] = colour  # a solid outline keeps the mask visible on textured images
        out[mask == IGNORE_INDEX] = 255.0
    return out.clip(0, 255).astype(np.uint8)


def _boundary(fg: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour."""
    pad = np.pad(fg, 1, mode="edge")
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return fg & ~inner


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
    from train.stream.episodes import IMAGENET_MEAN, IMAGENET_STD

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
    query: np.ndarray = field(compare=False, repr=False)
    gt: np.ndarray = field(compare=False, repr=False)  # [way, H, W] binary (255 ignore)
    preds: np.ndarray = field(compare=False, repr=False)  # [way, H, W]
    full_pred: np.ndarray = field(compare=False, repr=False)
    supports: list[list[tuple[np.ndarray, np.ndarray]]] = field(compare=False, repr=False)


def _panel_from(batch: dict[str, Any], j: int, out: dict, preds: torch.Tensor, label: torch.Tensor,
                ious: list[float], index: int) -> Panel:  # fmt: skip
    class_ids = [int(c) for c in batch["class_ids"][j]]
    size = tuple(label.shape)
    lab = label.cpu().numpy()
    gt = np.stack([np.where(lab == IGNORE_INDEX, IGNORE_INDEX, lab == w + 1) for w in range(len(class_ids))])
    query = np.asarray(
        Image.fromarray(to_uint8_image(batch["query_img"][j])).resize((size[1], size[0]), Image.BILINEAR)
    )
    supports = [
        [(to_uint8_image(batch["support_imgs"][j, w, k]), batch["support_masks"][j, w, k].cpu().numpy())
         for k in range(batch["support_imgs"].shape[2])]
        for w in range(len(class_ids))
    ]  # fmt: skip
    valid = [v for v in ious if not math.isnan(v)]
    return Panel(
        iou=float(np.mean(valid)) if valid else math.nan,
        index=index,
        query_id=str(batch["query_id"][j]),
        class_ids=class_ids,
        ious=ious,
        query=query,
        gt=gt.astype(np.uint8),
        preds=preds.cpu().numpy().astype(np.uint8),
        full_pred=full_prediction(out, j, class_ids, size),
        supports=supports,
    )


def draw_panel(panel: Panel, path: Path, title: str = "") -> None:
    """One PNG: supports (mask overlay), query + ground truth, query + prediction, full-class prediction."""
    tiles: list[tuple[str, np.ndarray]] = []
    for w, shots in enumerate(panel.supports):
        for k, (img, mask) in enumerate(shots):
            masks = [np.zeros_like(mask)] * w + [mask]
            tiles.append((f"support {panel.class_ids[w]} #{k + 1}", overlay(img, masks)))
    tiles.append(("query + ground truth", overlay(panel.query, list(panel.gt))))
    ious = ", ".join("-" if math.isnan(v) else f"{v:.1f}" for v in panel.ious)
    tiles.append((f"prediction (IoU {ious})", overlay(panel.query, list(panel.preds))))
    tiles.append(("full-class prediction", PALETTE[panel.full_pred]))
    fig, axes = plt.subplots(1, len(tiles), figsize=(2.6 * len(tiles), 2.9))
    for ax, (name, tile) in zip(np.atleast_1d(axes), tiles, strict=True):
        ax.imshow(tile)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title or f"{panel.query_id} classes {panel.class_ids}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def collect_panels(
    model: nn.Module, batches: Any, protocol: str, device: str, amp: bool, first: int, worst: int
) -> tuple[list[Panel], list[Panel], dict[str, Any]]:
    """(the first `first` episodes, the `worst` lowest-IoU ones, the metric over all episodes)."""
    from train.evaluate import run_episodes

    metric = FewShotIoU()
    examples: list[Panel] = []
    heap: list[tuple[float, int, Panel]] = []  # max-heap on IoU via negation: the K lowest survive
    for index, (batch, j, out, preds, label) in enumerate(run_episodes(model, batches, device, amp)):
        class_ids = [int(c) for c in batch["class_ids"][j]]
        ious = score_episode(metric, preds.cpu(), label.cpu(), class_ids, protocol)
        valid = [v for v in ious if not math.isnan(v)]
        score = float(np.mean(valid)) if valid else math.inf
        keep_worst = worst > 0 and math.isfinite(score) and (len(heap) < worst or score < -heap[0][0])
        if index >= first and not keep_worst:
            continue
        panel = _panel_from(batch, j, out, preds, label, ious, index)
        if index < first:
            examples.append(panel)
        if keep_worst:
            heapq.heappush(heap, (-score, index, panel))
            if len(heap) > worst:
                heapq.heappop(heap)
    worst_panels = [p for _, _, p in sorted(heap, key=lambda t: (-t[0], t[1]))]
    return examples, worst_panels, metric.compute()


def write_index(out_dir: Path, sections: list[tuple[str, str, list[tuple[str, Panel]]]]) -> Path:
    """index.html: one section per (setting, kind) with each panel and its IoU."""
    parts = ["<!doctype html><meta charset='utf-8'><title>FSS inference</title>",
             "<style>body{font-family:sans-serif} img{max-width:100%} figure{margin:1em 0}</style>",
             f"<h1>{html.escape(out_dir.name)}</h1>"]  # fmt: skip
    for heading, note, panels in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(note)}</p>")
        for rel, p in panels:
            ious = ", ".join("-" if math.isnan(v) else f"{v:.1f}" for v in p.ious)
            caption = f"#{p.index} {p.query_id} classes {p.class_ids}: IoU {ious}"
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
    from train.stream.episodes import read_manifest

    p = load_params(params_file)
    shards = shards_location(p, shards)  # sampler.shards_url, when set, as in train and evaluate
    first = p.infer.episodes if episodes is None else episodes
    keep = p.infer.worst if worst is None else worst
    dev = resolve_device(device or p.train.device)
    model, ckpt = build_model_from_checkpoint(checkpoint)
    model.to(dev)
    sections = []
    for mpath in manifests:
        manifest = read_manifest(mpath)
        setting = f"{manifest['way']}way_{manifest['shot']}shot"
        examples, worst_panels, result = collect_panels(
            model, episode_batches(p, shards, manifest), manifest["protocol"], dev, p.train.amp, first, keep
        )
        note = (f"fold {manifest['fold']}, {len(manifest['episodes'])} episodes, mIoU {result['miou']:.2f}, "
                f"FB-IoU {result['fb_iou']:.2f}, manifest sha256 {manifest['sha256_of_episodes'][:16]}, "
                f"checkpoint step {ckpt['step']}")  # fmt: skip
        for kind, panels in (("examples", examples), ("failure cases (lowest IoU)", worst_panels)):
            tag = "worst" if kind.startswith("failure") else "example"
            rels = []
            for panel in panels:
                rel = f"{setting}/{tag}_{panel.index:05d}.png"
                draw_panel(panel, out_dir / rel)
                rels.append((rel, panel))
            sections.append((f"{setting}: {kind}", note, rels))
    return write_index(out_dir, sections)


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
    from train.stream.episodes import normalize

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
    preds = way_predictions(out["way_logits"][0], (h, w))
    panel = Panel(
        iou=math.nan, index=0, query_id=query.stem, class_ids=[class_id], ious=[math.nan],
        query=raw, gt=np.zeros((1, h, w), np.uint8), preds=preds.cpu().numpy().astype(np.uint8),
        full_pred=full_prediction(out, 0, [class_id], (h, w)),
        supports=[[(to_uint8_image(batch["support_imgs"][0, 0, k]),
                    batch["support_masks"][0, 0, k].cpu().numpy()) for k in range(len(supports))]],
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    draw_panel(panel, out_dir / "panel.png", f"{query.name}: no ground truth")
    Image.fromarray(panel.preds[0] * 255).save(out_dir / "prediction.png")
    return write_index(out_dir, [("your images", f"checkpoint {checkpoint} step {ckpt['step']}",
                                  [("panel.png", panel)])])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="results/<model>/<run>/")
    parser.add_argument(
        "--manifest", nargs="*", default=[], help="test-episode manifests (1-way, 2-way, ...)"
    )
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
