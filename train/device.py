"""`train.device` and `train.compile` values for this machine: their `auto` is resolved here, where torch
is loaded anyway (`train.params.resolve_machine` for the printed params, `train.train` for a run)."""

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


# `train.compile: auto` compiles runs at least this long: on one H200 CUDA graphs saved ~8 ms a step
# (DENet ResNet-50, 321 px, batch 8: 27 -> 19 ms in the trainer's loop) against a compile of tens of
# seconds, so short runs (the toy default's 600 steps) are faster eager.
COMPILE_MIN_STEPS = 10_000


def compile_mode(spec: str, device: str, steps: int) -> str:
    """`train.compile` -> a torch.compile mode or "none".

    auto: CUDA graphs ("reduce-overhead") for a long run on a single CUDA process, where the eager
    step is bound by kernel launches (on one H200, 383 -> 641 episodes/s for DENet ResNet-50 at
    321 px, batch 8, fed by the sampler); "none" on CPU, under torchrun (the eager path is the
    tested one there) and for runs shorter than COMPILE_MIN_STEPS.
    """
    if spec != AUTO:
        return spec
    from train import distributed

    cuda_alone = device.startswith("cuda") and not distributed.launched()
    return "reduce-overhead" if cuda_alone and steps >= COMPILE_MIN_STEPS else "none"
