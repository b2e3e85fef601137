"""Bad params: unknown keys, wrong types, impossible combinations stop with one line saying what to change."""

import shutil

import pytest
from train_helpers import REPO_PARAMS, write_params

from pipeline.config import ConfigError
from train import train as tr
from train.params import load_params
from train.stream import episodes
from train.stream.index import read_fold, read_pairs
from train.stream.sampler import EpisodeStream


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lrr": 0.1}, r"unknown key 'train\.lrr' \(known: .*lr,"),
        ({"sampler.workers": "two"}, r"sampler\.workers = 'two' has the wrong type \(expected int\)"),
        ({"train.amp": "yes"}, r"train\.amp = 'yes' has the wrong type"),
        ({"fold": 4}, r"fold = 4 is out of range: use 0, 1, 2 or 3"),
        ({"fold": -1}, r"fold = -1 is out of range"),
        ({"train.way": 3}, r"train\.way = 3 is not supported: use 1 or 2"),
        ({"train.shot": 0}, r"train\.shot = 0 must be >= 1"),
        ({"train.batch_size": 0}, r"train\.batch_size = 0 must be >= 1"),
        ({"train.log_every": 0}, r"train\.log_every = 0 must be >= 1"),
        ({"sampler.workers": -1}, r"sampler\.workers = -1 must be >= 0"),
        ({"train.lr": 0.0}, r"train\.lr = 0\.0 must be > 0"),
        (
            {"train.shot": 5, "sampler.pool_size": 4},
            r"sampler\.pool_size = 4 cannot hold .* train\.shot = 5 .*: set sampler\.pool_size to 6 or more",
        ),
        ({"paths.raw.x": 1}, r"cannot set paths\.raw\.x: raw is not a section"),
    ],
)
def test_bad_params_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_params(REPO_PARAMS, overrides)
    assert "\n" not in str(info.value) and str(info.value).startswith("params: ")


def test_malformed_yaml_is_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  lr: [0.1\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"params\.yaml is not valid YAML") as info:
        load_params(bad)
    assert "\n" not in str(info.value)


def test_train_cli_prints_the_config_error_as_one_line(tiny_data, tmp_path, capsys):
    argv = ["--params", str(write_params(tmp_path)), "--shards", str(tiny_data["shards"]),
            "--folds", str(tiny_data["folds"]), "--out", str(tmp_path / "m"), "--no-progress",
            "--set", "train.way=3"]  # fmt: skip
    assert tr.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: params: train.way = 3 is not supported: use 1 or 2\n"
    assert not (tmp_path / "m").exists()  # stopped before anything was written


def _episodes_main(tiny_data, tmp_path, folds=None, **params) -> int:
    out = tmp_path / "ep.json"
    argv = ["--shards", str(tiny_data["shards"]), "--folds", str(folds or tiny_data["folds"]),
            "--out", str(out), "--params", str(write_params(tmp_path, **params))]  # fmt: skip
    return episodes.main(argv)


def test_shot_larger_than_a_novel_class_images_names_the_class(tiny_data, tmp_path, capsys):
    pairs = read_pairs((tiny_data["folds"] / "fold0" / "test.txt").read_text())
    counts: dict[int, int] = {}
    for cs in pairs.values():
        for c in cs:
            counts[c] = counts.get(c, 0) + 1
    cid, n = min(counts.items(), key=lambda item: (item[1], item[0]))  # the smallest novel class
    assert _episodes_main(tiny_data, tmp_path, shot=n) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"shot = {n} is larger than novel class {cid}'s {n} test images" in err
    assert f"lower shot to {n - 1} or less" in err
    assert not (tmp_path / "ep.json").exists()
    assert _episodes_main(tiny_data, tmp_path, shot=n - 1) == 0  # the advice works


def test_way_larger_than_the_usable_novel_classes(tiny_data, tmp_path, capsys):
    folds = tmp_path / "folds"
    shutil.copytree(tiny_data["folds"], folds)
    test_txt = folds / "fold0" / "test.txt"
    lines = test_txt.read_text().split()
    keep = lines[0].rsplit("__", 1)[1]
    test_txt.write_text("\n".join(ln for ln in lines if ln.endswith(f"__{keep}")) + "\n")  # one novel class
    assert _episodes_main(tiny_data, tmp_path, folds=folds, way=2) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: params: only 1 novel classes have 2 test images; 2-way needs 2: lower way (or shot)"


def test_training_shot_larger_than_every_base_class_names_them(tiny_data):
    base, novel = read_fold(str(tiny_data["folds"]), 0)
    pairs = read_pairs((tiny_data["folds"] / "fold0" / "train.txt").read_text())
    counts = sorted((sum(c in cs for cs in pairs.values()), c) for c in base)
    most, cid = counts[-1]
    with pytest.raises(ConfigError) as info:
        EpisodeStream(str(tiny_data["shards"] / "train"), pairs, base, novel, shot=most, pool_size=99)
    message = str(info.value)
    assert "\n" not in message and f"class {cid} has {most}" in message
    assert f"lower train.shot to {most - 1} or less" in message
    # one class with enough images is enough for 1-way; 2-way needs the second largest
    EpisodeStream(str(tiny_data["shards"] / "train"), pairs, base, novel, shot=most - 1, pool_size=99)
    with pytest.raises(ValueError, match=r"pool_size=2 is smaller than shot \+ 1 = 3"):
        EpisodeStream(str(tiny_data["shards"] / "train"), pairs, base, novel, shot=2, pool_size=2)


def test_every_stage_cli_prints_a_params_error_as_one_line(tiny_data, tmp_path, capsys):
    from pipeline import build, folds, shards

    params = tmp_path / "bad.yaml"
    params.write_text("data:\n  skip_badd: true\n")
    out = str(tmp_path / "out")
    p = ["--params", str(params)]
    commands = {
        "shards": lambda: shards.main(["--raw", out, "--out", out, *p]),
        "build": lambda: build.main(
            ["--dataset", "pascal", "--protocol", "denet", "--raw", out, "--out", out, *p]
        ),
        "folds": lambda: folds.main(["--shards", out, "--out", out, *p]),
        "episodes": lambda: episodes.main(["--shards", out, "--folds", out, "--out", out, *p]),
    }
    for name, command in commands.items():
        assert command() == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unknown key 'data.skip_badd'" in err, (name, err)
    assert not (tmp_path / "out").exists()
