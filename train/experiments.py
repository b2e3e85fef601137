"""The comparison grid through DVC: `python -m train.experiments [--models ...] [--settings ...] [--fold F]`.

For each model and setting, in order, one `dvc exp run -S model=M -S fold=F -S way=W -S shot=S` in the
workspace (sequential: each run's metrics file lands at its own path under results/, and a model's
training is reused across its settings because the train stage does not depend on way/shot; DVC's run
cache restores a model trained by an earlier invocation). Settings a model does not support (AMP is
1-way only) are skipped; the table shows them as "n/a". Then `python -m train.report --print`.
`dvc exp show` lists the experiments. Extra `--set KEY=VALUE` pairs are passed on as `-S KEY=VALUE`
(e.g. `--set dataset=coco`); like any `dvc exp run -S`, they stay in params.yaml afterwards.

The next `dvc exp run` removes the previous experiment's outputs from the workspace (metrics files
included: they are git-ignored and `cache: false`, so no experiment commit keeps them), so after each
run its metrics file is copied to `<results>/grid/` under the same relative path, where the report
finds it with the others.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SETTINGS = ("1w1s", "1w5s", "2w1s", "2w5s")
SETTING = re.compile(r"^(\d+)w(\d+)s$")
KEEP = "grid"  # <results>/grid/: copies of every cell's metrics file


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


def dvc_command(run: Run, fold: int, extra: Sequence[str] = ()) -> list[str]:
    """The `dvc exp run` argv of one grid cell."""
    sets = [f"model={run.model}", f"fold={fold}", f"way={run.way}", f"shot={run.shot}", *extra]
    return ["dvc", "exp", "run", *(arg for s in sets for arg in ("-S", s))]


def metrics_path(run: Run, fold: int, extra: Sequence[str] = (), params: str = "params.yaml") -> Path:
    """The evaluate stage's metrics file of a grid cell (dvc.yaml's path, with the cell's overrides)."""
    import yaml

    from pipeline.config import load_params

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in extra)}
    overrides.update(model=run.model, fold=fold, way=run.way, shot=run.shot)
    p = load_params(params, overrides)
    return Path(p.paths.results, p.source, p.dataset, p.protocol, run.model,
                f"fold{fold}_{run.way}way_{run.shot}shot.json")  # fmt: skip


def keep(metrics: Path, results: Path) -> Path:
    """Copy a cell's metrics file to <results>/grid/<same relative path>; returns the copy."""
    copy = results / KEEP / metrics.relative_to(results)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(metrics, copy)
    return copy


def main(argv: list[str] | None = None) -> int:
    from fss_model import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="registry names (default: all)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="e.g. 1w1s 2w5s")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more -S overrides")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc commands only")
    args = parser.parse_args(argv)
    for setting in args.settings:
        try:
            parse_setting(setting)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    try:
        runs, skipped = plan(args.models or list_models(), args.settings)
    except ValueError as exc:
        parser.error(str(exc))
    for run in skipped:
        print(f"skip {run.model} {run.setting}: the model does not support {run.way}-way episodes (n/a)")
    failed = []
    for run in runs:
        cmd = dvc_command(run, args.fold, args.set)
        print("$ " + " ".join(cmd), flush=True)
        if args.dry_run:
            continue
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        print(
            f"{run.model} {run.setting} fold {args.fold}: exit {rc}, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        metrics = metrics_path(run, args.fold, args.set)
        if rc == 0 and metrics.exists():
            # <results>/<source>/<dataset>/<protocol>/<model>/<file>
            print(f"kept {keep(metrics, metrics.parents[4])}", flush=True)
        else:
            failed.append(f"{run.model} {run.setting}")
    if args.dry_run:
        return 0
    report = subprocess.run([sys.executable, "-m", "train.report", "--print"]).returncode
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or report else 0


if __name__ == "__main__":
    sys.exit(main())
