"""Checkpoints: self-describing round trip, weights_only load, corrupt files, SIGKILL during a write."""

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from train.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model_state,
    restore_rng,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_round_trip_is_self_describing(tmp_path):
    torch.manual_seed(0)
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    gen = np.random.default_rng(3)
    gen.random(5)
    random.seed(11)
    rng = capture_rng(gen)
    expect_t, expect_n, expect_p = torch.rand(3), gen.random(3), random.random()
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(
        path,
        model_name="tiny",
        model_kwargs={"num_classes": 21},
        model=model,
        step=7,
        optimizer=opt,
        rng=rng,
        params={"train": {"lr": 0.1}},
        extra={"best": 12.5},
    )
    ckpt = load_checkpoint(path)
    assert (ckpt["model_name"], ckpt["model_kwargs"], ckpt["step"]) == ("tiny", {"num_classes": 21}, 7)
    assert ckpt["params"] == {"train": {"lr": 0.1}} and ckpt["extra"] == {"best": 12.5}
    other = _tiny()
    load_model_state(other, ckpt)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["optimizer"])
    # the random sources come back exactly
    gen2 = np.random.default_rng(99)
    torch.manual_seed(5)
    restore_rng(ckpt["rng"], gen2)
    assert torch.equal(torch.rand(3), expect_t)
    assert np.array_equal(gen2.random(3), expect_n) and random.random() == expect_p
    assert not list(path.parent.glob("*.tmp"))


def test_strict_load_names_the_mismatch(tmp_path):
    path = tmp_path / "a.pt"
    save_checkpoint(path, model_name="tiny", model_kwargs={}, model=_tiny(), step=1)
    with pytest.raises(CheckpointError, match="does not match"):
        load_model_state(nn.Sequential(nn.Conv2d(3, 4, 3)), load_checkpoint(path), path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, model_name="tiny", model_kwargs={}, model=_tiny(), step=1)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"state_dict": {}}, path)
    match = "not an fss-checkpoint" if damage == "foreign" else "corrupt or truncated"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_sigkill_during_write_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    child = textwrap.dedent(f"""
        import sys, time, torch
        from torch import nn
        from train import checkpoint
        model = nn.Linear(4, 4)
        checkpoint.save_checkpoint({str(path)!r}, model_name="m", model_kwargs={{}}, model=model, step=1)
        real_save = torch.save
        def slow_save(obj, handle):
            real_save(obj, handle)
            handle.truncate(handle.tell() // 2)  # half of the bytes are on disk when the kill lands
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)
        checkpoint.torch.save = slow_save
        checkpoint.save_checkpoint({str(path)!r}, model_name="m", model_kwargs={{}}, model=model, step=2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact and usable
    assert list(tmp_path.glob(".last.pt.*.tmp"))  # the half-written temp file never replaced it
