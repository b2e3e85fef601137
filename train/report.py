"""Results table: `python -m train.report --print` collects every evaluate metrics file under results/.

Rows: each model and the trivial predictors (the floor); columns: 1w1s, 1w5s, 2w1s, 2w5s as
"mIoU / FB-IoU", averaged over the folds found ("-": not run; "n/a": a way the model does not support).
Writes `<results>/table.md` and `<results>/table.png`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS = [(1, 1), (1, 5), (2, 1), (2, 5)]
METRICS_NAME = re.compile(r"fold\d+_\d+way_\d+shot\.json$")
TRIVIAL_PREFIX = "trivial: "

# (group, row) -> (way, shot) -> fold -> (miou, fb_iou); group = (source, dataset, protocol)
Table = dict[tuple[tuple[str, str, str], str], dict[tuple[int, int], dict[int, tuple[float, float]]]]


def find_metrics(results: Path) -> list[Path]:
    """Every evaluate metrics file (`fold<i>_<w>way_<s>shot.json`) under `results`, sorted."""
    return sorted(p for p in results.rglob("*.json") if METRICS_NAME.search(p.name))


def collect(paths: list[Path]) -> tuple[Table, dict[tuple[str, str, str], set[str]]]:
    """Fold scores per (group, row, setting), and the manifest hashes seen per group."""
    table: Table = defaultdict(lambda: defaultdict(dict))
    hashes: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for path in paths:
        data = json.loads(path.read_text())
        if "folds" not in data or "mean" not in data:
            continue
        group = (data.get("source", "?"), data["dataset"], data["protocol"])
        setting = (int(data["way"]), int(data["shot"]))
        for fold in data["folds"].values():
            hashes[group].add(fold["manifest_sha256"][:12])
            for name, score in fold["scores"].items():
                row = data["model"] if name == "model" else TRIVIAL_PREFIX + name
                table[(group, row)][setting][int(fold["fold"])] = (score["miou"], score["fb_iou"])
    return table, hashes


def supported_ways(row: str) -> tuple[int, ...] | None:
    """Episode ways a model row supports (registry metadata); None for trivial rows and unknown names."""
    if row.startswith(TRIVIAL_PREFIX):
        return None
    from fss_model import list_models, model_entry

    return model_entry(row).ways if row in list_models() else None


def _cell(folds: dict[int, tuple[float, float]], supported: bool = True) -> str:
    if not folds:
        return "-" if supported else "n/a"
    miou = np.mean([v[0] for v in folds.values()])
    fb = np.mean([v[1] for v in folds.values()])
    note = "" if len(folds) == 4 else f" ({len(folds)} fold{'s' if len(folds) > 1 else ''})"
    return f"{miou:.2f} / {fb:.2f}{note}"


def markdown(table: Table, hashes: dict[tuple[str, str, str], set[str]]) -> str:
    """One markdown table per (source, dataset, protocol): models first, then the trivial floor."""
    if not table:
        return "No evaluate metrics files found (run `dvc repro` first).\n"
    out = []
    groups = sorted({g for g, _ in table})
    for group in groups:
        source, dataset, protocol = group
        rows = sorted((r for g, r in table if g == group), key=lambda r: (r.startswith(TRIVIAL_PREFIX), r))
        out.append(f"### {dataset} ({source} data), protocol {protocol}: mIoU / FB-IoU, mean over folds\n")
        out.append("| predictor | " + " | ".join(f"{w}w{s}s" for w, s in SETTINGS) + " |")
        out.append("|---|" + "---|" * len(SETTINGS))
        for row in rows:
            ways = supported_ways(row)  # "n/a": a way the model does not support (AMP is 1-way only)
            cells = [
                _cell(table[(group, row)].get(setting, {}), ways is None or setting[0] in ways)
                for setting in SETTINGS
            ]
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.append(f"\nmanifests (sha256 prefixes): {', '.join(sorted(hashes[group]))}\n")
    return "\n".join(out) + "\n"


def plot(table: Table, path: Path) -> None:
    """Grouped bars of mIoU per setting, one panel per (source, dataset, protocol)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({g for g, _ in table}) or [("-", "-", "-")]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        rows = sorted((r for g, r in table if g == group), key=lambda r: (r.startswith(TRIVIAL_PREFIX), r))
        width = 0.8 / max(len(rows), 1)
        for i, row in enumerate(rows):
            values = [
                np.mean([v[0] for v in folds.values()]) if (folds := table[(group, row)].get(s)) else 0.0
                for s in SETTINGS
            ]
            ax.bar(np.arange(len(SETTINGS)) + i * width, values, width, label=row)
        ax.set_xticks(np.arange(len(SETTINGS)) + 0.4 - width / 2, [f"{w}w{s}s" for w, s in SETTINGS])
        ax.set_ylabel("mIoU")
        ax.set_title(" / ".join(group), fontsize=9)
        if rows:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(results: Path) -> tuple[str, dict[str, Any]]:
    """Build the markdown and write table.md and table.png into `results`."""
    table, hashes = collect(find_metrics(results))
    text = markdown(table, hashes)
    results.mkdir(parents=True, exist_ok=True)
    (results / "table.md").write_text(text)
    plot(table, results / "table.png")
    return text, {"files": len(find_metrics(results)), "rows": len(table)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=None, help="folder to search (default: params paths.results)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--print", action="store_true", help="print the markdown table")
    args = parser.parse_args(argv)
    if args.results is None:
        from pipeline.config import load_params

        args.results = load_params(args.params).paths.results
    text, info = report(Path(args.results))
    if args.print:
        print(text, end="")
    print(f"{info['files']} metrics files -> {Path(args.results) / 'table.md'}, table.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
