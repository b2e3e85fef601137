"""Test-episode manifests (rules, balance, round trip), eval fetch by key, normalize, bad shards."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from train_helpers import write_params

from pipeline.io import write_json
from pipeline.shard_format import IGNORE_INDEX
from train.bench.bench_loader import slow_http_server
from train.stream.by_key import EvalEpisodes, SampleReader, collate_eval
from train.stream.draw import (
    draw_test_episodes,
    draw_train_episodes,
    episode_pools,
    episode_queries,
    episodes_with_every_way,
    eval_flips,
    expected_with_every_way,
    novel_in_images,
)
from train.stream.episodes import main
from train.stream.index import read_fold, read_index, read_pairs
from train.stream.manifests import build_manifest, manifest_files, read_manifest
from train.stream.normalize import normalize
from train.stream.shard_io import ShardError, read_shard, shard_urls
from train.stream.transforms import decode_label


def manifest(data, way=1, shot=1, count=40, seed=0, protocol="denet", fold=0):
    return build_manifest(
        str(data["shards"]), str(data["folds"]), "pascal", fold, way, shot, protocol, seed, count
    )


@pytest.mark.parametrize(("way", "shot"), [(1, 1), (1, 3), (2, 1)])
def test_test_episodes_follow_the_denet_rules(tiny_data, way, shot):
    m = manifest(tiny_data, way=way, shot=shot)
    _, novel = read_fold(str(tiny_data["folds"]), 0)
    pairs = read_pairs((tiny_data["folds"] / "fold0" / "test.txt").read_text())
    image_classes, _ = read_index(str(tiny_data["shards"] / "test"))
    assert len(m["episodes"]) == 40 and (m["way"], m["shot"], m["fold"]) == (way, shot, 0)
    for ep in m["episodes"]:
        classes = ep["classes"]
        assert len(set(classes)) == way and set(classes) <= set(novel)
        assert classes[0] in pairs[ep["query"]]
        if way == 1:  # exactly one novel class passes the presence rule (others may show below it)
            assert pairs[ep["query"]] == [classes[0]]
        else:  # no pixel of a novel class outside the episode's
            query_novel = {c for c, px in image_classes[ep["query"]].items() if c in novel and px > 0}
            assert query_novel <= set(classes)
        for c, sup in zip(classes, ep["supports"], strict=True):
            assert len(sup) == len(set(sup)) == shot and ep["query"] not in sup
            assert all(c in pairs[s] for s in sup)
            if way == 1:
                assert all(pairs[s] == [c] for s in sup)
    counts = Counter(ep["classes"][0] for ep in m["episodes"])
    assert max(counts.values()) - min(counts.values()) <= 1  # class-balanced round robin


def test_manifest_round_trip_and_digest(tiny_data, tmp_path):
    m = manifest(tiny_data)
    assert manifest(tiny_data) == m  # seeded: the same episodes every time
    assert manifest(tiny_data, seed=1)["episodes"] != m["episodes"]
    path = tmp_path / "m.json"
    write_json(path, m)
    assert read_manifest(path) == m
    bad = json.loads(path.read_text())
    bad["episodes"][0]["query"] = bad["episodes"][1]["query"] + "x"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="sha256_of_episodes"):
        read_manifest(path)


def test_query_and_support_pools_by_protocol_and_way():
    novel = [1, 2, 3]
    # test.txt: every novel class passing the presence rule
    pairs = {"a": [1], "b": [1, 2], "c": [2], "d": [3], "e": [1, 7]}
    assert episode_pools(pairs, novel, "denet", 1) == {1: ["a", "e"], 2: ["c"], 3: ["d"]}
    assert episode_pools(pairs, novel, "denet", 2) == {1: ["a", "b", "e"], 2: ["b", "c"], 3: ["d"]}
    assert episode_pools(pairs, novel, "standard", 1) == episode_pools(pairs, novel, "denet", 2)
    # 2-way denet queries: no novel pixel outside the episode (presence_px > 0 counts, below 2 % too)
    index = {"a": {1: 900, 3: 4}, "b": {1: 500, 2: 600}, "e": {1: 700, 3: 0}}
    novel_of = novel_in_images(pairs, index, novel)
    assert novel_of == {"a": {1, 3}, "b": {1, 2}, "c": {2}, "d": {3}, "e": {1}}
    pools = episode_pools(pairs, novel, "denet", 2)
    assert episode_queries(pools, novel_of, [1, 2], "denet") == ["b", "e"]
    assert episode_queries(pools, novel_of, [1, 3], "denet") == ["a", "e"]
    assert episode_queries(pools, novel_of, [1, 2], "standard") == ["a", "b", "e"]
    assert episode_queries(episode_pools(pairs, novel, "denet", 1), novel_of, [1], "denet") == ["a", "e"]


def test_eval_flips_are_the_releases_random_stream():
    import random

    r = random.Random(0)
    expected = [[r.random() < 0.5 for _ in range(3)] for _ in range(50)]
    assert eval_flips(50, 3).tolist() == expected
    assert 10 < eval_flips(50, 3).sum() < 140


def test_eval_episodes_flip_images_and_labels_by_manifest_position(tiny_data):
    m = manifest(tiny_data, way=2, shot=1, count=12)
    split = str(tiny_data["shards"] / "test")
    plain = EvalEpisodes(m, split, 32, "denet")
    flipped = EvalEpisodes(m, split, 32, "denet", flip=True)
    tail = EvalEpisodes({**m, "episodes": m["episodes"][8:]}, split, 32, "denet", flip=True, first=8)
    flags = eval_flips(12, 3)
    assert flags[:, :2].any() and flags[:, 2].any() and not flags.all()
    for i in range(12):
        a, b = plain[i], flipped[i]
        supports_flipped, query_flipped = flags[i, :2], flags[i, 2]
        mirror = (lambda x: x[:, ::-1]) if query_flipped else (lambda x: x)
        assert np.array_equal(b["query_img"], mirror(a["query_img"]))
        assert np.array_equal(b["query_label"], mirror(a["query_label"]))
        for k in range(2):
            mirror_s = (lambda x: x[:, ::-1]) if supports_flipped[k] else (lambda x: x)
            assert np.array_equal(b["support_imgs"][k], mirror_s(a["support_imgs"][k]))
            assert np.array_equal(b["support_masks"][k], mirror_s(a["support_masks"][k]))
        if i >= 8:  # a torchrun rank's slice keeps each episode's flips
            c = tail[i - 8]
            assert np.array_equal(c["query_img"], b["query_img"]) and np.array_equal(
                c["support_imgs"], b["support_imgs"]
            )


def test_training_manifest_follows_the_release():
    base = [6, 7, 8]
    pairs = {f"i{n}": [6] for n in range(6)} | {f"j{n}": [7, 8] for n in range(4)} | {"k": [8]}
    eps = draw_train_episodes(pairs, base, way=1, shot=1, per_class=9, seed=0)
    # 6 has 6 images (36 >= 9), 7 has 4 (16 >= 9), 8 has 5: 9 episodes each, all kept
    assert Counter(e["classes"][0] for e in eps) == {6: 9, 7: 9, 8: 9}
    for e in eps:
        (c,), (sup,) = e["classes"], e["supports"]
        assert e["query"] not in sup and all(c in pairs[k] for k in [e["query"], *sup])
    assert [e["classes"][0] for e in eps] != sorted(e["classes"][0] for e in eps)  # shuffled once
    assert draw_train_episodes(pairs, base, way=1, shot=1, per_class=9, seed=0) == eps
    # the release leaves out a class with n images where n^2 < per_class: 4^2 = 16 < 17
    eps = draw_train_episodes(pairs, base, way=1, shot=3, per_class=17, seed=0)
    assert set(Counter(e["classes"][0] for e in eps)) == {6, 8}
    assert all(len(set(e["supports"][0] + [e["query"]])) == 4 for e in eps)
    two = draw_train_episodes(pairs, base, way=2, shot=1, per_class=5, seed=0)
    assert all(len(set(e["classes"])) == 2 and e["query"] not in e["supports"][1] for e in two)
    with pytest.raises(ValueError, match="episodes_per_class"):
        draw_train_episodes(pairs, base, way=1, shot=1, per_class=100, seed=0)


def test_too_few_images_is_an_error():
    with pytest.raises(ValueError, match="novel classes have"):
        draw_test_episodes({"a": [1]}, {}, [1, 2], way=1, shot=1, count=3, seed=0, protocol="denet")


def test_stage_main_writes_the_manifest(tiny_data, tmp_path):
    out = tmp_path / "ep" / "fold0_1way_1shot"
    main(["--shards", str(tiny_data["shards"]), "--folds", str(tiny_data["folds"]), "--out", str(out)])
    m = read_manifest(out / "seed0.json")
    assert m["protocol"] == "denet" and len(m["episodes"]) == 300  # toy preset of sampler.test_episodes
    assert m["seed"] == 0 and manifest_files(out) == [out / "seed0.json"]


def test_stage_main_draws_one_manifest_per_test_seed_not_the_training_seed(tiny_data, tmp_path):
    params = write_params(tmp_path, **{"evaluate.seeds": [3, 1], "seed": 7})
    out = tmp_path / "ep"
    argv = ["--shards", str(tiny_data["shards"]), "--folds", str(tiny_data["folds"]), "--out", str(out)]
    assert main([*argv, "--params", str(params)]) == 0
    assert manifest_files(out) == [out / "seed1.json", out / "seed3.json"]
    drawn = {s: read_manifest(out / f"seed{s}.json") for s in (1, 3)}
    assert [drawn[s]["seed"] for s in (1, 3)] == [1, 3]
    assert drawn[1]["episodes"] != drawn[3]["episodes"]
    # the same test seed draws the same episodes whatever the training seed
    (tmp_path / "b").mkdir()
    other = write_params(tmp_path / "b", **{"evaluate.seeds": [1], "seed": 0})
    assert main([*argv[:-1], str(tmp_path / "b" / "ep"), "--params", str(other)]) == 0
    again = read_manifest(tmp_path / "b" / "ep" / "seed1.json")
    assert again["sha256_of_episodes"] == drawn[1]["sha256_of_episodes"]


def _samples(split_url):
    return {s["__key__"]: s for url, _ in shard_urls(split_url) for s in read_shard(url)}


def test_fetch_by_key_matches_the_stream_local_and_http(tiny_data):
    split = str(tiny_data["shards"] / "test")
    expected = _samples(split)
    reader = SampleReader(split)
    keys = sorted(reader.locations)
    for key in keys:
        got = reader.fetch(key)
        assert got["jpg"] == expected[key]["jpg"] and got["label.png"] == expected[key]["label.png"]
    with slow_http_server(tiny_data["shards"], 0.0) as url:
        remote = SampleReader(f"{url}/test")
        for key in keys[::7]:
            assert remote.fetch(key)["label.png"] == expected[key]["label.png"]


@pytest.mark.parametrize("protocol", ["denet", "standard"])
def test_eval_episodes_label_handling(tiny_data, protocol):
    m = manifest(tiny_data, way=2, shot=1, count=6, protocol=protocol)
    ds = EvalEpisodes(m, str(tiny_data["shards"] / "test"), 32, protocol)
    samples = _samples(str(tiny_data["shards"] / "test"))
    batch = collate_eval([ds[i] for i in range(len(ds))])
    assert batch["query_img"].shape == (6, 3, 32, 32) and batch["support_imgs"].shape == (6, 2, 1, 3, 32, 32)
    assert batch["query_id"] == [e["query"] for e in m["episodes"]]
    for j, ep in enumerate(m["episodes"]):
        raw = np.asarray(decode_label(samples[ep["query"]]["label.png"]))
        h, w = batch["query_size"][j].tolist()
        label = batch["query_label"][j, :h, :w].numpy()
        if protocol == "standard":  # original size, void ignored
            assert (h, w) == raw.shape
            assert np.array_equal(label == IGNORE_INDEX, raw == IGNORE_INDEX)
            assert np.array_equal(label == 1, raw == ep["classes"][0])
        else:  # resized to image_size, void counted as background (support masks too)
            assert (h, w) == (32, 32) and not (label == IGNORE_INDEX).any()
            assert not (batch["support_masks"][j] == IGNORE_INDEX).any()
        assert (batch["support_masks"][j] == 1).sum() > 0


@pytest.mark.parametrize("protocol", ["denet", "standard"])
def test_letterboxed_eval_episodes_pad_images_and_never_score_the_padding(tiny_data, protocol):
    """evaluate.resize: letterbox (PFENet's test): every image sits top-left on a black square; a label at the
    image size (denet) is 255 on the padding even though denet counts void as background; an original-size
    label (standard) is the raw label; the batch says so (`letterbox`) for run_episodes."""
    from train.stream.transforms import letterbox_size

    m = manifest(tiny_data, way=1, shot=1, count=6, protocol=protocol)
    split = str(tiny_data["shards"] / "test")
    ds = EvalEpisodes(m, split, 32, protocol, resize="letterbox")
    samples = _samples(split)
    batch = collate_eval([ds[i] for i in range(len(ds))])
    assert batch["letterbox"].tolist() == [True] * 6
    assert not collate_eval([EvalEpisodes(m, split, 32, protocol)[0]])["letterbox"].any()
    for j, ep in enumerate(m["episodes"]):
        raw = np.asarray(decode_label(samples[ep["query"]]["label.png"]))
        h, w = letterbox_size(*raw.shape, 32)
        img = batch["query_img"][j]
        assert not img[:, h:].any() and not img[:, :, w:].any() and img[:, :h, :w].any()
        label = batch["query_label"][j]
        if protocol == "denet":
            assert (label[h:] == IGNORE_INDEX).all() and (label[:, w:] == IGNORE_INDEX).all()
            assert not (label[:h, :w] == IGNORE_INDEX).any()
        else:
            assert tuple(batch["query_size"][j].tolist()) == raw.shape
    with pytest.raises(ValueError, match=r"evaluate\.resize = 'pad'"):
        EvalEpisodes(m, split, 32, protocol, resize="pad")


def test_truncated_test_shard_stops_evaluation_naming_it(tiny_data, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(tiny_data["shards"] / "test", test)
    shutil.copy(tiny_data["shards"] / "complete.json", tmp_path)  # the dataset's completion record
    bad = test / "test-000001.tar"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    reader = SampleReader(str(test))
    in_bad = sorted((loc.start, k) for k, loc in reader.locations.items() if loc.shard == bad.name)
    with pytest.raises(ShardError, match=r"test-000001\.tar"):
        reader.fetch(in_bad[-1][1])  # a sample past the cut
    m = manifest(tiny_data, count=40)
    ds = EvalEpisodes(m, str(test), 32, "denet")
    with pytest.raises(ShardError, match=r"test-000001\.tar"):
        for i in range(len(ds)):
            ds[i]


def test_normalize_moves_and_standardises():
    batch = {
        "query_img": torch.full((1, 3, 2, 2), 124, dtype=torch.uint8),
        "support_imgs": torch.zeros((1, 1, 1, 3, 2, 2), dtype=torch.uint8),
        "query_label": torch.tensor([[[0, 1], [255, 1]]], dtype=torch.uint8),
        "query_full_label": torch.tensor([[[0, 80], [255, 80]]], dtype=torch.uint8),
        "support_masks": torch.tensor([[[[[1, 0], [255, 0]]]]], dtype=torch.uint8),
        "query_id": ["a"],
    }
    out = normalize(batch, "cpu")
    assert out["query_img"].dtype == torch.float32
    for key in ("query_label", "query_full_label", "support_masks"):  # uint8 in, int64 out, same values
        assert out[key].dtype == torch.int64 and torch.equal(out[key], batch[key].long())
    assert abs(out["query_img"][0, 0].mean().item() - (124 / 255 - 0.485) / 0.229) < 1e-5
    assert torch.allclose(out["support_imgs"][0, 0, 0, 2], torch.full((2, 2), -0.406 / 0.225))
    assert out["query_id"] == ["a"]


def test_two_way_queries_hold_both_classes_at_the_rate_the_rule_implies():
    """Under denet 2-way: the query is any pool image of the first class without a novel class outside the
    episode; the share holding the second class follows from the pools (hand-computed here: 4/9)."""
    pairs = {"a": [1], "b": [1, 2], "c": [2], "d": [2, 3], "e": [3], "f": [1, 3], "g": [1]}
    image_classes = {k: dict.fromkeys(cs, 100) for k, cs in pairs.items()}
    # (1,2): queries a b g -> 1/3; (1,3): a f g -> 1/3; the four other ordered pairs: 1/2 each
    share = expected_with_every_way(pairs, image_classes, [1, 2, 3], way=2, shot=1, protocol="denet")
    assert share == pytest.approx((1 / 3 + 1 / 3 + 4 * 0.5) / 6)
    episodes = draw_test_episodes(
        pairs, image_classes, [1, 2, 3], way=2, shot=1, count=3000, seed=0, protocol="denet"
    )
    observed = episodes_with_every_way(episodes, pairs) / len(episodes)
    assert abs(observed - share) < 3 * np.sqrt(share * (1 - share) / len(episodes))
    # a query never shows a novel class outside its episode
    assert all(set(pairs[ep["query"]]) <= set(ep["classes"]) for ep in episodes)


def test_stage_main_says_how_often_two_way_queries_hold_both_classes(tiny_data, tmp_path, capsys):
    params = write_params(tmp_path, way=2)
    out = tmp_path / "ep"
    argv = ["--shards", str(tiny_data["shards"]), "--folds", str(tiny_data["folds"]), "--out", str(out)]
    assert main([*argv, "--params", str(params)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = read_manifest(out / "seed0.json")
    pairs = read_pairs((tiny_data["folds"] / "fold0" / "test.txt").read_text())
    held = episodes_with_every_way(m["episodes"], pairs)
    assert line.startswith(
        f"queries holding both classes (presence rule): {held} of {len(m['episodes'])} (seed 0)"
    )
    assert "the denet rule implies" in line
