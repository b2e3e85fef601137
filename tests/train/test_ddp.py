"""torchrun with 2 CPU processes (gloo): DDP training and evaluation split over ranks equal to one process."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import distributed
from train.metrics import FewShotIoU

pytestmark = pytest.mark.heavy  # torchrun processes

NPROC = 2


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={NPROC}", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180, env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_shard_range_cuts_whole_batches_and_covers_everything():
    for n, bs, world in ((12, 4, 2), (13, 4, 2), (5, 8, 3), (300, 8, 7)):
        parts = [distributed.shard_range(n, bs, r, world) for r in range(world)]
        assert [i for part in parts for i in part] == list(range(n))
        assert all(part.start % bs == 0 for part in parts)


def test_metric_sums_tensor_round_trip_equals_merge():
    a, b = FewShotIoU(), FewShotIoU()
    gt = torch.tensor([[1, 1, 0], [0, 255, 1]])
    a.update(torch.tensor([[1, 0, 0], [1, 1, 1]]), gt, 3)
    b.update(torch.tensor([[1, 1, 1], [0, 0, 0]]), gt, 7)
    b.update(torch.tensor([[0, 1, 0], [0, 1, 1]]), gt, 3)
    size = max(a.max_class_id(), b.max_class_id()) + 1
    summed = FewShotIoU()
    summed.load_sums_tensor(a.sums_tensor(size) + b.sums_tensor(size))
    a.merge(b)
    assert summed.compute() == a.compute() and sorted(summed.count) == [3, 7]


def _rank_main(argv: list[str]) -> None:
    """One torchrun process: `train.train.main` with spies on the shards read and the final weights."""
    from train import train as tr
    from train.checkpoint import unwrap
    from train.stream import shard_io

    report: dict = {"urls": []}
    real_open, real_loop = shard_io.open_stream, tr.train_loop

    def open_spy(url: str, *args, **kwargs):
        report["urls"].append(url)
        return real_open(url, *args, **kwargs)

    def loop_spy(model, *args, **kwargs):
        state = real_loop(model, *args, **kwargs)
        report["ddp"] = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        report["params"] = _digest(dict(unwrap(model).named_parameters()))
        report["state"] = _digest(unwrap(model).state_dict())
        return state

    shard_io.open_stream, tr.train_loop = open_spy, loop_spy
    rank = int(os.environ["RANK"])
    out = Path(argv[argv.index("--out") + 1])
    code = tr.main(argv)
    (out.parent / f"rank{rank}.json").write_text(json.dumps({**report, "code": code}))


def test_torchrun_two_gloo_processes_train_and_evaluate(tiny_data, tmp_path):
    from train_helpers import write_params

    from pipeline.io import write_json
    from train import evaluate as ev
    from train.checkpoint import load_checkpoint
    from train.stream.manifests import build_manifest

    # the streaming sampler: each rank must read its own shards (manifest training reads by key)
    steps = {"train.steps": 3, "train.val_every": 3, "train.checkpoint_every": 3, "train.episodes": "stream"}
    params = write_params(tmp_path, **steps)
    out, live = tmp_path / "run" / "fold0", tmp_path / "live"
    data = ["--params", str(params), "--shards", str(tiny_data["shards"])]
    _torchrun(__file__, *data, "--folds", str(tiny_data["folds"]), "--out", str(out), "--live", str(live),
              "--no-progress", cwd=tmp_path)  # fmt: skip
    ranks = [json.loads((out.parent / f"rank{r}.json").read_text()) for r in range(NPROC)]
    assert all(r["code"] == 0 and r["ddp"] for r in ranks)
    # every rank read its own shards
    shard_sets = [{Path(u).name for u in r["urls"]} for r in ranks]
    assert all(shard_sets) and not shard_sets[0] & shard_sets[1]
    # gradients were synchronised: identical weights everywhere, and rank 0 wrote them
    # (BN running statistics are each rank's own; DDP broadcasts rank 0's, which the checkpoint holds)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 3 and ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["state"] == _digest(ckpt["model"])
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt"]
    # only rank 0 logged: each step once
    rows = (live / "plots/metrics/train/loss.tsv").read_text().split("\n")[1:]
    steps = [r.split("\t")[0] for r in rows if r]
    assert steps == ["1", "2", "3"]

    # evaluation split over the ranks equals one process on the same manifest, exactly
    manifest = tmp_path / "fold0_1way_1shot.json"
    shards, folds = str(tiny_data["shards"]), str(tiny_data["folds"])
    write_json(manifest, build_manifest(shards, folds, "pascal", 0, 1, 1, "denet", 0, 14))
    args = [*data, "--checkpoint", str(out / "best.pt"), "--manifest", str(manifest)]
    _torchrun("-m", "train.evaluate", *args, "--out", str(tmp_path / "ddp"), cwd=tmp_path)
    assert ev.main([*args, "--out", str(tmp_path / "single")]) == 0
    single = json.loads((tmp_path / "single" / "details.json").read_text())
    assert json.loads((tmp_path / "ddp" / "details.json").read_text()) == single  # per-episode sums included
    run = single["folds"]["fold0"]["seeds"]["0"]
    assert run["episodes"] == 14 and len(run["scores"]) == 4 and run["episode_sums"]["episodes"] == 14


def test_torchrun_resume_is_bit_identical(tiny_data, tmp_path):
    from train_helpers import write_params

    from train.checkpoint import load_checkpoint

    def train(steps: int, out: str, *extra: str) -> None:
        params = write_params(
            tmp_path, **{"train.steps": steps, "train.val_every": 2, "train.checkpoint_every": 2}
        )
        _torchrun("-m", "train.train", "--params", str(params), "--shards", str(tiny_data["shards"]),
                  "--folds", str(tiny_data["folds"]), "--out", str(tmp_path / out), "--no-progress", *extra,
                  cwd=tmp_path)  # fmt: skip

    train(4, "full")
    train(2, "resumed")  # a run stopped after its step-2 checkpoint
    train(4, "resumed", "--resume")  # rank 0 reads last.pt and broadcasts it
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "resumed"))
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


if __name__ == "__main__":
    _rank_main(sys.argv[1:])
