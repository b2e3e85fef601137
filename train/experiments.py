"""The comparison grid as DVC experiments: `python -m train.experiments [--models ...] [--settings ...]`.

Each (model, setting) cell is one `dvc exp run --temp -S model=M -S fold=F -S way=W -S shot=S`: it
runs in a temporary copy of the workspace, so params.yaml is never edited, and it is kept as an
experiment with its own metrics (`dvc exp show`). A model trains once: its other settings hit DVC's
run cache for the train stage and only re-evaluate. A cell that an experiment of HEAD already holds
with the same params is skipped (`--rerun` runs it again), so running the grid again after adding a
model runs only the new cells. `--queue` queues the cells instead (`dvc queue start -j N` runs them,
in parallel where the machine has the GPUs). Settings a model does not support (AMP is 1-way only)
are skipped; the table shows them as "n/a". Then `python -m train.report --experiments --print`.
Extra `--set KEY=VALUE` pairs are passed on as `-S KEY=VALUE` (e.g. `--set dataset=coco`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SETTINGS = ("1w1s", "1w5s", "2w1s", "2w5s")
SETTING = re.compile(r"^(\d+)w(\d+)s$")


@dataclass(frozen=True)
class Run:
    model: str
    way: int
    shot: int

    @property
    def setting(self) -> str:
        return f"{self.way}w{self.shot}s"


def parse_setting(text: str) -> tuple[int, int]:
    """ "2w5s" -> (2, 5)."""
    match = SETTING.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"setting {text!r} is not <way>w<shot>s, e.g. 1w5s")
    return int(match.group(1)), int(match.group(2))


def plan(models: Sequence[str], settings: Sequence[str]) -> tuple[list[Run], list[Run]]:
    """(runs, skipped): every (model, setting) in order, model-major; skipped = ways the model lacks."""
    from fss_model import model_entry

    runs, skipped = [], []
    for model in models:
        ways = model_entry(model).ways  # an unknown name raises ValueError listing the known ones
        for setting in settings:
            way, shot = parse_setting(setting)
            (runs if way in ways else skipped).append(Run(model, way, shot))
    return runs, skipped


def overrides(run: Run, fold: int, extra: Sequence[str] = ()) -> list[str]:
    """The cell's `-S` values: model, fold, way, shot (and train.way and / or train.shot where the method's
    release trains one model per way / shot, `Recipe.trains_per`: PANet both, PFENet shot), then the extra
    KEY=VALUE pairs."""
    from fss_model import model_entry

    cell = [f"model={run.model}", f"fold={fold}", f"way={run.way}", f"shot={run.shot}"]
    recipe = model_entry(run.model).recipes.official
    own = {"way": run.way, "shot": run.shot}
    cell += [f"train.{key}={own[key]}" for key in (recipe.trains_per if recipe is not None else ())]
    return [*cell, *extra]


def dvc_command(run: Run, fold: int, extra: Sequence[str] = (), queue: bool = False) -> list[str]:
    """The `dvc exp run` argv of one grid cell."""
    sets = overrides(run, fold, extra)
    return ["dvc", "exp", "run", "--queue" if queue else "--temp", *(arg for s in sets for arg in ("-S", s))]


def cell_params(base: dict[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """The flat params of a cell: params.yaml's, with the `-S` values applied as DVC applies them."""
    from train.report import flatten

    params = flatten(base)
    for item in sets:
        key, value = item.split("=", 1)
        params[key] = yaml.safe_load(value)
    return params


def done_cells(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat params of every experiment of `dvc exp show --json` that has evaluate metrics."""
    from train.report import EVALUATE_DIR, experiment_records, flatten

    done = []
    for _, _, data in experiment_records(shown):
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        results = (params.get("paths") or {}).get("results", "results")
        if "data" in ((data.get("metrics") or {}).get(f"{results}/{EVALUATE_DIR}/metrics.json") or {}):
            done.append(flatten(params))
    return done


def main(argv: list[str] | None = None) -> int:
    from fss_model import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="registry names (default: all)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="e.g. 1w1s 2w5s")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more -S overrides")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--queue", action="store_true", help="queue the cells (dvc queue start runs them)")
    parser.add_argument("--rerun", action="store_true", help="also run cells an experiment already holds")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc commands only")
    args = parser.parse_args(argv)
    for setting in args.settings:
        try:
            parse_setting(setting)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    if any("=" not in s for s in args.set):
        parser.error("--set takes KEY=VALUE pairs")
    try:
        runs, skipped = plan(args.models or list_models(), args.settings)
    except ValueError as exc:
        parser.error(str(exc))
    for run in skipped:
        print(f"skip {run.model} {run.setting}: the model does not support {run.way}-way episodes (n/a)")
    from pipeline.config import ConfigError
    from train.params import load_params

    try:
        load_params(args.params)  # a params.yaml mistake stops here, not once per cell
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = yaml.safe_load(Path(args.params).read_text()) or {}
    done = [] if args.rerun or args.dry_run else _done_or_nothing()
    failed = []
    for run in runs:
        cmd = dvc_command(run, args.fold, args.set, args.queue)
        if cell_params(base, overrides(run, args.fold, args.set)) in done:
            print(
                f"have {run.model} {run.setting} fold {args.fold}: an experiment holds it (--rerun to redo)"
            )
            continue
        print("$ " + " ".join(cmd), flush=True)
        if args.dry_run:
            continue
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        print(
            f"{run.model} {run.setting} fold {args.fold}: exit {rc}, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        if rc != 0:
            failed.append(f"{run.model} {run.setting}")
    if args.dry_run:
        return 0
    if args.queue:
        print("queued; run them with `dvc queue start -j 1` (more jobs where the machine has the GPUs), "
              "then `python -m train.report --experiments --print`")  # fmt: skip
        return 1 if failed else 0
    report = subprocess.run([sys.executable, "-m", "train.report", "--experiments", "--print"]).returncode
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or report else 0


def _done_or_nothing() -> list[dict[str, Any]]:
    """The cells experiments hold already; none when `dvc exp show` cannot say (nothing is skipped)."""
    from train.report import dvc_exp_show

    try:
        return done_cells(dvc_exp_show())
    except (RuntimeError, json.JSONDecodeError) as exc:
        print(f"warning: {exc}; running every cell", file=sys.stderr)
        return []


if __name__ == "__main__":
    sys.exit(main())
