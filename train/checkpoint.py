"""Self-describing checkpoints: atomic save, strict `weights_only=True` load, clear errors when corrupt."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.io import atomic_write

FORMAT = "fss-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_name", "model_kwargs", "model", "step")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def save_checkpoint(
    path: str | Path,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    model: nn.Module,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    rng: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write everything needed to rebuild the model (and resume training) to `path`, atomically.

    The file is written to a temp name beside `path`, fsynced, then renamed: a kill at any moment
    leaves either the previous checkpoint or the new one, never a truncated file under `path`.
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "params": params,
        "extra": extra or {},
    }
    path = Path(path)
    try:
        with atomic_write(path, "wb") as handle:
            torch.save(payload, handle)
    except RuntimeError as exc:  # torch's zip writer reports a failed write (a full disk) this way
        raise OSError(
            f"{path}: cannot write the checkpoint, is the disk full? ({one_line_of(exc)}); "
            "the previous one is kept"
        ) from exc
    path.chmod(0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared and read by others
    _fsync_dir(path.parent)


def one_line_of(exc: BaseException) -> str:
    """The last non-empty line of an error message (torch's errors carry C++ context lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; raise CheckpointError if missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip, unpickling and EOF errors all mean the same thing here
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and was not loaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "delete it to start from scratch, or pass an intact checkpoint"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an {FORMAT} file (written by another tool?)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if ckpt["version"] > VERSION:
        raise CheckpointError(f"checkpoint {path} has version {ckpt['version']} > {VERSION}: update the code")
    return ckpt


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind `torch.compile` and DistributedDataParallel wrappers (keys without prefix)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def load_model_state(model: nn.Module, ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> None:
    """Load the weights strictly: any missing or unexpected key is an error naming the keys."""
    try:
        unwrap(model).load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match model {ckpt['model_name']}: {exc}") from exc


def build_model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone (name + constructor kwargs) and load its weights."""
    import fss_model

    ckpt = load_checkpoint(path, map_location)
    try:
        model = fss_model.build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    except (TypeError, ValueError) as exc:  # a constructor's own checks of its arguments
        raise CheckpointError(f"{path}: its model {ckpt['model_name']} cannot be built: {exc}") from exc
    load_model_state(model, ckpt, path)
    return model, ckpt


def capture_rng(generator: np.random.Generator | None = None) -> dict[str, Any]:
    """The state of every random source a run uses (torch CPU/CUDA, Python, the passed-in generator)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": generator.bit_generator.state if generator is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: np.random.Generator | None = None) -> None:
    """Undo `capture_rng`: put every random source back where it was at save time."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if generator is not None and state.get("numpy") is not None:
        generator.bit_generator.state = state["numpy"]
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
