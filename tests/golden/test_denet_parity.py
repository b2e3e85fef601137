"""`protocol: denet` against golden outputs of the DENet release's own code (tests/data/denet_golden_*).

The goldens were made by tests/golden/make_denet_golden.py from the release (lizhaoliu-Lec/DENet at
denet_release.RELEASE_COMMIT) on the toy raw data that `pipeline.toy` generates with denet_release.TOY.
Here the same toy data is generated again and run through this project's stages and modules:
pools, flips and label maps must be equal, logits and losses within 1e-4. A missing golden file fails.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from pathlib import Path

import denet_release as G
import numpy as np
import pytest
import torch

from fss_model import build_model
from pipeline import toy
from pipeline.config import load_params
from pipeline.folds import training_label, write_folds
from pipeline.shards import build_shards
from train.stream.by_key import SampleReader, eval_query_label
from train.stream.draw import episode_pools, episode_queries, eval_flips, novel_in_images
from train.stream.index import read_index, read_pairs
from train.stream.sampler import Episode, EpisodeDecoder
from train.stream.transforms import decode_label

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """The goldens' toy data, through this project's shards and folds stages under `protocol: denet`."""
    header = G.read_json_golden(G.GOLDEN["pools"])["header"]
    root = tmp_path_factory.mktemp("denet_golden")
    out = {}
    for dataset, settings in G.TOY.items():
        raw = root / "raw" / dataset
        toy.generate(raw, dataset, seed=settings["seed"], scale=settings["scale"])
        fingerprint = G.toy_fingerprint(raw, dataset)
        assert fingerprint == header["toy_fingerprint"][dataset], (
            f"the toy {dataset} data is no longer what the goldens were made from: regenerate them with "
            f"{header['made_by']}"
        )
        overrides = {"dataset": dataset, "protocol": "denet", "sampler.image_size": G.IMAGE_SIZE}
        p = load_params(REPO_PARAMS, overrides)
        assert p.data.presence_size == G.IMAGE_SIZE and p.data.pascal_masks == "list"
        shards, folds = root / dataset / "shards", root / dataset / "folds"
        build_shards(raw, shards, p, workers=2, progress=False)
        write_folds(
            shards, folds, dataset=dataset, protocol="denet", min_fraction=float(p.data.min_fraction),
            min_pixels=int(p.data.min_pixels),
        )  # fmt: skip
        out[dataset] = {"shards": shards, "folds": folds}
    return out


def grouped(pairs: dict[str, list[int]], classes: list[int]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for image_id in sorted(pairs):
        for c in pairs[image_id]:
            if c in classes:
                out[str(c)].append(image_id)
    return dict(out)


@pytest.mark.heavy  # the `built` fixture builds both toy data sets
@pytest.mark.parametrize("dataset", ["pascal", "coco"])
def test_training_pairs_and_test_pools_equal_the_release(built, dataset):
    golden = G.read_json_golden(G.GOLDEN["pools"])[dataset]
    image_classes, _ = read_index(str(built[dataset]["shards"] / "test"))
    for fold in range(4):
        g = golden[f"fold{fold}"]
        folds = built[dataset]["folds"]
        info = json.loads((folds / f"fold{fold}.json").read_text())
        novel = info["novel"]
        assert novel == g["novel"]
        train = read_pairs((folds / f"fold{fold}" / "train.txt").read_text())
        assert grouped(train, info["base"]) == g["train"], f"fold {fold}: training pairs"
        test = read_pairs((folds / f"fold{fold}" / "test.txt").read_text())
        for way, key in ((1, "test_1way"), (2, "test_2way")):
            pools = {str(c): v for c, v in episode_pools(test, novel, "denet", way).items()}
            assert pools == g[key], f"fold {fold}: {key}"
        # "holds a novel class" for the 2-way query rule: any pixel at the presence size
        any_pixel: dict[str, list[str]] = defaultdict(list)
        for image_id in sorted(image_classes):
            for c, px in image_classes[image_id].items():
                if c in novel and px > 0:
                    any_pixel[str(c)].append(image_id)
        assert dict(any_pixel) == g["test_any_pixel"], f"fold {fold}: novel classes present at all"
        if "test_2way_query" in g:
            pools2 = episode_pools(test, novel, "denet", 2)
            novel_of = novel_in_images(test, image_classes, novel)
            for pair, expected in g["test_2way_query"].items():
                c, o = (int(v) for v in pair.split("-"))
                assert episode_queries(pools2, novel_of, [c, o], "denet") == expected, f"fold {fold}: {pair}"


@pytest.mark.heavy  # the `built` fixture builds both toy data sets
@pytest.mark.parametrize("dataset", ["pascal", "coco"])
def test_presence_pixels_equal_the_release(built, dataset):
    """index.tsv's presence_px: the class pixels the release's threshold counts on its resized test masks."""
    golden = G.read_json_golden(G.GOLDEN["pools"])[dataset]["test_presence_px"]
    image_classes, _ = read_index(str(built[dataset]["shards"] / "test"))
    ours = {k: {str(c): px for c, px in v.items() if px > 0} for k, v in image_classes.items()}
    theirs = {k: v for k, v in golden.items() if v}  # images with no class have no index rows
    assert ours == theirs


@pytest.mark.heavy  # the `built` fixture builds both toy data sets
def test_two_way_pools_are_not_the_one_way_pools(built):
    """The goldens exercise the 2-way rule: images with two novel classes at >= 2% exist on the toy data."""
    golden = G.read_json_golden(G.GOLDEN["pools"])["pascal"]
    assert any(golden[f"fold{f}"]["test_1way"] != golden[f"fold{f}"]["test_2way"] for f in range(4))
    assert any(
        len(q) < len(golden[f"fold{f}"]["test_2way"][pair.split("-")[0]])
        for f in range(4)
        for pair, q in golden[f"fold{f}"]["test_2way_query"].items()
    )


def test_eval_flips_equal_the_release():
    golden = G.read_json_golden(G.GOLDEN["flips"])
    for name in G.FORWARD_CASES:
        case = golden[name]
        flips = case["flips"]
        mine = eval_flips(len(flips), case["way"] * case["shot"] + 1)
        assert mine.tolist() == flips, name


def _sample(reader: SampleReader):
    def read(key: str) -> tuple[bytes, bytes]:
        s = reader.fetch(key)
        return s["jpg"], s["label.png"]

    return read


@pytest.mark.heavy  # the `built` fixture builds both toy data sets
@pytest.mark.parametrize("dataset", ["pascal", "coco"])
def test_training_label_maps_equal_the_release(built, dataset):
    header, arrays = G.read_npz_golden(G.GOLDEN["labels"])
    meta = json.loads(str(arrays.pop("meta")))[dataset]
    train = SampleReader(str(built[dataset]["shards"] / "train"))
    read = _sample(train)
    for fold in (0, 1):
        novel = meta[f"fold{fold}"]["novel"]
        # the release's `void: background`, and its binary masks cut from a label where novel = 0
        decoder = EpisodeDecoder(novel, "denet", "background", header["image_size"], flip_p=0.0)
        for ep in meta[f"fold{fold}"]["episodes"]:
            prefix = f"{dataset}/fold{fold}/{ep['query']}"
            label = np.asarray(decode_label(read(ep["query"])[1]))
            full = training_label(label, novel, "denet", void="background")
            np.testing.assert_array_equal(full, arrays[f"{prefix}/fold_mask"], err_msg=prefix)
            rng = np.random.default_rng(0)
            out = decoder(Episode([ep["class"]], ep["query"], [[ep["support"]]]), read, rng)
            np.testing.assert_array_equal(out["query_full_label"], arrays[f"{prefix}/query_full"])
            np.testing.assert_array_equal(out["query_label"], arrays[f"{prefix}/query_binary"])
            np.testing.assert_array_equal(out["support_masks"][0], arrays[f"{prefix}/support_binary"])
    # test label maps: void (PASCAL) and crowd (COCO) count as background; SBD-val images with a VOC
    # train PNG come from SBD's .mat (PASCAL: the golden lists them, and they are among the masks)
    test = SampleReader(str(built[dataset]["shards"] / "test"))
    if dataset == "pascal":
        assert set(meta["sbd_val_with_voc_train_png"]) & set(meta["test_masks"])
    for key in meta["test_masks"]:
        label = np.asarray(decode_label(test.fetch(key)["label.png"]))
        theirs = arrays[f"{dataset}/test/{key}"]
        assert label.shape == theirs.shape
        for c in (set(np.unique(label).tolist()) | set(np.unique(theirs).tolist())) - {0, 255}:
            # the query label this project scores a 1-way episode of class c with
            ours = eval_query_label(label, [c], "denet")
            np.testing.assert_array_equal(ours, (theirs == c).astype(np.uint8), err_msg=f"{key} class {c}")


def _normalized(img: np.ndarray) -> torch.Tensor:
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    return (torch.from_numpy(img).float() / 255.0 - mean) / std


@functools.lru_cache(maxsize=2)
def _built_denet(joint_pass: bool) -> torch.nn.Module:
    """One ResNet-50 DENet per pass mode, built once (a random init of 14 M weights is slow on 2 cores)."""
    return build_model(
        "denet", num_classes=G.NUM_CLASSES, backbone="resnet50", frozen=True, freeze_bn=False,
        joint_pass=joint_pass,
    )  # fmt: skip


@functools.lru_cache(maxsize=1)
def _seeded_state(shapes_json: str) -> dict[str, torch.Tensor]:
    """The release's fixed-seed weights, transplanted once."""
    model = _built_denet(False)
    G.project_state_from_seed(model, json.loads(shapes_json))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _project_denet(shapes: dict, train: bool, joint_pass: bool = False) -> torch.nn.Module:
    """The project's DENet with the golden weights, fresh BN statistics, dropout off, in the given mode."""
    model = _built_denet(joint_pass)
    model.load_state_dict(_seeded_state(json.dumps(shapes, sort_keys=True)), strict=True)
    G.disable_dropout(model)
    return model.train(train)


@pytest.mark.parametrize("case", list(G.FORWARD_CASES))
def test_denet_forward_and_loss_equal_the_release(case):
    """Eval and train mode (dropout p=0, BN in train mode: the release's frozen-by-requires_grad backbone
    and separate support/query passes) after a weight transplant; logits and losses within 1e-4."""
    _, a = G.read_npz_golden(G.GOLDEN["forward"])
    shapes = json.loads(str(a["release_shapes"]))
    way, _shot = G.FORWARD_CASES[case]
    q, s = _normalized(a[f"{case}/input/query_img"]), _normalized(a[f"{case}/input/support_imgs"])
    masks = torch.from_numpy(a[f"{case}/input/support_masks"]).long()
    ids = torch.from_numpy(a[f"{case}/input/class_ids"])
    for mode in ("eval", "train"):
        model = _project_denet(shapes, train=mode == "train")
        with torch.set_grad_enabled(mode == "train"):
            out = model(q, s, masks, ids)
        expected_full = torch.from_numpy(a[f"{case}/{mode}/logits_full"])
        torch.testing.assert_close(out["logits_full"].detach(), expected_full, atol=1e-4, rtol=0)
        expected_binary = torch.from_numpy(a[f"{case}/{mode}/logits_binary"])
        torch.testing.assert_close(
            out["way_logits"].detach().flatten(0, 1), expected_binary, atol=1e-4, rtol=0
        )
        if mode == "train":
            # two BN batches per forward, supports first: the running statistics moved as the release's
            bn = model.neck.out[1].running_mean
            torch.testing.assert_close(
                bn, torch.from_numpy(a[f"{case}/train/neck_bn_running_mean"]), atol=1e-4, rtol=0
            )
            bn1 = model.backbone.bn1.running_mean
            expected_bn1 = torch.from_numpy(a[f"{case}/train/backbone_bn1_running_mean"])
            torch.testing.assert_close(bn1, expected_bn1, atol=1e-4, rtol=0)
        if mode == "train" and way == 1:
            batch = {
                "query_full_label": torch.from_numpy(a[f"{case}/input/query_full_label"]).long(),
                "query_label": torch.from_numpy(a[f"{case}/train/query_binary_label"]).long(),
            }
            losses = model.loss(out, batch)
            assert losses["ce"].item() == pytest.approx(float(a[f"{case}/train/loss_k"]), abs=1e-4)
            assert losses["focal"].item() == pytest.approx(float(a[f"{case}/train/loss_p"]), abs=1e-4)


def test_joint_pass_is_not_the_release_in_train_mode():
    """The option `joint_pass: true` mixes query and support statistics in BN: the golden test above
    would catch a model that silently went back to it."""
    _, a = G.read_npz_golden(G.GOLDEN["forward"])
    shapes = json.loads(str(a["release_shapes"]))
    q, s = _normalized(a["1w1s/input/query_img"]), _normalized(a["1w1s/input/support_imgs"])
    masks = torch.from_numpy(a["1w1s/input/support_masks"]).long()
    ids = torch.from_numpy(a["1w1s/input/class_ids"])
    with torch.no_grad():
        out = _project_denet(shapes, train=True, joint_pass=True)(q, s, masks, ids)
        eval_out = _project_denet(shapes, train=False, joint_pass=True)(q, s, masks, ids)
    gap = (out["logits_full"] - torch.from_numpy(a["1w1s/train/logits_full"])).abs().max()
    assert gap > 0.1
    # in eval mode BN uses running statistics: joint and separate passes agree
    torch.testing.assert_close(
        eval_out["logits_full"], torch.from_numpy(a["1w1s/eval/logits_full"]), atol=1e-4, rtol=0
    )
