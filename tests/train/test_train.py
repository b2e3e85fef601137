"""Training loop on tiny shards: loss goes down, resume is bit-identical, NaN policy, corrupt checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_params, write_params

from fss_model.denet import DENet
from train import train as tr
from train.checkpoint import CheckpointError, load_checkpoint


def _run(tiny_data, out: Path, p=None, **kw):
    return tr.run(p or tiny_params(), tiny_data["shards"], tiny_data["folds"], out, progress=False, **kw)


def test_short_cpu_run_lowers_loss_and_logs_dvclive(tiny_data, tmp_path):
    p = tiny_params(train__steps=8, train__checkpoint_every=8, train__val_every=8)
    state = _run(tiny_data, tmp_path / "m", p, live_dir=tmp_path / "live")
    assert state.step == 8 and state.skipped == 0
    rows = (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().split("\n")[1:]
    losses = [float(r.split("\t")[1]) for r in rows if r]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss goes down
    assert (tmp_path / "live/plots/metrics/train/focal.tsv").exists()
    assert (tmp_path / "live/plots/metrics/val/miou.tsv").exists()
    ckpt = load_checkpoint(tmp_path / "m" / tr.LAST)
    assert ckpt["step"] == 8 and ckpt["model_name"] == "denet"
    assert ckpt["model_kwargs"] == tr.model_kwargs_from_params(p)
    assert ckpt["params"]["train"]["steps"] == 8  # params snapshot
    assert (tmp_path / "m" / tr.BEST).exists()
    used = json.loads(
        (tmp_path / "live" / tr.PARAMS_JSON).read_text()
    )  # beside metrics.json, for dvc exp show
    assert (used["train"]["steps"], used["train"]["lr"], used["model_kwargs"]) == (8, 0.01, {"depth": 128})
    assert (used["train"]["device"], used["train"]["compile"]) == ("cpu", "none")  # as the run resolved them


def test_cli_prints_progress_lines_with_loss_and_rate(tiny_data, tmp_path, capsys):
    """What `dvc repro` shows: a plain stderr line every N steps (and the last), one per validation."""
    params = write_params(tmp_path, **{"train.steps": 5, "train.val_every": 4, "train.checkpoint_every": 5})
    argv = ["--params", str(params), "--shards", str(tiny_data["shards"]), "--folds", str(tiny_data["folds"]),
            "--out", str(tmp_path / "m"), "--progress", "lines", "--progress-every", "2"]  # fmt: skip
    assert tr.main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 2/5", "step 4/5", "step 4", "step 5/5", "step 5"]
    assert all(" episodes/s" in line and "loss " in line for line in lines if "/5" in line)
    assert "validation mIoU" in lines[2] and "(best" in lines[2]
    assert "it/s" not in err  # no tqdm bar
    p = tiny_params(train__steps=600)
    assert tr.lines_interval(p) == 30 and tr.lines_interval(tiny_params(train__steps=20)) == 1


def test_focal_is_computed_on_logged_steps_only(tiny_data, tmp_path, monkeypatch):
    calls = []
    real = tr.binary_focal_loss
    monkeypatch.setattr(tr, "binary_focal_loss", lambda *a: calls.append(1) or real(*a))
    p = tiny_params(model="panet", train__steps=4, train__log_every=3, train__checkpoint_every=4)
    _run(tiny_data, tmp_path / "m", p, live_dir=tmp_path / "live")  # PANet's loss reports no focal
    assert len(calls) == 2  # steps 3 and 4 (the last step is always logged)
    for name in ("focal", "loss"):
        rows = (tmp_path / f"live/plots/metrics/train/{name}.tsv").read_text().split()[2:]
        assert [r.split("\t")[0] for r in rows[::2]] == ["3", "4"]


def test_resume_after_a_crash_is_bit_identical(tiny_data, tmp_path, monkeypatch):
    # a step schedule that drops the lr between the checkpoint (step 2) and the end (step 4), per-group
    # lr factors and momentum: the optimizer and schedule state must come back with the weights
    p = tiny_params(train__lr_milestones=[3], train__lr_multipliers={"*.bias": 2.0})
    _run(tiny_data, tmp_path / "full", p, live_dir=tmp_path / "live_full")
    # a run that dies during step 4, after the step-2 checkpoint
    real = tr.train_batches

    def dying(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 3:  # step 3 ran and was logged; the last checkpoint is step 2's
                raise RuntimeError("killed")
            yield batch

    monkeypatch.setattr(tr, "train_batches", dying)
    with pytest.raises(RuntimeError, match="killed"):
        _run(tiny_data, tmp_path / "resumed", p, live_dir=tmp_path / "live")
    assert load_checkpoint(tmp_path / "resumed" / tr.LAST)["step"] == 2
    monkeypatch.setattr(tr, "train_batches", real)
    torch.manual_seed(1234)  # whatever the process did in between does not matter
    with pytest.raises(CheckpointError, match="--resume"):
        _run(tiny_data, tmp_path / "resumed", p)  # never silently overwrites a run
    state = _run(tiny_data, tmp_path / "resumed", p, resume=True, live_dir=tmp_path / "live")
    assert state.step == 4
    rows = (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().split()[2:]
    assert [r.split("\t")[0] for r in rows[::2]] == ["1", "2", "3", "4"]  # step 3 logged once
    for live in ("live_full", "live"):  # the lr each step used: x0.1 after the milestone at step 3
        rows = (tmp_path / live / "plots/metrics/train/lr.tsv").read_text().split()[2:]
        assert [float(v) for v in rows[1::2]] == pytest.approx([0.01, 0.01, 0.01, 0.001])
    a = load_checkpoint(tmp_path / "full" / tr.LAST)
    b = load_checkpoint(tmp_path / "resumed" / tr.LAST)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["extra"] == b["extra"]
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["last_epoch"] == 4
    assert [g["lr"] for g in b["optimizer"]["param_groups"]] == pytest.approx([0.001, 0.002])
    # a resumed run needs the optimizer it was trained with (its state would not fit another)
    other = tiny_params(train__steps=6, train__optimizer="rmsprop", train__momentum=0.0)
    with pytest.raises(CheckpointError, match=r"train\.optimizer=sgd, not rmsprop"):
        _run(tiny_data, tmp_path / "resumed", other, resume=True)


def test_corrupt_checkpoint_is_an_error_not_a_restart(tiny_data, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / tr.LAST).write_bytes(b"PK\x03\x04 not really a zip")
    params = write_params(tmp_path)
    argv = ["--params", str(params), "--shards", str(tiny_data["shards"]), "--folds", str(tiny_data["folds"]),
            "--out", str(out), "--resume", "--no-progress"]  # fmt: skip
    assert tr.main(argv) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and str(out / tr.LAST) in err
    assert (out / tr.LAST).read_bytes() == b"PK\x03\x04 not really a zip"  # left for inspection


def _nan_on_call(n: int):
    real = DENet.loss
    calls = {"n": 0}

    def loss(self, out, batch):
        calls["n"] += 1
        result = real(self, out, batch)
        if calls["n"] == n:
            result["loss"] = result["loss"] * float("nan")
        return result

    return loss


def test_nan_loss_stops_with_a_message(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(DENet, "loss", _nan_on_call(2))
    with pytest.raises(tr.NonFiniteLossError, match=r"step 2 .*nan_policy=skip"):
        _run(tiny_data, tmp_path / "m")


def test_nan_loss_skipped_with_policy_skip(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(DENet, "loss", _nan_on_call(2))
    p = tiny_params(train__nan_policy="skip", train__val_every=100)
    state = _run(tiny_data, tmp_path / "m", p)
    assert state.step == 4 and state.skipped == 1
    ckpt = load_checkpoint(tmp_path / "m" / tr.LAST)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_compile_auto_is_cuda_graphs_on_one_gpu_only(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    long = tr.COMPILE_MIN_STEPS
    assert tr.compile_mode("auto", "cuda", long) == "reduce-overhead"
    assert tr.compile_mode("auto", "cuda:1", 150_000) == "reduce-overhead"
    assert tr.compile_mode("auto", "cuda", 600) == "none"  # the toy run: compiling costs more than it saves
    assert tr.compile_mode("auto", "cpu", long) == "none"
    assert tr.compile_mode("default", "cpu", 4) == "default"
    assert tr.compile_mode("none", "cuda", long) == "none"
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun the eager DDP path stays the default
    assert tr.compile_mode("auto", "cuda", long) == "none"
    assert tr.train_config_from_params(tiny_params()).compile == "none"  # tiny params: train.device cpu


def test_grad_accumulation_and_focal_helper():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 2, 5, 5)
    label = torch.randint(0, 3, (2, 9, 9))
    label[0, 0, 0] = 255
    focal = tr.binary_focal_loss(logits, label)
    assert focal.ndim == 0 and focal > 0
    p = tiny_params(train__grad_accum=2)
    cfg = tr.train_config_from_params(p)
    assert cfg.grad_accum == 2 and cfg.lr == pytest.approx(0.01)
    assert tr.model_kwargs_from_params(p) == {
        "num_classes": 21,
        "backbone": "small",
        "frozen": False,
        "freeze_bn": False,
        "depth": 128,
    }  # fmt: skip  (denet: BN in train mode, as released)


def test_optimizer_groups_and_step_schedule_follow_the_recipe():
    model = torch.nn.ModuleDict({name: torch.nn.Conv2d(2, 2, 1) for name in ("guide", "body", "frozen")})
    model["frozen"].requires_grad_(False)
    # SG-One's release: weights x1, biases x2, its guidance conv's weight x10 and bias x20
    multipliers = (("guide.weight", 10.0), ("guide.bias", 20.0), ("*.bias", 2.0))
    cfg = tr.TrainConfig(steps=10, lr=1e-5, momentum=0.99, lr_multipliers=multipliers, lr_milestones=(2, 4))
    opt = tr.build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    groups = {tuple(id(q) for q in g["params"]): g["lr"] for g in opt.param_groups}
    assert groups == pytest.approx({
        (id(model["body"].weight),): 1e-5, (id(model["guide"].weight),): 1e-4,
        (id(model["guide"].bias),): 2e-4, (id(model["body"].bias),): 2e-5,
    })  # fmt: skip
    assert all(g["momentum"] == 0.99 and g["weight_decay"] == 5e-4 for g in opt.param_groups)
    sched = tr.build_scheduler(opt, cfg)
    lrs = []
    for _ in range(6):  # PANet-style: x0.1 after the milestones (MultiStepLR stepped once per step)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-5, 1e-5, 1e-6, 1e-6, 1e-7, 1e-7])
    reference = torch.optim.lr_scheduler.MultiStepLR(torch.optim.SGD([torch.zeros(1)], lr=1e-5), [2, 4])
    ref_lrs = []
    for _ in range(6):
        ref_lrs.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert lrs == pytest.approx(ref_lrs)
    rms = tr.build_optimizer(model, tr.TrainConfig(steps=1, lr=1e-6, optimizer="rmsprop", momentum=0.0))
    assert isinstance(rms, torch.optim.RMSprop) and rms.param_groups[0]["alpha"] == 0.99
    # HSNet's release: torch's Adam with its defaults and no weight decay
    adam = tr.build_optimizer(model, tr.TrainConfig(steps=1, lr=1e-3, optimizer="adam", weight_decay=0.0))
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999) and adam.param_groups[0]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match=r"\['head\.\*'\] match no trainable parameter"):
        tr.build_optimizer(model, tr.TrainConfig(steps=1, lr=1.0, lr_multipliers=(("head.*", 10.0),)))


def test_poly_schedule_is_pfenets_per_iteration_rule():
    """PFENet's util.poly_learning_rate: iteration i (from 1) runs at base_lr x (1 - i / max_iter) ** 0.9."""
    model = torch.nn.Conv2d(2, 2, 1)
    cfg = tr.TrainConfig(steps=5, lr=0.0025, lr_schedule="poly", lr_power=0.9)
    opt = tr.build_optimizer(model, cfg)
    sched = tr.build_scheduler(opt, cfg)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0025 * (1 - i / 5) ** 0.9 for i in range(1, 6)])
