"""Safe tar/zip extraction: refuse members escaping the target, unpack aside, publish atomically."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pipeline.io import write_json

MARKER_DIR = ".extracted"  # <dest>/.extracted/<archive name>.json records what was published


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder (or is a device, fifo, ...)."""


def _check_name(archive: Path, name: str) -> PurePosixPath:
    """The member's relative path; raises if it is absolute or climbs out with `..`."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and ":" in posix.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in posix.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder ('..')")
    return posix


def _inside(path: PurePosixPath) -> bool:
    """True if a relative path, with `..` resolved lexically, stays below the root."""
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return not path.is_absolute()


def check_tar(archive: Path, tar: tarfile.TarFile) -> list[str]:
    """Validate every member of an open tar; returns the top-level names it creates."""
    tops: set[str] = set()
    for member in tar.getmembers():
        rel = _check_name(archive, member.name)
        if member.issym():
            target = PurePosixPath(member.linkname)
            if target.is_absolute() or not _inside(rel.parent / target):
                raise UnsafeArchiveError(
                    f"{archive}: symlink {member.name!r} -> {member.linkname!r} points outside the target"
                )
        elif member.islnk():
            if not _inside(PurePosixPath(member.linkname)):
                raise UnsafeArchiveError(
                    f"{archive}: hard link {member.name!r} -> {member.linkname!r} points outside the target"
                )
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device or fifo")
        if rel.parts and rel.parts[0] != ".":
            tops.add(rel.parts[0])
    return sorted(tops)


def check_zip(archive: Path, zf: zipfile.ZipFile) -> list[str]:
    """Validate every member of an open zip (symlinks are refused); returns its top-level names."""
    tops: set[str] = set()
    for info in zf.infolist():
        rel = _check_name(archive, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink")
        if rel.parts:
            tops.add(rel.parts[0])
    return sorted(tops)


def _marker(dest: Path, archive: Path) -> Path:
    return dest / MARKER_DIR / f"{archive.name}.json"


def is_extracted(archive: Path, dest: Path, digest: str) -> bool:
    """True if `archive` with this digest was published into `dest` and its top-level entries exist."""
    marker = _marker(dest, archive)
    try:
        record = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return record.get("digest") == digest and all((dest / top).exists() for top in record.get("tops", []))


def publish_tree(src: Path, dest: Path, tops: Sequence[str]) -> None:
    """Move each `src/<top>` onto `dest/<top>` by rename (same filesystem), replacing a stale copy."""
    for top in tops:
        target = dest / top
        if target.exists() or target.is_symlink():
            stale = Path(tempfile.mkdtemp(dir=dest, prefix=f".old-{top}-"))
            os.replace(target, stale / top)
            shutil.rmtree(stale)
        os.replace(src / top, target)


def extract(archive: str | Path, dest: str | Path, digest: str) -> list[str]:
    """Unpack `archive` into `dest`; no-op if already done for `digest`. Returns the top-level names.

    Members are checked before anything is written; the archive is unpacked into a temp folder
    beside `dest`, and each top-level entry is then renamed into place, so a reader never sees
    a half-extracted folder.
    """
    archive, dest = Path(archive), Path(dest)
    if is_extracted(archive, dest, digest):
        return json.loads(_marker(dest, archive).read_text())["tops"]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".tmp-{archive.name}-"))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                tops = check_zip(archive, zf)
                zf.extractall(tmp)
        else:
            try:
                tar = tarfile.open(archive)  # noqa: SIM115 (closed by the `with` below)
            except tarfile.TarError as exc:
                raise ValueError(f"{archive}: not a tar or zip archive ({exc})") from exc
            with tar:
                tops = check_tar(archive, tar)
                # The stdlib's "data" filter repeats the checks above where it exists (3.11.4+).
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, **kwargs)
        publish_tree(tmp, dest, tops)
        write_json(_marker(dest, archive), {"archive": archive.name, "digest": digest, "tops": tops})
        return tops
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
