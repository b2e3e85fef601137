"""Safe extraction: members escaping the target are refused before anything is written; re-runs are no-ops."""

from __future__ import annotations

import io
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.archive import UnsafeArchiveError, extract


def write_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


OK = ("VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt", b"2007_000032\n")


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (("/tmp/abs.txt", b"x"), "absolute path"),
        (("VOCdevkit/../../up.txt", b"x"), "escapes the target"),
        (("../up.txt", b"x"), "escapes the target"),
        (link("VOCdevkit/evil", "/etc/passwd"), "points outside"),
        (link("VOCdevkit/evil", "../../outside"), "points outside"),
        (link("VOCdevkit/hard", "../outside", tarfile.LNKTYPE), "points outside"),
        (link("VOCdevkit/fifo", "", tarfile.FIFOTYPE), "device or fifo"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, member, message: str) -> None:
    archive = write_tar(tmp_path / "evil.tar", [OK, member])
    dest = tmp_path / "a" / "b"
    with pytest.raises(UnsafeArchiveError, match=message) as info:
        extract(archive, dest, "sha256:0")
    assert "evil.tar" in str(info.value)
    # Nothing was published and nothing leaked outside the target.
    assert sorted(p.name for p in dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "evil.tar"]


def test_links_inside_the_target_are_kept(tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "ok.tar", [OK, link("VOCdevkit/VOC2012/alias.txt", "ImageSets/Segmentation/train.txt")]
    )
    extract(archive, tmp_path / "out", "sha256:1")
    assert (tmp_path / "out/VOCdevkit/VOC2012/alias.txt").read_bytes() == OK[1]


def test_unsafe_zip_members_are_refused(tmp_path: Path) -> None:
    for name in ("../up.txt", "/abs.txt", "train2014/../../up.txt"):
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("train2014/a.jpg", b"jpg")
            zf.writestr(name, b"x")
        with pytest.raises(UnsafeArchiveError):
            extract(archive, tmp_path / "out", "sha256:2")
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("train2014/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        extract(archive, tmp_path / "out", "sha256:3")
    assert not (tmp_path / "up.txt").exists() and not (tmp_path / "out" / "train2014").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tgz"
    bad.write_bytes(b"not an archive at all")
    with pytest.raises(ValueError, match=r"broken\.tgz: not a tar or zip archive"):
        extract(bad, tmp_path / "out", "sha256:4")


def test_rerun_is_noop_and_new_digest_replaces_stale_content(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    archive = write_tar(tmp_path / "v1.tar", [OK, ("VOCdevkit/old.txt", b"old")])
    assert extract(archive, dest, "sha256:aa") == ["VOCdevkit"]
    stamp = (dest / OK[0]).stat().st_mtime_ns
    assert extract(archive, dest, "sha256:aa") == ["VOCdevkit"]
    assert (dest / OK[0]).stat().st_mtime_ns == stamp  # untouched

    write_tar(archive, [OK, ("VOCdevkit/new.txt", b"new")])
    extract(archive, dest, "sha256:bb")
    assert (dest / "VOCdevkit/new.txt").read_bytes() == b"new"
    assert not (dest / "VOCdevkit/old.txt").exists()  # the whole folder was replaced, not merged
    assert not [p for p in dest.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_missing_output_forces_reextraction(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    archive = write_tar(tmp_path / "v.tar", [OK])
    extract(archive, dest, "sha256:cc")
    shutil.rmtree(dest / "VOCdevkit")
    extract(archive, dest, "sha256:cc")
    assert (dest / OK[0]).read_bytes() == OK[1]
