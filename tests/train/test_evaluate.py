"""Evaluation on a fixed manifest: deterministic files, the trivial floor, the protocol and hash recorded."""

import json
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_params, write_params

import fss_model
from pipeline.io import write_json
from train import evaluate as ev
from train import train as tr
from train.checkpoint import save_checkpoint
from train.episodes import build_manifest


@pytest.fixture(scope="module")
def setup(tiny_data, tmp_path_factory):
    """A freshly initialised DENet checkpoint and 1-way / 2-way manifests of fold 0."""
    root = tmp_path_factory.mktemp("eval")
    p = tiny_params()
    torch.manual_seed(0)
    kwargs = tr.model_kwargs_from_params(p)
    model = fss_model.build_model("denet", **kwargs)
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, model_name="denet", model_kwargs=kwargs, model=model, step=0)
    manifests = {}
    for way in (1, 2):
        m = build_manifest(
            str(tiny_data["shards"]), str(tiny_data["folds"]), "pascal", 0, way, 1, "denet", 0, 6
        )
        manifests[way] = root / f"fold0_{way}way_1shot.json"
        write_json(manifests[way], m)
    return {"ckpt": ckpt, "manifests": manifests, "root": root, "params": write_params(root)}


def test_evaluate_is_deterministic_and_complete(tiny_data, setup, capsys):
    outs = []
    for i in range(2):
        out = setup["root"] / f"run{i}" / "fold0_2way_1shot.json"
        argv = ["--params", str(setup["params"]), "--shards", str(tiny_data["shards"]),
                "--checkpoint", str(setup["ckpt"]), "--manifest", str(setup["manifests"][2]),
                "--out", str(out)]  # fmt: skip
        assert ev.main(argv) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]  # same checkpoint + same manifest -> same bytes
    data = json.loads(outs[0])
    manifest = json.loads(setup["manifests"][2].read_text())
    fold = data["folds"]["fold0"]
    assert fold["manifest_sha256"] == manifest["sha256_of_episodes"] and fold["episodes"] == 6
    assert (data["protocol"], data["void"], data["eval_resolution"]) == ("denet", "background", "resized")
    assert (data["way"], data["shot"], data["num_folds"]) == (2, 1, 1)
    assert set(fold["scores"]) == {"model", "all_foreground", "all_background", "support_mask"}
    assert fold["scores"]["all_background"]["miou"] == 0.0
    assert 0 < fold["scores"]["all_foreground"]["miou"] < 100
    assert set(fold["scores"]["model"]["per_class"]) <= {"1", "2", "3", "4", "5"}
    assert data["mean"]["model"]["miou"] == fold["scores"]["model"]["miou"]
    printed = capsys.readouterr().out
    assert "all_foreground" in printed and manifest["sha256_of_episodes"][:16] in printed


def test_trivial_all_foreground_matches_a_hand_count(tiny_data, setup):
    """All-foreground IoU of a class = its foreground pixels / all pixels, summed over its episodes."""
    p = tiny_params()
    manifest = json.loads(setup["manifests"][1].read_text())
    batches = ev.episode_batches(p, tiny_data["shards"], manifest)
    result = ev.evaluate_model(ev.TRIVIAL["all_foreground"](), batches, "denet", "cpu")
    inter, union = {}, {}
    for batch in ev.episode_batches(p, tiny_data["shards"], manifest):
        for j in range(batch["query_label"].shape[0]):
            c = int(batch["class_ids"][j, 0])
            fg = int((batch["query_label"][j] == 1).sum())
            if fg:
                inter[c] = inter.get(c, 0) + fg
                union[c] = union.get(c, 0) + batch["query_label"][j].numel()
    assert result["per_class"] == {c: pytest.approx(100 * inter[c] / union[c]) for c in inter}


def test_mismatched_inputs_are_errors(tiny_data, setup, tmp_path, capsys):
    base = [
        "--params",
        str(setup["params"]),
        "--shards",
        str(tiny_data["shards"]),
        "--out",
        str(tmp_path / "o.json"),
    ]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    assert ev.main([*base, "--checkpoint", str(bad), "--manifest", str(setup["manifests"][1])]) == 2
    assert "corrupt" in capsys.readouterr().err
    other = write_params(tmp_path, protocol="standard")
    argv = ["--params", str(other), *base[2:], "--checkpoint", str(setup["ckpt"]), "--manifest",
            str(setup["manifests"][1])]  # fmt: skip
    assert ev.main(argv) == 2
    assert "params say pascal/standard" in capsys.readouterr().err
    assert not Path(tmp_path / "o.json").exists()


def test_standard_protocol_scores_at_original_size_ignoring_void(tiny_data):
    """standard: labels stay 48x40 (images 65 px), void ignored; all-foreground = fg / valid pixels."""
    p = tiny_params(protocol="standard")
    shards, folds = str(tiny_data["shards"]), str(tiny_data["folds"])
    manifest = build_manifest(shards, folds, "pascal", 0, 1, 1, "standard", 0, 6)
    batches = list(ev.episode_batches(p, tiny_data["shards"], manifest))
    assert batches[0]["query_label"].shape[-2:] == (40, 48) and batches[0]["query_img"].shape[-1] == 65
    seen = [(b, j, preds, label) for b, j, _, preds, label in ev.run_episodes(ev.TRIVIAL["all_foreground"](),
                                                                               batches, "cpu")]  # fmt: skip
    assert all(preds.shape[-2:] == label.shape == (40, 48) for _, _, preds, label in seen)
    result = ev.evaluate_model(ev.TRIVIAL["all_foreground"](), batches, "standard", "cpu")
    inter, union = {}, {}
    for batch, j, _, label in seen:
        c, fg, valid = int(batch["class_ids"][j, 0]), int((label == 1).sum()), int((label != 255).sum())
        if fg:
            inter[c], union[c] = inter.get(c, 0) + fg, union.get(c, 0) + valid
    assert result["per_class"] == {c: pytest.approx(100 * inter[c] / union[c]) for c in inter}
