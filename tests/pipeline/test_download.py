"""Downloader against a local HTTP server: resume, retries, checksums, 404, unsafe archives, re-runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.download import ChecksumError, DownloadError, download_dataset, fetch, main
from pipeline.sources import SBD, VOC2012, Source, sources_for

SERVER_LIFETIME_S = 60  # the server shuts itself down even if a test hangs


@dataclass
class Served:
    """What the test server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before closing, once
    ignore_range: bool = False
    range_shift: int = 0  # answer the next Range request from this many bytes later (a buggy mirror)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            served.requests.append((name, self.headers.get("Range")))
            if name not in served.files:
                self.send_error(404)
                return
            data = served.files[name]
            start = 0
            rng = self.headers.get("Range")
            if rng and not served.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0]) + served.range_shift
                served.range_shift = 0
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            cut = served.drop_after.pop(name, None)
            if cut is not None:
                self.wfile.write(body[:cut])  # then the connection drops mid-body
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME_S, httpd.shutdown)
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def voc_tar(payload: int = 300_000) -> bytes:
    """A tar in the layout of VOCtrainval_11-May-2012.tar (payload bytes of incompressible data)."""
    members = {
        "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": os.urandom(payload),
        "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png": b"png",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000032\n",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"",
    }
    return make_tar(members)


def make_tar(members: dict[str, bytes], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pinned(**files: bytes) -> dict[str, dict]:
    return {name: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for name, d in files.items()}


def md5_source(name: str, data: bytes) -> Source:
    return Source(name=name, url="http://unused.invalid/" + name, md5=hashlib.md5(data).hexdigest())


def test_sources_list_the_published_digests() -> None:
    assert VOC2012.md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert SBD.md5 == "82b4d87ceb2ed10f6038a1cba92111cb"
    assert [s.name for s in sources_for("pascal")] == [VOC2012.name, SBD.name, "train_noval.txt"]
    assert {s.name for s in sources_for("coco")} == {
        "train2014.zip",
        "val2014.zip",
        "annotations_trainval2014.zip",
    }
    with pytest.raises(ValueError, match="unknown dataset 'voc2007'"):
        sources_for("voc2007")


def test_resume_after_dropped_connection(server, tmp_path: Path) -> None:
    url, served = server
    data = voc_tar()
    served.files[VOC2012.name] = data
    served.drop_after[VOC2012.name] = 100_000
    sleeps: list[float] = []
    path, digest = fetch(
        md5_source(VOC2012.name, data),
        tmp_path / "archives",
        mirror=url,
        retries=3,
        backoff_s=0.5,
        progress=False,
        sleep=sleeps.append,
    )
    assert path.read_bytes() == data
    assert digest == "md5:" + hashlib.md5(data).hexdigest()
    # The second request asked only for the missing tail (what arrived, in whole network reads).
    (first, no_range), (second, resume) = served.requests
    assert first == second == VOC2012.name and no_range is None
    start = int(resume.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 100_000
    assert sleeps == [0.5]
    assert not (tmp_path / "archives" / (VOC2012.name + ".part")).exists()


def test_server_without_range_support_restarts_cleanly(server, tmp_path: Path) -> None:
    url, served = server
    data = voc_tar(50_000)
    served.files[VOC2012.name] = data
    served.drop_after[VOC2012.name] = 20_000
    served.ignore_range = True
    path, _ = fetch(
        md5_source(VOC2012.name, data), tmp_path, url, retries=2, progress=False, sleep=lambda s: None
    )
    assert path.read_bytes() == data  # a 200 reply to a Range request must not be appended


def test_wrong_content_range_restarts_from_scratch(server, tmp_path: Path) -> None:
    url, served = server
    data = voc_tar(200_000)
    served.files[VOC2012.name] = data
    served.drop_after[VOC2012.name] = 100_000
    served.range_shift = 7
    path, _ = fetch(
        md5_source(VOC2012.name, data), tmp_path, url, retries=3, progress=False, sleep=lambda s: None
    )
    assert path.read_bytes() == data
    assert [r for _, r in served.requests][-1] is None  # the last attempt started over


def test_retries_are_bounded(server, tmp_path: Path) -> None:
    url, served = server
    data = voc_tar(50_000)
    served.files[VOC2012.name] = data
    sleeps: list[float] = []

    class Dropper(dict):  # drop every attempt
        def pop(self, key, default=None):
            return 1000

    served.drop_after = Dropper()
    with pytest.raises(DownloadError, match="giving up after 3 attempts"):
        fetch(
            md5_source(VOC2012.name, data),
            tmp_path,
            url,
            retries=2,
            backoff_s=1,
            progress=False,
            sleep=sleeps.append,
        )
    assert sleeps == [1, 2]  # exponential back-off between attempts


def test_checksum_mismatch_names_file_and_digests(server, tmp_path: Path) -> None:
    url, served = server
    good, bad = voc_tar(10_000), voc_tar(10_000)
    served.files[VOC2012.name] = bad
    source = md5_source(VOC2012.name, good)
    with pytest.raises(ChecksumError) as info:
        fetch(source, tmp_path, url, retries=0, progress=False)
    message = str(info.value)
    assert VOC2012.name in message
    assert source.md5 in message and hashlib.md5(bad).hexdigest() in message
    assert list(tmp_path.iterdir()) == []  # nothing published, no part left to resume from


def test_size_only_source_checks_the_size(server, tmp_path: Path) -> None:
    url, served = server
    served.files["val2014.zip"] = b"x" * 100
    source = Source(name="val2014.zip", url="unused", size=99)
    with pytest.raises(ChecksumError, match=r"val2014\.zip: the mirror sends 100 bytes, more than the 99"):
        fetch(source, tmp_path, url, retries=0, progress=False)  # stopped at the pinned size
    served.files["val2014.zip"] = b"x" * 98
    with pytest.raises(ChecksumError, match=r"val2014\.zip: size mismatch: expected 99 bytes, got 98"):
        fetch(source, tmp_path, url, retries=0, progress=False)


def test_404_fails_at_once(server, tmp_path: Path) -> None:
    url, served = server
    sleeps: list[float] = []
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(VOC2012, tmp_path, url, retries=3, progress=False, sleep=sleeps.append)
    assert len(served.requests) == 1 and sleeps == []


def test_malicious_tar_member_is_refused(server, tmp_path: Path) -> None:
    url, served = server
    evil = make_tar({"VOCdevkit/VOC2012/ok.txt": b"ok", "VOCdevkit/../../escaped.txt": b"pwned"})
    served.files[VOC2012.name] = evil
    root = tmp_path / "deep" / "root"
    with pytest.raises(ValueError, match=r"escaped\.txt.*escapes the target"):
        download_dataset(
            "voc", root, tmp_path / "archives", url, pinned(**{VOC2012.name: evil}), progress=False
        )
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()
    assert not (root / "VOCdevkit").exists()  # nothing published from a refused archive


def test_download_extracts_and_rerun_is_a_noop(server, tmp_path: Path) -> None:
    url, served = server
    voc = voc_tar(20_000)
    sbd = make_tar(
        {
            "benchmark_RELEASE/dataset/img/2008_000002.jpg": b"jpg",
            "benchmark_RELEASE/dataset/cls/2008_000002.mat": b"mat",
            "benchmark_RELEASE/dataset/train.txt": b"2008_000002\n",
            "benchmark_RELEASE/dataset/val.txt": b"",
        },
        gz=True,
    )
    noval = b"2008_000002\n"
    served.files.update({VOC2012.name: voc, SBD.name: sbd, "train_noval.txt": noval})
    checksums = pinned(**{VOC2012.name: voc, SBD.name: sbd, "train_noval.txt": noval})
    root, archives = tmp_path / "raw", tmp_path / "archives"
    done = download_dataset("pascal", root, archives, url, checksums, progress=False)
    assert set(done) == {VOC2012.name, SBD.name, "train_noval.txt"}
    assert (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text() == "2007_000032\n"
    assert (root / "benchmark_RELEASE/dataset/train_noval.txt").read_bytes() == noval
    assert (root / "benchmark_RELEASE/dataset/cls/2008_000002.mat").read_bytes() == b"mat"
    seen = len(served.requests)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    again = download_dataset("pascal", root, archives, url, checksums, progress=False)
    assert again == done
    assert len(served.requests) == seen  # nothing fetched
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps  # nothing rewritten


def test_corrupted_archive_on_disk_is_kept_and_fetched_again_once_moved(server, tmp_path: Path) -> None:
    url, served = server
    data = voc_tar(5_000)
    served.files[VOC2012.name] = data
    source = md5_source(VOC2012.name, data)
    path, _ = fetch(source, tmp_path, url, progress=False)
    path.write_bytes(b"garbage")  # changed since the toolkit verified it: whose bytes these are is unknown
    with pytest.raises(ChecksumError, match="so it is kept"):
        fetch(source, tmp_path, url, progress=False)
    assert path.read_bytes() == b"garbage"
    path.unlink()
    path2, _ = fetch(source, tmp_path, url, progress=False)
    assert path2.read_bytes() == data and len(served.requests) == 2


def test_folder_and_file_url_mirrors(tmp_path: Path) -> None:
    data = voc_tar(5_000)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / VOC2012.name).write_bytes(data)
    source = md5_source(VOC2012.name, data)
    assert fetch(source, tmp_path / "a", str(mirror), progress=False)[0].read_bytes() == data
    assert fetch(source, tmp_path / "b", mirror.as_uri(), progress=False)[0].read_bytes() == data
    with pytest.raises(DownloadError, match="not found in mirror folder"):
        fetch(source, tmp_path / "c", str(tmp_path / "nowhere"), progress=False)


def test_cli(server, tmp_path: Path, capsys) -> None:
    url, served = server
    data = voc_tar(5_000)
    served.files[VOC2012.name] = data
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps({"archives": pinned(**{VOC2012.name: data})}))
    root = tmp_path / "root"
    assert main(["--dataset", "voc", "--root", str(root), "--mirror", url, "--checksums", str(sums)]) == 0
    assert (root / "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg").is_file()
    assert (root / ".archives" / VOC2012.name).is_file()
    # Without the pinned digests the official md5 applies, and the toy bytes fail it.
    assert main(["--dataset", "voc", "--root", str(tmp_path / "r2"), "--mirror", url, "--retries", "0"]) == 1
    assert "md5 mismatch: expected 6cd6e144f989b92b3379bac3b3de84fd" in capsys.readouterr().err


def test_an_unresolvable_host_fails_at_once_naming_the_remedies(monkeypatch, tmp_path: Path) -> None:
    """Offline (no DNS): no retries, no backoff, one error that names both ways to give the data."""
    import socket

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    waits: list[float] = []
    source = Source(name="a.tar", url="http://host.invalid/a.tar", md5=None, size=3)
    with pytest.raises(DownloadError) as err:
        fetch(source, tmp_path, retries=5, sleep=waits.append, progress=False)
    assert waits == [] and not list(tmp_path.iterdir())
    message = str(err.value)
    assert "cannot resolve host.invalid" in message and "data/raw/official/" in message
    assert "download.mirror" in message and "\n" not in message
