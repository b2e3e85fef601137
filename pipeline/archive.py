"""Safe tar/zip extraction: check every member first, never touch a folder the toolkit did not create.

Before anything is written, every member is checked: no absolute path, no `..`, no link leaving the
target (symlinks are followed through the links the archive itself creates), no device, fifo or
sparse file, no top-level name reserved for the toolkit or owned by another archive, and no
implausible expansion (a zip bomb). The archive is then unpacked into a temp folder beside its
target (with the standard library's "data" filter as a second guard) and each top-level entry is
renamed into place.

`<dest>/.extracted/<archive name>.json` records what was published: the archive's digest, its
top-level entries, and every file created (size, mtime). A top-level folder that exists and is not
recorded as created by this archive (the user's own extraction, or one the user changed since) is
never replaced or deleted: it is compared with the archive and accepted as it is when every archived
file matches, else the extraction stops with one line saying what differs.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pipeline.errors import UserError
from pipeline.io import read_record, remove_stale_temps, temp_dir, write_json

MARKER_DIR = ".extracted"  # <dest>/.extracted/<archive name>.json records what was published
# The official archives expand at most ~10x (COCO's annotation JSON; JPEG images barely compress and
# VOC's tar is not compressed at all): a member or an archive expanding more than twice that is
# refused before anything is written. A zip bomb expands ~1000x.
MAX_COMPRESSION_RATIO = 20
# Members smaller than this are not ratio-checked: a small text file may compress very well, and
# cannot fill a disk.
RATIO_CHECK_MIN_BYTES = 1 << 20
# The most members an archive may hold: the largest official one (COCO train2014.zip) holds 82,783
# files, VOC2012's tar ~33,000 and SBD's ~45,000. Each member costs an inode and a file creation
# whatever its size (300,000 empty members fit in a 1.9 MB tgz and took 175 s to write).
MAX_ARCHIVE_MEMBERS = 250_000
_MAX_LINK_HOPS = 40  # the kernel's own limit on symlinks followed in one path (Linux ELOOP)
_COMPARE_CHUNK = 1 << 20


class UnsafeArchiveError(UserError, ValueError):
    """An archive member would land outside the target, expand implausibly, or clash with other data."""


class ExistingDataError(UserError, ValueError):
    """A folder or file the toolkit did not create differs from what it would write; nothing was changed."""


@dataclass(frozen=True)
class Member:
    """What the checks keep of one archive member."""

    path: PurePosixPath  # relative, normalised, with the archive's own links followed
    size: int  # bytes it expands to (0 for folders and links)


# ---------------------------------------------------------------- member checks


def require_extraction_filter() -> None:
    """Refuse to extract on a Python whose tarfile lacks the "data" filter (3.10.12+, 3.11.4+, 3.12+)."""
    if not hasattr(tarfile, "data_filter"):
        raise UnsafeArchiveError(
            f"Python {platform.python_version()} lacks tarfile's extraction filter (added in 3.10.12, 3.11.4 "
            "and 3.12): upgrade Python to extract archives safely"
        )


def _check_name(archive: Path, name: str) -> PurePosixPath:
    """The member's relative path; raises if it is absolute or climbs out with `..`."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and ":" in posix.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in posix.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder ('..')")
    return PurePosixPath(*[p for p in posix.parts if p != "."])


class _Links:
    """The symlinks an archive creates, in member order, to resolve later members' paths through them."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.links: dict[PurePosixPath, str] = {}

    def resolve(self, path: PurePosixPath, member: str, follow_last: bool) -> PurePosixPath:
        """`path` with every link the archive made among its components followed (the last one too if
        `follow_last`); raises UnsafeArchiveError when it leaves the root, even for a moment."""
        todo, done, hops = list(path.parts), [], 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise UnsafeArchiveError(f"{self.archive}: member {member!r} resolves outside the target")
                done.pop()
                continue
            done.append(part)
            target = self.links.get(PurePosixPath(*done))
            if target is not None and (todo or follow_last):
                hops += 1
                if hops > _MAX_LINK_HOPS or target.startswith("/"):
                    raise UnsafeArchiveError(f"{self.archive}: member {member!r} resolves outside the target")
                done.pop()
                todo = list(PurePosixPath(target).parts) + todo
        return PurePosixPath(*done)

    def add(self, at: PurePosixPath, target: str) -> None:
        self.links[at] = target


def check_tar(archive: Path, tar: tarfile.TarFile) -> tuple[list[str], list[Member]]:
    """Validate every member of an open tar; returns (top-level names, members) or raises."""
    links = _Links(archive)
    members: list[Member] = []
    for count, info in enumerate(tar, 1):  # headers one by one: a flood of members stops at the bound
        if count > MAX_ARCHIVE_MEMBERS:
            raise UnsafeArchiveError(_too_many(archive))
        rel = _check_name(archive, info.name)
        if not rel.parts:
            continue
        where = links.resolve(rel.parent, info.name, follow_last=True) / rel.name
        if info.issym():
            target = info.linkname.replace("\\", "/")
            try:
                if target.startswith("/"):
                    raise UnsafeArchiveError(target)
                links.resolve(where.parent / target, info.name, follow_last=True)
            except UnsafeArchiveError:
                msg = f"{archive}: symlink {info.name!r} -> {info.linkname!r} points outside the target"
                raise UnsafeArchiveError(msg) from None
            links.add(where, target)
            continue
        if info.islnk():
            _check_hardlink(archive, info, links)
            members.append(Member(where, 0))
            continue
        if info.issparse():
            raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a sparse file")
        if not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a device or fifo")
        if info.isfile():
            # writing a file through a link the archive made would land where the link points
            where = links.resolve(where, info.name, follow_last=True)
        members.append(Member(where, info.size if info.isfile() else 0))
    _check_links_in_final_tree(archive, links)
    _check_total(archive, members)
    return _tops(members, links), members


def _check_links_in_final_tree(archive: Path, links: _Links) -> None:
    """Every symlink again, through all the links of the archive: a later link may turn an earlier
    one's path (`s -> p/../..`, then `p -> ..`) into a path out of the target."""
    for at, target in links.links.items():
        try:
            links.resolve(at.parent / target, str(at), follow_last=True)
        except UnsafeArchiveError:
            msg = f"{archive}: symlink {str(at)!r} -> {target!r} points outside the target via later links"
            raise UnsafeArchiveError(msg) from None


def _too_many(archive: Path) -> str:
    return (
        f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members (the official archives hold at most ~83,000): "
        "refused before anything is written"
    )


def _check_hardlink(archive: Path, info: tarfile.TarInfo, links: _Links) -> None:
    """A hard link's target is named from the archive's root and must resolve inside it."""
    try:
        links.resolve(_check_name(archive, info.linkname), info.name, follow_last=True)
    except UnsafeArchiveError:
        msg = f"{archive}: hard link {info.name!r} -> {info.linkname!r} points outside the target"
        raise UnsafeArchiveError(msg) from None


def check_zip(archive: Path, zf: zipfile.ZipFile) -> tuple[list[str], list[Member]]:
    """Validate every member of an open zip (symlinks refused, expansion bounded); (tops, members)."""
    if len(zf.infolist()) > MAX_ARCHIVE_MEMBERS:
        raise UnsafeArchiveError(_too_many(archive))
    members = []
    for info in zf.infolist():
        rel = _check_name(archive, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink")
        if not rel.parts:
            continue
        size = info.file_size
        if size > RATIO_CHECK_MIN_BYTES and size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise UnsafeArchiveError(
                f"{archive}: member {info.filename!r} expands {size / max(info.compress_size, 1):.0f}x "
                f"({info.compress_size} -> {size} bytes), more than the {MAX_COMPRESSION_RATIO}x a real "
                "dataset archive does"
            )
        members.append(Member(rel, size))
    _check_total(archive, members)
    return _tops(members, _Links(archive)), members


def _check_total(archive: Path, members: Sequence[Member]) -> None:
    """The members together may expand at most MAX_COMPRESSION_RATIO times the archive's own size."""
    total = sum(m.size for m in members)
    allowed = MAX_COMPRESSION_RATIO * archive.stat().st_size + RATIO_CHECK_MIN_BYTES
    if total > allowed:
        raise UnsafeArchiveError(
            f"{archive}: members add up to {total} bytes, more than {MAX_COMPRESSION_RATIO}x the archive's "
            f"{archive.stat().st_size} bytes that a real dataset archive expands to"
        )


def _tops(members: Sequence[Member], links: _Links) -> list[str]:
    return sorted({m.path.parts[0] for m in members if m.path.parts} | {p.parts[0] for p in links.links})


# ---------------------------------------------------------------- markers: what the toolkit created


def _marker(dest: Path, name: str) -> Path:
    return dest / MARKER_DIR / f"{name}.json"


def read_marker(dest: Path, name: str) -> dict[str, Any] | None:
    return read_record(_marker(dest, name))


def _markers(dest: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    folder = dest / MARKER_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_marker(dest, path.name[: -len(".json")])
        if record is not None:
            yield path.name[: -len(".json")], record


def is_extracted(archive: Path, dest: Path, digest: str) -> bool:
    """True if `archive` with this digest was published (or verified) in `dest` and its tops exist."""
    record = read_marker(dest, Path(archive).name)
    return (
        record is not None
        and record.get("digest") == digest
        and all((dest / top).exists() for top in record.get("tops", []))
    )


def _inventory(root: Path, top: str) -> list[list[Any]]:
    """[relative path, size, mtime_ns] of every file and link under `root/top` (or of `top` itself)."""
    base = root / top
    paths = [base] if not base.is_dir() or base.is_symlink() else sorted(base.rglob("*"))
    out = []
    for p in paths:
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode):
            continue
        out.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def created_by_toolkit(dest: Path, name: str, top: str) -> bool:
    """True if the marker `name` records `dest/top` as created by the toolkit and it is unchanged since
    (the same files, sizes and mtimes, besides files the toolkit placed in it later): only then may
    the toolkit replace or delete it."""
    record = read_marker(dest, name)
    if record is None or top not in record.get("created", []):
        return False
    placed = {p for _, other in _markers(dest) for p in other.get("placed", [])}
    now = [entry for entry in _inventory(dest, top) if entry[0] not in placed]
    return now == record.get("files", {}).get(top)


def record_placed(dest: Path, name: str, digest: str, rel: str) -> None:
    """Write the marker of a single file the toolkit placed at `dest/rel` (e.g. train_noval.txt)."""
    write_json(_marker(dest, name), {"archive": name, "digest": digest, "tops": [rel], "placed": [rel]})


def record_created(dest: Path, name: str, digest: str, tops: Sequence[str], created: Sequence[str]) -> None:
    """Write the marker `name`: `tops` are in place for `digest`, of which `created` were written by
    the toolkit (with their file inventory, so a later change by the user is noticed)."""
    write_json(
        _marker(dest, name),
        {
            "archive": name,
            "digest": digest,
            "tops": sorted(tops),
            "created": sorted(created),
            "files": {top: _inventory(dest, top) for top in sorted(created)},
        },
    )


def publish_tree(src: Path, dest: Path, tops: Sequence[str], owner: str) -> None:
    """Move each `src/<top>` onto `dest/<top>` by rename (same filesystem).

    An existing `dest/<top>` is replaced only if the marker `owner` records it as the toolkit's and
    unchanged (`created_by_toolkit`); any other is the user's: ExistingDataError, nothing moved.
    """
    for top in tops:
        target = dest / top
        if (target.exists() or target.is_symlink()) and not created_by_toolkit(dest, owner, top):
            raise ExistingDataError(
                f"{target} exists and was not created by this toolkit (or was changed since): it is left as "
                f"it is; move it away to have {owner} written there"
            )
    for top in tops:
        target = dest / top
        if target.exists() or target.is_symlink():
            stale = temp_dir(dest, f"old-{top}")
            os.replace(target, stale / top)
            shutil.rmtree(stale)
        os.replace(src / top, target)


# ---------------------------------------------------------------- comparing with data already there


class _Reader:
    """The same few operations on an open tar or zip."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.zip: zipfile.ZipFile | None = None
        self.tar: tarfile.TarFile | None = None
        if zipfile.is_zipfile(archive):
            self.zip = zipfile.ZipFile(archive)
        else:
            try:
                self.tar = tarfile.open(archive)  # noqa: SIM115 (closed by close())
            except tarfile.TarError as exc:
                raise ValueError(f"{archive}: not a tar or zip archive ({exc})") from exc

    def check(self) -> tuple[list[str], list[Member]]:
        if self.zip is not None:
            return check_zip(self.archive, self.zip)
        assert self.tar is not None
        return check_tar(self.archive, self.tar)

    def files(self) -> Iterator[tuple[PurePosixPath, int, IO[bytes]]]:
        """(relative path, size, stream) of every regular file, in archive order."""
        if self.zip is not None:
            for info in self.zip.infolist():
                if not info.is_dir():
                    with self.zip.open(info) as handle:
                        yield _check_name(self.archive, info.filename), info.file_size, handle
            return
        assert self.tar is not None
        for info in self.tar.getmembers():
            if info.isfile():
                handle = self.tar.extractfile(info)
                assert handle is not None
                yield _check_name(self.archive, info.name), info.size, handle

    def _under(self, name: str, tops: set[str]) -> bool:
        return _check_name(self.archive, name).parts[:1] in {(t,) for t in tops}

    def extract(self, tmp: Path, tops: set[str]) -> None:
        """Unpack the members under `tops` into `tmp` (tar: with the "data" filter)."""
        if self.zip is not None:
            self.zip.extractall(tmp, members=[i for i in self.zip.namelist() if self._under(i, tops)])
            return
        assert self.tar is not None
        members = [m for m in self.tar.getmembers() if self._under(m.name, tops)]
        try:
            self.tar.extractall(tmp, members=members, filter="data")
        except tarfile.FilterError as exc:  # the second guard: one line, like the checks above
            raise UnsafeArchiveError(f"{self.archive}: {exc}") from None

    def close(self) -> None:
        for handle in (self.zip, self.tar):
            if handle is not None:
                handle.close()


def _same_bytes(stream: IO[bytes], path: Path) -> bool:
    with open(path, "rb") as handle:
        while True:
            a, b = stream.read(_COMPARE_CHUNK), handle.read(_COMPARE_CHUNK)
            if a != b:
                return False
            if not a:
                return True


def compare_existing(reader: _Reader, dest: Path, tops: set[str]) -> list[str]:
    """Differences between the archive's files under `tops` and what `dest` holds (empty = all match).

    Files the user added beside them are not differences: they are the user's and stay.
    """
    problems = []
    for rel, size, stream in reader.files():
        if not rel.parts or rel.parts[0] not in tops:
            continue
        path = dest / Path(*rel.parts)
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{path} has {path.stat().st_size} bytes, the archive's {size}")
        elif not _same_bytes(stream, path):
            problems.append(f"{path} differs from the archive's copy")
    return problems


# ---------------------------------------------------------------- extraction


def extract(
    archive: str | Path, dest: str | Path, digest: str, expected_tops: Sequence[str] | None = None
) -> list[str]:
    """Unpack `archive` into `dest`; no-op if already done for `digest`. Returns the top-level names.

    `expected_tops`: the top-level names the archive may create (its official layout); any other is
    refused. Members are checked before anything is written (see the module docstring); the archive is
    unpacked into a temp folder beside `dest`, and each top-level entry is then renamed into place, so
    a reader never sees a half-extracted folder. Existing top-level entries that the toolkit did not
    create are compared with the archive and kept as they are, or the extraction stops (one line).
    """
    archive, dest = Path(archive), Path(dest)
    if is_extracted(archive, dest, digest):
        return list(read_marker(dest, archive.name)["tops"])  # type: ignore[index]
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)  # what a killed extraction left
    reader = _Reader(archive)
    try:
        if reader.tar is not None:
            require_extraction_filter()
        tops, _ = reader.check()
        _check_tops(archive, dest, tops, expected_tops)
        existing = {t for t in tops if (dest / t).exists() or (dest / t).is_symlink()}
        theirs = {t for t in existing if not created_by_toolkit(dest, archive.name, t)}
        problems = compare_existing(reader, dest, theirs) if theirs else []
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            record = read_marker(dest, archive.name) or {}
            ours_changed = sorted(t for t in theirs if t in record.get("created", []))
            origin = (  # a folder the toolkit extracted and someone changed since is not "not extracted"
                f"was extracted from {archive.name} by this toolkit and has changed since"
                if ours_changed
                else f"was not extracted from {archive.name} by this toolkit"
            )
            raise ExistingDataError(
                f"{problems[0]}{more}: {', '.join(sorted(theirs))} in {dest} {origin}, so it is left as it "
                "is; move it away to extract the archive there, or restore it"
            )
        ours = set(tops) - theirs
        if ours:
            tmp = temp_dir(dest, archive.name)
            try:
                reader.extract(tmp, ours)
                publish_tree(tmp, dest, sorted(ours), archive.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        record_created(dest, archive.name, digest, tops, sorted(ours))
        return tops
    finally:
        reader.close()


def _check_tops(archive: Path, dest: Path, tops: Sequence[str], expected: Sequence[str] | None) -> None:
    """A top-level name must not be hidden (the toolkit's markers and temp folders live there), nor
    belong to another archive already in `dest`, nor lie outside the archive's official layout."""
    for top in tops:
        if top.startswith("."):
            raise UnsafeArchiveError(
                f"{archive}: top-level member {top!r} is hidden, like the toolkit's own {MARKER_DIR}/ and "
                "temp folders: refused"
            )
        if expected is not None and top not in expected:
            raise UnsafeArchiveError(
                f"{archive}: top-level member {top!r} is not part of this archive's layout "
                f"({', '.join(expected)}): refused"
            )
        for other, record in _markers(dest):
            if other != archive.name and top in record.get("tops", []):
                raise UnsafeArchiveError(
                    f"{archive}: top-level member {top!r} belongs to {other}, already extracted in {dest}: "
                    "refused"
                )
