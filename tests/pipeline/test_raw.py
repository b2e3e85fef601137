"""The raw stage: toy archives go through the same fetch + verify + extract path; `.done` comes last."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_params
from pipeline.download import ChecksumError, download_dataset
from pipeline.raw import TOY_MIRROR, certified_raw, done_path, main, run_raw
from pipeline.shards import main as shards_main
from pipeline.toy import build_mirror

REPO = Path(__file__).resolve().parents[2]
FAST = {"toy.scale": 0.05, "train.device": "cpu"}

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def params(**overrides):
    return load_params(REPO / "params.yaml", {**FAST, **overrides})


def snapshot(root: Path) -> dict[str, int]:
    """mtimes of every file but the `.done` markers (rewritten on each run)."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".done")
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in files}


def test_toy_pascal_end_to_end_and_idempotent(tmp_path: Path) -> None:
    out, archives = tmp_path / "raw", tmp_path / "archives"
    record = run_raw(params(dataset="pascal"), out, archives, progress=False)
    assert record["source"] == "toy" and record["toy"] == {"seed": 0, "scale": 0.05}
    assert set(record["files"]) == {"VOCtrainval_11-May-2012.tar", "benchmark.tgz", "train_noval.txt"}
    assert json.loads(done_path(out, "pascal").read_text()) == record
    for rel in (
        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
        "benchmark_RELEASE/dataset/train.txt",
        "benchmark_RELEASE/dataset/train_noval.txt",
    ):
        assert (out / rel).is_file(), rel
    # The archives were fetched from the mirror folder and verified under their official names.
    mirror = json.loads((archives / TOY_MIRROR / "pascal-checksums.json").read_text())
    for name, entry in mirror["archives"].items():
        assert record["files"][name] == "sha256:" + entry["sha256"]
        assert (archives / name).stat().st_size == entry["size"]

    before = snapshot(tmp_path)
    assert run_raw(params(dataset="pascal"), out, archives, progress=False) == record
    assert snapshot(tmp_path) == before  # nothing regenerated, fetched or extracted again


def test_new_seed_replaces_the_data(tmp_path: Path) -> None:
    out, archives = tmp_path / "raw", tmp_path / "archives"
    first = run_raw(params(), out, archives, progress=False)
    ids_first = (out / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text()
    second = run_raw(params(**{"toy.seed": 1}), out, archives, progress=False)
    assert first["files"] != second["files"]
    assert (out / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text() != ids_first
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".old-*"))


def test_toy_coco(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    record = run_raw(params(dataset="coco"), out, tmp_path / "archives", progress=False)
    assert set(record["files"]) == {"train2014.zip", "val2014.zip", "annotations_trainval2014.zip"}
    assert len(list((out / "train2014").glob("COCO_train2014_*.jpg"))) == 50
    assert (out / "annotations/instances_val2014.json").is_file()
    assert done_path(out, "coco").is_file()


def test_official_source_rejects_toy_archives_and_leaves_no_done(tmp_path: Path) -> None:
    out, archives = tmp_path / "raw", tmp_path / "archives"
    run_raw(params(), out, archives, progress=False)
    assert done_path(out, "pascal").exists()
    # A "mirror" that holds the toy bytes under the official names fails the published md5.
    official = params(source="official", **{"download.mirror": str(archives / TOY_MIRROR)})
    with pytest.raises(ChecksumError, match=r"VOCtrainval_11-May-2012\.tar: md5 mismatch: expected 6cd6e144"):
        run_raw(official, tmp_path / "raw-official", tmp_path / "archives-official", progress=False)
    assert not done_path(tmp_path / "raw-official", "pascal").exists()
    assert not (tmp_path / "archives-official" / "VOCtrainval_11-May-2012.tar").exists()


def test_cli_reads_params_file(tmp_path: Path, capsys) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["toy"]["scale"] = 0.05
    raw["train"]["device"] = "cpu"
    good = tmp_path / "params.yaml"
    good.write_text(yaml.safe_dump(raw))
    args = ["--out", str(tmp_path / "raw"), "--archives", str(tmp_path / "arch")]
    assert main([*args, "--params", str(good)]) == 0
    assert done_path(tmp_path / "raw", "pascal").is_file()
    raw["toy"]["scales"] = 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main([*args, "--params", str(bad)]) == 1
    assert "unknown key 'toy.scales'" in capsys.readouterr().err


def test_toy_archives_served_over_http_download_unchanged(tmp_path: Path) -> None:
    """The packaged toy archives behave like a lab's HTTP mirror for `pipeline.download`."""
    mirror = tmp_path / "mirror"
    record = build_mirror(mirror, "pascal", seed=2, scale=0.05)
    handler = functools.partial(QuietHandler, directory=str(mirror))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    watchdog = threading.Timer(60, httpd.shutdown)
    watchdog.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        done = download_dataset(
            "sbd", tmp_path / "raw", tmp_path / "arch", url, record["archives"], progress=False
        )
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    assert set(done) == {"benchmark.tgz", "train_noval.txt"}
    sbd = tmp_path / "raw" / "benchmark_RELEASE" / "dataset"
    assert (sbd / "train_noval.txt").read_bytes() == (mirror / "train_noval.txt").read_bytes()
    assert len(list((sbd / "cls").glob("*.mat"))) == len(list((sbd / "img").glob("*.jpg"))) > 0


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _marker_only_copy(workspace: Path, copy: Path) -> None:
    """What a `dvc exp run --temp` copy holds of the raw stage: the cached `.done`, not the folder."""
    (copy / "data/raw/toy").mkdir(parents=True)
    shutil.copy(workspace / "data/raw/toy/pascal.done", copy / "data/raw/toy/pascal.done")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    run_raw(params(dataset="pascal"), ws / "data/raw/toy", ws / "data/archives/toy", progress=False)
    return ws


def test_an_experiment_copy_reads_the_raw_folder_of_its_workspace(workspace, tmp_path, monkeypatch):
    """The marker came from the cache without the folder: DVC_ROOT's folder is read, if its marker agrees."""
    copy = tmp_path / "copy"
    _marker_only_copy(workspace, copy)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    assert certified_raw("data/raw/toy", "pascal") == workspace / "data/raw/toy"
    # the workspace's folder holds other data than the copy's marker certifies: never read
    (copy / "data/raw/toy/pascal.done").write_text(json.dumps({"dataset": "pascal", "files": {}}))
    with pytest.raises(ConfigError, match=r"dvc repro --force raw"):
        certified_raw("data/raw/toy", "pascal")


def test_a_marker_without_its_folder_names_the_rebuild(workspace, tmp_path, monkeypatch):
    copy = tmp_path / "clone"  # a fresh clone after `dvc pull`: DVC_ROOT is the clone itself
    _marker_only_copy(workspace, copy)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    with pytest.raises(ConfigError, match=r"pascal\.done: the marker is here .* not the extracted pascal"):
        certified_raw("data/raw/toy", "pascal")
    # a workspace whose own folder is complete, or a folder with no marker, is read as it is
    monkeypatch.chdir(workspace)
    assert certified_raw("data/raw/toy", "pascal") == Path("data/raw/toy")
    assert certified_raw(tmp_path / "nothing", "pascal") == tmp_path / "nothing"
    # the shards stage says the same in one line
    monkeypatch.chdir(copy)
    shutil.copy(REPO / "params.yaml", copy / "params.yaml")
    assert shards_main(["--raw", "data/raw/toy", "--out", "shards/x", "--params", "params.yaml"]) == 2
