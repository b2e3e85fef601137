"""Local shared-storage endpoints for tests: a moto S3 server, an HTTP server that drops connections."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BUCKET = "fss-test"
S3_ENV = {
    # moto accepts any credentials; they reach s3fs/boto3/dvc through the standard variables only
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_s3(upload: dict[str, Path]) -> Iterator[str]:
    """A moto S3 endpoint on 127.0.0.1 with `BUCKET` holding each folder of `upload` under its prefix.

    Yields the endpoint URL; AWS_* variables point every S3 client of this process (and of its
    children) at it until the block ends.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        for prefix, folder in upload.items():
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    key = f"{prefix}/{path.relative_to(folder).as_posix()}"
                    client.upload_file(str(path), BUCKET, key)
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with `Range` support; drops the connection half-way through chosen files.

    `drops[name]` = how many more GETs of that file are cut half-way; -1: every GET is cut before
    the first body byte (a shard that keeps failing). Every request is recorded in `log` as
    (path, Range header).
    """

    drops: dict[str, int]
    log: list[tuple[str, str | None]]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        self.log.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data)
        rng = self.headers.get("Range")
        if rng:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), (int(last) + 1 if last else len(data))
        body = data[start:end]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        left = self.drops.get(path.name, 0)
        if left:
            self.drops[path.name] = left - 1 if left > 0 else -1
            self.wfile.write(body[: len(body) // 2 if left > 0 else 0])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection dies mid-body
            self.close_connection = True
            return
        self.wfile.write(body)


@contextlib.contextmanager
def flaky_http(root: Path, drops: dict[str, int]) -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """Serve `root` at http://127.0.0.1:<port> with FlakyHandler; yields (base url, request log)."""
    log: list[tuple[str, str | None]] = []
    handler = type("Handler", (FlakyHandler,), {"drops": dict(drops), "log": log})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
