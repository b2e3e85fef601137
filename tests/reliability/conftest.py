"""Fixtures of the fault-injection suite: tiny raw trees and tiny shards, built by the tests in tmp dirs."""

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
# the helpers that build tiny data live beside the stage tests; this suite reuses them
for folder in ("pipeline", "train"):
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))

from raw_fixtures import make_coco_raw, make_pascal_raw  # noqa: E402

from train.bench.bench_loader import write_synthetic  # noqa: E402


@pytest.fixture
def pascal_raw(tmp_path: Path) -> Path:
    return make_pascal_raw(tmp_path / "raw")


@pytest.fixture
def coco_raw(tmp_path: Path) -> Path:
    return make_coco_raw(tmp_path / "raw")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 train and 60 test images of 48x40 px in shards of 10 (6 per split), folds of all 4 folds."""
    return write_synthetic(
        tmp_path_factory.mktemp("tiny"), n_train=60, n_test=60, size=(48, 40), shard_max=10
    )
