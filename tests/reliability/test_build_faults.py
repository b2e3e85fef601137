"""Builds that fail or are killed: nothing partial is published, leftovers are cleaned by the next run,
and a failing build always exits (no pool shutdown hang)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from raw_fixtures import VOC, make_pascal_raw, write_params

from pipeline import shards as shards_stage
from pipeline import verify
from pipeline.build import build
from train.stream.shard_io import ShardError, shard_urls

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 60  # a failing build of a few tiny images exits in about a second; a hang never does
RUNS = 20


def _hidden(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*"))


# ---------------------------------------------------------------- 3. partial output that looks complete


def test_a_build_that_fails_in_its_second_split_publishes_nothing(pascal_raw, tmp_path, capsys):
    (pascal_raw / VOC / "JPEGImages" / "2007_000010.jpg").write_bytes(b"not a jpeg")  # a test-split image
    out = tmp_path / "shards"
    argv = ["--raw", str(pascal_raw), "--out", str(out), "--params", str(write_params(tmp_path))]
    assert shards_stage.main(argv) == 2  # the train split was written first, then the test split failed
    assert "2007_000010.jpg" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists() and _hidden(tmp_path) == []  # no split, no manifest, no temp folder
    assert verify.main([str(tmp_path)]) == 1
    # a folder of the user's given as --out is never replaced
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (pascal_raw / VOC / "JPEGImages" / "2007_000010.jpg").unlink()
    shutil.copy(
        pascal_raw / VOC / "JPEGImages" / "2007_000011.jpg",
        pascal_raw / VOC / "JPEGImages" / "2007_000010.jpg",
    )
    assert shards_stage.main(argv) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


def test_verify_and_the_readers_refuse_a_dataset_without_its_completion_record(tiny_data, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_data["shards"], shards)
    assert verify.verify_tree(shards) == (2, [])
    # what a partial copy, or a build by an older version that stopped in its second split, leaves
    (shards / "complete.json").unlink(missing_ok=True)
    shutil.rmtree(shards / "test")
    assert verify.main([str(shards)]) == 1
    out = capsys.readouterr().out.splitlines()
    hint = "the build that wrote it did not finish: run the shards stage again"
    assert out[0] == f"{shards / 'complete.json'} is missing: {hint}"
    assert out[-1] == "verify: 1 split(s), 1 problem(s)"
    with pytest.raises(ShardError, match=r"complete\.json is missing"):
        shard_urls(str(shards / "train"))  # training's reader
    from train.stream.index import read_index

    shutil.copytree(tiny_data["shards"] / "test", shards / "test")
    with pytest.raises(ShardError, match=r"complete\.json is missing"):
        read_index(str(shards / "test"))  # evaluation's and the episodes stage's reader


# ---------------------------------------------------------------- 4. leftovers of a killed build

KILL_BUILD = """
import os, signal, sys
import pipeline.build, pipeline.shards as shards
real = shards.sample_members
def sample_members(rec):
    if rec.key == "2007_000002":
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-shard, its temp files open
    return real(rec)
shards.sample_members = sample_members
sys.exit(pipeline.build.main(sys.argv[1:]))
"""


def test_temp_files_of_a_killed_build_are_removed_by_the_next_run(pascal_raw, tmp_path):
    data, params = tmp_path / "data", write_params(tmp_path)
    args = ["--dataset", "pascal", "--protocol", "denet", "--raw", str(pascal_raw), "--out", str(data)]
    cmd = [sys.executable, "-c", KILL_BUILD, *args, "--params", str(params)]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=BOUND_S).returncode == -signal.SIGKILL
    assert [n for n in _hidden(data) if n.endswith(".tmp")]  # the kill left temp files
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid whose process is gone: what a list file killed while written leaves
    (data / "folds/pascal/fold0").mkdir(parents=True)
    (data / f"folds/pascal/fold0/.train.txt.{dead.pid}-abcdefgh.tmp").write_text("half")
    users = {data / ".notes.tmp": "a user's", data / "shards/.pascal.old.tmp": "files"}
    for path, text in users.items():
        path.write_text(text)
    build("pascal", "denet", pascal_raw, data, params, progress=False)
    assert _hidden(data) == [".notes.tmp", "shards/.pascal.old.tmp"]  # only the user's hidden files
    assert all(path.read_text() == text for path, text in users.items())
    assert verify.verify_tree(data / "shards") == (2, [])


# ---------------------------------------------------------------- 5. failing builds never hang

KILL_WORKER = """
import os, signal, sys
import pipeline.masks as masks
from pipeline.shards import main
parent, real = os.getpid(), masks.read_jpeg
def read_jpeg(path):
    if os.getpid() != parent and str(path).endswith("2007_000003.jpg"):
        os.kill(os.getpid(), signal.SIGKILL)  # a pool worker ended mid-task, as the OOM killer does
    return real(path)
masks.read_jpeg = read_jpeg
sys.exit(main(sys.argv[1:]))
"""


def test_failing_builds_always_exit_within_a_bound(tmp_path):
    """20 failing builds with 2 pool workers: a corrupt JPEG (the worker reports it) alternating with a
    worker killed mid-task. Each must exit with the one-line error; none may hang or leave a worker."""
    corrupt = make_pascal_raw(tmp_path / "corrupt")
    (corrupt / VOC / "JPEGImages" / "2007_000003.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    intact = make_pascal_raw(tmp_path / "intact")
    params = write_params(tmp_path, workers=2)
    for run in range(RUNS):
        killed = run % 2 == 1
        raw = intact if killed else corrupt
        argv = ["--raw", str(raw), "--out", str(tmp_path / f"out{run}"), "--params", str(params)]
        cmd = (
            [sys.executable, "-c", KILL_WORKER, *argv]
            if killed
            else [sys.executable, "-m", "pipeline.shards", *argv]
        )
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"run {run} ({'worker killed' if killed else 'corrupt JPEG'}) hung for {BOUND_S} s")
        last = err.strip().splitlines()[-1]
        want = "a labelling worker died" if killed else "2007_000003.jpg: corrupt image"
        assert proc.returncode == 2 and want in last, (run, err[-500:])
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # no worker of the build is left behind
        assert not (tmp_path / f"out{run}").exists()
