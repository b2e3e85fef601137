"""Atomic file publishing and digests: an interrupted stage never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# Temp files and folders are `.<final name>.<pid>-<8 random chars>.tmp` beside their final name: the
# pid tells a later run whether the writer is gone (then the leftover is removed); names outside the
# pattern are never touched.
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)-[a-z0-9_]{8}\.tmp")


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a temp file beside `path`; on success fsync and rename it onto `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any, sort_keys: bool = True) -> None:
    """Write `data` as indented JSON (keys sorted unless `sort_keys` is False), atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=sort_keys)
        handle.write("\n")


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The JSON object at `path`; None when the file is missing, not JSON, or not an object."""
    try:
        record = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large archives need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_dir(parent: str | Path, name: str) -> Path:
    """A new temp folder in `parent` to become `parent/name`, named so `remove_stale_temps` knows it."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(name), suffix=".tmp"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[str]:
    """Delete the temp files and folders in `folder` that a killed run of this toolkit left behind.

    Only names of the toolkit's temp pattern whose writing process no longer runs are removed: a
    concurrent writer's temp file and any file of the user's are kept. Returns the removed names.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if match is None or int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def replace_dir(src: str | Path, dest: str | Path) -> None:
    """Put the folder `src` at `dest` by rename (same filesystem); a previous `dest` is renamed aside
    first and deleted after, so `dest` never holds a mix of old and new files."""
    src, dest = Path(src), Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        os.replace(src, dest)
        return
    old = temp_dir(dest.parent, dest.name)
    os.replace(dest, old / dest.name)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True)
