"""The real DVC flow on tiny toy data: `dvc repro`, `dvc exp run`, a failing run, `dvc exp show --json`.

The repo's dvc.yaml and code are copied into a fresh git + DVC repo with tiny params (toy data at a
fifth of its size, 65 px, 2 training steps, 4 training episodes per class, 8 test episodes), so each
stage runs for real.
"""

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")
TINY = {
    "toy": {"scale": 0.2},
    "sampler": {"image_size": 65, "workers": 0, "pool_size": 16, "test_episodes": 8, "val_episodes": 4},
    "train": {
        "steps": 2,
        "batch_size": 2,
        "val_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "episodes_per_class": 4,
    },
    "evaluate": {"batch_size": 4},
}
CHECKPOINT = "models/experiment/best.pt"
METRICS = "results/evaluate/metrics.json"

pytestmark = pytest.mark.slow


def _run(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def _experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: its data (params, metrics)}."""
    shown = json.loads(_run(repo, DVC, "exp", "show", "--json").stdout)
    return {r["name"]: r["data"] for top in shown for e in top.get("experiments") or [] for r in e["revs"]}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC repo holding this checkout's pipeline, tiny params, after one `dvc repro`."""
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    repo.mkdir()
    for name in ("pipeline", "train", "fss_model"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(repo, "git", "init", "-q")
    _run(repo, DVC, "init", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny pipeline")
    # what `make run` runs in a git checkout: an experiment, so later `dvc exp run`s keep it listed
    assert "then dvc exp run;" in (REPO / "Makefile").read_text()
    _run(repo, DVC, "exp", "run", "-n", "make-run")
    return repo


# -- README: every fenced command runs as written on what `dvc repro` produced ------------------
TOY_PATH = re.compile(r"^(data|shards|models|results)/")
NOT_RUN_HERE = (  # commands the tiny project cannot run: trainings, official data, other machines
    "make ",
    "dvc exp run",
    "torchrun",
)
RUN_AT_LEAST = ("train.evaluate", "train.infer --checkpoint models/experiment/best.pt --shards",
                "--query my_query.jpg", "train.train", "pipeline.lists")  # fmt: skip


def readme_commands(text: str) -> list[str]:
    """The commands of the README's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                assert not {";", "&&", "|"} & set(words), f"one command per line in README: {line}"
                commands.append(shlex.join(words))
    return commands


def _set_keys(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1].split("=", 1)[0] for i, w in enumerate(words) if w == "-S"]


def test_readme_commands_run_on_the_toy_run(project):
    """Each README command that touches the toy data runs as written (exit 0) and its paths exist after;
    the others (trainings, official data, torchrun) name only params keys that exist."""
    repo = project
    readme = (REPO / "README.md").read_text()
    assert len(readme) <= 12_000, f"README.md has {len(readme)} characters"
    commands = readme_commands(readme)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    rng = np.random.default_rng(0)  # "your own images": the user's files, made here
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(repo / "my_query.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(repo / "my_support.jpg")
    mask = np.zeros((50, 40), np.uint8)
    mask[10:40, 5:30] = 255
    Image.fromarray(mask).save(repo / "my_support_mask.png")
    ran = []
    for command in commands:
        for key in _set_keys(command):
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"README: {command}: no params key {key}"
                node = node[part]
        if command.startswith(NOT_RUN_HERE) or "://" in command or "official" in command:
            continue
        _run(repo, *shlex.split(command))
        ran.append(command)
        for word in shlex.split(command):
            if TOY_PATH.match(word):
                assert (repo / word).exists(), f"README: {command}: {word} does not exist after it ran"
    assert all(any(want in c for c in ran) for want in RUN_AT_LEAST), ran
    assert (repo / "results/infer-mine/index.html").is_file() and (repo / "results/mine/panel.png").is_file()
    assert "no ground truth" in (repo / "results/mine/index.html").read_text()


def test_dvc_repro_writes_the_gallery(project):
    page = (project / "results/infer/index.html").read_text()
    panels = re.findall(r"src='([^']+)'", page)
    assert panels and all((project / "results/infer" / rel).is_file() for rel in panels)
    assert ("failure cases" in page and "aeroplane" + "" in page) or "IoU" in page
    # a DVC output: cached and git-ignored, restored by the run cache like details.json
    assert _run(project, "git", "check-ignore", "results/infer", ok=False).stdout.strip() == "results/infer"


def test_failed_run_keeps_the_workspace_and_experiments_keep_their_metrics(project):
    repo = project
    assert (repo / CHECKPOINT).exists() and (repo / METRICS).exists()
    # metrics are git files (not ignored), checkpoints are not
    ignored = _run(repo, "git", "check-ignore", CHECKPOINT, METRICS, ok=False).stdout.split()
    assert ignored == [CHECKPOINT]

    _run(repo, DVC, "exp", "run", "-n", "two-way", "-S", "way=2")
    before = {p: _digest(repo / p) for p in (CHECKPOINT, METRICS, "results/evaluate/details.json")}
    failed = _run(repo, DVC, "exp", "run", "-S", "fold=9", ok=False)
    assert failed.returncode != 0
    assert "fold = 9 is out of range: use 0, 1, 2 or 3" in failed.stdout + failed.stderr
    assert "Running stage 'episodes'" not in failed.stdout  # stopped by the check stage, first
    assert {p: _digest(repo / p) for p in before} == before  # nothing of the workspace was removed

    exps = _experiments(repo)
    metrics = exps["two-way"]["metrics"][METRICS]["data"]
    assert metrics["miou"] == json.loads((repo / METRICS).read_text())["miou"]
    assert set(metrics) >= {"miou", "fb_iou", "miou_std", "miou_ci95_low", "miou_ci95_high", "seed0"}
    assert exps["two-way"]["params"]["params.yaml"]["data"]["way"] == 2


def test_temp_run_with_more_test_seeds_reevaluates_without_training(project):
    repo = project
    params = (repo / "params.yaml").read_text()
    done = _run(
        repo, DVC, "exp", "run", "--temp", "-n", "seeds", "-S", "fold=0", "-S", "evaluate.seeds=[0,1]"
    )
    assert "Running stage 'train'" not in done.stdout  # the run cache holds the trained model
    assert "Running stage 'evaluate'" in done.stdout
    assert (repo / "params.yaml").read_text() == params  # --temp leaves the workspace alone
    # the same cell again: every stage but the params check comes from the run cache
    again = _run(repo, DVC, "exp", "run", "--temp", "-S", "fold=0", "-S", "evaluate.seeds=[0,1]")
    assert "Stage 'evaluate' is cached" in again.stdout and "Running stage 'evaluate'" not in again.stdout
    exps = _experiments(repo)
    metrics = exps["seeds"]["metrics"][METRICS]["data"]
    assert {"seed0", "seed1"} <= set(metrics) and metrics["seed0"]["manifest"] != metrics["seed1"]["manifest"]
    # the report over experiments reads each one's details from its commit
    _run(repo, sys.executable, "-m", "train.report", "--results", "results", "--experiments", "--print")
    table = (repo / "results" / "experiments" / "table.md").read_text()
    assert "test seeds 0, 1" in table and "| 0 | aeroplane |" in table


def test_temp_run_under_another_protocol_builds_its_shards_from_the_workspace_raw_folder(project):
    """A `--temp` copy gets the raw stage's cached marker, never the raw folder: new shards (another
    protocol) are built from the folder of the workspace the run was started from."""
    repo = project
    cell = ("-S", "fold=0", "-S", "protocol=standard")  # the workspace's params hold earlier tests' -S values
    done = _run(repo, DVC, "exp", "run", "--temp", "-n", "standard", *cell)
    assert "Running stage 'shards'" in done.stdout and "Running stage 'raw'" not in done.stdout
    assert "reading the extracted pascal data of this experiment's workspace" in done.stdout + done.stderr
    exps = _experiments(repo)
    assert exps["standard"]["params"]["params.yaml"]["data"]["protocol"] == "standard"
    assert 0 <= exps["standard"]["metrics"][METRICS]["data"]["miou"] <= 100


def test_make_run_stays_an_experiment_and_the_test_score_is_the_first_column(project):
    """After `make run` (the fixture) and the `dvc exp run`s above, all are listed; `dvc exp show`'s first
    metric columns are the test mIoU, its 95% interval and FB-IoU; every fold-0 novel class is in the
    mean or named with its reason."""
    exps = _experiments(project)
    assert {"make-run", "two-way", "seeds"} <= {n for n, d in exps.items() if METRICS in (d["metrics"] or {})}
    header = _run(project, DVC, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    first = header.index("parent") + 1
    assert header[first : first + 4] == ["miou", "miou_ci95_low", "miou_ci95_high", "fb_iou"]
    metrics = json.loads((project / METRICS).read_text())  # the workspace's, beside its details.json
    details = json.loads((project / "results/evaluate/details.json").read_text())
    missing = {m["class"] for m in details["missing_classes"]}
    assert metrics["classes_scored"] + metrics["classes_missing"] == 5
    assert metrics["classes_scored"] == len(details["per_class"])
    table = (project / "results/report/table.md").read_text()
    assert all(f"{name}: " in table for name in missing) and ("**Not in the mean**" in table) == bool(missing)
