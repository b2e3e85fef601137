"""Evaluation on a fixed manifest: deterministic files, the trivial floor, the protocol and hash recorded."""

import json
from pathlib import Path

import numpy as np
import pytest
from train_helpers import fresh_checkpoint, tiny_params, write_params

from pipeline.classes import VOC_CLASSES as VOC
from pipeline.io import write_json
from train import evaluate as ev
from train.stats import EpisodeSums, scores
from train.stream.manifests import build_manifest


@pytest.fixture(scope="module")
def setup(tiny_data, tmp_path_factory):
    """A freshly initialised DENet checkpoint and 1-way / 2-way manifests of fold 0."""
    root = tmp_path_factory.mktemp("eval")
    ckpt = root / "model.pt"
    fresh_checkpoint(ckpt)
    manifests = {}
    for way in (1, 2):
        m = build_manifest(
            str(tiny_data["shards"]), str(tiny_data["folds"]), "pascal", 0, way, 1, "denet", 0, 6
        )
        manifests[way] = root / f"fold0_{way}way_1shot.json"
        write_json(manifests[way], m)
    return {"ckpt": ckpt, "manifests": manifests, "root": root, "params": write_params(root)}


def _argv(setup, tiny_data, manifest, out) -> list[str]:
    return ["--params", str(setup["params"]), "--shards", str(tiny_data["shards"]),
            "--checkpoint", str(setup["ckpt"]), "--manifest", str(manifest), "--out", str(out)]  # fmt: skip


def test_evaluate_is_deterministic_and_complete(tiny_data, setup, capsys):
    outs = []
    for i in range(2):
        out = setup["root"] / f"run{i}"
        assert ev.main(_argv(setup, tiny_data, setup["manifests"][2], out)) == 0
        outs.append(
            {name: (out / name).read_bytes() for name in ("metrics.json", "per_class.json", "details.json")}
        )
    assert outs[0] == outs[1]  # same checkpoint + same manifest -> same bytes (bootstrap included)
    data = json.loads(outs[0]["details.json"])
    manifest = json.loads(setup["manifests"][2].read_text())
    run = data["folds"]["fold0"]["seeds"]["0"]
    assert run["manifest_sha256"] == manifest["sha256_of_episodes"] and run["episodes"] == 6
    assert (data["protocol"], data["void"], data["eval_resolution"]) == ("denet", "background", "resized")
    assert (data["way"], data["shot"], data["num_folds"], data["seeds"]) == (2, 1, 1, [0])
    assert set(run["scores"]) == {"model", "all_foreground", "all_background", "support_mask"}
    assert run["scores"]["all_background"]["miou"] == 0.0
    assert 0 < run["scores"]["all_foreground"]["miou"] < 100
    assert set(run["scores"]["model"]["per_class"]) <= {"1", "2", "3", "4", "5"}
    cell = data["summary"]["model"]
    assert cell["miou"] == run["scores"]["model"]["miou"] and cell["miou_std"] == 0.0
    low, high = cell["miou_ci95"]
    assert low <= cell["miou"] <= high
    # the per-episode sums give back the fold's scores (the bootstrap resamples them)
    sums = EpisodeSums.from_json(run["episode_sums"])
    assert sums.episodes == 6
    assert scores(sums)["miou"] == pytest.approx(cell["miou"], abs=1e-4)
    assert scores(sums)["fb_iou"] == pytest.approx(cell["fb_iou"], abs=1e-4)
    # the short metrics file: what `dvc metrics show` prints
    short = json.loads(outs[0]["metrics.json"])
    assert short == {"miou": cell["miou"], "fb_iou": cell["fb_iou"], "miou_std": 0.0, "miou_ci95_low": low,
                     "miou_ci95_high": high, "f_iou": cell["f_iou"],
                     "classes_scored": len(data["per_class"]), "classes_missing": 0,
                     "seed0": {"miou": cell["miou"], "fb_iou": cell["fb_iou"], "f_iou": cell["f_iou"],
                               "manifest": manifest["sha256_of_episodes"][:16]}}  # fmt: skip
    # the release's F-IOU: DENet's full logits under denet; the trivial predictors have none
    assert 0 <= cell["f_iou"] <= 100 and cell["f_iou"] != cell["fb_iou"]
    assert all("f_iou" not in run["scores"][name] for name in ("all_foreground", "all_background"))
    # per-class IoU under VOC's class names (fold 0 holds out aeroplane .. bottle)
    rows = json.loads(outs[0]["per_class.json"])["per_class"]
    names = {r["class_id"]: r["class"] for r in rows}
    assert set(names.values()) <= {"aeroplane", "bicycle", "bird", "boat", "bottle"}
    assert all(names[int(c)] == VOC[int(c) - 1] for c in run["scores"]["model"]["per_class"])
    printed = capsys.readouterr().out
    assert "all_foreground" in printed and manifest["sha256_of_episodes"][:16] in printed


def test_several_test_seeds_score_the_same_checkpoint(tiny_data, setup):
    """A folder of seed<k>.json manifests: one evaluation per seed, mean +/- std over them."""
    folder = setup["root"] / "seeds"
    for seed in (0, 1, 2):
        m = build_manifest(
            str(tiny_data["shards"]), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", seed, 6
        )
        write_json(folder / f"seed{seed}.json", m)
    out = setup["root"] / "seeds_out"
    assert ev.main(_argv(setup, tiny_data, folder, out)) == 0
    data = json.loads((out / "details.json").read_text())
    assert data["seeds"] == [0, 1, 2]
    per_seed = [data["folds"]["fold0"]["seeds"][str(s)]["scores"]["support_mask"]["miou"] for s in (0, 1, 2)]
    cell = data["summary"]["support_mask"]
    assert cell["miou"] == pytest.approx(np.mean(per_seed), abs=1e-4)
    assert cell["miou_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-4) and cell["miou_std"] > 0
    short = json.loads((out / "metrics.json").read_text())
    hashes = {short[f"seed{s}"]["manifest"] for s in (0, 1, 2)}
    assert len(hashes) == 3  # three different draws


def test_a_checkpoint_alone_is_enough(tiny_data, tmp_path, capsys):
    """Dataset/protocol/fold from the checkpoint, way/shot/seeds from params.yaml or flags, paths from
    params; the manifests are drawn where they are missing (exactly as the episodes stage draws them)."""
    layout = tmp_path / "project"
    for kind in ("shards", "folds"):
        (layout / kind / "toy" / "pascal").mkdir(parents=True)
        (layout / kind / "toy" / "pascal" / "denet").symlink_to(tiny_data[kind])
    paths = {f"paths.{k}": str(layout / k) for k in ("shards", "folds", "episodes", "results")}
    # params.yaml says fold 3 and protocol standard: the checkpoint's fold 0 / denet win
    params = write_params(tmp_path, **paths, fold=3, protocol="standard", **{"sampler.test_episodes": 5})
    ckpt = tmp_path / "best.pt"
    fresh_checkpoint(ckpt, tiny_params(fold=0), step=3, snapshot=True)
    assert ev.main(["--params", str(params), "--checkpoint", str(ckpt), "--no-trivial"]) == 0
    drawn = layout / "episodes/toy/pascal/denet/fold0_1way_1shot/seed0.json"
    expected = build_manifest(
        str(tiny_data["shards"]), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", 0, 5
    )
    assert json.loads(drawn.read_text()) == expected
    out = layout / "results/standalone/toy/pascal/denet/denet/fold0_1way_1shot"
    details = json.loads((out / "details.json").read_text())
    assert (details["protocol"], details["way"], details["shot"], details["model"]) == (
        "denet",
        1,
        1,
        "denet",
    )
    assert "drew " in capsys.readouterr().out
    # flags override params: 2-way, test seeds 4 and 5
    argv = [
        "--params",
        str(params),
        "--checkpoint",
        str(ckpt),
        "--no-trivial",
        "--way",
        "2",
        "--seeds",
        "4",
        "5",
    ]
    assert ev.main(argv) == 0
    details = json.loads((out.parent / "fold0_2way_1shot" / "details.json").read_text())
    assert (details["way"], details["seeds"]) == (2, [4, 5])
    assert (layout / "episodes/toy/pascal/denet/fold0_2way_1shot/seed5.json").exists()


def test_a_manifest_of_another_fold_than_the_checkpoint_is_refused(tiny_data, setup, tmp_path, capsys):
    ckpt = tmp_path / "fold1.pt"
    fresh_checkpoint(ckpt, tiny_params(fold=1), step=1, snapshot=True)
    argv = ["--params", str(setup["params"]), "--shards", str(tiny_data["shards"]), "--checkpoint", str(ckpt),
            "--manifest", str(setup["manifests"][1]), "--out", str(tmp_path / "o")]  # fmt: skip
    assert ev.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is fold 0, but" in err and "trained on fold 1" in err
    assert not (tmp_path / "o").exists()


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
        str(tmp_path / "o"),
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
    assert not Path(tmp_path / "o").exists()


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
