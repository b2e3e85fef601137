"""Inference panels: manifest episodes (1-way and 2-way, worst cases) and a user's own image files."""

import math
import re

import numpy as np
import pytest
from PIL import Image
from train_helpers import fresh_checkpoint, write_params

from pipeline.classes import VOC_CLASSES as VOC
from pipeline.io import write_json
from pipeline.masks import voc_palette
from train import infer
from train.stream.manifests import build_manifest


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    path = root / "model.pt"
    fresh_checkpoint(path, step=3, snapshot=True)
    return path


def test_manifest_panels_and_index(tiny_data, ckpt, tmp_path):
    manifests = []
    for way in (1, 2):
        shards, folds = str(tiny_data["shards"]), str(tiny_data["folds"])
        path = tmp_path / f"fold0_{way}way_1shot.json"
        write_json(path, build_manifest(shards, folds, "pascal", 0, way, 1, "denet", 0, 5))
        manifests.append(path)
    out = tmp_path / "results" / "denet" / "run"
    argv = ["--params", str(write_params(tmp_path)), "--checkpoint", str(ckpt), "--shards",
            str(tiny_data["shards"]), "--manifest", *map(str, manifests), "--out", str(out),
            "--episodes", "1", "--worst", "1"]  # fmt: skip
    assert infer.main(argv) == 0
    for setting in ("1way_1shot", "2way_1shot"):
        assert [p.name for p in (out / setting).glob("example_*.png")] == ["example_00000.png"]
        assert len(list((out / setting).glob("worst_*.png"))) == 1
    page = (out / "index.html").read_text()
    for img in re.findall(r"src='([^']+)'", page):
        assert (out / img).is_file()
    assert page.count("<figure>") == 4 and "failure cases" in page and "IoU" in page
    assert Image.open(out / "2way_1shot" / "example_00000.png").size[0] > 400
    # a setting's folder (the episodes stage's output) stands for its first seed's manifest
    folder = tmp_path / "fold0_1way_1shot"
    folder.mkdir()
    manifests[0].rename(folder / "seed0.json")
    argv[argv.index("--manifest") + 1 : argv.index("--out")] = [str(folder)]
    assert infer.main([*argv[:-4], "--out", str(tmp_path / "dir")]) == 0
    assert (tmp_path / "dir" / "1way_1shot" / "example_00000.png").is_file()


def test_panels_keep_aspect_and_failures_come_from_distinct_queries(tiny_data, ckpt, tmp_path):
    """Panels of real episodes: images at their original aspect ratio, VOC names, distinct failures."""
    from train.checkpoint import build_model_from_checkpoint
    from train.evaluate import episode_batches
    from train.params import load_params

    shards, folds = str(tiny_data["shards"]), str(tiny_data["folds"])
    manifest = build_manifest(shards, folds, "pascal", 0, 1, 1, "denet", 0, 40)
    assert len({e["query"] for e in manifest["episodes"]}) < 40  # queries repeat: the rule has work to do
    p = load_params(write_params(tmp_path))
    model, _ = build_model_from_checkpoint(ckpt)
    sizes = infer.image_sizes(f"{shards}/test")
    examples, worst, _ = infer.collect_panels(
        model, episode_batches(p, shards, manifest), "denet", "cpu", False, 2, 6, "pascal", sizes
    )
    assert len(worst) == 6 and len({w.query_id for w in worst}) == 6
    assert [w.iou for w in worst] == sorted(w.iou for w in worst)
    for panel in examples + worst:
        h, w = sizes[panel.query_id]  # the tiny images are 48 x 40; the model saw them square
        assert panel.query.shape[:2] == infer.display_size((h, w)) == (200, 240)
        assert panel.gt.shape[1:] == panel.preds.shape[1:] == panel.full_pred.shape == (200, 240)
        assert all(
            img.shape[:2] == mask.shape == (200, 240) for shots in panel.supports for img, mask in shots
        )
        assert panel.names == [VOC[c - 1] for c in panel.class_ids]


def _panel(dataset="pascal", gt=True, h=30, w=60):
    rng = np.random.default_rng(0)
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 10:40] = 1
    gt_maps = np.stack([mask, np.where(mask == 1, 0, 255).astype(np.uint8)]) if gt else None
    full = np.zeros((h, w), np.uint8)
    full[5:20, 10:40] = 15
    support = (rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mask)
    return infer.Panel(iou=50.0, index=3, query_id="q", class_ids=[8, 12], ious=[50.0, math.nan],
                       query=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), gt=gt_maps,
                       preds=np.stack([mask, mask * 0]), full_pred=full, supports=[[support], [support]],
                       dataset=dataset)  # fmt: skip


def test_panel_names_legend_and_outlines(tmp_path):
    panel = _panel()
    assert panel.names == ["cat", "dog"]
    assert infer.tile_titles(panel) == ["support: cat", "support: dog", "query + ground truth",
                                        "prediction (IoU 50.0, dog not in query)",
                                        "full-class prediction"]  # fmt: skip
    labels = [label for label, _ in infer.legend_entries(panel)]
    assert labels == ["way 1: cat (fill: prediction; outline: support mask, ground truth)",
                      "way 2: dog (fill: prediction; outline: support mask, ground truth)",
                      "ignored pixels (void, other episode classes)", "full-class: person"]  # fmt: skip
    colours = [tuple(c) for _, c in infer.legend_entries(panel)]
    assert len(set(colours)) == len(colours)  # every legend entry has its own colour
    coco = _panel(dataset="coco")
    assert coco.names == ["truck", "stop sign"]  # COCO ids 8 and 13 renumbered 8 and 12
    assert infer.legend_entries(coco)[-1][0] == "full-class: bird"
    # one meaning per style: a prediction is a fill (no outline), a ground truth an outline (no fill):
    # a coloured line inside the mask, a black one outside, so it shows on white and on black
    white = np.full((30, 60, 3), 255, np.uint8)
    filled = infer.overlay(white, [panel.preds[0]])
    assert filled[4, 20].tolist() == [255, 255, 255] and filled[10, 20].tolist() != [255, 255, 255]
    assert filled[5, 20].tolist() == filled[10, 20].tolist()  # no outline on a prediction
    outlined = infer.overlay(white, truths=[panel.preds[0]])
    assert outlined[5, 20].tolist() == infer.WAY_COLOURS[0].tolist() and outlined[4, 20].tolist() == [0, 0, 0]
    assert outlined[12, 20].tolist() == [255, 255, 255]  # inside a ground truth: no fill
    # the full-class colours are none of the ways' colours, and never dark (readable on the grey query)
    full = {tuple(infer.full_colour(c)) for c in range(1, 81)}
    assert not full & {tuple(c) for c in infer.WAY_COLOURS[:2]} and min(sum(c) for c in full) > 200
    infer.draw_panel(panel, tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").size[0] > 5 * Image.open(tmp_path / "p.png").size[1] / 2


def test_own_query_says_no_ground_truth():
    panel = _panel(gt=False)
    assert "query: no ground truth" in infer.tile_titles(panel)
    assert not any("ground truth" in label for label, _ in infer.legend_entries(panel))


def test_failure_cases_keep_each_query_once():
    worst = infer.WorstCases(2)
    for score, index, query in [(5, 0, "a"), (1, 1, "a"), (3, 2, "b"), (4, 3, "c"), (2, 4, "b"), (9, 5, "d")]:
        worst.add(score, index, query, f"{query}{index}")
    assert worst.items() == ["a1", "b4"]
    assert not infer.WorstCases(0).wants(1.0, "a") and not worst.wants(math.inf, "z")


def test_worst_cases_are_the_lowest_iou():
    a = infer.Panel(iou=10.0, index=0, query_id="a", class_ids=[1], ious=[10.0], query=None, gt=None,
                    preds=None, full_pred=None, supports=[])  # fmt: skip
    b = infer.Panel(iou=5.0, index=1, query_id="b", class_ids=[1], ious=[5.0], query=None, gt=None,
                    preds=None, full_pred=None, supports=[])  # fmt: skip
    assert min(a, b) is b


def test_own_images(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "q.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "s.jpg")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255  # a white-on-black mask as image editors save them
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = tmp_path / "mine"
    argv = ["--checkpoint", str(ckpt), "--query", str(tmp_path / "q.jpg"),
            "--support", str(tmp_path / "s.jpg"), "--mask", str(tmp_path / "m.png"),
            "--out", str(out)]  # fmt: skip
    assert infer.main(argv) == 0
    pred = np.asarray(Image.open(out / "prediction.png"))
    assert pred.shape == (50, 70) and set(np.unique(pred)) <= {0, 255}
    page = (out / "index.html").read_text()
    assert (out / "panel.png").is_file() and "panel.png" in page and "no ground truth" in page
    # the object is "object" (no dataset class name), the title is not the output folder's name
    assert "<title>object in q.jpg</title>" in page and "aeroplane" not in page and "<h1>mine" not in page
    assert infer.main([*argv[:-1], str(tmp_path / "cup"), "--class-name", "my cup"]) == 0
    assert "my cup: no ground truth" in (tmp_path / "cup" / "index.html").read_text()
    batch = infer.load_user_episode(tmp_path / "q.jpg", [tmp_path / "s.jpg"], [tmp_path / "m.png"], 33, 7)
    assert batch["support_masks"].shape == (1, 1, 1, 33, 33) and batch["support_masks"].max() == 1
    assert batch["class_ids"].tolist() == [[7]]


def test_voc_palette():
    pal = voc_palette()
    assert (
        pal[0].tolist() == [0, 0, 0]
        and pal[1].tolist() == [128, 0, 0]
        and pal[15].tolist() == [192, 128, 128]
    )


def test_evaluated_scores_pick_the_same_panels_with_the_model_run_on_those_alone(tiny_data, ckpt, tmp_path):
    """The infer stage reads evaluate's per-episode sums: the same examples and failure cases (same IoUs,
    same predictions) as scoring every episode here, with the model run on the shown episodes only."""
    from pipeline.config import load_params
    from train.checkpoint import build_model_from_checkpoint
    from train.evaluate import episode_batches, evaluate_model

    shards, folds = str(tiny_data["shards"]), str(tiny_data["folds"])
    manifest = build_manifest(shards, folds, "pascal", 0, 1, 1, "denet", 0, 40)
    p = load_params(write_params(tmp_path))
    model, _ = build_model_from_checkpoint(ckpt)
    sizes = infer.image_sizes(f"{shards}/test")
    examples, worst, metric = infer.collect_panels(
        model, episode_batches(p, shards, manifest), "denet", "cpu", p.train.amp, 2, 6, "pascal", sizes
    )
    result = evaluate_model(model, episode_batches(p, shards, manifest), "denet", "cpu", p.train.amp)
    sums = result["episode_sums"].to_json()
    run = {"manifest_sha256": manifest["sha256_of_episodes"], "episode_sums": sums,
           "scores": {"model": {"miou": result["miou"], "fb_iou": result["fb_iou"]}}}  # fmt: skip
    details = {"folds": {"fold0": {"seeds": {"0": run}}}}
    assert infer.evaluated_scores(details, {"sha256_of_episodes": "another manifest"}) is None
    per_episode, scores = infer.evaluated_scores(details, manifest)
    assert scores["miou"] == pytest.approx(metric["miou"])
    queries = [ep["query"] for ep in manifest["episodes"]]
    shown, failing = infer.choose_episodes(per_episode, queries, 2, 6)
    assert shown == [e.index for e in examples] and failing == [w.index for w in worst]
    seen = []
    hook = model.register_forward_hook(lambda _m, args, _out: seen.append(len(args[0])))
    panels = infer.render_episodes(model, p, shards, manifest, sorted({*shown, *failing}), "cpu", sizes)
    hook.remove()
    assert sum(seen) == len({*shown, *failing}) < 40  # the model ran on the chosen episodes alone
    for panel in [*examples, *worst]:
        again = panels[panel.index]
        assert again.ious == pytest.approx(panel.ious, nan_ok=True) and np.array_equal(
            again.preds, panel.preds
        )
