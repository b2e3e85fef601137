"""`train.device` values to torch device strings: `auto` is resolved here, where torch is loaded anyway."""

from __future__ import annotations

AUTO = "auto"


def resolve_device(spec: str) -> str:
    """`auto` -> "cuda" when a GPU is visible, else "cpu"; any other value ("cpu", "cuda:1") unchanged."""
    if spec != AUTO:
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
