"""`train`, `evaluate` and `infer` turn what a user can fix into one line on stderr and exit status 2:
shard errors, missing files, unreadable images, weights that are no state_dict, a device the machine
lacks, and model_kwargs that do not fit the model (checked before anything is built)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import tiny_params, write_params

import fss_model
from pipeline.io import write_json
from train import evaluate as ev
from train import infer
from train import train as tr
from train.checkpoint import save_checkpoint
from train.stream.manifests import build_manifest


def _one_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-1500:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


# ---------------------------------------------------------------- train


def _bad_shard_name(data: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    shards = tmp_path / "shards"
    shutil.copytree(data["shards"], shards)
    manifest = json.loads((shards / "train" / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../elsewhere.tar"
    (shards / "train" / "manifest.json").write_text(json.dumps(manifest))
    return {**data, "shards": shards}


def _no_folds(data: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    return {**data, "folds": tmp_path / "no-such-folds"}


TRAIN_CASES: dict[str, tuple[dict[str, object], Callable | None, tuple[str, ...]]] = {
    "shard error": ({}, _bad_shard_name, ("'../elsewhere.tar' is not a plain file name",)),
    "missing file": ({}, _no_folds, ("no-such-folds", "No such file")),
    "weights: a list": ({"backbone.weights": "LIST"}, None, ("is not a state_dict",)),
    "weights: text": ({"backbone.weights": "TEXT"}, None, ("is not a readable state_dict file",)),
    "device": ({"train.device": "cuda:99"}, None, ("train.device: cuda:99 is not available",)),
    "absurd size": ({"model_kwargs": {"depth": 200000}}, None, ("depth=200000 is beyond 4096",)),
    "unknown kwarg": ({"model_kwargs": {"dept": 64}}, None, ("has no argument 'dept'", "depth")),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_cli_prints_one_line_and_exits_2(tiny_data, tmp_path, capsys, case):
    overrides, damage, words = TRAIN_CASES[case]
    weights = overrides.get("backbone.weights")
    if weights == "LIST":
        torch.save([torch.zeros(2)], tmp_path / "w.pt")
        overrides = {**overrides, "backbone.weights": str(tmp_path / "w.pt")}
    elif weights == "TEXT":
        (tmp_path / "w.pt").write_text("not weights")
        overrides = {**overrides, "backbone.weights": str(tmp_path / "w.pt")}
    data = damage(tiny_data, tmp_path) if damage else tiny_data
    argv = ["--params", str(write_params(tmp_path, **overrides)), "--shards", str(data["shards"]),
            "--folds", str(data["folds"]), "--out", str(tmp_path / "m"), "--no-progress"]  # fmt: skip
    assert tr.main(argv) == 2
    _one_line(capsys, *words)
    assert not (tmp_path / "m" / tr.LAST).exists()


# ---------------------------------------------------------------- evaluate


@pytest.fixture
def eval_files(tiny_data, tmp_path) -> dict[str, Path]:
    p = tiny_params()
    write_json(tmp_path / "m.json", build_manifest(str(tiny_data["shards"]), str(tiny_data["folds"]),
                                                   "pascal", 0, 1, 1, "denet", 0, 4))  # fmt: skip
    torch.manual_seed(0)
    kwargs = tr.model_kwargs_from_params(p)
    model = fss_model.build_model("denet", **kwargs)
    save_checkpoint(tmp_path / "c.pt", model_name="denet", model_kwargs=kwargs, model=model, step=0,
                    params=tr.params_snapshot(p))  # fmt: skip
    # a crafted checkpoint asking for an absurd model: refused before anything is allocated
    save_checkpoint(tmp_path / "huge.pt", model_name="denet", model_kwargs={**kwargs, "depth": 200000},
                    model=model, step=0)  # fmt: skip
    return {"params": write_params(tmp_path), "manifest": tmp_path / "m.json", "ckpt": tmp_path / "c.pt",
            "huge": tmp_path / "huge.pt", "shards": tiny_data["shards"]}  # fmt: skip


EVAL_CASES = {
    "device": (["--device", "cuda:99"], "ckpt", "manifest", ("train.device: cuda:99 is not available",)),
    "missing manifest": ([], "ckpt", "nothing", ("no manifest there", "nothing.json")),
    "absurd checkpoint": ([], "huge", "manifest", ("depth=200000 is beyond 4096",)),
}


@pytest.mark.parametrize("case", EVAL_CASES)
def test_evaluate_cli_prints_one_line_and_exits_2(eval_files, tmp_path, capsys, case):
    extra, ckpt, manifest, words = EVAL_CASES[case]
    manifest_path = eval_files.get(manifest, tmp_path / f"{manifest}.json")
    argv = ["--params", str(eval_files["params"]), "--shards", str(eval_files["shards"]),
            "--checkpoint", str(eval_files[ckpt]), "--manifest", str(manifest_path),
            "--out", str(tmp_path / "r.json"), "--no-trivial", *extra]  # fmt: skip
    assert ev.main(argv) == 2
    _one_line(capsys, *words)
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- infer


def test_infer_cli_prints_one_line_and_exits_2(eval_files, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "s.jpg")
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    (tmp_path / "q.jpg").write_text("a text file, not a photo")
    base = ["--params", str(eval_files["params"]), "--checkpoint", str(eval_files["ckpt"]),
            "--out", str(tmp_path / "out"), "--support", str(tmp_path / "s.jpg"),
            "--mask", str(tmp_path / "m.png")]  # fmt: skip
    assert infer.main([*base, "--query", str(tmp_path / "q.jpg")]) == 2  # PIL cannot read it
    _one_line(capsys, "q.jpg")
    assert infer.main([*base, "--query", str(tmp_path / "s.jpg"), "--device", "cuda:99"]) == 2
    _one_line(capsys, "train.device: cuda:99 is not available")
    assert not (tmp_path / "out" / "panel.png").exists()
