"""dvc push / pull of shards, manifests and checkpoints: the shipped default local remote and S3 (moto)."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from storage_servers import BUCKET, moto_s3

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")
TRACKED = ("shards", "data/episodes", "models")


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([DVC, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for d in TRACKED
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def prepared_repo(tiny_data, tmp_path) -> Path:
    """A git + DVC repo with the repo's .dvc/config, holding prepared shards, a manifest and a checkpoint."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the shipped default remote
    shutil.copytree(tiny_data["shards"], repo / "shards/toy/pascal/denet")
    (repo / "data/episodes").mkdir(parents=True)
    (repo / "data/episodes/fold0_1way_1shot.json").write_text('{"episodes": []}\n')
    (repo / "models/denet/fold0").mkdir(parents=True)
    (repo / "models/denet/fold0/last.pt").write_bytes(os.urandom(4096))
    _dvc(repo, "add", "-q", *TRACKED)
    return repo


def _wipe_and_pull(repo: Path, *remote: str) -> None:
    for d in (*TRACKED, ".dvc/cache"):
        shutil.rmtree(repo / d)
    _dvc(repo, "pull", "-q", *remote)


def test_shipped_default_remote_push_and_pull(prepared_repo, tmp_path):
    before = _digest(prepared_repo)
    assert any(k.endswith(".tar") for k in before) and "models/denet/fold0/last.pt" in before
    assert "(default)" in _dvc(prepared_repo, "remote", "list")
    _dvc(prepared_repo, "push", "-q")
    store = tmp_path / "fss-dvc-remote"  # ../../fss-dvc-remote from repo/.dvc: beside the checkout
    assert store.is_dir() and sum(1 for p in store.rglob("*") if p.is_file()) >= len(before)
    _wipe_and_pull(prepared_repo)
    assert _digest(prepared_repo) == before


def test_s3_remote_push_and_pull(prepared_repo):
    import boto3

    before = _digest(prepared_repo)
    with moto_s3({}) as endpoint:
        # what README documents; credentials stay in the environment (AWS_*), never in .dvc/config
        _dvc(prepared_repo, "remote", "add", "team", f"s3://{BUCKET}/fss-dvc")
        _dvc(prepared_repo, "remote", "modify", "team", "endpointurl", endpoint)
        _dvc(prepared_repo, "push", "-q", "-r", "team")
        listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="fss-dvc/")
        assert listed["KeyCount"] >= len(before)
        _wipe_and_pull(prepared_repo, "-r", "team")
    assert _digest(prepared_repo) == before
    assert "testing" not in (prepared_repo / ".dvc" / "config").read_text()
