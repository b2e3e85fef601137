"""Errors a user can fix (data, files, params, devices, weights, inputs): `train`, `evaluate` and `infer`
print them as one line and exit 2; anything else (a plain ValueError included) is a bug and keeps its
traceback."""

from __future__ import annotations

import sys

from PIL import Image

from pipeline.errors import UserError

# UserError: ConfigError, ShardError, CheckpointError, WeightsError, DeviceError, ModelArgumentError,
# ManifestError, InputError, ...; OSError covers missing files, full disks and PIL's unreadable images;
# DecompressionBombError is PIL's refusal of a huge image.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError, Image.DecompressionBombError)


def one_line(exc: BaseException) -> str:
    """The error as one line. An error raised in a DataLoader worker carries the worker's traceback,
    whose last line is the error itself."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "  # how a worker's traceback ends
    return lines[-1].removeprefix(prefix)


# where the DVC stages write (dvc.yaml, default params paths) -> the stage that makes what is there
MADE_BY = {"shards/": "shards", "data/folds/": "folds", "data/episodes/": "episodes",
           "models/experiment/": "train", "results/evaluate/": "evaluate"}  # fmt: skip


def missing_output_hint(exc: BaseException) -> str:
    """For a missing file that a DVC stage makes: the `dvc repro` / `dvc pull` that makes it ("" else)."""
    text = str(exc)
    if not (isinstance(exc, FileNotFoundError) or "does not exist" in text):
        return ""
    for folder, stage in MADE_BY.items():
        if folder in text:
            return f" (`dvc repro {stage}` makes it, or `dvc pull {stage}` fetches it from the remote)"
    return ""


def report(exc: BaseException) -> int:
    """Print `exc` as `error: ...` on stderr and return the exit status 2."""
    print(f"error: {one_line(exc)}{missing_output_hint(exc)}", file=sys.stderr)
    return 2
