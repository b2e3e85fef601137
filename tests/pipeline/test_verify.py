"""verify: a clean build passes; a flipped byte, a missing or an unlisted shard is reported."""

from __future__ import annotations

import shutil

import pytest
from raw_fixtures import write_params

from pipeline.config import load_params
from pipeline.shards import build_shards
from pipeline.verify import main, verify_split, verify_tree


@pytest.fixture
def built(pascal_raw, tmp_path):
    build_shards(pascal_raw, tmp_path / "out", load_params(write_params(tmp_path)), progress=False)
    return tmp_path / "out"


def test_clean_build_verifies(built, capsys):
    assert verify_tree(built) == (2, [])
    assert main([str(built)]) == 0 and "0 problem(s)" in capsys.readouterr().out


def test_flipped_byte_is_caught(built, capsys):
    shard = built / "train" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x01  # inside the first sample's JPEG bytes: the tar itself still parses
    shard.write_bytes(bytes(data))
    problems = verify_split(built / "train")
    assert len(problems) == 1 and "train-000001.tar: corrupt: sha256" in problems[0]
    assert main([str(built), "--fast"]) == 1 and "train-000001.tar" in capsys.readouterr().out


def test_missing_truncated_and_unlisted_shards(built):
    (built / "test" / "test-000002.tar").unlink()
    shard = built / "test" / "test-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1024])
    shutil.copy(built / "test" / "test-000001.tar", built / "test" / "test-000099.tar")
    problems = "\n".join(verify_split(built / "test"))
    assert "test-000002.tar: missing" in problems
    assert "test-000000.tar: corrupt: 1024 bytes" in problems
    assert "test-000099.tar: not listed" in problems


def test_index_pointing_elsewhere_is_reported(built):
    index = built / "train" / "index.tsv"
    lines = index.read_text().splitlines()
    cols = lines[1].split("\t")
    cols[-1] = str(int(cols[-1]) + 512)
    index.write_text("\n".join([lines[0], "\t".join(cols), *lines[2:]]) + "\n")
    assert "index.tsv:2:" in verify_split(built / "train")[0]


def test_incomplete_split_is_reported(built):
    (built / "train" / "manifest.json").unlink()
    assert verify_split(built / "train") == [
        f"{built / 'train'}: manifest.json is missing (split incomplete)"
    ]
