"""A bounded local cache of whole remote shards, for servers that ignore HTTP `Range`.

A server that answers `200` to a ranged request (Python's `http.server`, many plain web servers)
sends the whole shard for every sample read. The first such answer for a shard is written here once
(at most the manifest's bytes for that shard, checked against its sha256 when the manifest gives
one) and every later read of that shard, in this process or another, is a local `seek` + `read`.
Which servers ignore Range is remembered here too (`<key>.rangeless`, by origin), and the first
ranged request to a server is made by one process at a time (`probing`).

Files are `<root>/<key>-<shard name>`, `key` = sha256 of (URL, size, sha256): a shard rebuilt under
the same name has another key, so a stale copy is never served. One file lock per shard makes
threads and loader processes fetch it once. The folder is bounded by `max_bytes`: the least recently
read shards are removed before a new one is written. webdataset's `FileCache` is not used: it names
files by the URL's last path part (every split has a `shard-000000.tar`), does not bound a body by
its expected size, and its LRU cleanup removes other processes' files in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.shard_format import ShardError

DEFAULT_CACHE_BYTES = 20 << 30  # 21.5 GB: COCO-20i's test shards (~6.6 GB) and PASCAL's, with room
PART, LOCK, RANGELESS = ".part", ".lock", ".rangeless"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/fss-denet/shards`, else `~/.cache/fss-denet/shards`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fss-denet" / "shards"


@dataclass(frozen=True)
class ShardCache:
    """Whole shards by URL under `root`, at most `max_bytes` of them (see the module docstring)."""

    root: str
    max_bytes: int = DEFAULT_CACHE_BYTES

    def path(self, url: str, size: int, sha256: str | None) -> Path:
        key = hashlib.sha256(f"{url}\n{size}\n{sha256 or ''}".encode()).hexdigest()[:24]
        return Path(self.root) / f"{key}-{url.rstrip('/').rpartition('/')[2]}"

    def cached(self, url: str, size: int, sha256: str | None) -> Path | None:
        """The shard's local copy if it is here (marked as read now, for the LRU bound), else None."""
        path = self.path(url, size, sha256)
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
            return path
        return None

    def fetch(self, url: str, size: int, sha256: str | None, fill: Callable[[IO[bytes]], None]) -> Path:
        """The shard's local copy; when missing, `fill(handle)` writes its bytes (once: under a lock).

        The copy must hold exactly `size` bytes (and match `sha256` when given): anything else is a
        ShardError and nothing is kept.
        """
        if size > self.max_bytes:
            raise ShardError(
                f"shard {url}: {size} bytes do not fit the shard cache of {self.max_bytes} bytes"
            )
        path = self.path(url, size, sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(path.name + LOCK)):
            found = self.cached(url, size, sha256)
            if found is not None:
                return found
            self._make_room(size, keep=path)
            part = path.with_name(f"{path.name}{PART}{os.getpid()}-{threading.get_ident()}")
            try:
                with open(part, "wb") as handle:
                    fill(handle)
                got = part.stat().st_size
                if got != size:
                    raise ShardError(f"shard {url}: {got} bytes arrived, its manifest says {size}")
                if sha256 and _sha256(part) != sha256:
                    raise ShardError(f"shard {url}: sha256 differs from its manifest's")
                os.replace(part, path)
            finally:
                part.unlink(missing_ok=True)
        return path

    def _origin_file(self, origin: str, suffix: str) -> Path:
        return Path(self.root) / f"{hashlib.sha256(origin.encode()).hexdigest()[:24]}{suffix}"

    def is_rangeless(self, origin: str) -> bool:
        """Whether a process using this cache found that `origin` ignores Range."""
        return self._origin_file(origin, RANGELESS).exists()

    def mark_rangeless(self, origin: str) -> None:
        Path(self.root).mkdir(parents=True, exist_ok=True)
        self._origin_file(origin, RANGELESS).write_text(origin + "\n")

    @contextlib.contextmanager
    def probing(self, origin: str) -> Iterator[None]:
        """Held by the one request (of all processes using this cache) that finds out whether
        `origin` honours Range: loader processes starting together do not all download a shard."""
        Path(self.root).mkdir(parents=True, exist_ok=True)
        with _locked(self._origin_file(origin, LOCK)):
            yield

    def _make_room(self, size: int, keep: Path) -> None:
        """Remove the least recently read shards until `size` more bytes fit in `max_bytes`."""
        shards = []
        for entry in os.scandir(self.root):
            if entry.name.endswith((LOCK, RANGELESS)) or PART in entry.name or entry.path == str(keep):
                continue
            with contextlib.suppress(FileNotFoundError):  # another process may remove it meanwhile
                stat = entry.stat()
                shards.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(s for _, s, _ in shards)
        for _, nbytes, old in sorted(shards):
            if total + size <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)  # a reader holding it open keeps reading; a later read fetches it again
            total -= nbytes


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive flock on `lock_path`: one open file per caller, so threads exclude each other too."""
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
