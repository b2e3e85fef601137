"""Downloads and archives under a full disk: a failing write publishes nothing and leaves no temp file."""

import errno
import hashlib
import io
import tarfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from faults import FullDisk, serve_http

from pipeline import download
from pipeline.download import DownloadError, download_dataset, fetch
from pipeline.sources import VOC2012, Source

PAYLOAD = bytes(range(256)) * 2000  # 512 kB: several network reads and buffered writes


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ARCHIVE = _tar(
    {
        "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": PAYLOAD,
        "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000032\n",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"",
    }
)
SOURCE = Source(name=VOC2012.name, url="http://unused.invalid/x", sha256=hashlib.sha256(ARCHIVE).hexdigest())


@pytest.fixture
def mirror_url() -> Iterator[str]:
    """An HTTP mirror on 127.0.0.1 serving ARCHIVE under its official name, stopped after the test."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.lstrip("/") != SOURCE.name:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(ARCHIVE)))
            self.end_headers()
            self.wfile.write(ARCHIVE)

    with serve_http(Handler) as url:
        yield url


def _fill_disk_at(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """The download module's `open` gives `.part` files a disk with `room` bytes left."""

    def fake_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115 (closed by the caller's `with`)
        return FullDisk(handle, room) if str(path).endswith(download.PART_SUFFIX) and "b" in mode else handle

    monkeypatch.setattr(download, "open", fake_open, raising=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("mirror", ["http", "folder"])
def test_disk_full_mid_download_publishes_nothing(mirror_url, tmp_path, monkeypatch, mirror):
    if mirror == "folder":
        (tmp_path / "mirror").mkdir()
        (tmp_path / "mirror" / SOURCE.name).write_bytes(ARCHIVE)
    where = mirror_url if mirror == "http" else str(tmp_path / "mirror")
    archives = tmp_path / "archives"
    _fill_disk_at(monkeypatch, room=len(ARCHIVE) // 3)
    with pytest.raises(DownloadError, match=rf"{SOURCE.name}: cannot (write|copy) .*No space left"):
        fetch(SOURCE, archives, where, retries=2, progress=False, sleep=lambda s: None)
    assert _leftovers(archives) == []  # no file under its final name, no .part, no sidecar
    # space freed: the next run downloads and verifies the whole file
    monkeypatch.undo()
    path, digest = fetch(SOURCE, archives, where, progress=False)
    assert path.read_bytes() == ARCHIVE and digest == f"sha256:{SOURCE.sha256}"


def test_disk_full_during_extraction_publishes_nothing(mirror_url, tmp_path, monkeypatch, capsys):
    real = tarfile.copyfileobj
    calls = {"n": 0}

    def failing_copy(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first member is out, the second hits the full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr(tarfile, "copyfileobj", failing_copy)
    root, archives = tmp_path / "root", tmp_path / "archives"
    checksums = {SOURCE.name: {"sha256": SOURCE.sha256, "size": len(ARCHIVE)}}
    with pytest.raises(OSError, match="No space left"):
        download_dataset("voc", root, archives, mirror_url, checksums, progress=False)
    assert _leftovers(root) == []  # no half-extracted tree, no .tmp- folder, no marker
    assert (archives / SOURCE.name).read_bytes() == ARCHIVE  # the verified archive is kept for the re-run
    # the stage's command line turns it into one line, not a traceback
    calls["n"] = 0
    argv = ["--dataset", "voc", "--root", str(root), "--archives", str(archives), "--mirror", mirror_url,
            "--checksums", str(_sums(tmp_path, checksums))]  # fmt: skip
    assert download.main(argv) == 1
    assert capsys.readouterr().err.strip().endswith("No space left on device")
    assert _leftovers(root) == []
    monkeypatch.undo()
    assert download.main(argv) == 0
    assert (root / "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg").read_bytes() == PAYLOAD


def _sums(tmp_path: Path, checksums: dict) -> Path:
    import json

    path = tmp_path / "sums.json"
    path.write_text(json.dumps({"archives": checksums}))
    return path
