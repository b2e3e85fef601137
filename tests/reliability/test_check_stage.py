"""The `check` stage: every params mistake stops it with one line, before any other stage runs."""

from pathlib import Path

import pytest
import yaml
from train_helpers import write_params

from train import params as check

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fold": 9}, "fold = 9 is out of range: use 0, 1, 2 or 3"),
        ({"foo": 1}, "unknown key 'foo'"),
        ({"train.stepz": 3}, "unknown key 'train.stepz'"),
        ({"model": "denett"}, "model: unknown model 'denett'; known: amp, canet, denet"),
        (
            {"model_kwargs": {"deep": 3}},
            "model denet cannot be built from these params: model 'denet' has no argument 'deep'",
        ),
        ({"model_kwargs": {"depth": -3}}, "argument depth=-3 must be >= 0"),
        ({"sampler.image_size": 100000}, "sampler.image_size = 100000 must be <= 2048"),
        ({"train.lr": float("nan")}, "train.lr = nan must be <= 10 (and a number)"),
        ({"data.workers": 100000}, "data.workers = 100000 must be <= 1024"),
        ({"sampler.pool_size": 10**11}, "sampler.pool_size = 100000000000 must be <= 100000"),
        ({"sampler.min_bytes_per_s": -1}, "sampler.min_bytes_per_s = -1.0 must be >= 0"),
        ({"backbone.name": "resnet5"}, "unknown backbone 'resnet5'"),
        ({"evaluate.seeds": [0, 0]}, "evaluate.seeds = [0, 0] must list distinct test-draw seeds"),
    ],
)
def test_a_mistake_is_one_line_and_no_marker(tmp_path, capsys, changes, message):
    marker = tmp_path / "params.checked"
    params = str(write_params(tmp_path, **changes))
    assert check.main(["--params", params, "--out", str(marker), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not marker.exists()


def test_valid_params_write_the_same_marker_whatever_they_say(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert check.main(["--params", str(REPO / "params.yaml"), "--out", str(first)]) == 0
    assert (
        check.main(
            ["--params", str(write_params(tmp_path, fold=2, way=2, model="panet")), "--out", str(second)]
        )
        == 0
    )
    assert first.read_text() == second.read_text() == check.MARKER


def test_every_stage_depends_on_the_check_through_raw():
    """dvc.yaml: `raw` depends on the marker, and every other stage (but check) depends on raw's output
    through its chain, so DVC runs the check before any stage that removes outputs."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    marker = stages["check"]["outs"][0]
    marker = next(iter(marker)) if isinstance(marker, dict) else marker
    assert marker in stages["raw"]["deps"]
    produced = {name: {next(iter(o)) if isinstance(o, dict) else o for o in st.get("outs", [])}
                for name, st in stages.items()}  # fmt: skip
    direct = {name: {other for other, outs in produced.items() if outs & set(st.get("deps", []))}
              for name, st in stages.items()}  # fmt: skip
    upstream = {"check": set(), "raw": {"check"}}
    while len(upstream) < len(stages):  # dependency order (the file lists `evaluate` before `train`)
        ready = [n for n in stages if n not in upstream and direct[n] <= upstream.keys()]
        assert ready, f"a dependency cycle or an orphan among {sorted(set(stages) - upstream.keys())}"
        for name in ready:
            upstream[name] = direct[name] | {u for d in direct[name] for u in upstream[d]}
    for name in stages:
        assert "check" in upstream[name] or name == "check", name


def test_every_numeric_param_has_a_range():
    """A rule, not a list: a numeric key added to Params without a range in config._RANGES fails here."""
    from pipeline import config

    assert sorted(config.numeric_keys()) == sorted(config._RANGES)
