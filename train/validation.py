"""Validation during training: the held-out episode draw and the score that picks the best checkpoint.

It lives beside evaluation (it is `train.evaluate.evaluate_model` on another draw), so `train.train`
imports it and evaluation never imports training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.config import Params
from train import evaluate as ev
from train.checkpoint import unwrap
from train.stream.shard_io import join_url

VAL_SEED_OFFSET = 1  # the validation draw uses seed + 1: a different draw from the test episodes


def validation_episodes(p: Params, shards: str | Path, folds: Path) -> dict[str, Any]:
    """Episodes that pick the best checkpoint during training.

    Default: a separate draw (seed + 1) of novel-class episodes whose queries avoid the queries of the
    test draw with the training seed (not `evaluate.seeds`: adding a test seed must not retrain the
    model); when that leaves too few images (small data sets, where the test draw uses every image),
    the draw falls back to the same images, still other episodes.
    `train.select_on_test`: the test draw itself (what the release does).
    """
    from train.stream.draw import draw_test_episodes, episodes_digest
    from train.stream.index import read_fold, read_index, read_pairs
    from train.stream.manifests import build_manifest

    test = build_manifest(
        str(shards), str(folds), p.dataset, p.fold, p.train.way, p.train.shot, p.protocol, p.seed,
        int(p.sampler.test_episodes), shot_key="train.shot",
    )  # fmt: skip
    if p.train.select_on_test:
        return test
    _, novel = read_fold(str(folds), p.fold)
    pairs = read_pairs((folds / f"fold{p.fold}" / "test.txt").read_text())
    test_queries = {e["query"] for e in test["episodes"]}
    image_classes, _ = read_index(join_url(str(shards), "test"))
    draw = {"way": p.train.way, "shot": p.train.shot, "count": int(p.sampler.val_episodes),
            "seed": p.seed + VAL_SEED_OFFSET, "protocol": p.protocol, "shot_key": "train.shot"}  # fmt: skip
    try:
        held_out = {k: v for k, v in pairs.items() if k not in test_queries}
        episodes = draw_test_episodes(held_out, image_classes, novel, **draw)
    except ValueError:
        print("validation: too few images besides the test queries; other episodes of the same images")
        episodes = draw_test_episodes(pairs, image_classes, novel, **draw)
    return {**test, "seed": p.seed + VAL_SEED_OFFSET, "episodes": episodes,
            "sha256_of_episodes": episodes_digest(episodes)}  # fmt: skip


def make_validator(
    p: Params, shards: str | Path, folds: Path, device: str, amp: bool
) -> Callable[[nn.Module], float]:
    """mIoU on the validation draw (test episodes with train.select_on_test), split over the ranks."""
    episodes = validation_episodes(p, shards, folds)

    def validate(model: nn.Module) -> float:
        result = ev.evaluate_model(
            unwrap(model), ev.episode_batches(p, shards, episodes), p.protocol, device, amp
        )
        return float(result["miou"])

    return validate
