"""Results tables and plots: `python -m train.report [--experiments] [--print]`.

Reads evaluation details (`details.json`, design.md) from the workspace (every one under
`--results`: the DVC `evaluate` stage's and those of `python -m train.evaluate` run by hand) and,
with `--experiments`, from every DVC experiment: `dvc exp show --json` lists them with their params
and metrics, and each experiment's files are read at its commit (DVC's file system: details.json
from the DVC cache, the training curves from git). Rows: each model
(with the params that differ between the experiments shown) and the trivial predictors (the floor);
columns: 1w1s, 1w5s, 2w1s, 2w5s. A cell is "mIoU ± std [95% CI] / FB-IoU": the mean over folds of
the mean over test seeds, the std over seeds, and the bootstrap interval over episodes
(`train.stats`). Writes table.md (results and per-class tables), table.png, per_class.png and
curves.png (training loss and validation mIoU) into `<results>/report/` (workspace only: the DVC
`report` stage) or `<results>/experiments/` (with --experiments).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from train.stats import EpisodeSums, bootstrap_miou, mean_and_std

SETTINGS = [(1, 1), (1, 5), (2, 1), (2, 5)]
TRIVIAL_PREFIX = "trivial: "
DETAILS = "details.json"
EVALUATE_DIR, TRAIN_DIR = "evaluate", "train"  # the stages' folders under paths.results (dvc.yaml)
WORKSPACE_OUT, EXPERIMENTS_OUT = "report", "experiments"
CURVES = {"train/loss": "training loss", "val/miou": "validation mIoU"}
# params that never make two runs' models differ (or are the table's columns and groups)
NOT_A_ROW = ("fold", "way", "shot", "model", "source", "dataset", "protocol", "paths.", "evaluate.",
             "infer.", "download.", "sampler.workers", "data.workers", "sampler.shards_url",
             "sampler.min_bytes_per_s", "sampler.rate_window_s", "sampler.deadline_s", "sampler.cache_",
             "train.device")  # fmt: skip

Group = tuple[str, str, str]  # (source, dataset, protocol)
CellKey = tuple[Group, str, tuple[int, int]]  # (group, row, (way, shot))


@dataclass
class Evaluation:
    """One details.json and what it came from: the workspace, a file, or an experiment."""

    details: dict[str, Any]
    origin: str  # "workspace", a path, or an experiment's name
    params: dict[str, Any] = field(default_factory=dict)  # flat params.yaml of the run ({} unknown)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    standalone: bool = False  # evaluated by hand, outside DVC


@dataclass
class Table:
    """Everything the outputs show, collected from the evaluations."""

    runs: dict[CellKey, dict[int, dict[int, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(dict))
    )  # cell -> fold -> seed -> {"scores", "episode_sums"}
    hashes: dict[Group, set[str]] = field(default_factory=lambda: defaultdict(set))
    per_class: dict[CellKey, dict[tuple[int, str], list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )  # cell -> (fold, class name) -> IoU per seed
    curves: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)  # row -> name
    missing: dict[CellKey, dict[tuple[int, str], str]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # cell -> (fold, class name) -> why no test episode holds it (not in the mean)


# ---------------------------------------------------------------- reading: workspace and experiments


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and key != "model_kwargs":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_curves(read: Any) -> dict[str, list[tuple[float, float]]]:
    """dvclive's TSVs (`plots/metrics/<name>.tsv`, columns step and value) through `read(relpath)`."""
    curves = {}
    for name in CURVES:
        text = read(f"plots/metrics/{name}.tsv")
        if text:
            rows = list(csv.reader(io.StringIO(text), delimiter="\t"))[1:]
            curves[name] = [(float(r[0]), float(r[1])) for r in rows if len(r) >= 2]
    return curves


def workspace_evaluations(results: Path) -> list[Evaluation]:
    """Every details.json under `results` (not the report's own folders), sorted by path."""
    skip = {results / WORKSPACE_OUT, results / EXPERIMENTS_OUT}
    found = []
    for path in sorted(results.rglob(DETAILS)):
        if any(path.is_relative_to(s) for s in skip):
            continue
        data = json.loads(path.read_text())
        if "summary" not in data or "folds" not in data:
            continue
        live = results / TRAIN_DIR
        curves = read_curves(
            lambda rel, live=live: (live / rel).read_text() if (live / rel).exists() else None
        )
        stage = path == results / EVALUATE_DIR / DETAILS
        found.append(Evaluation(data, "workspace" if stage else str(path), curves=curves if stage else {},
                                standalone=not stage))  # fmt: skip
    return found


def dvc_exp_show(all_commits: bool = False) -> list[dict[str, Any]]:
    """`dvc exp show --json` (of HEAD's experiments; every commit's with `all_commits`)."""
    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {last}")
    return json.loads(done.stdout or "[]")


def reader_at(rev: str) -> Any:
    """`read(path) -> text or None` for the files of commit `rev`, git-tracked or DVC-tracked."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    opened: list[DVCFileSystem] = []  # one file system per commit, opened at the first read

    def read(path: str) -> str | None:
        try:
            opened[:] = opened or [DVCFileSystem(".", rev=rev)]
            return opened[0].read_text(path)
        except (OSError, ValueError, DvcException):  # not in that commit, not in the DVC cache, no repo
            return None

    return read


def experiment_records(shown: list[dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(name, rev, data) of every committed baseline and experiment in `dvc exp show --json`."""
    for top in shown:
        if top.get("rev") != "workspace" and top.get("data"):
            yield top.get("name") or top["rev"][:7], top["rev"], top["data"]
        for exp in top.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if data.get("status") in ("Queued", "Running", "Failed") or not rev.get("rev"):
                    continue
                yield rev.get("name") or exp.get("name") or rev["rev"][:7], rev["rev"], data


def experiment_evaluations(shown: list[dict[str, Any]]) -> list[Evaluation]:
    """The evaluations of `dvc exp show --json` entries whose evaluate metrics are there."""
    found = []
    for name, rev, data in experiment_records(shown):
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        results = (params.get("paths") or {}).get("results", "results")
        metrics = (data.get("metrics") or {}).get(f"{results}/{EVALUATE_DIR}/metrics.json") or {}
        if "data" not in metrics:  # not evaluated in this commit (or an older layout)
            continue
        read = reader_at(rev)
        text = read(f"{results}/{EVALUATE_DIR}/{DETAILS}")
        if text is None:
            continue
        curves = read_curves(lambda rel, read=read, results=results: read(f"{results}/{TRAIN_DIR}/{rel}"))
        found.append(Evaluation(json.loads(text), name, flatten(params), curves))
    return found


# ---------------------------------------------------------------- the table


def row_params(evaluation: Evaluation) -> dict[str, Any]:
    """The params that tell rows apart. Where the model's recipe trains one model per way / shot (PANet,
    PFENet: `Recipe.trains_per`), a train.way / train.shot equal to the cell's way / shot reads "per
    setting", so the method's cells, each with its own model as released, share one row."""
    from fss_model import model_entry

    params = dict(evaluation.params)
    try:
        recipe = model_entry(evaluation.details["model"]).recipes.official
    except ValueError:  # a model this checkout does not register
        return params
    for key in recipe.trains_per if recipe is not None else ():
        if params.get(f"train.{key}") == evaluation.details.get(key):
            params[f"train.{key}"] = "per setting"
    return params


def varying_keys(evaluations: list[Evaluation]) -> list[str]:
    """Params whose values differ between these evaluations (those that can change the model)."""
    known = [row_params(e) for e in evaluations if e.params]
    keys = sorted({k for p in known for k in p if not any(k == n or k.startswith(n) for n in NOT_A_ROW)})
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in known}) > 1]


def row_label(evaluation: Evaluation, varying: list[str]) -> str:
    label = evaluation.details["model"]
    params = row_params(evaluation) if evaluation.params else {}
    extra = [f"{k}={params.get(k)}" for k in varying if params]
    if evaluation.standalone:
        extra.append("standalone")
    return f"{label} ({', '.join(extra)})" if extra else label


def collect(evaluations: list[Evaluation]) -> Table:
    """Fold and seed runs per cell; later evaluations of the same (cell, fold, seed) replace earlier."""
    table = Table()
    by_model: dict[str, list[Evaluation]] = defaultdict(list)
    for ev in evaluations:  # a row names only what differs between runs of its own model
        by_model[ev.details["model"]].append(ev)
    varying = {model: varying_keys(evs) for model, evs in by_model.items()}
    for ev in evaluations:
        d = ev.details
        group, setting, row = (
            (d["source"], d["dataset"], d["protocol"]),
            (int(d["way"]), int(d["shot"])),
            row_label(ev, varying[d["model"]]),
        )
        names = {(r["fold"], r["class_id"]): r["class"] for r in d.get("per_class", [])}
        for fold in d["folds"].values():
            for seed, run in fold["seeds"].items():
                table.hashes[group].add(run["manifest_sha256"][:12])
                for name, score in run["scores"].items():
                    key = (group, row if name == "model" else TRIVIAL_PREFIX + name, setting)
                    sums = run.get("episode_sums") if name == "model" else None
                    table.runs[key][int(fold["fold"])][int(seed)] = {
                        "scores": score,
                        "episode_sums": EpisodeSums.from_json(sums) if sums else None,
                    }
                model = run["scores"]["model"]["per_class"]
                for cid, iou in model.items():
                    cname = names.get((int(fold["fold"]), int(cid)), f"class {cid}")
                    table.per_class[(group, row, setting)][(int(fold["fold"]), cname)].append(iou)
        for miss in d.get("missing_classes", []):
            table.missing[(group, row, setting)][(int(miss["fold"]), miss["class"])] = miss["reason"]
        if ev.curves:
            table.curves[row] = ev.curves
    return table


def cell(folds: dict[int, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """mIoU / FB-IoU (mean over folds of the mean over seeds), std over seeds, bootstrap interval."""
    out: dict[str, Any] = {"folds": len(folds), "seeds": len({s for f in folds.values() for s in f})}
    for key in ("miou", "fb_iou"):
        per_fold = [{s: r["scores"][key] for s, r in seeds.items()} for seeds in folds.values()]
        out[key], out[f"{key}_std"] = mean_and_std(per_fold)
    sums = [[r["episode_sums"] for r in seeds.values()] for seeds in folds.values()]
    if all(s is not None for runs in sums for s in runs):
        out["miou_ci95"] = bootstrap_miou(sums)
    return out


def cell_text(folds: dict[int, dict[int, dict[str, Any]]] | None, supported: bool = True) -> str:
    if not folds:
        return "-" if supported else "n/a"
    c = cell(folds)
    ci = f" [{c['miou_ci95'][0]:.2f}, {c['miou_ci95'][1]:.2f}]" if "miou_ci95" in c else ""
    return f"{c['miou']:.2f} ± {std_text(c['miou_std'], c['seeds'])}{ci} / {c['fb_iou']:.2f}"


def std_text(std: float, seeds: int) -> str:
    """The std over test seeds, or "n/a" for a single seed (no spread was measured, not a spread of 0)."""
    return f"{std:.2f}" if seeds > 1 else "n/a"


def supported_ways(row: str) -> tuple[int, ...] | None:
    """Episode ways a model row supports (registry metadata); None for trivial rows and unknown names."""
    if row.startswith(TRIVIAL_PREFIX):
        return None
    from fss_model import list_models, model_entry

    name = row.split(" (", 1)[0]
    return model_entry(name).ways if name in list_models() else None


def _rows(table: Table, group: Group) -> list[str]:
    rows = {r for g, r, _ in table.runs if g == group}
    return sorted(rows, key=lambda r: (r.startswith(TRIVIAL_PREFIX), r))


def _groups(table: Table) -> list[Group]:
    return sorted({g for g, _, _ in table.runs})


def _counts(table: Table, group: Group) -> str:
    folds = sorted({f for (g, _, _), runs in table.runs.items() if g == group for f in runs})
    seeds = sorted(
        {s for (g, _, _), runs in table.runs.items() if g == group for f in runs.values() for s in f}
    )
    return f"folds {', '.join(map(str, folds))}; test seeds {', '.join(map(str, seeds))}"


def markdown(table: Table) -> str:
    """Per (source, dataset, protocol): the results table (models, then the floor) and per-class IoU."""
    if not table.runs:
        return "No evaluation details found (run `dvc repro`, or `dvc exp run`, first).\n"
    out = []
    for group in _groups(table):
        source, dataset, protocol = group
        out.append(f"### {dataset} ({source} data), protocol {protocol}: mIoU ± std [95% CI] / FB-IoU\n")
        out.append(f"Mean over folds of the mean over test seeds ({_counts(table, group)}); std over seeds; "
                   "bootstrap interval over episodes (model rows).\n")  # fmt: skip
        out.append("| predictor | " + " | ".join(f"{w}w{s}s" for w, s in SETTINGS) + " |")
        out.append("|---|" + "---|" * len(SETTINGS))
        for row in _rows(table, group):
            ways = supported_ways(row)  # "n/a": a way the model does not support
            cells = [
                cell_text(table.runs.get((group, row, setting)), ways is None or setting[0] in ways)
                for setting in SETTINGS
            ]
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.extend(missing_markdown(table, group))
        out.append(f"\nmanifests (sha256 prefixes): {', '.join(sorted(table.hashes[group]))}\n")
        out.extend(per_class_markdown(table, group))
    return "\n".join(out) + "\n"


def missing_markdown(table: Table, group: Group) -> list[str]:
    """A line per novel class that no test episode holds: the means above leave it out."""
    found = {
        (setting, fold, name, why)
        for (g, _, setting), classes in table.missing.items()
        if g == group
        for (fold, name), why in classes.items()
    }
    return [f"\n**Not in the mean** ({w}w{s}s, fold {fold}): {name}: {why}"
            for (w, s), fold, name, why in sorted(found)]  # fmt: skip


def per_class_markdown(table: Table, group: Group) -> list[str]:
    """One table per setting: a row per (fold, class), a column per model row (mean over seeds)."""
    out = []
    for setting in SETTINGS:
        rows = [r for r in _rows(table, group) if (group, r, setting) in table.per_class]
        if not rows:
            continue
        missing = {k: why for r in rows for k, why in table.missing.get((group, r, setting), {}).items()}
        classes = sorted({k for r in rows for k in table.per_class[(group, r, setting)]} | set(missing))
        out.append(f"Per-class IoU, {setting[0]}-way {setting[1]}-shot (mean over test seeds):\n")
        out.append("| fold | class | " + " | ".join(rows) + " |")
        out.append("|---|---|" + "---|" * len(rows))
        for fold, name in classes:
            values = [table.per_class[(group, r, setting)].get((fold, name)) for r in rows]
            cells = [f"{np.mean(v):.2f}" if v else "no test episode" if (fold, name) in missing else "-"
                     for v in values]  # fmt: skip
            out.append(f"| {fold} | {name} | " + " | ".join(cells) + " |")
        out.append("")
    return out


# ---------------------------------------------------------------- plots (matplotlib, offline)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TRIVIAL_COLOURS = {"all_background": "#4d4d4d", "all_foreground": "#b8b8b8", "support_mask": "#8c6d31"}


def row_colour(row: str) -> str:
    """One colour per predictor in every report: trivial rows grey/brown, each registered model its own
    tab10 colour by registry order (rows of one model that differ in params share it, hatched apart)."""
    if row.startswith(TRIVIAL_PREFIX):
        return TRIVIAL_COLOURS.get(row.removeprefix(TRIVIAL_PREFIX), "#000000")
    from matplotlib import colormaps

    from fss_model import list_models

    models = sorted(list_models())
    name = row.split(" (", 1)[0]
    index = models.index(name) if name in models else len(models)
    return colormaps["tab10"](index % 10)


def _hatches(rows: list[str]) -> dict[str, str]:
    """Rows of the same model after the first get a hatch, so that they stay apart in one colour."""
    seen: dict[str, int] = {}
    out = {}
    for row in rows:
        base = row.split(" (", 1)[0]
        out[row] = ["", "//", "..", "xx", "\\\\"][seen.get(base, 0) % 5]
        seen[base] = seen.get(base, 0) + 1
    return out


def group_title(group: Group) -> str:
    source, dataset, protocol = group
    return f"{dataset} ({source} data), protocol: {protocol}"


def plot_table(table: Table, path: Path) -> None:
    """Grouped bars of mIoU per setting (model rows with their 95% interval), one panel per group; each
    bar is labelled with its value, so that a 0 (all-background) shows too."""
    plt = _pyplot()
    groups = _groups(table) or [("-", "-", "-")]
    fig, axes = plt.subplots(1, len(groups), figsize=(8.5 * len(groups), 3.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        rows = _rows(table, group)
        hatches = _hatches(rows)
        width = 0.8 / max(len(rows), 1)
        for i, row in enumerate(rows):
            cells = [
                cell(table.runs[(group, row, s)]) if (group, row, s) in table.runs else None for s in SETTINGS
            ]
            values = [c["miou"] if c else 0.0 for c in cells]
            err = [
                [c["miou"] - c["miou_ci95"][0] if c and "miou_ci95" in c else 0.0 for c in cells],
                [c["miou_ci95"][1] - c["miou"] if c and "miou_ci95" in c else 0.0 for c in cells],
            ]
            style = {"color": row_colour(row), "hatch": hatches[row], "edgecolor": "black", "linewidth": 0.3}
            x = np.arange(len(SETTINGS)) + i * width
            bars = ax.bar(x, values, width, yerr=err, capsize=2, label=row, **style)
            ax.bar_label(bars, labels=[f"{v:.1f}" if c else "" for v, c in zip(values, cells, strict=True)],
                         fontsize=6, padding=1)  # fmt: skip
        ax.set_xticks(np.arange(len(SETTINGS)) + 0.4 - width / 2, [f"{w}w{s}s" for w, s in SETTINGS])
        ax.set_ylabel("mIoU (95% interval)")
        ax.set_title(group_title(group), fontsize=9)
        if rows:
            _legend_outside(ax)
    _save(fig, path)


def plot_per_class(table: Table, path: Path) -> None:
    """Per-class IoU bars, one panel per (group, setting) evaluated, a bar per model row."""
    plt = _pyplot()
    panels = sorted({(g, s) for g, _, s in table.per_class})
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(9, 3.2 * max(len(panels), 1)), squeeze=False)
    for ax, (group, setting) in zip(axes[:, 0], panels, strict=False):
        rows = [r for r in _rows(table, group) if (group, r, setting) in table.per_class]
        classes = sorted({k for r in rows for k in table.per_class[(group, r, setting)]})
        width = 0.8 / max(len(rows), 1)
        hatches = _hatches(rows)
        for i, row in enumerate(rows):
            values = [np.mean(table.per_class[(group, row, setting)].get(k, [0.0])) for k in classes]
            ax.bar(np.arange(len(classes)) + i * width, values, width, label=row, color=row_colour(row),
                   hatch=hatches[row], edgecolor="black", linewidth=0.3)  # fmt: skip
        ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, [f"{n} ({f})" for f, n in classes],
                      rotation=45, ha="right", fontsize=7)  # fmt: skip
        ax.set_ylabel("IoU")
        ax.set_title(f"{group_title(group)}: {setting[0]}-way {setting[1]}-shot", fontsize=9)
        _legend_outside(ax)
    _save(fig, path)


def plot_curves(table: Table, path: Path) -> None:
    """Training loss and validation mIoU against the step, a line per row that has them."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.2), squeeze=False)
    for ax, (name, title) in zip(axes[0], CURVES.items(), strict=True):
        for row, curves in sorted(table.curves.items()):
            if curves.get(name):
                steps, values = zip(*curves[name], strict=True)
                ax.plot(
                    steps, values, label=row, marker="." if len(steps) < 20 else None, color=row_colour(row)
                )
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            _legend_outside(ax)
    _save(fig, path)


def _legend_outside(ax: Any) -> None:
    """The legend right of the panel: with eight methods and the trivial rows, one inside covered bars."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()  # counts the legends: each panel shrinks to make room for its own
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)


# ---------------------------------------------------------------- entry point


def report(evaluations: list[Evaluation], out: Path) -> str:
    """Write table.md, table.png, per_class.png and curves.png into `out`; returns the markdown."""
    table = collect(evaluations)
    text = markdown(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    plot_table(table, out / "table.png")
    plot_per_class(table, out / "per_class.png")
    plot_curves(table, out / "curves.png")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", default=None, help="the workspace's results (default: params paths.results)"
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--experiments", action="store_true",
                        help="also every DVC experiment of HEAD (`dvc exp show --json`)")  # fmt: skip
    parser.add_argument("--all-commits", action="store_true", help="with --experiments: of every commit")
    parser.add_argument(
        "--out", default=None, help="output folder (default: <results>/report or /experiments)"
    )
    parser.add_argument("--print", action="store_true", help="print the markdown tables")
    args = parser.parse_args(argv)
    try:
        if args.results is None:
            from pipeline.config import load_params

            args.results = load_params(args.params).paths.results
        results = Path(args.results)
        evaluations = workspace_evaluations(results)
        if Path(args.params).exists():  # the workspace's runs were made with the workspace's params
            workspace = flatten(yaml.safe_load(Path(args.params).read_text()) or {})
            for ev in evaluations:
                ev.params = {} if ev.standalone else workspace
        if args.experiments:
            evaluations = experiment_evaluations(dvc_exp_show(args.all_commits)) + evaluations
    except (ValueError, RuntimeError, OSError, yaml.YAMLError) as exc:  # ConfigError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else results / (EXPERIMENTS_OUT if args.experiments else WORKSPACE_OUT)
    text = report(evaluations, out)
    if args.print:
        print(text, end="")
    print(
        f"{len(evaluations)} evaluations -> {out}/table.md, table.png, per_class.png, curves.png",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
