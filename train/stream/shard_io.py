"""Shard I/O on webdataset: gopen handlers for remote URLs, the checked tar stage, concurrent ranged reads.

Streaming (training): `webdataset.gopen.gopen` opens every URL; this module registers its handlers
for http(s) (requests) and the fsspec schemes (s3://, gs://, ...): both reconnect a dropped
connection at the byte reached (`ResumingReader`). `checked_tar_files` is webdataset's
`tar_file_expander` plus the member checks of `pipeline.shard_format` (see docs/io.md for why that one
stage is ours); webdataset's `group_by_keys` turns its members into samples.
Random access (evaluation, training manifests): `read_ranges` fetches many `index.tsv` byte ranges at
once on a bounded thread pool; `parse_tar_fragment` reads one sample's members from such a range.
Every network read is bounded (`RemoteReads`): bodies are read as streams of what has arrived, never
beyond the bytes the manifest gives, under `pipeline.netread`'s rate floor and deadline; a server that
ignores `Range` gets each shard fetched once into `train.stream.shard_cache`, and so does every remote
shard read by key when `RemoteReads.cache_remote` asks for it (params `sampler.cache_remote`).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import webdataset as wds
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import base_plus_ext, group_by_keys

from pipeline.netread import NetLimits, RateMeter, ReadTooSlow, iter_body, read1, read_body
from pipeline.shard_format import (
    COMPLETE,
    MAX_MEMBER_BYTES,
    ShardError,
    check_completion,
    check_member,
    check_shard_name,
)
from train.stream.shard_cache import ShardCache, default_cache_dir

# Samples are grouped by key: `<key>.<ext>`; the key holds no dots (design.md).
Sample = dict[str, Any]

_HTTP_TIMEOUT_S = 60.0
_READ_CHUNK = 1 << 20
RETRIES = 3  # reconnects per shard read after a dropped connection, with doubling back-off
RETRY_BACKOFF_S = 0.25
RANGE_THREADS = 16  # ranged reads in flight per process: one batch of 5-shot 2-way episodes is 88 reads
FSSPEC_SCHEMES = ("s3", "gs", "gcs", "az", "abfs")
# members of one sample: the format writes .jpg, .label.png and .json (docs/design.md); room for more
MAX_MEMBERS_PER_KEY = 16
MAX_TEXT_BYTES = 256 << 20  # a manifest, index.tsv or fold list read whole (COCO's index.tsv: ~6 MB)


@dataclass(frozen=True)
class RemoteReads:
    """How remote shards are read: network limits (params `sampler.min_bytes_per_s`, ...) and the
    cache of whole shards for servers that ignore `Range` (None: `default_cache_dir()`, 20 GiB).

    `cache_remote` (params `sampler.cache_remote`): reads by key (evaluation, training manifests)
    fetch each remote shard whole into that cache on first touch, from any server (http(s), s3, ...),
    so later passes, loader processes and runs read it locally instead of one request per sample.
    """

    limits: NetLimits = field(default_factory=NetLimits)
    cache: ShardCache | None = None
    cache_remote: bool = False

    def shard_cache(self) -> ShardCache:
        return self.cache or ShardCache(str(default_cache_dir()))


DEFAULT_REMOTE = RemoteReads()

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- URLs, manifests, completion records


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
        return [{"url": url, "num_samples": -1, "bytes": -1} for url in wds.shardlists.expand_urls(split_url)]
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


def local_size(url: str) -> int | None:
    """Size in bytes of a local shard, None for remote URLs (checked by the reader instead)."""
    if _scheme(url) in ("", "file"):
        path = Path(_local_path(url))
        return path.stat().st_size if path.exists() else -1
    return None


# ---------------------------------------------------------------- opening: webdataset gopen handlers


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors of a dropped or reset connection (socket, http.client, urllib3/requests, botocore)."""
    import requests
    import urllib3

    errors: list[type[BaseException]] = [OSError, http.client.HTTPException]
    errors += [requests.RequestException, urllib3.exceptions.HTTPError]
    with contextlib.suppress(ImportError):
        import botocore.exceptions

        errors.append(botocore.exceptions.BotoCoreError)
    return tuple(errors)


class ResumingReader(io.RawIOBase):
    """A remote object read front to back; a dropped connection reopens it at the byte reached.

    `reopen(offset)` returns (stream positioned at `offset`, total size or None). An early end of
    the body (fewer bytes than the size) counts as a drop too. After `retries` failed reconnects
    in a row the error propagates (the sampler then skips the shard; evaluation stops).
    Every read is metered against `limits` (a trickling link is a ShardError naming the URL, the
    bytes and the time); `expected`: the shard's bytes from its manifest, beyond which a body that
    goes on is a ShardError too (never more memory or disk).
    """

    def __init__(
        self,
        url: str,
        reopen: Callable[[int], tuple[IO[bytes], int | None]],
        retries: int,
        limits: NetLimits | None = None,
        expected: int | None = None,
    ) -> None:
        super().__init__()
        self.url, self._reopen, self.retries = url, reopen, retries
        self.pos, self.reconnects = 0, 0
        self._errors = _transient_errors()
        self._stream: IO[bytes] | None = None  # connected by the first read, under the same retries
        self.size: int | None = None
        self.meter = RateMeter(url, limits or NetLimits())
        self.expected = expected if expected is not None and expected >= 0 else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        failures = 0
        while True:
            try:
                if self._stream is None:
                    with self.meter.waiting():
                        self._stream, self.size = self._reopen(self.pos)
                # read1 returns what has arrived: bytes before a drop are kept, a reconnect resumes after them
                data = read1(self._stream, len(buffer), self.meter)
                if not data and self.size is not None and self.pos < self.size:
                    raise http.client.IncompleteRead(b"", self.size - self.pos)
                if self.expected is not None and self.pos + len(data) > self.expected:
                    raise ShardError(
                        f"shard {self.url}: the stream goes on beyond the manifest's {self.expected} bytes"
                    )
                break
            except ShardError:
                raise
            except ReadTooSlow as exc:
                raise ShardError(f"shard {exc}") from exc
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
        with contextlib.suppress(Exception):  # closing a broken connection may fail again; it is dropped
            if stream is not None:
                stream.close()

    def close(self) -> None:
        if not self.closed:
            self._close_stream()
        super().close()


_sessions = threading.local()


def _session() -> Any:
    """This thread's requests.Session (keep-alive); a forked loader worker makes its own."""
    import requests

    mine = getattr(_sessions, "value", None)
    if mine is None or mine[0] != os.getpid():
        mine = _sessions.value = (os.getpid(), requests.Session())
    return mine[1]


def _raise_http_status(url: str, resp: Any) -> None:
    """5xx and 429 are worth retrying (raised as requests.HTTPError); anything else is a ShardError."""
    import requests

    if resp.status_code >= 500 or resp.status_code == 429:
        raise requests.HTTPError(f"HTTP {resp.status_code}", response=resp)
    raise ShardError(f"shard {url}: HTTP {resp.status_code}")


def _http_reopen(url: str, limits: NetLimits) -> Callable[[int], tuple[IO[bytes], int | None]]:
    timeout = limits.socket_timeout(_HTTP_TIMEOUT_S)

    def reopen(offset: int) -> tuple[IO[bytes], int | None]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = _session().get(url, stream=True, timeout=timeout, headers=headers)
        if resp.status_code not in (200, 206):
            resp.close()
            _raise_http_status(url, resp)
        resp.raw.decode_content = True
        length = resp.headers.get("Content-Length")
        size = int(length) + (offset if resp.status_code == 206 else 0) if length is not None else None
        if offset and resp.status_code == 200:  # the server ignored Range: skip what was read already
            for _ in iter_body(resp.raw, RateMeter(url, limits), offset):
                pass
        return resp.raw, size  # type: ignore[return-value]

    return reopen


def _fsspec_reopen(url: str) -> Callable[[int], tuple[IO[bytes], int | None]]:
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


def gopen_resuming(
    url: str,
    mode: str = "rb",
    bufsize: int = _READ_CHUNK,
    retries: int = RETRIES,
    limits: NetLimits | None = None,
    expected: int | None = None,
) -> IO[bytes]:
    """webdataset gopen handler: a buffered, byte-resuming, metered stream over an http(s) or fsspec URL
    (`expected`: the shard's size from its manifest, when known)."""
    if mode != "rb":
        raise ValueError(f"{url}: shards are read only (mode {mode!r})")
    limits = limits or NetLimits()
    reopen = _http_reopen(url, limits) if _scheme(url) in ("http", "https") else _fsspec_reopen(url)
    reader = ResumingReader(url, reopen, retries, limits, expected)
    # urllib3's read() costs ~10 us a call and tarfile makes several per member: buffer it
    return io.BufferedReader(reader, buffer_size=max(bufsize, _READ_CHUNK))


def register_gopen_handlers() -> None:
    """Make webdataset's `gopen` open http(s) and the fsspec schemes with `gopen_resuming` (not curl)."""
    for scheme in ("http", "https", *FSSPEC_SCHEMES):
        gopen_schemes[scheme] = gopen_resuming


register_gopen_handlers()


def open_stream(
    url: str,
    allow_pipe: bool = False,
    retries: int = RETRIES,
    remote: RemoteReads = DEFAULT_REMOTE,
    expected: int | None = None,
) -> IO[bytes]:
    """A sequential binary stream over `url` through webdataset's `gopen` (never a download first).

    `pipe:CMD` runs a shell command and reads its stdout; only a user's own code may ask for it
    (`allow_pipe`), since it executes the string: manifests' shard names never become one.
    """
    if _scheme(url) == "pipe":
        if not allow_pipe:
            raise ShardError(f"shard {url}: pipe: URLs run a shell command; pass allow_pipe=True to use them")
        proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, bufsize=_READ_CHUNK)
        assert proc.stdout is not None
        return proc.stdout
    if _scheme(url) in ("", "file"):
        return open_regular(_local_path(url), buffering=_READ_CHUNK)  # gopen's own, larger buffer, no FIFO
    stream = gopen(url, "rb", bufsize=_READ_CHUNK, retries=retries, limits=remote.limits, expected=expected)
    return stream  # type: ignore[no-any-return]


# ---------------------------------------------------------------- samples: webdataset pipeline stages

Handler = Callable[[Exception], bool]  # webdataset's: True = go on, False = stop; raising stops too


def open_shards(
    sources: Iterable[dict[str, Any]],
    handler: Handler,
    allow_pipe: bool = False,
    remote: RemoteReads = DEFAULT_REMOTE,
    sizes: Mapping[str, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """webdataset's `url_opener` through `open_stream` (which refuses `pipe:` unless allowed);
    `sizes[url]`: a shard's bytes from its manifest, beyond which a remote stream is a shard error."""
    for source in sources:
        try:
            expected = (sizes or {}).get(source["url"])
            yield {
                **source,
                "stream": open_stream(source["url"], allow_pipe, remote=remote, expected=expected),
                "size": expected,
            }
        except (ShardError, OSError) as exc:
            if not handler(_naming(exc, source["url"], "cannot open")):
                break


def checked_tar_files(
    sources: Iterable[dict[str, Any]],
    handler: Handler,
    limits: Mapping[str, int] | None = None,
    expected: Mapping[str, int] | None = None,
    read_whole: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """webdataset's `tar_file_expander` with the checks of `pipeline.shard_format` on every member header.

    Each header passes `check_member` (no sparse member, at most `limits[url]` bytes, default
    MAX_MEMBER_BYTES) before its data is read: webdataset's iterator reads any member whole. A
    damaged shard goes to `handler` as one ShardError naming it; the sample being read when the damage
    was met is marked `__bad__` so `group_by_keys` drops it (samples completed before it are kept).
    A `{}` ends every shard, as in webdataset, so samples of two shards never merge.
    `expected[url]`: the shard's sample count from its manifest. tarfile's stream mode takes a file
    cut at a header boundary for the archive's end, so a shard that ends with fewer samples is
    reported to `handler` as truncated like any other damage. A shard of known size (`source["size"]`,
    from the manifest) is read on after tarfile's end block to its last byte, so a body that goes on
    is damage however its bytes arrive. `read_whole(url)` is told of each shard read to its end
    without damage.
    """
    for source in sources:
        url, stream = source["url"], source["stream"]
        limit = (limits or {}).get(url, MAX_MEMBER_BYTES)
        last = None
        keys = members = 0
        try:
            with contextlib.closing(stream), tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    check_member(url, info.name, info.size, sparse=info.issparse(), limit=limit)
                    if not info.isreg():
                        continue
                    if last is None or base_plus_ext(last)[0] != base_plus_ext(info.name)[0]:
                        keys, members = keys + 1, 0
                    members += 1
                    if members > MAX_MEMBERS_PER_KEY:  # group_by_keys would grow one sample for ever
                        raise ShardError(
                            f"shard {url}: sample {base_plus_ext(info.name)[0]} has more than "
                            f"{MAX_MEMBERS_PER_KEY} members"
                        )
                    last = info.name
                    handle = tar.extractfile(info)
                    assert handle is not None
                    yield {"fname": info.name, "data": handle.read(), "__url__": url}
                    tar.members = []  # a stream holds no member list: memory stays flat over a shard
                if source.get("size") is not None:
                    # tarfile stops at the first end block: what follows must end at the manifest's bytes
                    # (a remote stream raises beyond them), whatever the server had sent by then
                    while stream.read(_READ_CHUNK):
                        pass
            want = (expected or {}).get(url)
            if want is not None and keys < want:
                raise ShardError(f"shard {url}: {keys} of the manifest's {want} samples, then the file ends")
            if read_whole is not None:
                read_whole(url)
        except Exception as exc:
            if last is not None:
                yield {"fname": f"{base_plus_ext(last)[0]}.__bad__", "data": True, "__url__": url}
            if not handler(_naming(exc, url, "is truncated or corrupt")):
                break
        yield {}


def _naming(exc: Exception, url: str, problem: str) -> ShardError:
    """`exc` as a ShardError whose message names the shard; `.url` tells a handler which shard failed."""
    error = exc if isinstance(exc, ShardError) else ShardError(f"shard {url} {problem}: {exc}")
    error.url = url  # type: ignore[attr-defined]
    if error is not exc:
        error.__cause__ = exc
    return error


def tar_samples(
    sources: Iterable[dict[str, Any]],
    handler: Handler,
    allow_pipe: bool = False,
    limits: Mapping[str, int] | None = None,
    expected: Mapping[str, int] | None = None,
    remote: RemoteReads = DEFAULT_REMOTE,
    sizes: Mapping[str, int] | None = None,
    read_whole: Callable[[str], None] | None = None,
) -> Iterator[Sample]:
    """`{"url": ...}` dicts -> samples `{"__key__", "__url__", "<ext>": bytes}` (webdataset's
    `tarfile_to_samples` with `open_shards` and `checked_tar_files` as its first two stages);
    `sizes[url]`: the shard's bytes from its manifest (a remote stream may not go beyond them);
    `read_whole(url)`: told of each shard read to its end without damage."""
    opened = open_shards(sources, handler, allow_pipe, remote, sizes)
    files = checked_tar_files(opened, handler, limits, expected, read_whole)
    return group_by_keys(files, handler=handler)  # type: ignore[no-any-return]


def raise_error(exc: Exception) -> bool:
    raise exc


def read_shard(url: str, allow_pipe: bool = False, limit: int = MAX_MEMBER_BYTES) -> Iterator[Sample]:
    """The samples of one shard, in order; a damaged or unsafe shard raises ShardError naming it."""
    return tar_samples([{"url": url}], raise_error, allow_pipe, {url: limit})


# ---------------------------------------------------------------- random access: ranged reads


ShardInfo = tuple[int, "str | None"]  # a shard's (bytes, sha256) from its manifest


def read_range(
    url: str,
    start: int,
    end: int | None,
    retries: int = RETRIES,
    remote: RemoteReads = DEFAULT_REMOTE,
    shard: ShardInfo | None = None,
) -> bytes:
    """Bytes [start, end) of `url` (to the end when `end` is None) with one read / one ranged request.

    A remote read that fails or comes back short is retried `retries` times (doubling back-off);
    then the error propagates: test data is never silently dropped. All attempts together are held
    to `remote.limits` (a ShardError naming the URL, bytes and time). The body is read as a stream,
    never beyond `end` (a whole file: at most MAX_TEXT_BYTES). `shard`: the shard's (bytes, sha256)
    from its manifest; a server that ignores Range then has the shard fetched once into the cache.
    """
    if _scheme(url) in ("", "file", "pipe"):
        return _read_range_once(url, start, end, remote, shard, None)
    errors = _transient_errors()
    meter = RateMeter(url, remote.limits)
    for attempt in range(retries + 1):
        try:
            data = _read_range_once(url, start, end, remote, shard, meter)
            if end is None or len(data) == end - start:
                return data
            problem: BaseException = EOFError(f"got {len(data)} of {end - start} bytes")
        except (ShardError, FileNotFoundError):
            raise
        except ReadTooSlow as exc:
            raise ShardError(f"shard {exc}") from exc
        except errors as exc:
            problem = exc
        if attempt < retries:
            log.warning("shard %s: ranged read %d..%s failed (%s); retrying", url, start, end, problem)
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
    raise ShardError(f"shard {url}: ranged read {start}..{end} failed {retries + 1} times: {problem}")


def open_regular(path: str, buffering: int = -1) -> IO[bytes]:
    """`path` opened for reading if it is a regular file; a FIFO, device or socket is a ShardError
    (opening a FIFO blocks until a writer comes, reading a device may never end). O_NONBLOCK makes
    the open itself return at once; it changes nothing for a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ShardError(f"shard {path} is not a regular file (a FIFO, device or socket)")
    return os.fdopen(fd, "rb", buffering=buffering)


def _read_local(path: str, start: int, end: int | None) -> bytes:
    with open_regular(_local_path(path)) as handle:
        handle.seek(start)
        return handle.read(-1 if end is None else end - start)


def _read_range_once(
    url: str,
    start: int,
    end: int | None,
    remote: RemoteReads,
    shard: ShardInfo | None,
    meter: RateMeter | None,
) -> bytes:
    scheme = _scheme(url)
    if scheme in ("", "file"):
        return _read_local(url, start, end)
    if scheme == "pipe":
        raise ShardError(f"shard {url}: pipe: URLs cannot be read by range; use a path or URL")
    assert meter is not None
    if remote.cache_remote and shard is not None:
        local = _kept_whole(url, remote, shard, meter)
        if local is not None:
            return _read_local(str(local), start, end)
    if scheme in ("http", "https"):
        return _http_range(url, start, end, remote, shard, meter)
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    with meter.waiting():  # the client's own timeouts end a hung request; the meter checks what it took
        data: bytes = fs.cat_file(path, start=start, end=end)
        meter.add(len(data))
    return data


def _kept_whole(url: str, remote: RemoteReads, shard: ShardInfo, meter: RateMeter) -> Path | None:
    """The shard's cached copy, fetched whole on first touch (`cache_remote`); None when the shard is
    larger than the whole cache (it is then read by range, as without the option)."""
    cache = remote.shard_cache()
    if not 0 <= shard[0] <= cache.max_bytes:
        return None
    return cache.cached(url, *shard) or _fetch_whole(url, cache, shard, None, remote, meter)


# Servers that answered a ranged request with 200 (they ignore Range), by origin, in this process;
# the first ranged request to an origin goes alone, so the others know before they ask.
_ignores_range: dict[str, bool] = {}
_probe_locks: dict[str, threading.Lock] = {}
_probe_guard = threading.Lock()


def _origin(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}"


def _http_range(
    url: str, start: int, end: int | None, remote: RemoteReads, shard: ShardInfo | None, meter: RateMeter
) -> bytes:
    """One HTTP read of [start, end): from the shard cache when the server ignores Range."""
    cache = remote.shard_cache()
    if shard is None or not 0 <= shard[0] <= cache.max_bytes:
        cache_or_none = None
    else:
        cache_or_none = cache
        local = cache.cached(url, *shard)
        if local is None and _ignores_range.get(_origin(url)):
            local = _fetch_whole(url, cache, shard, None, remote, meter)
        if local is not None:
            return _read_local(str(local), start, end)
    whole = start == 0 and end is None
    origin = _origin(url)
    if whole or origin in _ignores_range:
        return _http_request(url, start, end, remote, shard, cache_or_none, meter)
    with _probe_guard:
        lock = _probe_locks.setdefault(origin, threading.Lock())
    # the first ranged request to this server (of this process's threads, and of the processes that
    # share the cache): the others wait for its answer, then read from the cache or by Range
    shared = cache.probing(origin) if cache_or_none is not None else contextlib.nullcontext()
    with lock, shared:
        if origin not in _ignores_range and cache_or_none is not None and cache.is_rangeless(origin):
            _ignores_range[origin] = True
        if origin not in _ignores_range:
            return _http_request(url, start, end, remote, shard, cache_or_none, meter)
    return _http_range(url, start, end, remote, shard, meter)


def _http_request(
    url: str,
    start: int,
    end: int | None,
    remote: RemoteReads,
    shard: ShardInfo | None,
    cache: ShardCache | None,
    meter: RateMeter,
) -> bytes:
    whole = start == 0 and end is None
    rng = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
    headers = {} if whole else {"Range": rng}
    timeout = remote.limits.socket_timeout(_HTTP_TIMEOUT_S)
    with meter.waiting():
        resp = _session().get(url, headers=headers, stream=True, timeout=timeout)
    with contextlib.closing(resp):
        if resp.status_code not in (200, 206):
            _raise_http_status(f"{url} (range {rng})", resp)
        resp.raw.decode_content = True
        if not whole:
            _ignores_range.setdefault(_origin(url), resp.status_code == 200)
            if resp.status_code == 200 and cache is not None:
                cache.mark_rangeless(_origin(url))
        if resp.status_code == 200 and not whole:  # the server ignored Range: the body is the whole file
            if cache is not None and shard is not None:
                local = _fetch_whole(url, cache, shard, resp, remote, meter)
                return _read_local(str(local), start, end)
            for _ in iter_body(resp.raw, meter, start):  # skip to `start`; nothing kept
                pass
        if end is not None:
            return read_body(resp.raw, meter, end - start, exact=True)
        try:
            return read_body(resp.raw, meter, MAX_TEXT_BYTES, exact=False)
        except ValueError as exc:
            raise ShardError(f"{exc} (a file read whole holds at most {MAX_TEXT_BYTES} bytes)") from exc


# Whole-shard fetches that failed for good (too slow, too long), by URL: the threads that waited on
# that shard's lock meanwhile fail with the same line instead of each trying the link again.
_fetch_failures: dict[str, tuple[float, str]] = {}


def _fetch_whole(
    url: str, cache: ShardCache, shard: ShardInfo, resp: Any, remote: RemoteReads, meter: RateMeter
) -> Path:
    """The shard's cached copy, fetched once (from `resp` when given, else a new GET)."""
    asked = time.monotonic()

    def fill(handle: IO[bytes]) -> None:
        failed = _fetch_failures.get(url)
        if failed is not None and failed[0] >= asked:
            raise ShardError(failed[1])
        try:
            _fill(url, handle, resp, shard[0], remote, meter)
        except (ShardError, ReadTooSlow) as exc:
            _fetch_failures[url] = (
                time.monotonic(),
                str(exc) if isinstance(exc, ShardError) else f"shard {exc}",
            )
            raise

    return cache.fetch(url, *shard, fill=fill)


def _fill(url: str, handle: IO[bytes], resp: Any, size: int, remote: RemoteReads, meter: RateMeter) -> None:
    """Write the whole shard at `url` (`size` bytes by its manifest) to `handle`, from `resp` or a new GET
    (an fsspec URL: a resuming, metered stream, never beyond `size`)."""
    if resp is None and _scheme(url) not in ("http", "https"):
        with contextlib.closing(gopen_resuming(url, limits=remote.limits, expected=size)) as stream:
            shutil.copyfileobj(stream, handle, _READ_CHUNK)
        return
    own = resp is None
    if own:
        timeout = remote.limits.socket_timeout(_HTTP_TIMEOUT_S)
        with meter.waiting():
            resp = _session().get(url, stream=True, timeout=timeout)
        if resp.status_code != 200:
            resp.close()
            _raise_http_status(url, resp)
        resp.raw.decode_content = True
    try:
        for chunk in iter_body(resp.raw, meter, size):
            handle.write(chunk)
        if read1(resp.raw, 1, meter):
            raise ShardError(f"shard {url}: the body goes on beyond the manifest's {size} bytes")
    finally:
        if own:
            resp.close()


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _range_pool() -> ThreadPoolExecutor:
    """This process's pool for ranged reads (a forked loader worker starts its own)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(RANGE_THREADS, thread_name_prefix="range-read"))
    return _pool[1]


def read_ranges(
    ranges: Sequence[tuple[str, int, int | None]],
    remote: RemoteReads = DEFAULT_REMOTE,
    shards: Mapping[str, ShardInfo] | None = None,
) -> list[Exception | bytes]:
    """`read_range` of each (url, start, end), remote ones `RANGE_THREADS` at a time; in order.

    A failed read comes back as its exception (the caller names the sample); local reads stay in
    this thread, where a page-cache read is faster than a hand-off. `shards[url]`: (bytes, sha256)
    from the split's manifest (see `read_range`).
    """

    def one(r: tuple[str, int, int | None]) -> Exception | bytes:
        try:
            return read_range(*r, remote=remote, shard=(shards or {}).get(r[0]))
        except Exception as exc:  # returned, not raised: the caller knows which sample it was
            return exc

    if len(ranges) < 2 or all(_scheme(url) in ("", "file", "pipe") for url, _, _ in ranges):
        return [one(r) for r in ranges]
    return list(_range_pool().map(one, ranges))


def parse_tar_fragment(data: bytes, key: str, url: str) -> Sample:
    """The members of sample `key` from bytes that start at its first member header (a ranged read)."""
    sample: Sample = {"__key__": key, "__url__": url}
    try:
        # end-of-archive blocks make a fragment a valid archive; later samples' members are ignored
        with tarfile.open(fileobj=io.BytesIO(data + b"\0" * 1024), mode="r:") as tar:
            for member in tar:
                # checked before extractfile: a sparse or oversized member never reaches a read
                check_member(url, member.name, member.size, sparse=member.issparse(), limit=len(data))
                mkey, ext = base_plus_ext(os.path.basename(member.name))
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
