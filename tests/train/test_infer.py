"""Inference panels: manifest episodes (1-way and 2-way, worst cases) and a user's own image files."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import tiny_params, write_params

import fss_model
from pipeline.io import write_json
from pipeline.masks import voc_palette
from train import infer
from train import train as tr
from train.checkpoint import save_checkpoint
from train.stream.episodes import build_manifest


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    p = tiny_params()
    torch.manual_seed(0)
    kwargs = tr.model_kwargs_from_params(p)
    path = root / "model.pt"
    model = fss_model.build_model("denet", **kwargs)
    save_checkpoint(path, model_name="denet", model_kwargs=kwargs, model=model, step=3,
                    params=tr.params_snapshot(p))  # fmt: skip
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
    assert (out / "panel.png").is_file() and "panel.png" in (out / "index.html").read_text()
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
