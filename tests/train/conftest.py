"""A tiny PASCAL-like dataset in the design.md formats (shards, index.tsv, manifests, fold lists)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from train.bench.bench_loader import write_synthetic


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 train and 60 test images of 48x40 px in shards of 10, folds for all 4 folds (denet rules)."""
    return write_synthetic(
        tmp_path_factory.mktemp("tiny"), n_train=60, n_test=60, size=(48, 40), shard_max=10
    )


@pytest.fixture(autouse=True, scope="session")
def shard_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remote reads in tests cache shards in a temp folder, never in the user's ~/.cache."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved
