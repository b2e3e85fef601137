"""The grid script: one `dvc exp run -S ...` per (model, setting), in order, then the report."""

import os
import stat
import sys
from pathlib import Path

import pytest

from fss_model.registry import MODELS, Entry
from train import experiments

FAKE_DVC = """#!{python}
import json, os, shutil, sys
from pathlib import Path
with open(os.environ["FAKE_DVC_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
rc = int(os.environ.get("FAKE_DVC_RC", "0"))
if rc == 0:  # like dvc exp run: the previous experiment's outputs go, this one's metrics file appears
    s = dict(a.split("=", 1) for a in sys.argv[4::2])
    shutil.rmtree("results/toy", ignore_errors=True)
    out = Path("results/toy", s.get("dataset", "pascal"), "denet", s["model"])
    out.mkdir(parents=True)
    (out / f"fold{{s['fold']}}_{{s['way']}}way_{{s['shot']}}shot.json").write_text(json.dumps(s))
sys.exit(rc)
"""


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """A `dvc` first on PATH that records its argv; cwd = an empty project (no results yet)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dvc = bin_dir / "dvc"
    dvc.write_text(FAKE_DVC.format(python=sys.executable))
    dvc.chmod(dvc.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "dvc.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DVC_LOG", str(log))
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    monkeypatch.chdir(project)
    # the report runs as `python -m train.report` from the project: let it import this checkout
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    return log


def _calls(log: Path) -> list[list[str]]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_grid_runs_dvc_exp_run_per_model_and_setting_then_the_report(fake_dvc, capsys):
    rc = experiments.main(["--models", "denet", "canet", "--settings", "1w1s", "2w5s", "--fold", "2"])
    assert rc == 0
    assert _calls(fake_dvc) == [
        ["exp", "run", "-S", "model=denet", "-S", "fold=2", "-S", "way=1", "-S", "shot=1"],
        ["exp", "run", "-S", "model=denet", "-S", "fold=2", "-S", "way=2", "-S", "shot=5"],
        ["exp", "run", "-S", "model=canet", "-S", "fold=2", "-S", "way=1", "-S", "shot=1"],
        ["exp", "run", "-S", "model=canet", "-S", "fold=2", "-S", "way=2", "-S", "shot=5"],
    ]
    # every cell's metrics file survives the next run as a copy under results/grid/
    kept = sorted(str(p.relative_to("results/grid")) for p in Path("results/grid").rglob("*.json"))
    assert kept == [
        "toy/pascal/denet/canet/fold2_1way_1shot.json",
        "toy/pascal/denet/canet/fold2_2way_5shot.json",
        "toy/pascal/denet/denet/fold2_1way_1shot.json",
        "toy/pascal/denet/denet/fold2_2way_5shot.json",
    ]
    assert list(Path("results/toy").rglob("*.json")) == [
        Path("results/toy/pascal/denet/canet/fold2_2way_5shot.json")
    ]
    # the report ran over results/ and wrote its table (the fake files are not evaluate summaries)
    assert Path("results/table.md").exists()


def test_extra_sets_are_passed_on_and_unsupported_ways_skipped(fake_dvc, capsys, monkeypatch):
    monkeypatch.setitem(MODELS._entries, "oneway", Entry("oneway", lambda **kw: None, ways=(1,)))
    rc = experiments.main(["--models", "oneway", "--settings", "2w1s", "1w5s", "--set", "dataset=coco"])
    assert rc == 0
    assert _calls(fake_dvc) == [
        ["exp", "run", "-S", "model=oneway", "-S", "fold=0", "-S", "way=1", "-S", "shot=5",
         "-S", "dataset=coco"],
    ]  # fmt: skip
    assert Path("results/grid/toy/coco/denet/oneway/fold0_1way_5shot.json").exists()
    assert "skip oneway 2w1s" in capsys.readouterr().out


def test_default_is_every_model_times_four_settings_and_dry_run_runs_nothing(fake_dvc, capsys):
    assert experiments.main(["--dry-run"]) == 0
    assert not fake_dvc.exists()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ dvc exp run")]
    from fss_model import list_models

    assert len(lines) == 4 * len(list_models())
    assert lines[0] == "$ dvc exp run -S model=amp -S fold=0 -S way=1 -S shot=1"


def test_a_failed_run_is_reported_and_the_grid_goes_on(fake_dvc, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DVC_RC", "1")
    assert experiments.main(["--models", "denet", "--settings", "1w1s", "1w5s"]) == 1
    assert len(_calls(fake_dvc)) == 2
    assert "failed: denet 1w1s, denet 1w5s" in capsys.readouterr().err


def test_bad_setting_or_model_stops_before_any_run(fake_dvc):
    with pytest.raises(SystemExit):
        experiments.main(["--settings", "1x1"])
    with pytest.raises(SystemExit):
        experiments.main(["--models", "nonet"])
    assert not fake_dvc.exists()
