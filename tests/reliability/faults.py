"""Fault injectors shared by the reliability tests: a disk that fills up, damaged or crafted shards,
decompression-bomb headers, and local HTTP servers (counting, with and without Range; trickling, endless)."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
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
    return replace_member(split_dir, shard, ext, None)


def replace_member(split_dir: Path, shard: str, ext: str, payload: bytes | None) -> str:
    """Rewrite `shard` with the `.ext` member of its last sample replaced by `payload` (dropped if None)
    and fix the manifest to match; returns that sample's key. Earlier offsets do not move."""
    path = split_dir / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    key = members[-1][0].name.split(".", 1)[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for info, data in members:
            if info.name == f"{key}.{ext}":
                if payload is None:
                    continue
                info.size, data = len(payload), payload
            out.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    _fix_manifest(split_dir, shard)
    return key


def append_raw(split_dir: Path, shard: str, raw: bytes) -> None:
    """Append raw tar blocks (a hand-made header and its data) after the last member of `shard`, then
    the end-of-archive blocks; the manifest is fixed to match (a crafted shard that passes its sha256)."""
    path = split_dir / shard
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    path.write_bytes(path.read_bytes()[:end] + raw + bytes(1024))
    _fix_manifest(split_dir, shard)


def _fix_manifest(split_dir: Path, shard: str) -> None:
    path = split_dir / shard
    manifest_path = split_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["shards"]:
        if entry["name"] == shard:
            entry["bytes"] = path.stat().st_size
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def _octal(value: int, width: int = 12) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    return bytes(header)


def gnu_sparse_member(name: str, realsize: int, stored: int = 512) -> bytes:
    """A GNU sparse member ('S'): `stored` bytes on disk that read back as `realsize` bytes (a hole first)."""
    info = tarfile.TarInfo(name)
    info.size = stored
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[156:157] = b"S"
    header[386:398], header[398:410] = _octal(realsize - stored), _octal(stored)  # one data extent
    header[482] = 0  # no extended sparse headers
    header[483:495] = _octal(realsize)
    return _with_checksum(header) + bytes(-(-stored // 512) * 512)


def pax_size_member(name: str, size: int) -> bytes:
    """A member whose pax header claims `size` bytes (its ustar header says 0, and no data follows)."""
    info = tarfile.TarInfo(name)
    info.pax_headers = {"size": str(size)}
    return info.tobuf(tarfile.PAX_FORMAT)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A tiny JPEG whose frame header claims `width` x `height` (a decompression bomb's header, cheaply)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def copy_shards(tiny_data: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the tiny dataset's shards folder (complete.json, train/, test/) to damage."""
    shards = tmp_path / "shards"
    shutil.copytree(tiny_data["shards"], shards)
    return shards


def fold0_stream(tiny_data: dict[str, Path], split: Path, **kw: object) -> Any:
    """A small training stream of fold 0 over the split folder `split`."""
    from train.stream.index import read_fold, read_pairs
    from train.stream.sampler import EpisodeStream

    base, novel = read_fold(str(tiny_data["folds"]), 0)
    pairs = read_pairs((tiny_data["folds"] / "fold0" / "train.txt").read_text())
    opts = {"batch_size": 4, "image_size": 32, "pool_size": 8, "episodes_per_epoch": 40} | kw
    return EpisodeStream(str(split), pairs, base, novel, **opts)


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on 127.0.0.1 for the duration of the block; yields the base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


class CountingRangelessHandler(SimpleHTTPRequestHandler):
    """Python's own file server (it ignores `Range`), counting the body bytes it sends per path.

    `sent` and `gets` are set on a subclass (`rangeless_http`); a client that hangs up early is
    counted up to the bytes that reached the socket."""

    sent: dict[str, int]
    gets: dict[str, int]
    count_lock: threading.Lock

    def log_message(self, *args: Any) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        with self.count_lock:
            self.gets[self.path] = self.gets.get(self.path, 0) + 1
        while block := source.read(1 << 16):
            outputfile.write(block)
            with self.count_lock:
                self.sent[self.path] = self.sent.get(self.path, 0) + len(block)


Served = tuple[str, dict[str, int], dict[str, int]]  # base URL, body bytes sent by path, GETs by path


@contextlib.contextmanager
def _counting_http(root: Path, base: type[CountingRangelessHandler]) -> Iterator[Served]:
    """`root` served on 127.0.0.1 by `base` with fresh counters; (base URL, bytes sent, GETs) by path."""
    attrs = {"sent": {}, "gets": {}, "count_lock": threading.Lock()}
    handler = type("Handler", (base,), attrs)
    with serve_http(functools.partial(handler, directory=str(root))) as url:  # type: ignore[arg-type]
        yield url.rstrip("/"), attrs["sent"], attrs["gets"]


def rangeless_http(root: Path) -> contextlib.AbstractContextManager[Served]:
    """`root` served by a Range-less server on 127.0.0.1; yields (base URL, bytes sent, GETs) by path."""
    return _counting_http(root, CountingRangelessHandler)


class CountingRangeHandler(CountingRangelessHandler):
    """The counting file server, answering `Range: bytes=a-b` / `bytes=a-` with 206 and those bytes
    (as S3 and most web servers do); `sent` counts the body bytes per path, `gets` the requests."""

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        first, _, last = rng.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) + 1 if last else len(data), len(data))
        self.send_response(206)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        self.copyfile(io.BytesIO(data[start:end]), self.wfile)


def ranged_http(root: Path) -> contextlib.AbstractContextManager[Served]:
    """`root` served on 127.0.0.1 by a server that honours Range; (base URL, bytes sent, GETs) by path."""
    return _counting_http(root, CountingRangeHandler)


class SlowShardHandler(SimpleHTTPRequestHandler):
    """Serves `root`; `.tar` files come at `rate` bytes/s (`stall`: headers, then no byte at all), or
    (`endless`) as the file followed by zeros for ever, with no Content-Length. Range is ignored."""

    rate: float = 50.0
    stall: bool = False
    endless: bool = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.endswith(".tar"):
            super().do_GET()
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        if not self.endless:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if self.endless:
                self.wfile.write(data)
                while True:
                    self.wfile.write(bytes(1 << 16))
            step = max(1, int(self.rate / 10))
            for i in range(0, len(data), step):
                time.sleep(3600 if self.stall else 0.1)
                self.wfile.write(data[i : i + step])
                self.wfile.flush()
        except OSError:  # the client hung up: what it is meant to do
            pass


@contextlib.contextmanager
def slow_http(root: Path, **attrs: object) -> Iterator[str]:
    """`root` on 127.0.0.1 through SlowShardHandler with `attrs` (rate, stall, endless); the base URL."""
    handler = type("Handler", (SlowShardHandler,), attrs)
    with serve_http(functools.partial(handler, directory=str(root))) as url:  # type: ignore[arg-type]
        yield url.rstrip("/")
