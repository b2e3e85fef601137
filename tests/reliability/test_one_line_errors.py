"""One line where one line is promised, naming the file: nested YAML, `evaluate --out` on a file, infer
manifests of the wrong shape, bombs in verify and infer, a write too large, a changed extraction, and
two downloads of one file at once."""

import contextlib
import errno
import hashlib
import json
import re
import threading
import time
from pathlib import Path

import pytest
from faults import FullDisk, copy_shards, jpeg_claiming, replace_member, slow_http
from raw_fixtures import write_params as raw_params
from train_helpers import fresh_checkpoint, write_params

from pipeline import shards as shards_stage
from pipeline.archive import ExistingDataError, extract
from pipeline.config import ConfigError, load_params
from pipeline.download import fetch
from pipeline.io import write_json
from pipeline.sources import Source
from pipeline.verify import verify_split
from train import evaluate as ev
from train.infer import open_user_image
from train.stream.manifests import build_manifest, read_manifest


def test_deeply_nested_yaml_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("model_kwargs: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests too deeply to be a params file"):
        load_params(params)


def test_evaluate_out_on_a_file_stops_before_the_compute(tiny_data, tmp_path, capsys, monkeypatch):
    fresh_checkpoint(tmp_path / "c.pt")
    manifest = build_manifest(
        str(tiny_data["shards"]), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", 0, 4
    )
    write_json(tmp_path / "m.json", manifest)
    taken = tmp_path / "results.json"
    taken.write_text("the user's")
    scored = []
    monkeypatch.setattr(ev, "evaluate_fold", lambda *a, **k: scored.append(a))
    argv = ["--params", str(write_params(tmp_path)), "--shards", str(tiny_data["shards"]),
            "--checkpoint", str(tmp_path / "c.pt"), "--manifest", str(tmp_path / "m.json"),
            "--out", str(taken / "run")]  # fmt: skip
    assert ev.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{taken} is a file, not a folder" in err
    assert scored == [] and taken.read_text() == "the user's"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"way": "1"}, "way = '1' must be a int"),
        ({"shot": None}, "shot = None must be a int"),
        ({"episodes": [{"query": "x", "classes": [1], "supports": "y"}]}, "episode 0 is not"),
    ],
)
def test_an_infer_manifest_of_the_wrong_shape_is_one_line(tiny_data, tmp_path, change, message):
    manifest = build_manifest(
        str(tiny_data["shards"]), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", 0, 2
    )
    (tmp_path / "m.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(ValueError, match=message) as info:
        read_manifest(tmp_path / "m.json")
    assert str(tmp_path / "m.json") in str(info.value) and "\n" not in str(info.value)


def test_verify_reports_an_image_whose_header_claims_20000x20000(tiny_data, tmp_path):
    shards = copy_shards(tiny_data, tmp_path)
    key = replace_member(shards / "test", "test-000001.tar", "jpg", jpeg_claiming(20000, 20000))
    problems = verify_split(shards / "test")
    shard = shards / "test" / "test-000001.tar"
    assert len(problems) == 1 and problems[0].startswith(f"{shard}: sample {key}: .jpg: image is too large")


def test_the_infer_bomb_error_names_the_file(tmp_path):
    path = tmp_path / "query.jpg"
    path.write_bytes(jpeg_claiming(20000, 20000))
    with pytest.raises(ValueError, match=rf"{path}: image is too large to decode"):
        open_user_image(path)


def test_a_write_error_without_a_file_name_names_the_shard(pascal_raw, tmp_path, monkeypatch, capsys):
    real = shards_stage.atomic_write

    class TooLarge(FullDisk):
        def write(self, data: bytes) -> int:
            raise OSError(errno.EFBIG, "File too large")

    @contextlib.contextmanager
    def limited(path, mode="wb"):
        with real(path, mode) as handle:
            yield TooLarge(handle, 0) if Path(path).name == "train-000000.tar" else handle

    monkeypatch.setattr(shards_stage, "atomic_write", limited)
    argv = ["--raw", str(pascal_raw), "--out", str(tmp_path / "out"), "--params", str(raw_params(tmp_path))]
    assert shards_stage.main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train-000000.tar: File too large" in last and "[Errno 27]" in last


def test_a_changed_toolkit_extraction_is_not_called_the_users(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("VOCdevkit/a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    archive = tmp_path / "VOCtrainval_11-May-2012.tar"
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "raw"
    extract(archive, dest, "sha256:first")
    (dest / "VOCdevkit" / "a.txt").write_text("changed")
    changed = "was extracted from VOCtrainval_11-May-2012.tar by this toolkit and has changed since"
    with pytest.raises(ExistingDataError, match=re.escape(changed)):
        extract(archive, dest, "sha256:second")
    assert (dest / "VOCdevkit" / "a.txt").read_text() == "changed"


def test_two_downloads_of_one_file_take_turns(tmp_path):
    """Two processes (threads here) fetching the same archive: one downloads, the other waits on the
    lock of its `.part` and then finds the file verified; the server sends it once."""
    data = bytes(range(256)) * 80
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "x.tar").write_bytes(data)
    source = Source(
        name="x.tar", url="http://unused/x.tar", sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )
    results, errors = [], []
    with slow_http(tmp_path / "srv", rate=20_000) as url:  # ~1 s per download: the two overlap

        def one() -> None:
            try:
                results.append(fetch(source, tmp_path / "archives", f"{url}/", progress=False))
            except Exception as exc:  # collected: the assertion below shows it
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(2)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert (tmp_path / "archives" / "x.tar").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "archives").iterdir() if not p.name.endswith(".json")) == [
        "x.tar"
    ]
    assert time.monotonic() - start < 30
