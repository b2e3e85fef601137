"""A tiny PASCAL-like dataset in the design.md formats (shards, index.tsv, manifests, fold lists)."""

from pathlib import Path

import pytest

from train.bench.bench_loader import write_synthetic


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 train and 60 test images of 48x40 px in shards of 10, folds for all 4 folds (denet rules)."""
    return write_synthetic(
        tmp_path_factory.mktemp("tiny"), n_train=60, n_test=60, size=(48, 40), shard_max=10
    )
