"""Fault injectors shared by the reliability tests: a disk that fills up, a shard with a member removed."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import IO, Any


class FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes (the bytes before are real)."""

    def __init__(self, handle: IO[bytes], room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            self.handle.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def drop_member(split_dir: Path, shard: str, ext: str) -> str:
    """Rewrite `shard` without the `.ext` member of its last sample and fix the manifest (a writer bug
    whose output still matches its manifest); returns that sample's key. Earlier offsets do not move."""
    path = split_dir / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    key = members[-1][0].name.split(".", 1)[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for info, data in members:
            if info.name != f"{key}.{ext}":
                out.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    manifest_path = split_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["shards"]:
        if entry["name"] == shard:
            entry["bytes"] = path.stat().st_size
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    return key
