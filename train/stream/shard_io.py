"""Shard URLs (local, file://, http(s)://, s3://, pipe:) as streams, ranged reads, tar sample iteration."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from pipeline.shard_format import (
    COMPLETE,
    MAX_MEMBER_BYTES,
    ShardError,
    check_completion,
    check_member,
    check_shard_name,
)

# Samples are grouped by key: `<key>.<ext>`; the key holds no dots (design.md).
Sample = dict[str, Any]

_HTTP_TIMEOUT_S = 60.0
_BLOCK = 512
_ZERO_BLOCK = b"\0" * _BLOCK
_READ_CHUNK = 1 << 20
RETRIES = 3  # reconnects per shard read after a dropped connection, with doubling back-off
RETRY_BACKOFF_S = 0.25

log = logging.getLogger(__name__)
# GNU tar's sparse member types and pax keys: a few bytes on disk that read back as any size
_SPARSE_TYPES = (b"S",)
_SPARSE_PAX = "GNU.sparse."


def join_url(base: str, name: str) -> str:
    """`base/name` for a local folder or any URL scheme."""
    return f"{base.rstrip('/')}/{name}"


def _scheme(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    parsed = urlparse(url)
    return parsed.scheme if len(parsed.scheme) > 1 else ""  # "C:" paths are local


def _local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file://") else url


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors of a dropped or reset connection (socket, http.client, urllib3/requests, botocore)."""
    errors: list[type[BaseException]] = [OSError, http.client.HTTPException]
    try:
        import requests
        import urllib3

        errors += [requests.RequestException, urllib3.exceptions.HTTPError]
    except ImportError:
        pass
    try:
        import botocore.exceptions

        errors.append(botocore.exceptions.BotoCoreError)
    except ImportError:
        pass
    return tuple(errors)


class _ResumingReader(io.RawIOBase):
    """A remote object read front to back; a dropped connection reopens it at the byte reached.

    `reopen(offset)` returns (stream positioned at `offset`, total size or None). An early end of
    the body (fewer bytes than the size) counts as a drop too. After `retries` failed reconnects
    in a row the error propagates (the sampler then skips the shard; evaluation stops).
    """

    def __init__(self, url: str, reopen: Callable[[int], tuple[IO[bytes], int | None]], retries: int) -> None:
        super().__init__()
        self.url, self._reopen, self.retries = url, reopen, retries
        self.pos, self.reconnects = 0, 0
        self._errors = _transient_errors()
        self._stream: IO[bytes] | None = None  # connected by the first read, under the same retries
        self.size: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        failures = 0
        while True:
            try:
                if self._stream is None:
                    self._stream, self.size = self._reopen(self.pos)
                # read1 returns what has arrived: bytes before a drop are kept, a reconnect resumes after them
                read = getattr(self._stream, "read1", self._stream.read)
                data = read(len(buffer))
                if not data and self.size is not None and self.pos < self.size:
                    raise http.client.IncompleteRead(b"", self.size - self.pos)
                break
            except ShardError:
                raise
            except self._errors as exc:
                failures += 1
                if failures > self.retries:
                    msg = f"shard {self.url}: read failed {failures} times at byte {self.pos}: {exc}"
                    raise ShardError(msg) from exc
                log.warning("shard %s: lost at byte %d (%s); reconnecting", self.url, self.pos, exc)
                time.sleep(RETRY_BACKOFF_S * 2 ** (failures - 1))
                self.reconnects += 1
                self._close_stream()
        n = len(data)
        buffer[:n] = data
        self.pos += n
        return n

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        try:
            if stream is not None:
                stream.close()
        except Exception:  # closing a broken connection may fail again; it is dropped either way
            pass

    def close(self) -> None:
        if not self.closed:
            self._close_stream()
        super().close()


def _raise_http_status(url: str, resp: Any) -> None:
    """5xx and 429 are worth retrying (raised as requests.HTTPError); anything else is a ShardError."""
    import requests

    if resp.status_code >= 500 or resp.status_code == 429:
        raise requests.HTTPError(f"HTTP {resp.status_code}", response=resp)
    raise ShardError(f"shard {url}: HTTP {resp.status_code}")


def _http_opener(url: str) -> Callable[[int], tuple[IO[bytes], int | None]]:
    import requests

    def reopen(offset: int) -> tuple[IO[bytes], int | None]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = requests.get(url, stream=True, timeout=_HTTP_TIMEOUT_S, headers=headers)
        if resp.status_code not in (200, 206):
            resp.close()
            _raise_http_status(url, resp)
        resp.raw.decode_content = True
        length = resp.headers.get("Content-Length")
        size = int(length) + (offset if resp.status_code == 206 else 0) if length is not None else None
        if offset and resp.status_code == 200:  # the server ignored Range: skip what was read already
            _read_exact(resp.raw, offset)  # type: ignore[arg-type]
        return resp.raw, size  # type: ignore[return-value]

    return reopen


def _fsspec_opener(url: str) -> Callable[[int], tuple[IO[bytes], int | None]]:
    import fsspec  # s3:// (s3fs), gs:// (gcsfs), ...: credentials from the client's own env/config

    fs, path = fsspec.core.url_to_fs(url)

    def reopen(offset: int) -> tuple[IO[bytes], int | None]:
        try:
            handle = fs.open(path, "rb", block_size=_READ_CHUNK)  # ranged reads of one block at a time
        except FileNotFoundError as exc:
            raise ShardError(f"shard {url} does not exist") from exc
        handle.seek(offset)
        return handle, handle.size

    return reopen


def open_stream(url: str, allow_pipe: bool = False, retries: int = RETRIES) -> IO[bytes]:
    """A sequential binary stream over `url`; http(s) and s3 stream in chunks, never download first.

    Remote streams reconnect where they stopped after a dropped connection (`retries` times in a
    row, doubling back-off). `pipe:CMD` runs a shell command and reads its stdout; only a user's own
    params may ask for it (`allow_pipe`), since it executes the string.
    """
    scheme = _scheme(url)
    if scheme in ("", "file"):
        return open(_local_path(url), "rb", buffering=_READ_CHUNK)
    if scheme == "pipe":
        if not allow_pipe:
            raise ShardError(f"shard {url}: pipe: URLs run a shell command; pass allow_pipe=True to use them")
        proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, bufsize=_READ_CHUNK)
        assert proc.stdout is not None
        return proc.stdout
    opener = _http_opener(url) if scheme in ("http", "https") else _fsspec_opener(url)
    # urllib3's read() costs ~10 us a call and the tar reader makes three per member: buffer it
    return io.BufferedReader(_ResumingReader(url, opener, retries), buffer_size=_READ_CHUNK)


def read_range(url: str, start: int, end: int | None, retries: int = RETRIES) -> bytes:
    """Bytes [start, end) of `url` (to the end when `end` is None) with one read / one ranged request.

    A remote read that fails or comes back short is retried `retries` times (doubling back-off);
    then the error propagates: test data is never silently dropped.
    """
    if _scheme(url) in ("", "file", "pipe"):
        return _read_range_once(url, start, end)
    errors = _transient_errors()
    for attempt in range(retries + 1):
        try:
            data = _read_range_once(url, start, end)
            if end is None or len(data) == end - start:
                return data
            problem: BaseException = EOFError(f"got {len(data)} of {end - start} bytes")
        except ShardError:
            raise
        except FileNotFoundError:
            raise
        except errors as exc:
            problem = exc
        if attempt < retries:
            log.warning("shard %s: ranged read %d..%s failed (%s); retrying", url, start, end, problem)
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
    raise ShardError(f"shard {url}: ranged read {start}..{end} failed {retries + 1} times: {problem}")


def _read_range_once(url: str, start: int, end: int | None) -> bytes:
    scheme = _scheme(url)
    if scheme in ("", "file"):
        with open(_local_path(url), "rb") as handle:
            handle.seek(start)
            return handle.read(-1 if end is None else end - start)
    if scheme in ("http", "https"):
        import requests

        rng = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        resp = requests.get(url, headers={"Range": rng}, timeout=_HTTP_TIMEOUT_S)
        if resp.status_code == 200:  # server ignored Range: cut the body ourselves
            return resp.content[start:end]
        if resp.status_code != 206:
            _raise_http_status(f"{url} (range {rng})", resp)
        return resp.content
    if scheme == "pipe":
        raise ShardError(f"shard {url}: pipe: URLs cannot be read by range; use a path or URL")
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path, start=start, end=end)  # type: ignore[no-any-return]


def read_text(url: str) -> str:
    """The whole (small) file at `url` as text: manifests and indexes."""
    return read_range(url, 0, None).decode("utf-8")


def split_shards(split_url: str) -> list[dict[str, Any]]:
    """`{"url", "num_samples", "bytes"}` of every shard of a split, from its manifest.json.

    The split must be listed by its dataset's completion record (`check_split_complete`). A brace
    pattern (webdataset's notation, `s3://b/train-{000000..000063}.tar`) lists the shards directly
    instead; their sample counts and sizes are then unknown (-1).
    """
    if "{" in split_url:
        from braceexpand import braceexpand  # webdataset's own dependency

        return [{"url": url, "num_samples": -1, "bytes": -1} for url in braceexpand(split_url)]
    manifest_url = join_url(split_url, "manifest.json")
    manifest = json.loads(read_text(manifest_url))
    check_split_complete(split_url, int(manifest["num_samples"]))
    # a manifest is data, not a command: its names stay plain file names inside the split, so a
    # crafted one can neither climb out (`..`, `/`) nor become a URL or a `pipe:` command
    return [
        {
            "url": join_url(split_url, check_shard_name(s["name"], manifest_url)),
            "num_samples": int(s["num_samples"]),
            "bytes": int(s.get("bytes", -1)),
        }
        for s in manifest["shards"]
    ]


def shard_urls(split_url: str) -> list[tuple[str, int]]:
    """(url, num_samples) of every shard of a split (see `split_shards`)."""
    return [(s["url"], s["num_samples"]) for s in split_shards(split_url)]


def check_split_complete(split_url: str, num_samples: int | None = None) -> None:
    """ShardError unless the dataset folder above `split_url` holds the completion record listing it.

    A build that stopped half way publishes nothing, but a folder copied or synced in part, or one
    written by an older version, may hold one split without the other: readers refuse it here.
    """
    base, _, split = split_url.rstrip("/").rpartition("/")
    where = join_url(base, COMPLETE)
    try:
        record = json.loads(read_text(where))
    except FileNotFoundError:
        record = None
    except ShardError as exc:
        if "HTTP 404" not in str(exc):
            raise
        record = None
    except ValueError as exc:  # not JSON
        raise ShardError(f"{where} is not a completion record ({exc})") from exc
    check_completion(record, where, split, num_samples)


def _split_name(name: str) -> tuple[str, str]:
    base = os.path.basename(name)
    key, _, ext = base.partition(".")
    return key, ext


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]  # sockets and pipes may return less than asked before the end
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def iter_tar_members(
    stream: IO[bytes], url: str = "<stream>", limit: int = MAX_MEMBER_BYTES
) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream, read sequentially.

    A small reader instead of `tarfile`'s streaming mode, which costs ~0.3 ms per sample in header
    objects: it handles ustar, GNU long names ('L') and pax headers ('x'; path and size), skips
    other entries, and raises EOFError on a short read or a bad header checksum. Every header passes
    `pipeline.shard_format.check_member` (no sparse member, at most `limit` bytes) before its data is
    read: a failing one raises ShardError naming `url` and the member.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = _read_exact(stream, _BLOCK)
        if not header or header == _ZERO_BLOCK:
            return  # end of archive (a tar that ends exactly at a member boundary is complete too)
        if len(header) < _BLOCK:
            raise EOFError(f"header cut at {len(header)} of {_BLOCK} bytes")
        checksum = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise EOFError("bad tar header checksum")
        if "size" in pax:
            size = int(pax["size"])
        else:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        kind = header[156:157]
        sparse = kind in _SPARSE_TYPES or any(k.startswith(_SPARSE_PAX) for k in pax)
        member = pax.get("path") or long_name or header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        check_member(url, member, size, sparse=sparse, limit=limit)
        data = _read_exact(stream, size)
        if len(data) < size:
            raise EOFError(f"member data cut at {len(data)} of {size} bytes")
        pad = -size % _BLOCK
        if pad and len(_read_exact(stream, pad)) < pad:
            raise EOFError("member padding cut")
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8")
            continue
        if kind == b"x":
            pax = _parse_pax(data)
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name, pax = None, {}
            continue
        name = pax.get("path") or long_name
        if name is None:
            prefix = header[345:500].split(b"\0", 1)[0]
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            if prefix and header[257:262] == b"ustar":
                name = f"{prefix.decode('utf-8')}/{name}"
        long_name, pax = None, {}
        yield name, data


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8")
        pos += length
    return out


def iter_tar_samples(stream: IO[bytes], url: str, limit: int = MAX_MEMBER_BYTES) -> Iterator[Sample]:
    """Samples `{"__key__", "<ext>": bytes, ...}` of a tar stream, members grouped by key, in order.

    A truncated, corrupt or unsafe tar (see `iter_tar_members`, `limit`) raises ShardError naming
    `url` after the complete samples before the damage were yielded (a partial sample never is).
    """
    current: Sample | None = None
    try:
        for name, data in iter_tar_members(stream, url, limit):
            key, ext = _split_name(name)
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            current[ext] = data
    except (EOFError, OSError, ValueError) as exc:
        raise ShardError(f"shard {url} is truncated or corrupt: {exc}") from exc
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    if current is not None:
        yield current


def parse_tar_fragment(data: bytes, key: str, url: str) -> Sample:
    """The members of sample `key` from bytes that start at its first member header (a ranged read)."""
    sample: Sample = {"__key__": key, "__url__": url}
    try:
        # end-of-archive blocks make a fragment a valid archive; later samples' members are ignored
        with tarfile.open(fileobj=io.BytesIO(data + b"\0" * 1024), mode="r:") as tar:
            for member in tar:
                # checked before extractfile: a sparse or oversized member never reaches a read
                check_member(url, member.name, member.size, sparse=member.issparse(), limit=len(data))
                mkey, ext = _split_name(member.name)
                if mkey != key:
                    if len(sample) > 2:
                        break
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                payload = handle.read()
                if len(payload) != member.size:
                    raise EOFError(f"member {member.name} has {len(payload)} of {member.size} bytes")
                sample[ext] = payload
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardError(f"shard {url}: sample {key} is truncated or corrupt: {exc}") from exc
    return sample


def local_size(url: str) -> int | None:
    """Size in bytes of a local shard, None for remote URLs (checked by the reader instead)."""
    if _scheme(url) in ("", "file"):
        path = Path(_local_path(url))
        return path.stat().st_size if path.exists() else -1
    return None
