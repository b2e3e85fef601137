"""Fixtures: tiny raw trees in the official layouts, built per test in tmp_path (helpers in raw_fixtures)."""

from pathlib import Path

import pytest
from raw_fixtures import make_coco_raw, make_pascal_raw


@pytest.fixture
def pascal_raw(tmp_path: Path) -> Path:
    return make_pascal_raw(tmp_path / "raw")


@pytest.fixture
def coco_raw(tmp_path: Path) -> Path:
    return make_coco_raw(tmp_path / "raw")
