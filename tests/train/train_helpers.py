"""Tiny CPU params for the train/evaluate/infer tests (65 px, "small" backbone, batch 2, a few steps)."""

from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Params
from train.params import load_params

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
TINY = {
    "sampler.image_size": 65,
    "sampler.workers": 0,
    "sampler.pool_size": 16,
    "sampler.test_episodes": 8,
    "sampler.val_episodes": 4,
    "backbone.name": "small",
    "backbone.weights": "none",
    "backbone.frozen": False,
    "train.batch_size": 2,
    "train.steps": 4,
    "train.val_every": 2,
    "train.checkpoint_every": 2,
    "train.log_every": 1,
    "train.episodes_per_class": 8,  # manifest training (denet's default) on the tiny data's small pools
    "train.device": "cpu",
    "evaluate.batch_size": 4,
}


def tiny_params(**overrides: object) -> Params:
    """Resolved params; keyword `a__b=v` overrides `a.b`."""
    return load_params(REPO_PARAMS, {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}})


def write_params(tmp_path: Path, **overrides: object) -> Path:
    """A params.yaml in `tmp_path` with TINY and dotted-key `overrides` applied."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    for dotted, value in {**TINY, **overrides}.items():
        *parents, last = dotted.split(".")
        node = raw
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def fresh_checkpoint(
    path: Path, p: Params | None = None, step: int = 0, snapshot: bool = False
) -> dict[str, Any]:
    """Save a DENet initialised under torch seed 0 with the model kwargs of `p` (default `tiny_params()`) at
    `path`, with the params snapshot a trained checkpoint carries when `snapshot`; returns the kwargs."""
    import torch

    import fss_model
    from train.checkpoint import save_checkpoint
    from train.params import model_kwargs_from_params
    from train.train import params_snapshot

    p = p or tiny_params()
    torch.manual_seed(0)
    kwargs = model_kwargs_from_params(p)
    model = fss_model.build_model("denet", **kwargs)
    params = params_snapshot(p) if snapshot else None
    save_checkpoint(path, model_name="denet", model_kwargs=kwargs, model=model, step=step, params=params)
    return kwargs
