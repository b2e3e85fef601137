"""Archives and downloads against a user's own data and hostile files: nothing of the user's is lost,
nothing lands outside the target, and no size from the network or an archive is trusted."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from faults import serve_http

from pipeline import archive as archive_mod
from pipeline import download
from pipeline.archive import MAX_COMPRESSION_RATIO, ExistingDataError, UnsafeArchiveError, check_tar, extract
from pipeline.download import ChecksumError, download_dataset, fetch
from pipeline.sources import SBD, VOC2012, Source

REPO = Path(__file__).resolve().parents[2]
VOC_FILES = {
    "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": bytes(range(256)) * 40,
    "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png": b"png bytes",
    "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000032\n",
    "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"",
}


def make_tar(
    members: dict[str, bytes] | list[tarfile.TarInfo | tuple[str, bytes]], gz: bool = False
) -> bytes:
    buf = io.BytesIO()
    items = list(members.items()) if isinstance(members, dict) else members
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for item in items:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
                continue
            info = tarfile.TarInfo(item[0])
            info.size = len(item[1])
            tar.addfile(info, io.BytesIO(item[1]))
    return buf.getvalue()


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def pinned(name: str, data: bytes) -> dict[str, dict]:
    return {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` but the toolkit's own markers, with its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".extracted" not in p.parts
    }


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[str], dict[str, bytes]]]:
    """An HTTP mirror on 127.0.0.1 that serves `files` and records every path asked for."""
    asked: list[str] = []
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            asked.append(name)
            if name not in files:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(files[name])))
            self.end_headers()
            self.wfile.write(files[name])

    with serve_http(Handler) as url:
        yield url, asked, files


# ---------------------------------------------------------------- 1. a user's data is never lost


def _users_voc(root: Path, files: dict[str, bytes] = VOC_FILES) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "VOCdevkit/my_notes.txt").write_text("the user's own file\n")


def test_a_users_extracted_folder_is_verified_and_never_replaced(tmp_path):
    root, mirror = tmp_path / "raw", tmp_path / "mirror"
    _users_voc(root)
    data = make_tar(VOC_FILES)
    mirror.mkdir()
    (mirror / VOC2012.name).write_bytes(data)
    before = tree(root)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    done = download_dataset("voc", root, tmp_path / "archives", str(mirror), pinned(VOC2012.name, data),
                            progress=False)  # fmt: skip
    assert done[VOC2012.name] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert tree(root) == before  # matched the archive file by file: kept as it is, the user's note too
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a user's file that differs from the archive: one line naming it, nothing changed
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").write_text("2007_000099\n")
    changed = tree(root)
    mirror_data = make_tar({**VOC_FILES, "VOCdevkit/VOC2012/extra.txt": b"x"})
    (mirror / VOC2012.name).write_bytes(mirror_data)
    with pytest.raises(ExistingDataError) as info:
        download_dataset("voc", tmp_path / "raw", tmp_path / "archives2", str(mirror),
                         pinned(VOC2012.name, mirror_data), progress=False)  # fmt: skip
    message = str(info.value)
    assert "\n" not in message and "train.txt" in message and "left as it is" in message
    assert tree(root) == changed
    sums = _sums(tmp_path, pinned(VOC2012.name, mirror_data))
    argv = ["--dataset", "voc", "--root", str(root), "--archives", str(tmp_path / "archives2"),
            "--mirror", str(mirror), "--checksums", str(sums)]  # fmt: skip
    assert download.main(argv) == 1
    assert tree(root) == changed


def _sums(tmp_path: Path, checksums: dict) -> Path:
    path = tmp_path / "sums.json"
    path.write_text(json.dumps({"archives": checksums}))
    return path


def test_an_existing_folder_without_its_archive_is_verified_offline(tmp_path, recording_server):
    url, asked, files = recording_server
    root = tmp_path / "raw"
    _users_voc(root)
    data = make_tar(VOC_FILES)
    files[VOC2012.name] = data  # a mirror that would serve the archive: it must not be asked
    before = tree(root)
    done = download_dataset(
        "voc", root, tmp_path / "archives", url, pinned(VOC2012.name, data), progress=False
    )
    assert asked == [] and done[VOC2012.name].startswith("verified offline")
    assert tree(root) == before and not (tmp_path / "archives" / VOC2012.name).exists()
    # a folder lacking part of the official layout: one line saying what, still no network
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(ExistingDataError, match=r"lacks .*Segmentation/val\.txt"):
        download_dataset("voc", root, tmp_path / "archives", url, pinned(VOC2012.name, data), progress=False)
    assert asked == []


def test_a_users_own_archive_with_another_digest_is_kept(tmp_path, recording_server):
    url, asked, files = recording_server
    official = make_tar(VOC_FILES)
    files[VOC2012.name] = official
    archives = tmp_path / "archives"
    archives.mkdir()
    mine = make_tar({**VOC_FILES, "VOCdevkit/VOC2012/mine.txt": b"my own edit"})
    (archives / VOC2012.name).write_bytes(mine)  # the user's own copy, never verified by the toolkit
    source = Source(VOC2012.name, url="unused", sha256=hashlib.sha256(official).hexdigest())
    with pytest.raises(ChecksumError, match="so it is kept") as info:
        fetch(source, archives, url, progress=False)
    assert "\n" not in str(info.value)
    assert (archives / VOC2012.name).read_bytes() == mine and asked == []


# ---------------------------------------------------------------- 2. reserved and foreign top-level names


def test_an_archive_top_named_like_the_marker_or_another_archives_folder_is_refused(tmp_path):
    dest = tmp_path / "raw"
    voc = tmp_path / VOC2012.name
    voc.write_bytes(make_tar(VOC_FILES))
    extract(voc, dest, "sha256:voc", ("VOCdevkit",))
    before = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    marker = f"{archive_mod.MARKER_DIR}/{VOC2012.name}.json"
    evil = tmp_path / SBD.name
    for members in (
        {marker: b'{"digest": "forged"}', "benchmark_RELEASE/dataset/train.txt": b""},
        {"VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"evil\n"},
    ):
        evil.write_bytes(make_tar(members, gz=True))
        with pytest.raises(UnsafeArchiveError, match="refused"):
            extract(evil, dest, "sha256:evil")  # even without the official layout to check against
        with pytest.raises(UnsafeArchiveError, match="refused"):
            extract(evil, dest, "sha256:evil", ("benchmark_RELEASE",))
        after = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        assert after == before


# ---------------------------------------------------------------- 9. archive and download sizes


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = tmp_path / "train2014.zip"
    with (
        zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("train2014/a.jpg", "w") as f,
    ):
        block = bytes(1 << 20)
        for _ in range(256):  # 256 MiB of zeros in a ~250 kB zip (~1000x)
            f.write(block)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UnsafeArchiveError, match=rf"expands \d+x .*more than the {MAX_COMPRESSION_RATIO}x"):
        extract(bomb, tmp_path / "raw", "sha256:bomb")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []  # not a byte written
    # many members each below the ratio bound still add up: the total is bounded too
    tgz = tmp_path / "benchmark.tgz"
    tgz.write_bytes(make_tar({f"benchmark_RELEASE/{i}.bin": bytes(4 << 20) for i in range(16)}, gz=True))
    with pytest.raises(UnsafeArchiveError, match="add up to"):
        extract(tgz, tmp_path / "raw", "sha256:tgz")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []


@pytest.fixture
def endless_server() -> Iterator[tuple[str, dict[str, int]]]:
    """Streams zeros without a Content-Length until the client hangs up (or 64 MiB, a safety stop)."""
    sent = {"bytes": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            block = bytes(1 << 16)
            try:
                while sent["bytes"] < 64 << 20:
                    self.wfile.write(block)
                    sent["bytes"] += len(block)
            except OSError:  # the client stopped reading and closed
                pass
            self.close_connection = True

    with serve_http(Handler) as url:
        yield url, sent


def test_a_download_stops_at_the_pinned_size(tmp_path, endless_server):
    url, sent = endless_server
    size = 1 << 20
    source = Source("val2014.zip", url="unused", md5="0" * 32, size=size)
    with pytest.raises(ChecksumError, match=rf"more than the {size} expected"):
        fetch(source, tmp_path / "archives", url, retries=0, progress=False)
    # the client stopped right after the pinned size; the kernel's socket buffers take a few MiB more
    assert sent["bytes"] < size + (8 << 20), sent
    assert list((tmp_path / "archives").iterdir()) == []  # no part, no file
    # a mirror folder holding a longer file: refused before a byte is copied
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "val2014.zip").write_bytes(bytes(size + 1))
    with pytest.raises(ChecksumError, match=rf"sends {size + 1} bytes"):
        fetch(source, tmp_path / "archives", str(mirror), progress=False)
    assert list((tmp_path / "archives").iterdir()) == []
    # every official source has a bound
    from pipeline.download import size_limit
    from pipeline.sources import SOURCES

    assert all(size_limit(s) for group in SOURCES.values() for s in group)


# ---------------------------------------------------------------- 10. symlink chains and the filter


CHAIN = [
    ("a/keep.txt", b"ok"),
    symlink("a/b", ".."),  # a/b -> the root: inside
    symlink("a/b/c", ".."),  # lexically a/c -> a; really <root>/c -> the root's parent: outside
    ("a/b/c/escaped.txt", b"pwned"),
]


def test_a_symlink_chain_is_refused_by_the_check_itself(tmp_path):
    archive = tmp_path / "VOCtrainval_11-May-2012.tar"
    archive.write_bytes(make_tar(CHAIN))
    with tarfile.open(archive) as tar, pytest.raises(UnsafeArchiveError, match="outside the target"):
        check_tar(archive, tar)  # before the stdlib filter gets a say
    dest = tmp_path / "deep" / "raw"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, dest, "sha256:chain")
    assert "\n" not in str(info.value) and archive.name in str(info.value)
    assert not list(tmp_path.rglob("escaped.txt")) and list(dest.iterdir()) == []


def test_extraction_needs_the_tarfile_filter_and_reports_its_errors_in_one_line(tmp_path, monkeypatch):
    good = tmp_path / VOC2012.name
    good.write_bytes(make_tar(VOC_FILES))
    with monkeypatch.context() as m:
        m.delattr(tarfile, "data_filter")  # a Python before 3.10.12 / 3.11.4
        with pytest.raises(UnsafeArchiveError, match="lacks tarfile's extraction filter"):
            extract(good, tmp_path / "raw", "sha256:good")
    assert not (tmp_path / "raw" / "VOCdevkit").exists()
    # should a member get past the toolkit's own checks, the filter's refusal is one line too
    evil = tmp_path / "evil.tar"
    evil.write_bytes(make_tar([("x/ok.txt", b"ok"), symlink("x/link", "../../outside")]))
    lax = lambda archive, tar: (["x"], [])  # noqa: E731 (the checks switched off)
    monkeypatch.setattr(archive_mod, "check_tar", lax)
    with pytest.raises(UnsafeArchiveError) as info:
        extract(evil, tmp_path / "raw", "sha256:evil")
    assert "\n" not in str(info.value) and "outside the destination" in str(info.value)
    assert not (tmp_path / "raw" / "x").exists()


def test_requires_python_excludes_pythons_without_the_filter():
    import re

    from packaging.specifiers import SpecifierSet

    found = re.search(r'^requires-python = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert found is not None
    spec = SpecifierSet(found[1])
    assert not any(v in spec for v in ("3.9.18", "3.10.11", "3.11.0", "3.11.3"))
    assert all(v in spec for v in ("3.10.12", "3.11.4", "3.12.0", "3.13.1"))


def test_a_symlink_escape_by_ordering_is_refused(tmp_path):
    """`a/b/s -> p/../..` is inside while `a/b/p` is a plain name (a/b/p/../.. = a); the later
    `a/b/p -> ..` (= a, inside) makes the kernel read s as a/.. /.. = the root's parent. Checked
    against the final tree, s is refused; nothing is written (the stdlib filter alone lets it pass)."""
    archive = tmp_path / "VOCtrainval_11-May-2012.tar"
    archive.write_bytes(
        make_tar([("a/keep.txt", b"ok"), symlink("a/b/s", "p/../.."), symlink("a/b/p", "..")])
    )
    with (
        tarfile.open(archive) as tar,
        pytest.raises(UnsafeArchiveError, match=re.escape("'a/b/s' -> 'p/../..' points outside")),
    ):
        check_tar(archive, tar)
    dest = tmp_path / "deep" / "raw"
    with pytest.raises(UnsafeArchiveError):
        extract(archive, dest, "sha256:order")
    assert list(dest.iterdir()) == []


def test_an_archive_with_too_many_members_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_mod, "MAX_ARCHIVE_MEMBERS", 1000)  # the bound, scaled down for speed
    archive = tmp_path / "VOCtrainval_11-May-2012.tar"
    archive.write_bytes(make_tar({f"VOCdevkit/e{i}": b"" for i in range(1001)}, gz=True))
    dest = tmp_path / "raw"
    with pytest.raises(UnsafeArchiveError, match="more than 1000 members") as info:
        extract(archive, dest, "sha256:many")
    assert "\n" not in str(info.value) and not (dest / "VOCdevkit").exists()
    archive.write_bytes(make_tar({f"VOCdevkit/e{i}": b"" for i in range(1000)}, gz=True))
    with tarfile.open(archive) as tar:
        check_tar(archive, tar)  # at the bound: accepted
