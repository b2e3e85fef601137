"""The results tables: rows = models and the trivial floor, columns = the four settings; cells averaged
over folds and test seeds with a bootstrap interval; per-class tables; from the workspace and from
DVC experiments (`dvc exp show --json`, each one's files read at its commit)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import tiny_params, write_params

from pipeline.io import write_json
from train import evaluate as ev
from train import report
from train.stats import EpisodeSums


def _run(fold: int, way: int, shot: int, miou: float, seed: int = 0, episodes: int = 10) -> dict:
    """An evaluate_fold result whose model scores IoU `miou` on class 5*fold+1 in every episode."""
    c = 5 * fold + 1
    sums = EpisodeSums.from_records(episodes, [(e, c, int(miou), 100, 60, 100) for e in range(episodes)])

    def score(m: float, fb: float) -> dict:
        return {"miou": m, "fb_iou": fb, "per_class": {str(c): m}}

    return {"fold": fold, "way": way, "shot": shot, "seed": seed, "episodes": episodes, "manifest": "m.json",
            "manifest_sha256": f"{fold}{way}{shot}{seed}" + "a" * 60, "checkpoint": "c.pt",
            "checkpoint_step": 5, "model_name": "denet", "episode_sums": sums,
            "scores": {"model": score(miou, 60.0), "all_foreground": score(8.0, 20.0),
                       "all_background": score(0.0, 40.0), "support_mask": score(5.0, 45.0)}}  # fmt: skip


def _rows(out: str) -> dict[str, str]:
    lines = [line for line in out.split("\n\n")[2].splitlines() if line.startswith("|")]
    return {line.split(" | ")[0].strip("| "): line for line in lines[2:]}


def test_workspace_table_fold_means_seeds_and_intervals(tmp_path, capsys):
    p = tiny_params()
    results = tmp_path / "results"
    runs = [
        _run(0, 1, 1, 50.0),
        _run(1, 1, 1, 40.0),
        _run(0, 1, 1, 54.0, seed=1),
        _run(1, 1, 1, 46.0, seed=1),
    ]
    ev.write_outputs(results / "evaluate", ev.summarize(p, runs))  # the DVC stage's files
    write_json(results / "standalone" / "x" / "details.json", ev.summarize(p, [_run(0, 2, 5, 30.0)]))
    write_json(results / "train" / "metrics.json", {"train": {"loss": 1.0}})  # not an evaluation
    assert report.main(["--results", str(results), "--print"]) == 0
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if line.startswith("| predictor")]
    assert header == ["| predictor | 1w1s | 1w5s | 2w1s | 2w5s |"]
    rows = _rows(out)
    assert list(rows) == [
        "denet",
        "denet (standalone)",
        "trivial: all_background",
        "trivial: all_foreground",
        "trivial: support_mask",
    ]
    # mean over folds of the mean over seeds: (52 + 43) / 2; std over seeds of the fold means 45 and 50;
    # every episode scores the same, so the interval is the point
    assert "| 47.50 ± 3.54 [47.50, 47.50] / 60.00 | - | - | - |" in rows["denet"]
    assert rows["denet (standalone)"].endswith("| - | - | - | 30.00 ± n/a [30.00, 30.00] / 60.00 |")
    assert "| 8.00 ± n/a / 20.00 |" in rows["trivial: all_foreground"]
    assert "folds 0, 1; test seeds 0, 1" in out and "0110aaaaaaaa" in out
    # per-class IoU under class names: fold 0 holds out aeroplane (1), fold 1 bus (6)
    assert "| 0 | aeroplane | 52.00 |" in out and "| 1 | bus | 43.00 |" in out
    assert (results / "report" / "table.md").read_text() == out
    for name in ("table.png", "per_class.png", "curves.png"):
        assert (results / "report" / name).stat().st_size > 1000


def test_empty_results_say_so(tmp_path, capsys):
    assert report.main(["--results", str(tmp_path), "--print"]) == 0
    assert "No evaluation details found" in capsys.readouterr().out


def test_unsupported_way_is_na_and_missing_setting_is_dash(tmp_path, capsys, monkeypatch):
    from fss_model.registry import MODELS, Entry

    # a 1-way-only model (every registered model supports both ways today)
    monkeypatch.setitem(MODELS._entries, "oneway", Entry("oneway", lambda **kw: None, ways=(1,)))
    p = tiny_params()
    for model in ("oneway", "denet"):
        details = ev.summarize(p, [{**_run(0, 1, 1, 20.0), "model_name": model}])
        write_json(tmp_path / model / "details.json", details)
    assert report.main(["--results", str(tmp_path), "--print"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["oneway (standalone)"].endswith("| - | n/a | n/a |")
    assert rows["denet (standalone)"].endswith("| - | - | - |")  # not run: "-"


def test_a_params_mistake_is_one_line(tmp_path, capsys):
    params = write_params(tmp_path, **{"train.stepz": 3})
    assert report.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'train.stepz'" in err


FAKE_DVC = """#!{python}
import sys
assert sys.argv[1:4] == ["exp", "show", "--json"], sys.argv
print(open({shown!r}).read())
"""


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _commit(repo: Path, details: dict, steps: int, loss: list[float]) -> str:
    ev.write_outputs(repo / "results" / "evaluate", details)
    live = repo / "results" / "train" / "plots" / "metrics"
    (live / "train").mkdir(parents=True, exist_ok=True)
    (live / "train" / "loss.tsv").write_text(
        "step\tloss\n" + "".join(f"{i + 1}\t{v}\n" for i, v in enumerate(loss))
    )
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"steps {steps}")
    return _git(repo, "rev-parse", "HEAD")


def _exp(name: str, rev: str, params: dict, metrics: dict) -> dict:
    data = {"rev": rev, "timestamp": "2026-01-01T00:00:00", "params": {"params.yaml": {"data": params}},
            "metrics": {"results/evaluate/metrics.json": {"data": metrics}}}  # fmt: skip
    return {"name": name, "executor": None, "revs": [{"rev": rev, "name": name, "data": data, "error": None}]}


def test_experiments_table_from_dvc_exp_show_and_their_commits(tmp_path, monkeypatch, capsys):
    """Each experiment's details come from its own commit; rows name the params that differ."""
    import yaml

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
    p = tiny_params()
    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    shown = [
        {"rev": "workspace", "name": None, "data": {"rev": "workspace"}, "error": None, "experiments": None}
    ]
    exps = []
    for steps, way, miou in ((20, 1, 30.0), (20, 2, 20.0), (600, 1, 50.0)):
        details = ev.summarize(p, [_run(0, way, 1, miou)])
        rev = _commit(repo, details, steps, [1.0, 0.5 if steps == 20 else 0.2])
        params = {**base, "way": way, "train": {**base["train"], "steps": steps}}
        exps.append(_exp(f"exp-{steps}-{way}", rev, params, ev.short_metrics(details)))
    exps.append(_exp("not-evaluated", rev, base, {}) | {"revs": [{"rev": rev, "name": "x", "data": {}}]})
    shown.append({"rev": "f" * 40, "name": "main", "data": None, "error": None, "experiments": exps})
    (tmp_path / "shown.json").write_text(json.dumps(shown))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dvc = bin_dir / "dvc"
    dvc.write_text(FAKE_DVC.format(python=sys.executable, shown=str(tmp_path / "shown.json")))
    dvc.chmod(dvc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(repo)
    (repo / "results" / "evaluate" / "details.json").unlink()  # the workspace holds no evaluation now
    assert report.main(["--results", "results", "--params", "nothing.yaml", "--experiments", "--print"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["denet (train.steps=20)"] == (
        "| denet (train.steps=20) | 30.00 ± n/a [30.00, 30.00] / 60.00 | - | "
        "20.00 ± n/a [20.00, 20.00] / 60.00 | - |"
    )
    assert rows["denet (train.steps=600)"].startswith("| denet (train.steps=600) | 50.00 ± n/a")
    out = repo / "results" / "experiments"
    assert {f.name for f in out.iterdir()} == {"table.md", "table.png", "per_class.png", "curves.png"}
    table = report.collect(report.experiment_evaluations(shown))
    assert table.curves["denet (train.steps=600)"]["train/loss"] == [(1.0, 1.0), (2.0, 0.2)]


def test_experiments_without_dvc_is_one_line(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dvc = bin_dir / "dvc"
    fail = "import sys\nprint('ERROR: not a dvc repository', file=sys.stderr)\nsys.exit(1)\n"
    dvc.write_text(f"#!{sys.executable}\n{fail}")
    dvc.chmod(dvc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert report.main(["--results", str(tmp_path), "--experiments"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a dvc repository" in err


@pytest.mark.parametrize("shown", [[], [{"rev": "workspace", "data": {}, "experiments": None}]])
def test_no_experiments_is_an_empty_list(shown):
    assert report.experiment_evaluations(shown) == []


def test_a_novel_class_without_a_test_episode_is_marked_and_counted(tmp_path, capsys):
    """The manifest's left-out class reaches details.json, metrics.json and the report, with its reason."""
    p = tiny_params()
    run = _run(0, 1, 1, 50.0) | {"left_out": {"3": "no test pair (the folds stage says why)"}}
    details = ev.summarize(p, [run])
    assert details["missing_classes"] == [
        {"fold": 0, "class_id": 3, "class": "bird", "reason": "no test pair (the folds stage says why)"}
    ]
    metrics = ev.short_metrics(details)
    assert list(metrics)[:4] == ["miou", "miou_ci95_low", "miou_ci95_high", "fb_iou"]  # dvc exp show's order
    assert (metrics["classes_scored"], metrics["classes_missing"]) == (1, 1)
    assert "not in the mean: fold 0 bird (class 3): no test pair" in ev.format_table(details)
    results = tmp_path / "results"
    ev.write_outputs(results / "evaluate", details)
    written = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert list(written)[:4] == ["miou", "miou_ci95_low", "miou_ci95_high", "fb_iou"]  # the file's order
    assert report.main(["--results", str(results), "--print"]) == 0
    out = capsys.readouterr().out
    assert "**Not in the mean** (1w1s, fold 0): bird: no test pair (the folds stage says why)" in out
    assert "| 0 | bird | no test episode |" in out


def test_one_colour_per_predictor_whatever_the_rows():
    assert report.row_colour("denet") == report.row_colour("denet (train.steps=20)")
    assert report.row_colour("denet") != report.row_colour("panet")
    colours = {report.row_colour(report.TRIVIAL_PREFIX + n) for n in report.TRIVIAL_COLOURS}
    assert len(colours) == 3 and report.row_colour("panet") not in colours
    assert report.group_title(("toy", "pascal", "denet")) == "pascal (toy data), protocol: denet"


def test_a_method_trained_per_setting_keeps_one_row_and_other_models_do_not_name_its_params():
    """PANet trains one model per setting (train.way / train.shot = the cell's) and PFENet per shot: each
    keeps one row over its cells. A row names only what differs between runs of its own model: DENet's
    rows do not read "train.shot=1" because PANet's vary, and a PANet model trained 1-shot but tested at
    5-shot is a row of its own."""
    p = tiny_params()

    def evaluation(model: str, way: int, shot: int, train: dict, miou: float) -> report.Evaluation:
        details = ev.summarize(p, [_run(0, way, shot, miou)])
        details["model"] = model
        params = {"model": model, "way": way, "shot": shot, "train.way": 1, "train.shot": 1, "train.lr": 0.01}
        return report.Evaluation(details, f"{model}-{way}w{shot}s", {**params, **train})

    evaluations = [
        evaluation("denet", 1, 1, {}, 50.0),
        evaluation("denet", 2, 5, {}, 30.0),
        evaluation("panet", 1, 1, {}, 60.0),
        evaluation("panet", 2, 5, {"train.way": 2, "train.shot": 5}, 40.0),
        evaluation("pfenet", 2, 5, {"train.shot": 5}, 45.0),
        evaluation("pfenet", 1, 1, {}, 55.0),
    ]
    rows = {row for _, row, _ in report.collect(evaluations).runs if not row.startswith("trivial")}
    assert rows == {"denet", "panet", "pfenet"}
    evaluations.append(evaluation("panet", 1, 5, {}, 58.0))  # trained 1-shot, tested 5-shot
    rows = {row for _, row, _ in report.collect(evaluations).runs if not row.startswith("trivial")}
    assert rows == {"denet", "panet (train.shot=per setting)", "panet (train.shot=1)", "pfenet"}


def test_legends_cover_no_bar_and_stay_in_the_figure(tmp_path, monkeypatch):
    """Eight methods and the trivial rows in one panel: the legend sits beside the bars, not over them."""
    p = tiny_params()
    models = ["amp", "canet", "denet", "hsnet", "panet", "pfenet", "pgnet", "sgone"]
    evaluations = []
    for i, model in enumerate(models):
        for way, shot in report.SETTINGS:
            details = ev.summarize(p, [_run(0, way, shot, 60.0 + i)])  # every bar as high as the legend
            details["model"] = model
            params = {"model": model, "way": way, "shot": shot}
            evaluations.append(report.Evaluation(details, f"{model}-{way}w{shot}s", params))
    table = report.collect(evaluations)
    figures = []
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figures.append(fig), real_save(fig, path)))
    report.plot_table(table, tmp_path / "table.png")
    report.plot_per_class(table, tmp_path / "per_class.png")
    assert len(figures) == 2
    for fig in figures:
        fig.canvas.draw()
        whole = fig.bbox
        for ax in fig.axes:
            legend = ax.get_legend().get_window_extent()
            assert len(ax.get_legend().get_texts()) >= len(models)
            bars = [patch.get_window_extent() for patch in ax.patches if patch.get_height() > 0]
            assert bars and not any(legend.overlaps(bar) for bar in bars)
            assert whole.x0 <= legend.x0 and legend.x1 <= whole.x1 and legend.y0 >= whole.y0
