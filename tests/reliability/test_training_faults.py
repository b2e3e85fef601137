"""Training under SIGKILL and full disks: --resume ends bit-identical; the last full checkpoint survives."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from train_helpers import tiny_params, write_params

from train import checkpoint as ck
from train import train as tr
from train.bench.bench_loader import write_synthetic
from train.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
# The child trains with train.main; the hook below stops it at a chosen moment and says so on stdout.
CHILD = """
import sys, time
from train import checkpoint, train
{hook}
sys.exit(train.main({argv!r}))
"""
# killed while last.pt of step 4 is half written (steps 1-4; checkpoints every 2 steps)
DURING_WRITE = """
import contextlib
real_write, real_save, target = checkpoint.atomic_write, checkpoint.torch.save, []
@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    target.append(str(path))
    with real_write(path, mode) as handle:
        yield handle
def save(obj, handle):
    real_save(obj, handle)
    if obj["step"] == 4 and target[-1].endswith("last.pt"):
        handle.truncate(handle.tell() // 2)
        handle.flush()
        print("killing", flush=True)
        time.sleep(120)
checkpoint.atomic_write, checkpoint.torch.save = atomic_write, save
"""
# killed during step 4, well after the step-2 checkpoint was completely written
BETWEEN_WRITES = """
real_batches = train.train_batches
def batches(*args, **kwargs):
    for i, batch in enumerate(real_batches(*args, **kwargs)):
        if i == 3:
            print("killing", flush=True)
            time.sleep(120)
        yield batch
train.train_batches = batches
"""


def _kill_child(hook: str, argv: list[str]) -> None:
    code = textwrap.dedent(CHILD).format(hook=textwrap.dedent(hook), argv=argv)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]  # (other output may come first)
            if line.strip() == "killing":
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()  # type: ignore[union-attr]
    assert line.strip() == "killing" and proc.returncode == -signal.SIGKILL


def _weights(path: Path) -> dict:
    ckpt = load_checkpoint(path)
    return {"model": ckpt["model"], "step": ckpt["step"], "extra": ckpt["extra"]}


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "m"
    tr.run(tiny_params(), tiny_data["shards"], tiny_data["folds"], out, progress=False)
    return out / tr.LAST


@pytest.mark.parametrize("when", ["during_write", "between_writes"])
def test_sigkill_then_resume_ends_bit_identical(tiny_data, tmp_path, uninterrupted, when):
    out = tmp_path / "m"
    argv = ["--params", str(write_params(tmp_path)), "--shards", str(tiny_data["shards"]),
            "--folds", str(tiny_data["folds"]), "--out", str(out), "--no-progress"]  # fmt: skip
    _kill_child(DURING_WRITE if when == "during_write" else BETWEEN_WRITES, argv)
    assert load_checkpoint(out / tr.LAST)["step"] == 2  # the last complete checkpoint survived
    if when == "during_write":
        assert list(out.glob(".last.pt.*.tmp"))  # the cut-short write never took the real name
    assert tr.main([*argv, "--resume"]) == 0
    assert not list(out.glob("*.tmp"))  # resume cleared what the kill left behind
    expected, got = _weights(uninterrupted), _weights(out / tr.LAST)
    assert got["step"] == expected["step"] == 4 and got["extra"] == expected["extra"]
    assert expected["model"].keys() == got["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(value, got["model"][key]), key


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    model = nn.Linear(64, 64)
    save_checkpoint(path, model_name="m", model_kwargs={}, model=model, step=1)
    before = path.read_bytes()
    real = ck.torch.save

    def full_disk_save(obj, handle):
        handle.write(b"PK")  # a few bytes reach the temp file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model_name="m", model_kwargs={}, model=model, step=2)
    monkeypatch.setattr(ck.torch, "save", real)
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_fewer_shards_than_loader_workers_still_trains(tmp_path, capsys):
    data = write_synthetic(tmp_path / "one", n_train=24, n_test=24, size=(48, 40), shard_max=24)
    p = tiny_params(sampler__workers=2, train__steps=2, train__episodes="stream")  # 1 shard, 2 workers
    cfg = tr.train_config_from_params(p)
    batches = tr.train_batches(p, cfg, data["shards"], data["folds"])
    got = [next(batches) for _ in range(4)]  # both workers give batches, over an epoch boundary
    batches.close()
    assert all(b["query_img"].shape[0] == p.train.batch_size for b in got)
    assert "fewer shards than the 2 readers; each reader resamples shards" in capsys.readouterr().out


def test_a_full_disk_under_torch_save_itself_is_an_oserror_in_one_line(tmp_path, monkeypatch):
    """torch's zip writer turns a failed write into a RuntimeError with C++ context: the CLIs print
    OSErrors as one line, so the checkpoint writer reports it as one."""
    import contextlib

    from faults import FullDisk

    path = tmp_path / "last.pt"
    model = nn.Linear(300, 300)
    save_checkpoint(path, model_name="m", model_kwargs={}, model=model, step=1)
    before, real = path.read_bytes(), ck.atomic_write

    @contextlib.contextmanager
    def full_disk(target, mode="wb"):
        with real(target, mode) as handle:
            yield FullDisk(handle, 1000)

    monkeypatch.setattr(ck, "atomic_write", full_disk)
    with pytest.raises(OSError, match="cannot write the checkpoint, is the disk full") as info:
        save_checkpoint(path, model_name="m", model_kwargs={}, model=model, step=2)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
