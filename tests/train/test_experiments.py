"""The grid: one `dvc exp run --temp -S ...` per (model, setting), cells experiments hold are skipped,
params.yaml is never edited, then the report over the experiments."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from fss_model.recipe import Recipe
from fss_model.registry import MODELS, Entry
from train import experiments

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
FAKE_DVC = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DVC_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:2] == ["exp", "show"]:
    print(os.environ.get("FAKE_DVC_SHOW", "[]"))
    sys.exit(0)
sys.exit(int(os.environ.get("FAKE_DVC_RC", "0")))
"""


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """A `dvc` first on PATH that records its argv; cwd = a project holding the repo's params.yaml."""
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
    (project / "params.yaml").write_text(REPO_PARAMS.read_text())
    monkeypatch.chdir(project)
    # the report runs as `python -m train.report` from the project: let it import this checkout
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    return log


def _calls(log: Path, kind: str = "run") -> list[list[str]]:
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [c for c in calls if c[1] == kind]


def test_grid_runs_one_temp_experiment_per_model_and_setting(fake_dvc, capsys):
    before = Path("params.yaml").read_text()
    rc = experiments.main(["--models", "denet", "canet", "--settings", "1w1s", "2w5s", "--fold", "2"])
    assert rc == 0
    temp = ["exp", "run", "--temp"]
    assert _calls(fake_dvc) == [
        [*temp, "-S", "model=denet", "-S", "fold=2", "-S", "way=1", "-S", "shot=1"],
        [*temp, "-S", "model=denet", "-S", "fold=2", "-S", "way=2", "-S", "shot=5"],
        [*temp, "-S", "model=canet", "-S", "fold=2", "-S", "way=1", "-S", "shot=1"],
        [*temp, "-S", "model=canet", "-S", "fold=2", "-S", "way=2", "-S", "shot=5"],
    ]
    assert Path("params.yaml").read_text() == before  # --temp: the workspace is left alone
    # dvc exp show: once to find the cells already held, once more for the report
    assert len(_calls(fake_dvc, "show")) == 2
    assert Path("results/experiments/table.md").exists()


def test_panet_trains_one_model_per_setting_as_released(fake_dvc):
    """PANet's release trains each setting's model (its test reads way and shot from the snapshot's
    name, config.py:89-90): its cells set train.way / train.shot; DENet's reuse the 1-way 1-shot model."""
    assert experiments.main(["--models", "panet", "denet", "--settings", "2w5s"]) == 0
    temp = ["exp", "run", "--temp", "-S"]
    assert _calls(fake_dvc) == [
        [*temp, "model=panet", "-S", "fold=0", "-S", "way=2", "-S", "shot=5", "-S", "train.way=2", "-S",
         "train.shot=5"],
        [*temp, "model=denet", "-S", "fold=0", "-S", "way=2", "-S", "shot=5"],
    ]  # fmt: skip


def test_pfenet_trains_one_model_per_shot_as_released(fake_dvc):
    """PFENet's release trains one model per shot (its configs' `shot`), 1-way: a 2-way 5-shot cell trains
    train.shot=5 and leaves train.way at the 1-way default."""
    assert experiments.main(["--models", "pfenet", "--settings", "2w5s"]) == 0
    assert _calls(fake_dvc) == [
        ["exp", "run", "--temp", "-S", "model=pfenet", "-S", "fold=0", "-S", "way=2", "-S", "shot=5", "-S",
         "train.shot=5"],
    ]  # fmt: skip


def test_a_recipe_trains_per_way_or_shot_only():
    with pytest.raises(ValueError, match=r"trains_per takes 'way' and 'shot', got \['fold'\]"):
        Recipe(lr=0.1, steps=1, trains_per=("fold",))


def test_cells_an_experiment_holds_are_skipped_unless_rerun(fake_dvc, monkeypatch, capsys):
    params = yaml.safe_load(REPO_PARAMS.read_text())
    held = {**params, "model": "denet", "fold": 0, "way": 1, "shot": 5}
    data = {"rev": "a" * 40, "params": {"params.yaml": {"data": held}},
            "metrics": {"results/evaluate/metrics.json": {"data": {"miou": 1.0}}}}  # fmt: skip
    exp = {"name": "e", "revs": [{"rev": "a" * 40, "name": "e", "data": data}]}
    show = [{"rev": "b" * 40, "name": "main", "data": None, "experiments": [exp]}]
    monkeypatch.setenv("FAKE_DVC_SHOW", json.dumps(show))
    assert experiments.main(["--models", "denet", "--settings", "1w1s", "1w5s"]) == 0
    assert [c[-1] for c in _calls(fake_dvc)] == ["shot=1"]
    assert "have denet 1w5s fold 0" in capsys.readouterr().out
    assert experiments.main(["--models", "denet", "--settings", "1w1s", "1w5s", "--rerun"]) == 0
    assert [c[-1] for c in _calls(fake_dvc)] == ["shot=1", "shot=1", "shot=5"]


def test_extra_sets_are_passed_on_and_unsupported_ways_skipped(fake_dvc, capsys, monkeypatch):
    monkeypatch.setitem(MODELS._entries, "oneway", Entry("oneway", lambda **kw: None, ways=(1,)))
    rc = experiments.main(["--models", "oneway", "--settings", "2w1s", "1w5s", "--set", "dataset=coco"])
    assert rc == 0
    assert _calls(fake_dvc) == [
        ["exp", "run", "--temp", "-S", "model=oneway", "-S", "fold=0", "-S", "way=1", "-S", "shot=5",
         "-S", "dataset=coco"],
    ]  # fmt: skip
    assert "skip oneway 2w1s" in capsys.readouterr().out


def test_queue_queues_the_cells_and_says_how_to_start_them(fake_dvc, capsys):
    assert experiments.main(["--models", "denet", "--settings", "1w1s", "--queue"]) == 0
    assert _calls(fake_dvc) == [["exp", "run", "--queue", "-S", "model=denet", "-S", "fold=0", "-S", "way=1",
                                 "-S", "shot=1"]]  # fmt: skip
    assert "dvc queue start" in capsys.readouterr().out


def test_default_is_every_model_times_four_settings_and_dry_run_runs_nothing(fake_dvc, capsys):
    assert experiments.main(["--dry-run"]) == 0
    assert not fake_dvc.exists()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ dvc exp run")]
    from fss_model import list_models

    assert len(lines) == 4 * len(list_models())
    assert lines[0] == "$ dvc exp run --temp -S model=amp -S fold=0 -S way=1 -S shot=1"


def test_a_failed_run_is_reported_and_the_grid_goes_on(fake_dvc, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DVC_RC", "1")
    assert experiments.main(["--models", "denet", "--settings", "1w1s", "1w5s"]) == 1
    assert len(_calls(fake_dvc)) == 2
    assert "failed: denet 1w1s, denet 1w5s" in capsys.readouterr().err


def test_bad_setting_model_or_params_stops_before_any_run(fake_dvc, capsys):
    with pytest.raises(SystemExit):
        experiments.main(["--settings", "1x1"])
    with pytest.raises(SystemExit):
        experiments.main(["--models", "nonet"])
    capsys.readouterr()
    Path("params.yaml").write_text(REPO_PARAMS.read_text() + "fodl: 2\n")
    assert experiments.main(["--models", "denet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'fodl'" in err
    assert not fake_dvc.exists()
