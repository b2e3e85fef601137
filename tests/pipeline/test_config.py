"""params.yaml loading: strict keys, types, presets and impossible combinations."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import MODEL_KEYS, ConfigError, Params, load_params, resolve
from pipeline.protocol import PROTOCOLS

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_params_load_and_resolve_presets():
    p = load_params(REPO_PARAMS)
    assert (p.dataset, p.source, p.protocol, p.model) == ("pascal", "toy", "denet", "denet")
    assert p.sampler.image_size == 161 and p.backbone.weights == "none"
    assert p.data.min_fraction == 0.02 and p.train.device == "auto"  # resolved where torch runs


def test_device_auto_is_resolved_by_the_trainer_not_the_config():
    import subprocess
    import sys

    import torch

    from train.device import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    last = torch.cuda.device_count() - 1 if torch.cuda.is_available() else -1
    if last >= 0:
        assert resolve_device(f"cuda:{last}") == f"cuda:{last}"
    with pytest.raises(ValueError, match=rf"train\.device: cuda:{last + 1} is not available"):
        resolve_device(f"cuda:{last + 1}")  # a device the machine lacks is a one-line error, not a crash
    # data commands load params without loading torch (~650 MB)
    code = f"import sys; from pipeline.config import load_params; load_params({str(REPO_PARAMS)!r}); "
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_PARAMS.parent, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_protocol_presets_follow_the_release_under_denet():
    denet = load_params(REPO_PARAMS, {"sampler.image_size": 97})
    assert denet.data.presence_size == 97 and denet.data.pascal_masks == "list"
    assert denet.data.coco_crowd == "background" and denet.backbone.freeze_bn is False
    assert denet.train.void == "background" and denet.train.episodes == "manifest"
    assert denet.evaluate.flip is True
    standard = load_params(REPO_PARAMS, {"protocol": "standard"})
    assert standard.data.presence_size is None and standard.data.pascal_masks == "voc"
    assert standard.data.coco_crowd == "ignore" and standard.backbone.freeze_bn is True
    assert standard.train.void == "ignore" and standard.train.episodes == "stream"
    assert standard.evaluate.flip is False
    # every rule stays an option
    mixed = load_params(
        REPO_PARAMS, {"backbone.freeze_bn": True, "train.void": "ignore", "data.presence_size": None}
    )
    assert (
        mixed.backbone.freeze_bn is True and mixed.train.void == "ignore" and mixed.data.presence_size is None
    )


def test_explicit_value_beats_preset():
    p = load_params(REPO_PARAMS, {"source": "official", "train.steps": 10, "protocol": "standard"})
    assert p.train.steps == 10 and p.data.min_pixels == 2048


def test_the_model_keys_are_left_to_the_models_recipe():
    """pipeline/ cannot see the models: their keys stay `auto` here (train.params fills them), so no
    model silently gets another's recipe."""
    p = load_params(REPO_PARAMS, {"model": "not-a-model-pipeline-knows", "source": "official"})
    for dotted in MODEL_KEYS:
        section, _, key = dotted.rpartition(".")
        assert getattr(getattr(p, section) if section else p, key) == "auto", dotted


def test_resolve_never_mutates_its_input():
    raw = Params()
    resolved = resolve(raw)
    assert resolved.sampler.image_size == 161 and resolved.data.presence_size == 161
    for f in dataclasses.fields(Params):
        if dataclasses.is_dataclass(getattr(raw, f.name)):
            assert getattr(raw, f.name) is not getattr(resolved, f.name), f.name
    assert raw.sampler.image_size == "auto" and raw.data.presence_size == "auto"


def test_every_protocol_resolves_and_an_unknown_one_is_one_line(tmp_path):
    for name, rules in PROTOCOLS.items():
        p = load_params(REPO_PARAMS, {"protocol": name, "dataset": "coco"})
        assert (p.evaluate.flip, p.train.void, p.data.min_fraction) == (
            rules.eval_flip,
            rules.train_void,
            rules.min_fraction["coco"],
        )
    with pytest.raises(ConfigError, match=r"protocol = 'bam' is not one of denet \| standard"):
        load_params(write(tmp_path, {"protocol": "bam"}))


def test_unknown_key_is_one_line_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'") as err:
        load_params(write(tmp_path, {"train": {"lrr": 0.1}}))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"way": "two"}, r"way = 'two' has the wrong type"),
        ({"way": True}, r"way = True has the wrong type"),
        ({"dataset": "ade20k"}, r"dataset = 'ade20k' is not one of pascal \| coco"),
        ({"fold": 4}, r"fold = 4 is out of range"),
        ({"way": 3}, r"way = 3 is not supported"),
        ({"shot": 0}, r"shot = 0 must be >= 1"),
        ({"train": {"val_every": 0}}, r"train.val_every must be >= 1"),
        ({"paths": 3}, r"paths must be a mapping"),
        ({"train": {"compile": True}}, r"train.compile = True is not one of auto \| none \| default"),
    ],
)
def test_bad_values_name_the_key(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match):
        load_params(write(tmp_path, data))


def test_int_is_accepted_for_float(tmp_path):
    assert load_params(write(tmp_path, {"train": {"lr": 1}})).train.lr == 1.0


def test_model_kwargs_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="model_kwargs = 3 has the wrong type"):
        load_params(write(tmp_path, {"model_kwargs": 3}))


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        (3, r"evaluate\.seeds = 3 must be a list"),
        (["a"], r"evaluate\.seeds\[0\] = 'a' has the wrong type"),
        ([], r"evaluate\.seeds = \[\] must list distinct test-draw seeds"),
        ([1, 1], r"must list distinct"),
        ([-1], r"must list distinct test-draw seeds >= 0"),
    ],
)
def test_test_seeds_are_a_list_of_distinct_seeds(seeds, message):
    with pytest.raises(ConfigError, match=message):
        load_params(REPO_PARAMS, {"evaluate.seeds": seeds})
    p = load_params(REPO_PARAMS, {"evaluate.seeds": [2, 0, 1], "seed": 5})
    assert p.evaluate.seeds == [2, 0, 1] and p.seed == 5
    assert load_params(REPO_PARAMS).evaluate.seeds == [0]
