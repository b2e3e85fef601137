"""The episodes that pick the best checkpoint: a held-out draw by default, the release's rule on request."""

from __future__ import annotations

from train_helpers import tiny_params

from train.stream import index as ep
from train.stream.manifests import build_manifest
from train.train import train_config_from_params
from train.validation import VAL_SEED_OFFSET, validation_episodes


def test_default_validation_avoids_the_test_queries(tiny_data):
    p = tiny_params()
    val = validation_episodes(p, tiny_data["shards"], tiny_data["folds"])
    test = build_manifest(
        str(tiny_data["shards"]), str(tiny_data["folds"]), p.dataset, p.fold, p.train.way, p.train.shot,
        p.protocol, p.seed, int(p.sampler.test_episodes), shot_key="train.shot",
    )  # fmt: skip
    assert len(val["episodes"]) == p.sampler.val_episodes
    assert not {e["query"] for e in val["episodes"]} & {e["query"] for e in test["episodes"]}


def test_select_on_test_is_the_release_rule(tiny_data):
    """`select_on_test: true`: test_episodes (the release's 1000) novel-class episodes of the test split,
    its own draw (the release's val set is a second draw of its test split, `voc_sbd.py:79-80`)."""
    p = tiny_params(train__select_on_test=True, sampler__test_episodes=12)
    val = validation_episodes(p, tiny_data["shards"], tiny_data["folds"])
    _, novel = ep.read_fold(str(tiny_data["folds"]), p.fold)
    test_pairs = ep.read_pairs((tiny_data["folds"] / f"fold{p.fold}" / "test.txt").read_text())
    assert len(val["episodes"]) == 12 and val["seed"] == p.seed + VAL_SEED_OFFSET
    assert {e["classes"][0] for e in val["episodes"]} <= set(novel)
    assert {e["query"] for e in val["episodes"]} <= set(test_pairs)
    assert val["way"] == 1 and val["protocol"] == "denet"


def test_official_validation_runs_every_500_steps():
    p = tiny_params(source="official", train__val_every="auto", sampler__test_episodes="auto")
    assert train_config_from_params(p).val_every == 500 and p.sampler.test_episodes == 1000
