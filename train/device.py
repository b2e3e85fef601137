"""`train.device` values to torch device strings: `auto` is resolved here, where torch is loaded anyway."""

from __future__ import annotations

AUTO = "auto"


class DeviceError(ValueError):
    """`train.device` names a device this machine does not have; the message says what it has."""


def resolve_device(spec: str) -> str:
    """`auto` -> "cuda" when a GPU is visible, else "cpu"; any other value ("cpu", "cuda:1") is checked
    against the machine (DeviceError naming what it has) and returned unchanged."""
    import torch

    if spec == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"train.device: {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"train.device: {spec} is not available: this machine has no CUDA device; use cpu"
            )
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"train.device: {spec} is not available: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}"
            )
    return spec
