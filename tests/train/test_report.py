"""The results table: rows = models and the trivial floor, columns = the four settings, fold means."""

from train_helpers import tiny_params

from pipeline.io import write_json
from train import evaluate as ev
from train import report


def _fold(fold: int, way: int, shot: int, model_miou: float) -> dict:
    def score(miou: float, fb: float) -> dict:
        return {"miou": miou, "fb_iou": fb, "per_class": {"1": miou}}

    return {"fold": fold, "way": way, "shot": shot, "episodes": 10, "manifest": "m.json",
            "manifest_sha256": f"{fold}{way}{shot}" + "a" * 61, "checkpoint": "c.pt", "checkpoint_step": 5,
            "model_name": "denet",
            "scores": {"model": score(model_miou, 60.0), "all_foreground": score(8.0, 20.0),
                       "all_background": score(0.0, 40.0), "support_mask": score(5.0, 45.0)}}  # fmt: skip


def test_table_rows_columns_and_fold_means(tmp_path, capsys):
    p = tiny_params()
    base = tmp_path / "results" / "toy" / "pascal" / "denet" / "denet"
    write_json(base / "fold0_1way_1shot.json", ev.summarize(p, [_fold(0, 1, 1, 50.0)]))
    write_json(base / "fold1_1way_1shot.json", ev.summarize(p, [_fold(1, 1, 1, 40.0)]))
    write_json(base / "fold0_2way_5shot.json", ev.summarize(p, [_fold(0, 2, 5, 30.0)]))
    write_json(base / "dvclive" / "metrics.json", {"train": {"loss": 1.0}})  # not an evaluate file
    assert report.main(["--results", str(tmp_path / "results"), "--print"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0] == "| predictor | 1w1s | 1w5s | 2w1s | 2w5s |"
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert list(rows) == [
        "denet",
        "trivial: all_background",
        "trivial: all_foreground",
        "trivial: support_mask",
    ]
    assert "| 45.00 / 60.00 (2 folds) | - | - | 30.00 / 60.00 (1 fold) |" in rows["denet"]
    assert "8.00 / 20.00 (2 folds)" in rows["trivial: all_foreground"]
    assert "protocol denet" in out and "011aaaaaaaaa" in out
    assert (tmp_path / "results" / "table.md").read_text() == out
    assert (tmp_path / "results" / "table.png").stat().st_size > 1000


def test_empty_results_say_so(tmp_path, capsys):
    assert report.main(["--results", str(tmp_path), "--print"]) == 0
    assert "No evaluate metrics files" in capsys.readouterr().out


def test_unsupported_way_is_na_and_missing_setting_is_dash(tmp_path, capsys, monkeypatch):
    from fss_model.registry import MODELS, Entry

    # a 1-way-only model (every registered model supports both ways today)
    monkeypatch.setitem(MODELS._entries, "oneway", Entry("oneway", lambda **kw: None, ways=(1,)))
    p = tiny_params()
    base = tmp_path / "toy" / "pascal" / "denet"
    for model in ("oneway", "denet"):
        summary = ev.summarize(p, [_fold(0, 1, 1, 20.0)])
        write_json(base / model / "fold0_1way_1shot.json", {**summary, "model": model})
    assert report.main(["--results", str(tmp_path), "--print"]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()}
    assert rows["oneway"] == "| oneway | 20.00 / 60.00 (1 fold) | - | n/a | n/a |"
    assert rows["denet"] == "| denet | 20.00 / 60.00 (1 fold) | - | - | - |"  # not run: "-"
    assert rows["trivial: all_foreground"].endswith("| - | - | - |")
