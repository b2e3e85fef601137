"""params.yaml loading: strict keys, types, presets and impossible combinations."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, Params, load_params, resolve

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


def test_official_source_switches_presets():
    p = load_params(REPO_PARAMS, {"source": "official", "dataset": "coco"})
    assert p.sampler.image_size == 321 and p.backbone.name == "resnet50" and p.backbone.frozen is True
    assert p.train.steps == 200_000 and p.train.lr == 0.0025 and p.data.min_fraction == 0.01


def test_explicit_value_beats_preset():
    p = load_params(REPO_PARAMS, {"source": "official", "train.steps": 10, "protocol": "standard"})
    assert p.train.steps == 10 and p.data.min_pixels == 2048


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
        ({"train": {"steps": 0}}, r"train.steps must be >= 1"),
        ({"paths": 3}, r"paths must be a mapping"),
        ({"train": {"compile": True}}, r"train.compile = True is not one of auto \| none \| default"),
    ],
)
def test_bad_values_name_the_key(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match):
        load_params(write(tmp_path, data))


def test_int_is_accepted_for_float(tmp_path):
    assert load_params(write(tmp_path, {"train": {"lr": 1}})).train.lr == 1.0


# Each method on official data: its release's backbone and recipe (docs/methods.md gives the sources)
RELEASES = {
    # model: (backbone, frozen, optimizer, lr, momentum, batch, steps, milestones, multipliers)
    "denet": ("resnet50", True, "sgd", 0.0025, 0.9, 8, 150_000, [], {}),
    "canet": ("resnet50", True, "sgd", 0.0025, 0.9, 8, 150_000, [], {}),
    "pgnet": ("resnet50", True, "sgd", 0.0025, 0.9, 8, 150_000, [], {}),
    "amp": ("vgg16", True, "rmsprop", 1e-6, 0.0, 8, 150_000, [], {}),
    "panet": ("vgg16_panet", False, "sgd", 1e-3, 0.9, 1, 30_000, [10_000, 20_000], {}),
    "sgone": ("vgg16_sgone", False, "sgd", 1e-5, 0.99, 1, 100_000, [],
              {"guide.weight": 10.0, "guide.bias": 20.0, "*.bias": 2.0}),
}  # fmt: skip


@pytest.mark.parametrize("model", sorted(RELEASES))
def test_official_backbone_and_recipe_follow_the_method_release(model):
    p = load_params(REPO_PARAMS, {"source": "official", "model": model})
    t = p.train
    got = (p.backbone.name, p.backbone.frozen, t.optimizer, t.lr, t.momentum, t.batch_size, t.steps,
           t.lr_milestones, t.lr_multipliers)  # fmt: skip
    assert got == RELEASES[model]
    assert (t.weight_decay, t.lr_gamma, p.backbone.weights) == (5e-4, 0.1, "imagenet")
    # PGNet reproduces DENet's table with the release's attention; elsewhere the fixed one
    assert p.model_kwargs == ({"attention": "release"} if model == "pgnet" else {})
    standard = load_params(REPO_PARAMS, {"source": "official", "model": model, "protocol": "standard"})
    assert standard.model_kwargs == {} and standard.train.lr == t.lr


def test_official_coco_steps_are_200k_for_denet_only():
    coco = {m: load_params(REPO_PARAMS, {"source": "official", "dataset": "coco", "model": m}).train.steps
            for m in RELEASES}  # fmt: skip
    assert coco == {"denet": 200_000, "canet": 150_000, "pgnet": 150_000, "amp": 150_000, "panet": 30_000,
                    "sgone": 100_000}  # fmt: skip


def test_toy_recipe_is_one_cpu_recipe_for_every_method():
    for model in RELEASES:
        t = load_params(REPO_PARAMS, {"model": model}).train
        lr = 0.05 if model in ("canet", "pgnet") else 0.01
        assert (t.optimizer, t.lr, t.momentum, t.batch_size, t.steps) == ("sgd", lr, 0.9, 8, 600), model
        assert (t.lr_milestones, t.lr_multipliers) == ([], {}), model


def test_recipe_keys_override_the_preset_and_are_checked(tmp_path):
    p = load_params(REPO_PARAMS, {"source": "official", "model": "panet", "train.batch_size": 4,
                                  "train.lr_milestones": [5], "train.optimizer": "rmsprop"})  # fmt: skip
    assert (p.train.batch_size, p.train.lr_milestones, p.train.optimizer, p.train.lr) == (
        4,
        [5],
        "rmsprop",
        1e-3,
    )
    bad = [
        ({"lr_milestones": [20, 10]}, r"train\.lr_milestones = \[20, 10\] must be increasing"),
        ({"lr_milestones": [0]}, r"train\.lr_milestones = \[0\] must be increasing steps >= 1"),
        ({"lr_milestones": "10k"}, r"train\.lr_milestones = '10k' must be a list of steps"),
        ({"lr_milestones": ["a"]}, r"train\.lr_milestones = \['a'\] has the wrong type"),
        ({"lr_multipliers": {"*.bias": 0}}, r"train\.lr_multipliers\.\*\.bias = 0\.0 must be > 0"),
        ({"lr_multipliers": [2]}, r"train\.lr_multipliers = \[2\] has the wrong type"),
        ({"optimizer": "adam"}, r"train\.optimizer = 'adam' is not one of auto \| sgd \| rmsprop"),
        ({"batch_size": "eight"}, r"train\.batch_size = 'eight' must be a number"),
        ({"momentum": -0.5}, r"train\.momentum = -0\.5 must be >= 0"),
        ({"lr_gamma": 0}, r"train\.lr_gamma = 0\.0 must be > 0"),
    ]
    for train, match in bad:
        with pytest.raises(ConfigError, match=match):
            load_params(write(tmp_path, {"train": train}))


def test_toy_model_kwargs_preset_and_override():
    assert load_params(REPO_PARAMS).model_kwargs == {"depth": 128}
    assert load_params(REPO_PARAMS, {"model": "panet"}).model_kwargs == {}
    assert load_params(REPO_PARAMS, {"model_kwargs": {"depth": 64}}).model_kwargs == {"depth": 64}


def test_toy_presets_per_method_lr_and_width():
    canet = load_params(REPO_PARAMS, {"model": "canet"})
    assert (canet.train.lr, canet.model_kwargs) == (0.05, {"depth": 128})
    assert load_params(REPO_PARAMS, {"model": "pgnet"}).train.lr == 0.05
    assert load_params(REPO_PARAMS, {"model": "sgone"}).train.lr == 0.01  # the shared toy lr
    assert load_params(REPO_PARAMS, {"model": "canet", "train.lr": 0.02}).train.lr == 0.02
    official = load_params(REPO_PARAMS, {"model": "canet", "source": "official"})
    assert (official.train.lr, official.model_kwargs) == (0.0025, {})


def test_model_kwargs_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="model_kwargs = 3 has the wrong type"):
        load_params(write(tmp_path, {"model_kwargs": 3}))


def test_resolve_never_mutates_its_input():
    raw = Params()
    resolved = resolve(raw)
    assert resolved.sampler.image_size == 161 and resolved.backbone.name == "small"
    for f in dataclasses.fields(Params):
        if dataclasses.is_dataclass(getattr(raw, f.name)):
            assert getattr(raw, f.name) is not getattr(resolved, f.name), f.name
    assert raw.sampler.image_size == "auto" and raw.backbone.name == "auto"


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


def test_pfenet_official_recipe_is_its_release():
    """dvlab-research/PFENet config/pascal/pascal_split0_resnet50.yaml (PASCAL) and config/coco (COCO)."""
    p = load_params(REPO_PARAMS, {"source": "official", "model": "pfenet", "protocol": "standard"})
    t = p.train
    got = (p.backbone.name, p.backbone.frozen, t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size)
    assert got == ("resnet50_deep", True, "sgd", 0.0025, 0.9, 1e-4, 4)
    assert (t.lr_schedule, t.lr_power, t.steps, p.sampler.image_size) == ("poly", 0.9, 297_650, 473)
    assert t.augment == "pfenet"
    coco = load_params(REPO_PARAMS, {"source": "official", "model": "pfenet", "dataset": "coco"})
    got = (coco.train.batch_size, coco.train.lr, coco.train.steps, coco.sampler.image_size)
    assert got == (32, 0.02, 129_348, 641)
    # the other methods keep their weight decay and step schedule; a key set by hand wins
    assert load_params(REPO_PARAMS, {"source": "official", "model": "denet"}).train.lr_schedule == "step"
    mine = load_params(REPO_PARAMS, {"source": "official", "model": "pfenet", "train.weight_decay": 0.0})
    assert mine.train.weight_decay == 0.0
    toy = load_params(REPO_PARAMS, {"model": "pfenet"})
    assert toy.model_kwargs["layers"] == ["layer1", "layer2", "layer3"] and toy.backbone.name == "small"
    assert toy.train.augment == "flip"
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_params(REPO_PARAMS, {"train.lr_schedule": "cosine"})
    with pytest.raises(ConfigError, match="train.augment = pfenet runs on the CPU"):
        load_params(REPO_PARAMS, {"train.augment": "pfenet", "sampler.gpu_decode": True})
