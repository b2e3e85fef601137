"""Spread of a score: per-episode sums give FewShotIoU's numbers; bootstrap interval; std over seeds."""

import numpy as np
import pytest

from train.metrics import FewShotIoU
from train.stats import EpisodeSums, bootstrap_miou, mean_and_std, scores


def _random_evaluation(rng: np.random.Generator, episodes: int, classes=(1, 2, 3, 4, 5), way: int = 2):
    """Random binary maps scored by FewShotIoU, and the same episodes as EpisodeSums records."""
    metric, records = FewShotIoU(), []
    for e in range(episodes):
        for c in rng.choice(classes, size=way, replace=False):
            gt = (rng.random((6, 7)) < rng.uniform(0.0, 0.5)).astype(np.int64)
            gt[rng.random((6, 7)) < 0.1] = 255
            pred = (rng.random((6, 7)) < 0.4).astype(np.int64)
            one = FewShotIoU()
            if one.update(pred, gt, int(c)):
                metric.merge(one)
                c = int(c)
                records.append((e, c, one.inter_fg[c], one.union_fg[c], one.inter_bg[c], one.union_bg[c]))
    return metric, EpisodeSums.from_records(episodes, records)


def test_sums_give_the_metric_of_all_episodes():
    metric, sums = _random_evaluation(np.random.default_rng(0), 40)
    expected, got = metric.compute(), scores(sums)
    assert got["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert got["fb_iou"] == pytest.approx(expected["fb_iou"], abs=1e-12)
    assert got["per_class"] == pytest.approx(expected["per_class"])
    assert EpisodeSums.from_json(sums.to_json()).to_json() == sums.to_json()


def test_bootstrap_is_repeatable_and_brackets_the_score():
    _, sums = _random_evaluation(np.random.default_rng(1), 60)
    low, high = bootstrap_miou([[sums]])
    assert (low, high) == bootstrap_miou([[sums]])  # fixed bootstrap seed
    assert low < scores(sums)["miou"] < high
    # another bootstrap seed moves the ends a little, not the centre
    other = bootstrap_miou([[sums]], seed=5)
    assert other != (low, high) and abs(other[0] - low) < 0.25 * (high - low)


def test_bootstrap_narrows_with_more_episodes_and_vanishes_for_identical_ones():
    rng = np.random.default_rng(2)
    _, few = _random_evaluation(rng, 20)
    _, many = _random_evaluation(rng, 500)
    assert np.subtract(*bootstrap_miou([[many]])[::-1]) < np.subtract(*bootstrap_miou([[few]])[::-1])
    same = EpisodeSums.from_records(10, [(e, 3, 5, 10, 7, 9) for e in range(10)])
    assert bootstrap_miou([[same]]) == pytest.approx((50.0, 50.0))


def test_a_cell_of_folds_and_seeds_averages_them():
    """Two folds with different scores: the interval sits around the mean of the fold means."""
    a = EpisodeSums.from_records(4, [(e, 1, 2, 10, 5, 5) for e in range(4)])  # IoU 20 everywhere
    b = EpisodeSums.from_records(4, [(e, 6, 6, 10, 5, 5) for e in range(4)])  # IoU 60 everywhere
    assert bootstrap_miou([[a], [b]]) == pytest.approx((40.0, 40.0))
    assert bootstrap_miou([[a, b]]) == pytest.approx((40.0, 40.0))  # two seeds of one fold


def test_mean_over_folds_and_sample_std_of_per_seed_fold_means():
    mean, std = mean_and_std([{0: 50.0, 1: 54.0}, {0: 40.0, 1: 42.0}])
    assert mean == pytest.approx(46.5) and std == pytest.approx(np.std([45.0, 48.0], ddof=1))
    assert mean_and_std([{0: 50.0}]) == (50.0, 0.0)
    # a fold with fewer seeds: its own mean counts once, the std uses the folds that have each seed
    mean, std = mean_and_std([{0: 50.0, 1: 54.0}, {0: 40.0}])
    assert mean == pytest.approx((52.0 + 40.0) / 2) and std == pytest.approx(np.std([45.0, 54.0], ddof=1))
