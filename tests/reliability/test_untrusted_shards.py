"""Shards, indexes and fold lists are data: no size, name or image in them is trusted by any reader
(verify, training's stream, evaluation's ranged reads), and a mismatch never means an endless loop."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faults import (
    append_raw,
    copy_shards,
    fold0_stream,
    gnu_sparse_member,
    jpeg_claiming,
    pax_size_member,
    replace_member,
)
from PIL import Image
from raw_fixtures import VOC, write_params
from train_helpers import fresh_checkpoint
from train_helpers import write_params as train_params

from pipeline import shards as shards_stage
from pipeline.io import write_json
from pipeline.verify import verify_split
from train import evaluate as ev
from train.params import load_params
from train.stream.by_key import SampleReader
from train.stream.draw import episodes_digest
from train.stream.index import read_index
from train.stream.manifests import build_manifest
from train.stream.shard_io import ShardError

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30


_copy, _stream = copy_shards, fold0_stream


def _last_key(split: Path, shard: str) -> str:
    import tarfile

    with tarfile.open(split / shard) as tar:
        return tar.getmembers()[-1].name.split(".", 1)[0]


# ---------------------------------------------------------------- 7. memory bombs inside shards


@pytest.mark.parametrize("bomb", ["gnu-sparse-1GiB", "pax-size-1e15"])
def test_memory_bombs_in_a_shard_are_shard_errors_naming_shard_and_member(tiny_data, tmp_path, caplog, bomb):
    shards = _copy(tiny_data, tmp_path)
    raws = {}
    for split, shard in (("train", "train-000001.tar"), ("test", "test-000001.tar")):
        member = f"{_last_key(shards / split, shard)}.bomb"  # a member of the shard's last sample
        raw = gnu_sparse_member(member, GIB) if bomb.startswith("gnu") else pax_size_member(member, 10**15)
        append_raw(shards / split, shard, raw)  # the manifest's size and sha256 now match the crafted shard
        raws[split] = (shards / split / shard, member)
    why = "is a sparse file" if bomb.startswith("gnu") else "claims 1000000000000000 bytes, more than"
    # verify: reported as a problem of that shard and member, never read
    path, member = raws["train"]
    problems = verify_split(shards / "train")
    assert len(problems) == 1 and problems[0].startswith(f"shard {path}: member {member!r} {why}"), problems
    # training: the shard is skipped with a warning naming it, and counted
    ds = _stream(tiny_data, shards / "train", episodes_per_epoch=80)
    with caplog.at_level(logging.WARNING, logger="train.stream.sampler"):
        assert len(list(ds)) == 20
    assert str(path) in ds.stats["skipped_shards"]
    assert any(str(path) in r.message and member in r.message and why in r.message for r in caplog.records)
    # evaluation: reading that sample stops, naming shard and member
    path, member = raws["test"]
    with pytest.raises(ShardError, match=rf"shard {path}: member '{member}' {why}"):
        SampleReader(str(shards / "test")).fetch(member.split(".")[0])


# ---------------------------------------------------------------- 11. shard names from data


def test_shard_names_from_an_index_or_manifest_never_leave_the_split(tiny_data, tmp_path):
    shards = _copy(tiny_data, tmp_path)
    outside = tmp_path / "outside" / "evil.tar"
    outside.parent.mkdir()
    shutil.copy(shards / "test" / "test-000000.tar", outside)  # readable: only the name check stops it
    index = shards / "test" / "index.tsv"
    rows = list(csv.reader(io.StringIO(index.read_text()), delimiter="\t"))
    shard_col = rows[0].index("shard")
    for row in rows[1:]:
        if row[shard_col] == "test-000000.tar":
            row[shard_col] = "../../outside/evil.tar"
    index.write_text("".join("\t".join(r) + "\n" for r in rows))
    escape = r"index\.tsv:2: shard name '\.\./\.\./outside/evil\.tar' is not a plain file name"
    with pytest.raises(ShardError, match=escape):
        read_index(str(shards / "test"))  # evaluation's and the episodes stage's reader
    with pytest.raises(ShardError, match="is not a plain file name"):
        SampleReader(str(shards / "test"))
    # verify: a manifest naming a path outside is reported, never opened
    manifest_path = shards / "train" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["name"] = "../../outside/evil.tar"
    manifest_path.write_text(json.dumps(manifest))
    problems = verify_split(shards / "train")
    assert any("shard name '../../outside/evil.tar' is not a plain file name" in p for p in problems)
    assert not any(str(outside) in p or "evil.tar: " in p for p in problems)


# ---------------------------------------------------------------- 6. fold lists that match no shard key

STREAM = """
import sys
from train.stream.index import read_fold, read_pairs
from train.stream.sampler import EpisodeStream
shards, folds = sys.argv[1], sys.argv[2]
base, novel = read_fold(folds, 0)
pairs = read_pairs(open(folds + "/fold0/train.txt").read())
pairs = {"9999_" + k.split("_", 1)[1]: v for k, v in pairs.items()}  # another build's ids: none in the shards
ds = EpisodeStream(shards + "/train", pairs, base, novel, batch_size=2, image_size=32, pool_size=8,
                   episodes_per_epoch=8)
next(iter(ds))
"""


def test_training_stops_when_no_shard_key_is_in_the_fold_list(tiny_data):
    cmd = [sys.executable, "-c", STREAM, str(tiny_data["shards"]), str(tiny_data["folds"])]
    try:
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the stream read shards for 120 s without drawing an episode or stopping")
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 1 and "ShardError" in last, run.stderr[-800:]
    assert "samples in a row hold no base class of the fold's train list" in last
    assert str(tiny_data["shards"] / "train" / "train-") in last  # the shard it was reading


# ---------------------------------------------------------------- 8. decompression bombs


def test_an_oversized_image_stops_the_build_naming_the_file(pascal_raw, tmp_path, capsys):
    path = pascal_raw / VOC / "JPEGImages" / "2007_000001.jpg"
    Image.new("L", (7000, 6000)).save(path, "JPEG", quality=50)  # 42 Mpx: a real, if dull, photo
    argv = ["--raw", str(pascal_raw), "--out", str(tmp_path / "out"), "--params", str(write_params(tmp_path))]
    assert shards_stage.main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{path}: image is 7000x6000 = 42000000 pixels, more than the 36000000 allowed" in last


def test_a_bomb_in_a_shard_is_skipped_in_training_and_stops_evaluation(tiny_data, tmp_path, caplog, capsys):
    shards = _copy(tiny_data, tmp_path)
    train_key = replace_member(shards / "train", "train-000001.tar", "jpg", jpeg_claiming(20000, 20000))
    ds = _stream(tiny_data, shards / "train", episodes_per_epoch=200)
    with caplog.at_level(logging.WARNING, logger="train.stream.sampler"):
        assert len(list(ds)) == 50  # the epoch completes without the bomb
    assert f"{shards / 'train' / 'train-000001.tar'}:{train_key}" in ds.stats["skipped_samples"]
    assert any(train_key in r.message and "too large" in r.message for r in caplog.records)
    # evaluation: the episode needing that sample stops, naming shard and key (one line from the CLI)
    params = train_params(tmp_path)
    manifest = build_manifest(str(shards), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", 0, 40)
    reader = SampleReader(str(shards / "test"))
    used = [k for e in manifest["episodes"] for k in [e["query"], *e["supports"][0]]]
    key = next(k for k in used if reader.locations[k].end is None)  # the last sample of its shard
    shard = reader.locations[key].shard
    assert replace_member(shards / "test", shard, "jpg", jpeg_claiming(20000, 20000)) == key
    argv = _evaluate_argv(tmp_path, shards, params, manifest)
    assert ev.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"shard {shards / 'test' / shard}: sample {key}: .jpg: image is too large" in err
    assert not (tmp_path / "r.json").exists()
    # training-episode manifests read by key through the same reader: the bomb is refused there too
    with pytest.raises(ShardError, match=rf"sample {train_key}: \.jpg: image is too large"):
        SampleReader(str(shards / "train")).fetch_many([train_key])


def _evaluate_argv(tmp_path: Path, shards: Path, params: Path, manifest: dict) -> list[str]:
    write_json(tmp_path / "m.json", manifest)
    fresh_checkpoint(tmp_path / "c.pt", load_params(params))
    argv = ["--params", str(params), "--shards", str(shards), "--no-trivial"]
    for flag, name in (("--checkpoint", "c.pt"), ("--manifest", "m.json"), ("--out", "r.json")):
        argv += [flag, str(tmp_path / name)]
    return argv


def test_evaluation_never_reports_nan_it_names_the_episode(tiny_data, tmp_path, capsys):
    shards = _copy(tiny_data, tmp_path)
    params = train_params(tmp_path)
    manifest = build_manifest(str(shards), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", 0, 40)
    reader = SampleReader(str(shards / "test"))
    episode = next(e for e in manifest["episodes"] if reader.locations[e["query"]].end is None)
    with Image.open(io.BytesIO(reader.fetch(episode["query"])["label.png"])) as label:
        size = label.size
    blank = io.BytesIO()
    Image.new("L", size).save(blank, "PNG")  # an all-background label for the query
    replace_member(shards / "test", reader.locations[episode["query"]].shard, "label.png", blank.getvalue())
    one = {**manifest, "episodes": [episode], "sha256_of_episodes": episodes_digest([episode])}
    assert ev.main(_evaluate_argv(tmp_path, shards, params, one)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"episode 0 (query {episode['query']}, classes {episode['classes']})" in err
    assert "holds no pixel of class" in err and not (tmp_path / "r.json").exists()
