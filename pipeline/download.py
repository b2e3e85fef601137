"""Resumable, verified downloads of the official archives (or a mirror of them), then safe extraction."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import requests
import urllib3
from tqdm import tqdm

from pipeline.archive import ExistingDataError, extract, is_extracted, read_marker, record_placed
from pipeline.errors import UserError
from pipeline.io import atomic_write, remove_stale_temps, write_json
from pipeline.netread import NetLimits, RateMeter, ReadTooSlow, iter_body
from pipeline.sources import Source, sources_for

CHUNK = 1 << 20
NET_CHUNK = 1 << 16  # small network reads: a dropped connection loses at most this much
PART_SUFFIX = ".part"
VERIFIED_SUFFIX = ".verified.json"  # sidecar: a file already hashed is not hashed again on re-runs
# HTTP statuses worth retrying; any other error status is final (404 will not fix itself).
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(UserError, RuntimeError):
    """A download failed for good (bad status, retries exhausted, bad mirror)."""


class HTTPStatusError(DownloadError):
    """The server answered with an error status; `status` says whether a retry can help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ChecksumError(DownloadError):
    """A downloaded file's digest or size differs from the published one."""


def size_limit(source: Source) -> int | None:
    """The most bytes a download of `source` may reach: its pinned size, else its `max_size`."""
    return source.size if source.size is not None else source.max_size


def pin(source: Source, checksums: dict[str, dict]) -> Source:
    """`source` with digests from a checksums record `{name: {"sha256", "size"}}` (e.g. toy archives)."""
    entry = checksums.get(source.name)
    if entry is None:
        return source
    return dataclasses.replace(
        source, md5=entry.get("md5"), sha256=entry.get("sha256"), size=entry.get("size")
    )


def expected_digest(source: Source) -> tuple[str, str] | None:
    """(algorithm, hex digest) to check, strongest first; None when only the size is known."""
    if source.sha256:
        return "sha256", source.sha256.lower()
    if source.md5:
        return "md5", source.md5.lower()
    return None


def _hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, source: Source) -> str:
    """Check `path` against `source`; returns 'algo:hex' (or 'size:N'), raises ChecksumError naming both."""
    size = path.stat().st_size
    want = expected_digest(source)
    if want is None:
        if source.size is not None and size != source.size:
            raise ChecksumError(f"{source.name}: size mismatch: expected {source.size} bytes, got {size}")
        return f"size:{size}"
    algorithm, expected = want
    actual = _hash(path, algorithm)
    if actual != expected:
        raise ChecksumError(f"{source.name}: {algorithm} mismatch: expected {expected}, actual {actual}")
    return f"{algorithm}:{actual}"


def _unchanged_record(path: Path) -> dict | None:
    """The verification record beside `path` if the file is unchanged since (size and mtime), else None."""
    sidecar = path.with_name(path.name + VERIFIED_SUFFIX)
    try:
        record = json.loads(sidecar.read_text())
        st = path.stat()
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns:
        return record
    return None


def _cached_verification(path: Path, source: Source) -> str | None:
    """The digest recorded beside `path` if the file is unchanged since it was verified."""
    record = _unchanged_record(path)
    wanted = _expected(source) or f"size:{source.size}"
    return wanted if record is not None and record.get("digest") == wanted else None


def _record_verification(path: Path, digest: str) -> None:
    st = path.stat()
    write_json(
        path.with_name(path.name + VERIFIED_SUFFIX),
        {"digest": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
    )


def source_location(source: Source, mirror: str | None) -> str:
    """Where to fetch `source`: its official URL, `<mirror URL>/<name>`, or a path in a mirror folder."""
    if not mirror:
        return source.url
    parsed = urlparse(mirror)
    if parsed.scheme in ("http", "https"):
        return mirror.rstrip("/") + "/" + source.name
    if parsed.scheme == "file":
        return str(Path(unquote(parsed.path)) / source.name)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DownloadError(
            f"mirror {mirror!r}: unsupported scheme {parsed.scheme!r} (use http(s)://, file:// or a folder)"
        )
    return str(Path(mirror) / source.name)


def _too_long(name: str, limit: int, got: int | str) -> ChecksumError:
    return ChecksumError(
        f"{name}: the mirror sends {got} bytes, more than the {limit} expected (the pinned size): "
        "stopped there"
    )


def _stream_http(
    url: str,
    part: Path,
    name: str,
    timeout_s: float,
    progress: bool,
    session: requests.Session,
    limit: int | None = None,
    meter: RateMeter | None = None,
) -> None:
    """Append the rest of `url` to `part` (HTTP Range from its current size); raises on a short read.

    Never writes past `limit` bytes: a longer body (announced or sent) is a ChecksumError, at once.
    `meter`: the download's rate floor and deadline (ReadTooSlow), over all its attempts.
    """
    meter = meter or RateMeter(url, NetLimits(where="download"))
    have = part.stat().st_size if part.exists() else 0
    if limit is not None and have > limit:
        part.unlink()  # a part longer than the file can be is wrong: start over
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with meter.waiting():
        response = session.get(
            url, headers=headers, stream=True, timeout=meter.limits.socket_timeout(timeout_s)
        )
    with response:
        if response.status_code == 416 and have:
            # Range not satisfiable: the part may already be complete; verification decides.
            return
        if response.status_code not in (200, 206):
            raise HTTPStatusError(f"{name}: HTTP {response.status_code} from {url}", response.status_code)
        content_range = response.headers.get("Content-Range", "")
        if response.status_code == 206 and not content_range.startswith(f"bytes {have}-"):
            part.unlink()
            raise requests.ConnectionError(
                f"{name}: asked for bytes {have}-, got {content_range!r}; restarting"
            )
        if response.status_code == 200:
            have = 0  # the server ignored the Range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if limit is not None and total is not None and total > limit:
            raise _too_long(name, limit, total)
        mode = "ab" if have else "wb"
        with (
            open(part, mode) as handle,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=name, disable=not progress
            ) as bar,
        ):
            written = have
            response.raw.decode_content = True
            for block in iter_body(response.raw, meter, None, NET_CHUNK):
                if limit is not None and written + len(block) > limit:
                    raise _too_long(name, limit, f"at least {written + len(block)}")
                handle.write(block)
                written += len(block)
                bar.update(len(block))
        got = part.stat().st_size
        if total is not None and got < total:
            raise requests.ConnectionError(f"{name}: connection closed at {got} of {total} bytes")


OFFLINE_REMEDY = (
    "put or symlink the extracted folders under <paths.raw>/official/ (data/raw/official/: VOCdevkit/, "
    "benchmark_RELEASE/, train2014/, val2014/, annotations/), or set download.mirror to a lab mirror"
)


def check_host(location: str, name: str) -> None:
    """Fail at once, naming the remedies, when the URL's host name does not resolve (offline, no DNS):
    retrying cannot help there, while the retries of a dropped connection can."""
    host = urlparse(location).hostname
    if not host:
        return
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        message = f"{name}: cannot resolve {host} ({exc.strerror}), so no download: {OFFLINE_REMEDY}"
        raise DownloadError(message) from None


def _discard(part: Path) -> None:
    """Delete a part file whose bytes may be incomplete on disk (a failed local write, e.g. disk full)."""
    part.unlink(missing_ok=True)


def fetch(
    source: Source,
    archives: str | Path,
    mirror: str | None = None,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    limits: NetLimits | None = None,
) -> tuple[Path, str]:
    """Download `source` into `archives`, resuming a partial file; returns (path, verified digest).

    The bytes go to `<name>.part` and are renamed to `<name>` only after verification, so a
    file under its real name is always complete and correct. A verified file is not fetched again.
    A dropped connection keeps the part to resume from; a failed local write (disk full) deletes it.
    A link slower than `limits` (params `download.min_bytes_per_s`, ...) ends with one line; the part
    is kept. Two downloads of one file (two stages, two terminals) take turns on a lock beside it.
    """
    archives = Path(archives)
    archives.mkdir(parents=True, exist_ok=True)
    part = archives / (source.name + PART_SUFFIX)
    with _locked_part(part):
        return _fetch_locked(source, archives, mirror, retries, timeout_s, backoff_s, progress, sleep, limits)


@contextlib.contextmanager
def _locked_part(part: Path) -> Iterator[None]:
    """An exclusive flock on the `.part` file itself: a second download of the same file waits for
    the first, then finds the file verified (or resumes the part). An empty part is not left behind."""
    while True:
        handle = open(part, "ab")  # noqa: SIM115 -- held open while locked, closed below
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(part))
        except FileNotFoundError:
            same = False
        if same:  # not a part the first download renamed or removed while we waited
            break
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(part)) and part.stat().st_size == 0:
                part.unlink()
        handle.close()


def _fetch_locked(
    source: Source,
    archives: Path,
    mirror: str | None,
    retries: int,
    timeout_s: float,
    backoff_s: float,
    progress: bool,
    sleep: Callable[[float], None],
    limits: NetLimits | None,
) -> tuple[Path, str]:
    remove_stale_temps(archives)  # sidecar temp files of a killed run
    dest = archives / source.name
    if dest.exists():
        cached = _cached_verification(dest, source)
        if cached:
            return dest, cached
        try:
            digest = verify(dest, source)
        except ChecksumError as exc:
            if _unchanged_record(dest) is None:  # not a file this toolkit verified, as it was then
                raise ChecksumError(
                    f"{exc}; {dest} was not downloaded by this toolkit (or has changed since), so it is "
                    "kept: move it away to download the official file"
                ) from None
            dest.unlink()  # our own copy, verified for another pinned digest: fetch it again
        else:
            _record_verification(dest, digest)
            return dest, digest
    part = dest.with_name(dest.name + PART_SUFFIX)
    location = source_location(source, mirror)
    limit = size_limit(source)
    if location.startswith(("http://", "https://")):
        check_host(location, source.name)
        meter = RateMeter(location, limits or NetLimits(where="download"))
        with requests.Session() as session:
            for attempt in range(retries + 1):
                try:
                    _stream_http(location, part, source.name, timeout_s, progress, session, limit, meter)
                    break
                except ChecksumError:
                    _discard(part)  # more bytes than the file has: nothing of it is worth resuming
                    raise
                except ReadTooSlow as exc:  # the part is good: a later run on a better link resumes it
                    raise DownloadError(f"{source.name}: {exc}") from exc
                except (
                    requests.ConnectionError,
                    requests.Timeout,
                    requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError,  # the body is read from urllib3 directly (iter_body)
                    http.client.HTTPException,
                ) as exc:
                    last: Exception = exc
                except HTTPStatusError as exc:
                    if exc.status not in RETRY_STATUS:
                        raise
                    last = exc
                except (ConnectionError, TimeoutError) as exc:  # a raw socket error requests did not wrap
                    last = exc
                except OSError as exc:  # not the network (caught above): the local write, e.g. disk full
                    _discard(part)
                    raise DownloadError(f"{source.name}: cannot write {part}: {exc}") from exc
                if attempt == retries:
                    raise DownloadError(f"{source.name}: giving up after {retries + 1} attempts: {last}")
                sleep(backoff_s * 2**attempt)
    else:
        local = Path(location)
        if not local.is_file():
            raise DownloadError(f"{source.name}: not found in mirror folder ({local})")
        if limit is not None and local.stat().st_size > limit:
            raise _too_long(source.name, limit, local.stat().st_size)
        try:
            with open(local, "rb") as src, open(part, "wb") as dst:
                _copy_at_most(src, dst, limit, source.name)
        except ChecksumError:
            _discard(part)
            raise
        except OSError as exc:
            _discard(part)
            raise DownloadError(f"{source.name}: cannot copy {local} to {part}: {exc}") from exc
    try:
        digest = verify(part, source)
    except ChecksumError:
        part.unlink()  # a corrupt part must not be resumed
        raise
    with open(part, "rb+") as handle:
        os.fsync(handle.fileno())  # the bytes are on disk before the name says the file is complete
    os.replace(part, dest)
    _record_verification(dest, digest)
    return dest, digest


def _copy_at_most(src: IO[bytes], dst: IO[bytes], limit: int | None, name: str) -> None:
    """Copy `src` to `dst`, stopping with a ChecksumError once more than `limit` bytes come."""
    copied = 0
    while block := src.read(CHUNK):
        copied += len(block)
        if limit is not None and copied > limit:
            raise _too_long(name, limit, f"at least {copied}")
        dst.write(block)


def place_file(path: Path, root: Path, source: Source, digest: str) -> Path:
    """Copy a plain downloaded file (e.g. train_noval.txt) into `root/<source.place>`, atomically.

    A file already there that the toolkit did not place is kept: it must match the verified download
    (ExistingDataError otherwise, nothing changed).
    """
    target = root / source.place / path.name
    if target.exists() and target.read_bytes() == path.read_bytes():
        return target
    if target.exists() and read_marker(root, source.name) is None:
        raise ExistingDataError(
            f"{target} differs from the published {source.name} ({digest}) and was not placed by this "
            "toolkit, so it is left as it is: move it away to use the published file"
        )
    with atomic_write(target) as handle, open(path, "rb") as src:
        shutil.copyfileobj(src, handle)
    record_placed(root, source.name, digest, target.relative_to(root).as_posix())
    return target


def local_archive(source: Source, archives: Path, mirror: str | None) -> Path | None:
    """The archive's path if it is already on this machine (archives folder, or a mirror folder)."""
    if (archives / source.name).is_file():
        return archives / source.name
    if mirror:
        location = source_location(source, mirror)
        if not location.startswith(("http://", "https://")) and Path(location).is_file():
            return Path(location)
    return None


def missing_layout(source: Source, root: Path) -> tuple[str, str] | None:
    """The first path of `source.layout` that `root` lacks, with what it should be; None: all there
    (a trailing "/" in the layout: a non-empty folder)."""
    for rel in source.layout:
        path = root / rel.rstrip("/")
        ok = path.is_dir() and any(path.iterdir()) if rel.endswith("/") else path.is_file()
        if not ok:
            return rel, "a non-empty folder" if rel.endswith("/") else "a file"
    return None


def verify_offline(source: Source, root: Path) -> str:
    """Check the user's extracted folders of `source` by their layout, with no network: every path of
    `source.layout` must be there. ExistingDataError otherwise."""
    missing = missing_layout(source, root)
    if missing is not None:
        rel, what = missing
        raise ExistingDataError(
            f"{root / rel.split('/')[0]} is there without {source.name}, and lacks {root / rel.rstrip('/')} "
            f"({what} of the official layout): complete it, or move it away to download and extract "
            f"{source.name}"
        )
    return "verified offline: " + ", ".join(source.tops)


def _verify_theirs(path: Path, source: Source) -> str:
    """Verify a user's own copy of a plain file; a mismatch stops with the file kept."""
    try:
        return f"{verify(path, source)} (the user's file)"
    except ChecksumError as exc:
        raise ExistingDataError(f"{path}: {exc}; it is not the toolkit's, so it is left as it is") from None


def _expected(source: Source) -> str | None:
    want = expected_digest(source)
    return f"{want[0]}:{want[1]}" if want else None


def download_dataset(
    name: str,
    root: str | Path,
    archives: str | Path,
    mirror: str | None = None,
    checksums: dict[str, dict] | None = None,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
    progress: bool = True,
    limits: NetLimits | None = None,
) -> dict[str, str]:
    """Fetch, verify and extract every file of `name` (voc | sbd | coco | pascal) into `root`.

    Returns {file name: verified digest}. Re-running with everything verified touches nothing and
    asks no server. Folders already in `root` that the toolkit did not extract are the user's: they
    are compared with the archive when it is on this machine (`archives` or a mirror folder), else
    checked offline against the official layout; never downloaded for, replaced or deleted.
    """
    root, archives = Path(root), Path(archives)
    done: dict[str, str] = {}
    offline: set[str] = set()  # folders of the user's, verified without their archive
    for source in sources_for(name):
        source = pin(source, checksums or {})
        want = _expected(source)
        if want is not None and is_extracted(root / source.name, root, want):
            done[source.name] = want  # done before: no fetch, no network
            continue
        if source.extract:
            ours = read_marker(root, source.name) is not None
            theirs = [t for t in source.tops if (root / t).exists() and not ours]
            if theirs and local_archive(source, archives, mirror) is None:
                done[source.name] = verify_offline(source, root)  # never a download to check them
                offline.add(source.tops[0])
                continue
            path, digest = fetch(
                source, archives, mirror, retries, timeout_s, backoff_s, progress, limits=limits
            )
            extract(path, root, digest, source.tops)
        else:
            target = root / source.place / source.name
            if source.place.split("/")[0] in offline and local_archive(source, archives, mirror) is None:
                if target.is_file():
                    done[source.name] = _verify_theirs(target, source)
                continue  # absent beside a user's folder: the shards stage derives it from the lists
            path, digest = fetch(
                source, archives, mirror, retries, timeout_s, backoff_s, progress, limits=limits
            )
            place_file(path, root, source, digest)
        done[source.name] = digest
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, choices=["voc", "sbd", "coco"])
    parser.add_argument("--root", required=True, type=Path, help="extract here (official layout)")
    parser.add_argument("--mirror", default=None, help="URL or folder holding the official archive names")
    parser.add_argument(
        "--archives", type=Path, default=None, help="keep archives here (default ROOT/.archives)"
    )
    parser.add_argument("--checksums", type=Path, default=None, help='json {name: {"sha256", "size"}} to pin')
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    checksums = json.loads(args.checksums.read_text())["archives"] if args.checksums else None
    try:
        done = download_dataset(
            args.dataset,
            args.root,
            args.archives or args.root / ".archives",
            args.mirror,
            checksums,
            args.retries,
            args.timeout,
        )
    except (DownloadError, ValueError, OSError) as exc:  # OSError: e.g. disk full while extracting
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, digest in done.items():
        print(f"{name}  {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
