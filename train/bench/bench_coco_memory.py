"""Benchmark the shards stage's memory on COCO 2014's real annotation count: peak summed PSS of the
stage's processes and peak RSS of its main process, per worker count.

`write_synthetic_coco` writes the synthetic raw tree: annotation files of COCO 2014's sizes (82,783 +
40,504 images, 604,907 + 291,875 annotations, ~685 MB of JSON in all) over tiny images, one 32 px
JPEG hard-linked under every file name (a copy per 50,000 names). Only the JSON is full size: it is
what the stage holds.
The stage runs as `python -m pipeline.shards` in a child process, from this checkout or (`--baseline
REV`) from a git revision exported to a temp folder, so before and after run side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pipeline.classes import COCO_CATEGORIES
from train.bench.bench_shards import export_revision

# COCO 2014 as published: images and annotations per annotation file
COCO_2014 = {"train": (82_783, 604_907), "val": (40_504, 291_875)}
SIDE = 32  # px: every synthetic image is SIDE x SIDE
POINTS = 54  # polygon vertices per annotation: with two decimals this gives ~685 MB of JSON
CROWD_EVERY = 100  # every 100th annotation is a crowd region in uncompressed RLE, as ~1% are in COCO
REPO = Path(__file__).resolve().parents[2]


def _polygon_texts(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct polygon segmentations as JSON text (1 or 2 polygons, two decimals, in the image)."""
    out = []
    for _ in range(count):
        parts = 1 if rng.random() < 0.9 else 2
        polys = []
        for n in np.diff(np.linspace(0, POINTS, parts + 1).astype(int)):
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radius = rng.uniform(3, SIDE / 2 - 1, n)
            centre = rng.uniform(SIDE / 2 - 2, SIDE / 2 + 2, 2)
            xy = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)
            polys.append("[" + ",".join(f"{v:.2f}" for v in xy.ravel()) + "]")
        out.append("[" + ",".join(polys) + "]")
    return out


def _crowd_text(rng: np.random.Generator) -> str:
    """An uncompressed RLE of a random blob (column-major runs starting with a zero run)."""
    mask = rng.random((SIDE, SIDE)) < 0.3
    flat = mask.reshape(-1, order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return json.dumps({"counts": runs, "size": [SIDE, SIDE]}, separators=(",", ":"))


def write_synthetic_coco(root: str | Path, fraction: float = 1.0, seed: int = 0) -> dict[str, int]:
    """Write `root`/{train2014,val2014,annotations}: COCO 2014's image and annotation counts (times
    `fraction`), ~685 MB of JSON at 1.0, every image a hard link to one tiny JPEG. Returns the counts."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    polygons = _polygon_texts(rng, 512)  # parsed afresh for every annotation: the pool only saves time
    crowds = [_crowd_text(rng) for _ in range(64)]
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    linked = 0
    categories = [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES]
    stats, ann_id, first_image = {}, 1, 1
    for split, (num_images, num_anns) in COCO_2014.items():
        num_images = max(1, round(num_images * fraction))
        num_anns = max(1, round(num_anns * fraction))
        ids = np.arange(first_image, first_image + num_images)
        first_image += num_images
        folder = root / f"{split}2014"
        folder.mkdir(exist_ok=True)
        names = [f"COCO_{split}2014_{i:012d}.jpg" for i in ids]
        for name in names:
            if not (folder / name).exists():
                template = root / "annotations" / f"image{linked // 50_000}.jpg"  # under ext4's 65k links
                if not template.exists():
                    template.write_bytes(jpeg.getvalue())
                os.link(template, folder / name)
                linked += 1
        owners = np.sort(rng.choice(ids, num_anns))  # annotations grouped by image, as COCO's files are
        cats = rng.choice([c[0] for c in COCO_CATEGORIES], num_anns)
        picks = rng.integers(0, len(polygons), num_anns)
        path = root / "annotations" / f"instances_{split}2014.json"
        with open(path, "w") as out:
            out.write('{"info":{"description":"synthetic, COCO 2014 sizes"},"images":[')
            out.write(",".join(
                json.dumps({"license": 1, "file_name": n, "height": SIDE, "width": SIDE, "id": int(i)})
                for n, i in zip(names, ids, strict=True)
            ))  # fmt: skip
            out.write('],"licenses":[{"url":"","id":1,"name":"synthetic"}],"annotations":[')
            rows = []
            for k in range(num_anns):
                crowd = k % CROWD_EVERY == CROWD_EVERY - 1
                seg = crowds[picks[k] % len(crowds)] if crowd else polygons[picks[k]]
                rows.append(
                    f'{{"segmentation":{seg},"area":{100 + picks[k] / 7:.4f},"iscrowd":{int(crowd)},'
                    f'"image_id":{owners[k]},"bbox":[2.5,3.25,20.75,18.5],"category_id":{cats[k]},"id":{ann_id}}}'
                )
                ann_id += 1
            out.write(",".join(rows))
            out.write('],"categories":' + json.dumps(categories) + "}")
        stats[split] = num_images
        stats[f"{split}_annotations"] = num_anns
        stats[f"{split}_json_bytes"] = path.stat().st_size
    return stats


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(raw: Path, out: Path, workers: int, code: Path, interval: float = 0.5) -> dict[str, float]:
    """Run the shards stage (COCO, standard protocol, official-data presets) from `code` with `workers`;
    peak summed PSS of its processes (sampled every `interval` s), its main process's peak RSS, wall time."""
    params = yaml.safe_load((code / "params.yaml").read_text())
    params.update(dataset="coco", source="official", protocol="standard")
    params_file = out.parent / f"params-{out.name}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "pipeline.shards", "--raw", str(raw), "--out", str(out)]
    cmd += ["--params", str(params_file), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    log = out.parent / f"stderr-{out.name}.txt"
    t0 = time.perf_counter()
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        peak_pss = peak_main = procs = 0
        while proc.poll() is None:
            pids = _tree(proc.pid)
            pss = sum(_pss_kb(p) for p in pids)
            if pss > peak_pss:
                peak_pss, procs = pss, len(pids)
            peak_main = max(peak_main, _status_kb(proc.pid, "VmHWM"))  # the kernel's peak RSS so far
            time.sleep(interval)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"shards stage failed ({proc.returncode}): {log.read_text()[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return {"pss_gb": peak_pss / 2**20, "main_gb": peak_main / 2**20, "procs": procs, "wall_s": wall}


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m train.bench.bench_coco_memory [--workers 2 16] [--fraction F] [--baseline REV]`."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--fraction", type=float, default=1.0, help="of COCO 2014's counts (1.0: the real count)")
    ap.add_argument("--baseline", default=None, help="git revision to measure too, before this checkout")
    ap.add_argument("--raw", default=None, help="reuse (or write once) the synthetic raw tree here")
    ap.add_argument("--tmp", default=None, help="folder for the shards written (default: system temp)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        raw = Path(args.raw) if args.raw else Path(tmp) / "raw"
        marker = raw / f"synthetic-{args.fraction}.json"
        if marker.is_file():
            stats = json.loads(marker.read_text())
        else:
            stats = write_synthetic_coco(raw, args.fraction)
            marker.write_text(json.dumps(stats))
        anns = stats["train_annotations"] + stats["val_annotations"]
        mb = (stats["train_json_bytes"] + stats["val_json_bytes"]) / 1e6
        images = stats["train"] + stats["val"]
        print(f"synthetic COCO 2014: {images} images, {anns} annotations, {mb:.0f} MB of JSON")
        codes = {"this checkout": REPO}
        if args.baseline:
            baseline = export_revision(args.baseline, Path(tmp) / "baseline")
            codes = {f"baseline {args.baseline}": baseline, **codes}
        for label, code in codes.items():
            for n in args.workers:
                r = measure(raw, Path(tmp) / f"out-{len(label)}-{n}", n, code)
                print(
                    f"{label}, {n} workers: summed PSS {r['pss_gb']:.2f} GB over {r['procs']} processes, "
                    f"main peak RSS {r['main_gb']:.2f} GB, {r['wall_s']:.0f} s"
                )
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
