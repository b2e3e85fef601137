"""Shard URLs (local, file://, http(s)://, s3://, pipe:) as streams, ranged reads, tar sample iteration."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

# Samples are grouped by key: `<key>.<ext>`; the key holds no dots (design.md).
Sample = dict[str, Any]

_HTTP_TIMEOUT_S = 60.0
_READ_CHUNK = 1 << 20


class ShardError(RuntimeError):
    """A shard is missing, truncated or unreadable; the message names the shard."""


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


def open_stream(url: str, allow_pipe: bool = False) -> IO[bytes]:
    """A sequential binary stream over `url`; http(s) and s3 stream in chunks, never download first.

    `pipe:CMD` runs a shell command and reads its stdout; only a user's own params may ask for it
    (`allow_pipe`), since it executes the string.
    """
    scheme = _scheme(url)
    if scheme in ("", "file"):
        return open(_local_path(url), "rb", buffering=_READ_CHUNK)
    if scheme in ("http", "https"):
        import requests

        resp = requests.get(url, stream=True, timeout=_HTTP_TIMEOUT_S)
        if resp.status_code != 200:
            resp.close()
            raise ShardError(f"shard {url}: HTTP {resp.status_code}")
        resp.raw.decode_content = True
        return resp.raw  # type: ignore[no-any-return]
    if scheme == "pipe":
        if not allow_pipe:
            raise ShardError(f"shard {url}: pipe: URLs run a shell command; pass allow_pipe=True to use them")
        proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, bufsize=_READ_CHUNK)
        assert proc.stdout is not None
        return proc.stdout
    import fsspec  # s3://, gs://, ... through fsspec's streaming file objects

    return fsspec.open(url, "rb", block_size=_READ_CHUNK).open()  # type: ignore[no-any-return]


def read_range(url: str, start: int, end: int | None) -> bytes:
    """Bytes [start, end) of `url` (to the end when `end` is None) with one read / one ranged request."""
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
            raise ShardError(f"shard {url}: HTTP {resp.status_code} for range {rng}")
        return resp.content
    if scheme == "pipe":
        raise ShardError(f"shard {url}: pipe: URLs cannot be read by range; use a path or URL")
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path, start=start, end=end)  # type: ignore[no-any-return]


def read_text(url: str) -> str:
    """The whole (small) file at `url` as text: manifests and indexes."""
    return read_range(url, 0, None).decode("utf-8")


def shard_urls(split_url: str) -> list[tuple[str, int]]:
    """(url, num_samples) of every shard of a split, from its manifest.json (present = split complete)."""
    manifest = json.loads(read_text(join_url(split_url, "manifest.json")))
    return [(join_url(split_url, s["name"]), int(s["num_samples"])) for s in manifest["shards"]]


def _split_name(name: str) -> tuple[str, str]:
    base = os.path.basename(name)
    key, _, ext = base.partition(".")
    return key, ext


def iter_tar_samples(stream: IO[bytes], url: str) -> Iterator[Sample]:
    """Samples `{"__key__", "<ext>": bytes, ...}` of a tar stream, members grouped by key, in order.

    A truncated or corrupt tar raises ShardError naming `url` after the complete samples before the
    damage were yielded (the partial last sample is never yielded).
    """
    current: Sample | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                handle = tar.extractfile(member)
                assert handle is not None
                data = handle.read()
                if len(data) != member.size:
                    raise EOFError(f"member {member.name} has {len(data)} of {member.size} bytes")
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
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
