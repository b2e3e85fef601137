"""Make the baseline golden files (tests/data/golden/*.npz) by running the reference implementations.

    python tests/golden/make_baseline_golden.py --denet /work/ref/DENet --panet /work/ref/PANet \
        --sgone /work/ref/SG-One

Each reference checkout is imported from its own path for the time its method is made (the releases'
top-level names clash: `models`, `utils`). The method's module of this project is built, its weights drawn
by `baseline_golden.seeded_state`, and transplanted tensor by tensor into the reference's module, which
then runs on the stored episodes (tests/data/golden/inputs.npz, made here once from a fixed seed). The
reference's outputs and losses are written with a header naming its repository, commit and this command.
Nothing of the references is copied: their modules are imported and run, with these patches around
old APIs only:
  - torchvision constructors called with `pretrained=True` build random-init networks (no download;
    every weight is overwritten by the transplant anyway);
  - SG-One's `models/vgg/vgg_sg.py` is Python 2 (`print "..."` statements): its source is read, those
    statements get parentheses, and the result is executed as that module;
  - SG-One's `OneModel.warper_img` (numpy -> CUDA tensor) passes tensors through, so its 5-shot path
    runs on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import re
import subprocess
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # the project and baseline_golden, run from anywhere

from baseline_golden import (  # noqa: E402
    GOLDEN_DIR,
    INPUTS,
    REFERENCES,
    SAMPLER_INPUTS,
    SAMPLER_SEED,
    SAMPLER_SIZE,
    VOID,
    decode_sampler_episodes,
    disable_dropout,
    episode_subset,
    make_inputs,
    normalize_images,
    seeded_state,
    state_digest,
    write_golden,
)

from fss_model import build_model  # noqa: E402

SEEDS = {"canet": 15, "pgnet": 16, "amp": 17, "panet": 18, "sgone": 19}
COMMAND = (
    "python tests/golden/make_baseline_golden.py --denet <lizhaoliu-Lec/DENet checkout> "
    "--panet <kaixin96/PANet checkout> --sgone <xiaomengyc/SG-One checkout>"
)
SUB = 4  # image-size outputs are stored at every 4th pixel (17 x 17 of 65 x 65): files stay small
AMP_NOVEL = (1, 2, 3, 4, 5)  # fold 0: the classes the release's AMP training maps to 255


# ------------------------------------------------------------------------------------ reference import


@contextlib.contextmanager
def reference(root: Path, stubs: Iterable[str] = ()) -> Iterator[None]:
    """Import from the checkout `root` meanwhile; its modules (and `stubs`) are forgotten afterwards."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name, module in list(sys.modules.items()):
            if name in stubs or str(getattr(module, "__file__", "") or "").startswith(str(root)):
                del sys.modules[name]


def load_file(name: str, path: Path) -> types.ModuleType:
    """Execute one file of a reference as module `name`, without its package's __init__ (DENet's
    `trainer/__init__.py` imports tensorboardX and plotting for its trainers; `trainer/utils.py` needs
    neither)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkout_commit(root: Path, key: str) -> str:
    """The checkout's HEAD; it must be the commit the project names for this reference."""
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip()
    repo, expected = REFERENCES[key]
    if commit != expected:
        raise SystemExit(f"{root} is at {commit or '(not a git checkout)'}, not {repo} @ {expected}")
    return commit


def patch_pretrained(module: types.ModuleType, names: Iterable[str]) -> None:
    """Make `module.<name>(pretrained=True, ...)` torchvision constructors build random-init networks."""
    import torchvision.models as tvm

    for name in names:
        builder = getattr(tvm, name)
        setattr(module, name, lambda pretrained=False, _b=builder, **kw: _b(weights=None, **kw))


def transplant(
    project: nn.Module, ref: nn.Module, prefixes: list[tuple[str, str]], unused: tuple[str, ...] = ()
) -> None:
    """Copy the project's tensors into the reference's: `prefixes` rewrite a reference name into the
    project's (first match). Every project tensor must be used and every reference tensor mapped, except
    those under the `unused` prefixes (parts the reference builds but whose output nothing reads)."""
    source = {**dict(project.named_parameters()), **dict(project.named_buffers())}
    used: set[str] = set()
    with torch.no_grad():
        for name, tensor in [*ref.named_parameters(), *ref.named_buffers()]:
            if name.endswith("num_batches_tracked") or name.startswith(unused):
                continue
            mapped = next((p + name[len(r) :] for r, p in prefixes if name.startswith(r)), None)
            if mapped not in source:
                raise KeyError(f"reference tensor {name} has no project tensor (mapped to {mapped})")
            if source[mapped].shape != tensor.shape:
                raise ValueError(f"{name} {tuple(tensor.shape)} != {mapped} {tuple(source[mapped].shape)}")
            tensor.copy_(source[mapped])
            used.add(mapped)
    left = sorted(k for k in source if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        raise KeyError(f"project tensors not transplanted: {left[:8]}{' ...' if len(left) > 8 else ''}")


def conv_prefixes(
    ref: nn.Module, ref_under: str, project: nn.Module, project_under: str
) -> list[tuple[str, str]]:
    """Prefix pairs matching the 13 Conv2d layers of two VGG16 stacks in registration (= forward) order;
    `*_under`: the name prefix of the stack inside each module."""

    def convs(module: nn.Module, under: str) -> list[str]:
        return [
            f"{n}." for n, m in module.named_modules() if isinstance(m, nn.Conv2d) and n.startswith(under)
        ]

    ref_convs, project_convs = convs(ref, ref_under), convs(project, project_under)
    assert len(ref_convs) == len(project_convs) == 13, (ref_convs, project_convs)
    return list(zip(ref_convs, project_convs, strict=True))


def header(
    method: str, model_kwargs: dict[str, Any], model: nn.Module, cases: list[str], note: str, inputs: str
) -> dict:
    repo, commit = REFERENCES["denet" if method in ("canet", "pgnet", "amp") else method]
    return {
        "method": method,
        "reference": repo,
        "commit": commit,
        "command": COMMAND,
        "torch": torch.__version__,
        "model_kwargs": model_kwargs,
        "seed": SEEDS[method],
        "weights": "tests/golden/baseline_golden.py seeded_state(model, seed)",
        "weights_sha256": state_digest(model),
        "inputs": inputs,
        "cases": cases,
        "note": note,
    }


# ---------------------------------------------------------------------------------------------- data


def binary(full: np.ndarray, class_ids: np.ndarray) -> torch.Tensor:
    """[B, way, shot, H, W] (or [B, H, W] with one class per episode) -> 1 where the class, else 0.

    The DENet release's data rule for a support (and a 1-way query) mask: void is 0 (its CANet, PGNet,
    AMP). Not SG-One's: its training makes every pixel > 0 foreground, void included (`sgone_mask`); the
    65 px model cases use this rule for SG-One too, since their label maps hold several classes."""
    cls = class_ids.reshape(class_ids.shape + (1,) * (full.ndim - class_ids.ndim))
    return torch.from_numpy((full == cls).astype(np.int64))


def project_support_masks(ep: dict[str, np.ndarray]) -> torch.Tensor:
    """What this project's sampler makes of the supports under `protocol: denet` (void trains as
    background): `train.stream.transforms.binary_mask` with the episode's classes."""
    from train.stream.transforms import binary_mask

    full = np.where(ep["support_full"] == VOID, 0, ep["support_full"])
    b, way, shot = full.shape[:3]
    masks = [
        binary_mask(full[i, w, k], int(ep["class_ids"][i, w]), ep["class_ids"][i].tolist())
        for i in range(b)
        for w in range(way)
        for k in range(shot)
    ]
    return torch.from_numpy(np.stack(masks).astype(np.int64)).view(full.shape)


def sgone_mask(full: np.ndarray, class_ids: np.ndarray, released: bool) -> torch.Tensor:
    """SG-One's masks. `released`: its training rule, every pixel > 0 is foreground, void included
    (`utils/mydataset.py:48-56` `mask_dat[mask_dat>0] = 1`; it trains on images holding exactly one class,
    `datasets/pascal_voc_seg.py:92-95,167-172`, so that is the class and its void). Otherwise the DENet
    release's `mask == class` (the model-only cases at 65 px, whose label maps hold several classes)."""
    if released:
        return torch.from_numpy((full > 0).astype(np.int64))
    return binary(full, class_ids)


def images(ep: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return normalize_images(ep["query_img"]), normalize_images(ep["support_imgs"])


SETTINGS = [(1, 1), (1, 5), (2, 1), (2, 5)]


def tag(mode: str, way: int, shot: int) -> str:
    return f"{mode}_{way}w{shot}s"


# ------------------------------------------------------------------------------- DENet's CANet / PGNet


def make_pattern(
    method: str, root: Path, inputs: dict[str, np.ndarray], settings: list[tuple[int, int]] = SETTINGS,
    suffix: str = "", inputs_name: str = INPUTS.name,
) -> None:  # fmt: skip
    """CANet or PGNet of the DENet release (`model/head/can.py`, `model/head/pgn.py`)."""
    kwargs: dict[str, Any] = {"backbone": "resnet50", "frozen": True, "freeze_bn": False}
    if method == "pgnet":
        kwargs["attention"] = "release"
    torch.manual_seed(0)
    model = seeded_state(build_model(method, **kwargs), SEEDS[method])
    with reference(root):
        import model.backbone.backbones as backbones

        patch_pretrained(backbones, ["resnet50", "resnet101", "densenet121", "vgg16", "vgg16_bn"])
        from loss.losses import loss_general

        trainer_utils = load_file("denet_trainer_utils", root / "trainer/utils.py")
        process_nway, upsample = trainer_utils.process_nway, trainer_utils.upsample

        if method == "canet":
            from model.head.can import CAN

            ref = CAN(backbone="ResNet50")
            head = [("fuse.", "compare."), ("fuse_history.", "history.")]
            blocks = 2
        else:
            from model.head.pgn import PGN

            ref = PGN(backbone="ResNet50")
            head = [("g.", "values."), ("gau_4.Phi.", "global_unit.out.")]
            head += [(f"gau_{i + 1}.{a}.", f"units.{i}.{b}.") for i in range(3)
                     for a, b in (("phi", "phi"), ("theta", "theta"), ("Phi", "out"))]  # fmt: skip
            blocks = 3
        aspp = f"tail.body.{blocks}."
        prefixes = [
            ("backbone.", "encoder.backbone."),
            ("embedding.", "encoder.embed."),
            *head,
            *[(f"residual{i + 1}.", f"tail.body.{i}.body.") for i in range(blocks)],
            *[(f"aspp.convs.{i}.", f"{aspp}branches.{i}.") for i in range(4)],
            ("aspp.convs.4.", f"{aspp}pool."),
            ("aspp.project.", f"{aspp}project."),
            ("classifier.", "tail.classifier."),
        ]
        # layer4: the release's backbone computes it, nothing reads it; PGNet's global unit has theta/phi
        # whose attention the release overwrites with equal weights
        unused = ("backbone.layer4.", "gau_4.phi.", "gau_4.theta.")
        transplant(model, ref, prefixes, unused)
        arrays: dict[str, np.ndarray] = {}
        cases = []
        with torch.no_grad():
            ref.eval()
            # the release's test: each way on its own, then process_nway; way 0's pair logits are the
            # 1-way result, so the 2-way cases cover 1-way too
            for way, shot in [(w, k) for w, k in settings if w == 2]:
                ep = episode_subset(inputs, way, shot)
                iq, isup = images(ep)
                ys = binary(ep["support_full"], ep["class_ids"])
                label = torch.zeros(iq.shape[0], *iq.shape[-2:], dtype=torch.long)
                pairs = [ref(isup[:, [w]], ys[:, [w]], iq) for w in range(way)]
                arrays[tag("eval", way, shot) + "/pair_logits"] = torch.stack(pairs, 1).numpy()
                if way > 1:
                    combined = process_nway(torch.cat([upsample(p, label) for p in pairs], dim=1), way)
                    arrays[tag("eval", way, shot) + "/way_logits_sub"] = combined[..., ::SUB, ::SUB].numpy()
                cases.append(tag("eval", way, shot))
            # training forward: BN on batch statistics (query pass, then support pass), dropout off
            disable_dropout(ref).train()
            for way, shot in settings[:1]:
                ep = episode_subset(inputs, way, shot)
                iq, isup = images(ep)
                ys = binary(ep["support_full"], ep["class_ids"])
                yq = binary(ep["query_full"], ep["class_ids"][:, 0])
                out = ref(isup, ys, iq)
                t = tag("train", way, shot)
                arrays[t + "/pair_logits"] = out[:, None].numpy()
                arrays[t + "/loss"] = np.array(loss_general(out, yq).item())
                arrays[t + "/running_mean"] = ref.backbone.layer3[5].bn3.running_mean.numpy().copy()
                cases.append(t)
    note = (
        "eval_*: the release's test forward (model.eval(); each way alone = the 1-way result, then upsampled "
        "and combined by process_nway); train_1w1s: model.train() with dropout p=0 (BN on batch statistics, "
        "query then support pass), loss_general vs the 0/1 query mask, and layer3.5.bn3 running_mean after "
        "that forward"
    )
    write_golden(
        GOLDEN_DIR / f"{method}{suffix}.npz", header(method, kwargs, model, cases, note, inputs_name), arrays
    )


# ------------------------------------------------------------------------------------------- DENet AMP


def make_amp(
    root: Path, inputs: dict[str, np.ndarray], settings: list[tuple[int, int]] = SETTINGS, suffix: str = "",
    inputs_name: str = INPUTS.name,
) -> None:  # fmt: skip
    """AMP of the DENet release (`model/head/amp.py`), 1-way as released, drift across two batches."""
    kwargs: dict[str, Any] = {"backbone": "vgg16", "frozen": True, "imprinting": "release"}
    torch.manual_seed(0)
    model = seeded_state(build_model("amp", **kwargs), SEEDS["amp"])
    with reference(root):
        import model.backbone.backbones as backbones

        patch_pretrained(backbones, ["resnet50", "resnet101", "densenet121", "vgg16", "vgg16_bn"])
        from loss.losses import loss_general
        from model.head.amp import AMP
        from utils.operations import get_binary_logits

        ref = AMP(backbone="VGG16Base", maximum_num_classes=21)
        levels = [("level1_classifier.", "classifiers.0."), ("level2_classifier.", "classifiers.1.")]
        levels += [("level3_classifier.", "classifiers.2."), ("fully_conv.0.", "fc.")]
        transplant(model, ref, [*conv_prefixes(ref, "conv", model, "backbone."), *levels])
        arrays: dict[str, np.ndarray] = {}
        with torch.no_grad():
            # training: plain segmentation of the query on base classes (void -> 0, fold-0 novel -> 255)
            ref.train()
            iq, _ = images(inputs)
            full = np.where(inputs["query_full"] == VOID, 0, inputs["query_full"])
            train_label = np.where(np.isin(full, AMP_NOVEL), VOID, full).astype(np.int64)
            base = ref(iq)
            arrays["train/base_logits"] = base.numpy()
            arrays["train/label"] = train_label.astype(np.uint8)
            arrays["train/loss"] = np.array(loss_general(base, torch.from_numpy(train_label)).item())
            # test: two batches in a row (1-shot then 5-shot); the background rows drift across them
            ref.eval()
            shots = sorted({k for w, k in settings if w == 1})
            for shot in shots:
                ep = episode_subset(inputs, 1, shot)
                iq, isup = images(ep)
                cls = torch.from_numpy(ep["class_ids"][:, 0])
                logits = ref(isup, binary(ep["support_full"], ep["class_ids"]), iq, cls)
                t = tag("eval", 1, shot)
                arrays[t + "/logits_full"] = logits.numpy()
                arrays[t + "/binary_logits"] = get_binary_logits(logits, cls).numpy()
                arrays[t + "/background_rows"] = np.stack(
                    [c.weight[0].flatten().numpy().copy()[:256]
                     for c in (ref.level1_classifier, ref.level2_classifier, ref.level3_classifier)]
                )  # fmt: skip
    note = (
        "train: the release's training forward (plain segmentation of the queries) and loss_general vs "
        "train/label; eval_1w1s then eval_1w5s: two test batches in a row on the same module (imprinting "
        "drift), logits_full, get_binary_logits(base=True) and each level's background row (first 256 "
        "values) after the batch"
    )
    cases = ["train", *(tag("eval", 1, k) for k in shots)]
    write_golden(
        GOLDEN_DIR / f"amp{suffix}.npz", header("amp", kwargs, model, cases, note, inputs_name), arrays
    )


# ----------------------------------------------------------------------------------------------- PANet


def make_panet(
    root: Path, inputs: dict[str, np.ndarray], settings: list[tuple[int, int]] = SETTINGS, suffix: str = "",
    inputs_name: str = INPUTS.name,
) -> None:  # fmt: skip
    """PANet (`models/fewshot.py`, `models/vgg.py`), with the masks of `dataloaders/customized.py`."""
    kwargs: dict[str, Any] = {"backbone": "vgg16_panet"}
    torch.manual_seed(0)
    model = seeded_state(build_model("panet", **kwargs), SEEDS["panet"])
    with reference(root):
        from models.fewshot import FewShotSeg

        ref = FewShotSeg(pretrained_path=None, cfg={"align": True})
        transplant(model, ref, conv_prefixes(ref, "encoder.backbone.", model, "backbone."))
        arrays: dict[str, np.ndarray] = {}
        cases = []
        ref.train()
        with torch.no_grad():
            for way, shot in settings:
                ep = episode_subset(inputs, way, shot)
                iq, isup = images(ep)
                sfull, classes = torch.from_numpy(ep["support_full"]).long(), ep["class_ids"]
                fg, bg = [], []
                # getMask: fg = the way's class; bg = every pixel of no episode class (void included)
                in_episode = (sfull[..., None] == torch.from_numpy(classes)[:, None, None, None, None]).any(
                    -1
                )
                for w in range(way):
                    cls = torch.from_numpy(classes[:, w])[:, None, None, None]
                    fg.append((sfull[:, w] == cls).float())
                    bg.append((~in_episode[:, w]).float())
                supp = [[isup[:, w, k] for k in range(shot)] for w in range(way)]
                fore = [[fg[w][:, k] for k in range(shot)] for w in range(way)]
                back = [[bg[w][:, k] for k in range(shot)] for w in range(way)]
                # fewShot's query label: 0, way index + 1, void kept
                qfull = ep["query_full"]
                qlabel = np.where(qfull == VOID, VOID, 0)
                for w in range(way):
                    qlabel = np.where(qfull == classes[:, w, None, None], w + 1, qlabel)
                out, align = ref(supp, fore, back, [iq])
                ce = F.cross_entropy(out, torch.from_numpy(qlabel).long(), ignore_index=VOID)
                t = tag("train", way, shot)
                arrays[t + "/logits_sub"] = out[..., ::SUB, ::SUB].numpy()
                arrays[t + "/ce"] = np.array(ce.item())
                arrays[t + "/align"] = np.array(float(align))
                cases.append(t)
    note = (
        "train_*: model.train() with cfg align=True; logits_sub = the forward's image-size output at every "
        f"{SUB}th pixel; ce = nn.CrossEntropyLoss(ignore_index=255) vs fewShot's query label; align = the "
        "forward's alignment loss; support masks by customized.getMask with the episode's class ids"
    )
    write_golden(
        GOLDEN_DIR / f"panet{suffix}.npz", header("panet", kwargs, model, cases, note, inputs_name), arrays
    )


# ---------------------------------------------------------------------------------------------- SG-One


def load_sgone(root: Path) -> type:
    """SG-One's OneModel, its Python 2 VGG module executed with parenthesised print statements."""
    source = (root / "models/vgg/vgg_sg.py").read_text()
    source = re.sub(r"^(\s*)print\s+(?!\()(.+)$", r"\1print(\2)", source, flags=re.MULTILINE)
    vgg_sg = types.ModuleType("models.vgg.vgg_sg")
    vgg_sg.__file__ = str(root / "models/vgg/vgg_sg.py")
    exec(compile(source, vgg_sg.__file__, "exec"), vgg_sg.__dict__)
    original = vgg_sg.vgg16
    vgg_sg.vgg16 = lambda pretrained=False, **kw: original(pretrained=False, **kw)  # no ImageNet download
    models, vgg = types.ModuleType("models"), types.ModuleType("models.vgg")
    models.vgg, vgg.vgg_sg = vgg, vgg_sg
    sys.modules.update({"models": models, "models.vgg": vgg, "models.vgg.vgg_sg": vgg_sg})
    module = load_file("onemodel_sg_one", root / "oneshot/onemodel_sg-one.py")
    module.OneModel.warper_img = lambda self, img: img  # tensors already batched, on the CPU
    return module.OneModel


def make_sgone(
    root: Path, inputs: dict[str, np.ndarray], settings: list[tuple[int, int]] = SETTINGS, suffix: str = "",
    inputs_name: str = INPUTS.name, released: bool = False,
) -> None:  # fmt: skip
    """SG-One (`oneshot/onemodel_sg-one.py`, `models/vgg/vgg_sg.py`), batch 1 per episode as released."""
    kwargs: dict[str, Any] = {"backbone": "vgg16_sgone"}
    torch.manual_seed(0)
    model = seeded_state(build_model("sgone", **kwargs), SEEDS["sgone"])
    with reference(root, stubs=("models", "models.vgg", "models.vgg.vgg_sg", "onemodel_sg_one")):
        ref = load_sgone(root)(None)
        prefixes = conv_prefixes(ref, "netB.features_", model, "backbone.")
        prefixes += [
            ("netB.cls.0.", "guide."),
            ("netB.side3_1.0.", "sides.0.0."),
            ("netB.side4_1.0.", "sides.1.0."),
        ]
        prefixes += [
            ("netB.side5_1.0.", "sides.2.0."),
            ("classifier_6.0.", "classifier.0."),
            ("exit_layer.", "classifier.2."),
        ]
        transplant(model, ref, prefixes)
        arrays: dict[str, np.ndarray] = {}
        ref.train()  # no BN or dropout: train and eval forwards are the same
        with torch.no_grad():
            shots = [k for w, k in settings if w == 1]
            for shot in shots:
                ep = episode_subset(inputs, 1, shot)
                iq, isup = images(ep)
                ys = sgone_mask(ep["support_full"], ep["class_ids"], released).float()
                yq = sgone_mask(ep["query_full"], ep["class_ids"][:, 0], released)
                sides, preds, losses = [], [], []
                for e in range(iq.shape[0]):  # the release's batch size is 1
                    anchor = iq[[e]]
                    if shot == 1:
                        logits = ref(anchor, isup[[e], 0, 0], None, ys[[e], 0, 0][:, None])
                        losses.append(ref.get_loss(logits, yq[[e]][:, None])[0].item())
                    else:
                        shots = [isup[[e], 0, k] for k in range(5)]
                        logits = ref.forward_5shot_avg(
                            anchor, shots, [ys[[e], 0, k][:, None] for k in range(5)]
                        )
                    sides.append(logits[3][0])
                    preds.append(ref.get_pred(logits, anchor)[0])
                t = tag("train", 1, shot)
                arrays[t + "/exit_logits"] = torch.stack(sides).numpy()
                arrays[t + "/softmax_sub"] = torch.stack(preds)[..., ::SUB, ::SUB].numpy()
                if losses:
                    arrays[t + "/loss"] = np.array(float(np.mean(losses)))
    note = (
        "train_1w1s: OneModel.forward + get_loss (CrossEntropyLoss vs the 0/1 query mask, mean of the two "
        "batch-1 episodes); train_1w5s: forward_5shot_avg; exit_logits = exit_layer output (padding 1); "
        f"softmax_sub = get_pred's softmax at every {SUB}th pixel"
    )
    cases = [tag("train", 1, k) for k in shots]
    write_golden(
        GOLDEN_DIR / f"sgone{suffix}.npz", header("sgone", kwargs, model, cases, note, inputs_name), arrays
    )


# ----------------------------------------------------------------------------- episodes from the sampler


def make_sampler_inputs(work: Path) -> dict[str, np.ndarray]:
    """Two 1-way 1-shot training episodes of the toy PASCAL data (the DENet goldens' toy settings) as this
    project's stages and sampler make them: shards and folds under `protocol: denet`, then
    `EpisodeDecoder` at SAMPLER_SIZE with its flips (`baseline_golden.decode_sampler_episodes`).

    Images are picked as SG-One trains (a single class in the label, any pixel counted) and with void
    pixels, so each method's void rule matters; the two episodes' classes and flips differ.
    """
    import json
    import shutil

    from denet_release import TOY

    from pipeline import toy
    from pipeline.config import load_params
    from pipeline.folds import write_folds
    from pipeline.shards import build_shards
    from train.stream.by_key import SampleReader
    from train.stream.index import read_fold
    from train.stream.transforms import decode_label

    shutil.rmtree(work, ignore_errors=True)
    raw, shards, folds = work / "raw", work / "shards", work / "folds"
    toy.generate(raw, "pascal", seed=TOY["pascal"]["seed"], scale=TOY["pascal"]["scale"])
    p = load_params(HERE.parents[1] / "params.yaml", {"dataset": "pascal", "protocol": "denet",
                                                     "sampler.image_size": SAMPLER_SIZE})  # fmt: skip
    build_shards(raw, shards, p, workers=2, progress=False)
    write_folds(shards, folds, dataset="pascal", protocol="denet", min_fraction=float(p.data.min_fraction),
                min_pixels=int(p.data.min_pixels))  # fmt: skip
    base, novel = read_fold(str(folds), 0)
    reader = SampleReader(str(shards / "train"))
    by_class: dict[int, list[str]] = {}
    for key in sorted(reader.image_classes):
        label = np.asarray(decode_label(reader.fetch(key)["label.png"]))
        classes = set(np.unique(label).tolist()) - {0, VOID}
        if len(classes) == 1 and (label == VOID).any() and classes <= set(base):
            by_class.setdefault(classes.pop(), []).append(key)
    chosen = [c for c in sorted(by_class) if len(by_class[c]) >= 2][:2]
    if len(chosen) < 2:
        raise SystemExit("the toy PASCAL data has too few single-class images with void: raise its scale")
    episodes = [{"class": c, "query": by_class[c][0], "support": by_class[c][1]} for c in chosen]
    arrays: dict[str, np.ndarray] = {}
    for ep in episodes:
        for key in (ep["query"], ep["support"]):
            sample = reader.fetch(key)
            arrays[f"sample/{key}/jpg"] = np.frombuffer(sample["jpg"], dtype=np.uint8)
            arrays[f"sample/{key}/png"] = np.frombuffer(sample["label.png"], dtype=np.uint8)
    meta = {"novel": list(novel), "image_size": SAMPLER_SIZE, "seed": SAMPLER_SEED, "episodes": episodes,
            "toy": TOY["pascal"], "fold": 0}  # fmt: skip
    arrays["sampler_meta"] = np.array(json.dumps(meta, sort_keys=True))
    decoded = decode_sampler_episodes(arrays)
    keep = ("query_img", "support_imgs", "query_full", "support_full", "class_ids")
    arrays.update({k: decoded[k] for k in keep})
    return arrays


# ------------------------------------------------------------------------------------------------ main


def make_sampler_case(args: argparse.Namespace) -> int:
    """Every reference on the sampler's episodes (1-way 1-shot training, SAMPLER_SIZE px): *_sampler.npz.

    Each reference gets the decoded images and the resized, flipped dataset-id labels and applies its
    own released mask rule (DENet's CANet / PGNet / AMP: `mask == class`, void 0; PANet: getMask, void
    background in supports, 255 (ignored) in the query label; SG-One: every pixel > 0 foreground)."""
    from baseline_golden import read_golden

    if args.new_inputs or not SAMPLER_INPUTS.exists():
        arrays = make_sampler_inputs(args.work)
        shapes = {k: list(v.shape) for k, v in arrays.items() if not k.startswith("sample/")}
        head = {"made_by": COMMAND + " --sampler", "image_size": SAMPLER_SIZE, "shapes": shapes}
        write_golden(SAMPLER_INPUTS, head, arrays)
    _, inputs = read_golden(SAMPLER_INPUTS)
    one = [(1, 1)]
    named = {"settings": one, "suffix": "_sampler", "inputs_name": SAMPLER_INPUTS.name}
    if args.denet:
        checkout_commit(args.denet, "denet")
        make_pattern("canet", args.denet, inputs, **named)
        make_pattern("pgnet", args.denet, inputs, **named)
        make_amp(args.denet, inputs, **named)
    if args.panet:
        checkout_commit(args.panet, "panet")
        make_panet(args.panet, inputs, **named)
    if args.sgone:
        checkout_commit(args.sgone, "sgone")
        make_sgone(args.sgone, inputs, released=True, **named)
    for path in sorted(GOLDEN_DIR.glob("*_sampler.npz")):
        print(f"{path.relative_to(HERE.parents[1])}: {path.stat().st_size / 1024:.0f} KiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--denet", type=Path, help="lizhaoliu-Lec/DENet checkout (CANet, PGNet, AMP)")
    parser.add_argument("--panet", type=Path, help="kaixin96/PANet checkout")
    parser.add_argument("--sgone", type=Path, help="xiaomengyc/SG-One checkout")
    parser.add_argument("--new-inputs", action="store_true", help="redraw tests/data/golden/inputs.npz")
    parser.add_argument("--sampler", action="store_true", help="the sampler case only (*_sampler.npz)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/baseline_golden"), help="scratch (emptied)")
    args = parser.parse_args(argv)
    if args.sampler:
        return make_sampler_case(args)
    if args.new_inputs or not INPUTS.exists():
        arrays = make_inputs()
        head = {"made_by": "tests/golden/baseline_golden.py make_inputs(seed=0)", "shapes": {
            k: list(v.shape) for k, v in arrays.items()}}  # fmt: skip
        write_golden(INPUTS, head, arrays)
    from baseline_golden import read_golden

    _, inputs = read_golden(INPUTS)
    if args.denet:
        checkout_commit(args.denet, "denet")
        make_pattern("canet", args.denet, inputs)
        make_pattern("pgnet", args.denet, inputs)
        make_amp(args.denet, inputs)
    if args.panet:
        checkout_commit(args.panet, "panet")
        make_panet(args.panet, inputs)
    if args.sgone:
        checkout_commit(args.sgone, "sgone")
        make_sgone(args.sgone, inputs)
    for path in sorted(GOLDEN_DIR.glob("*.npz")):
        print(f"{path.relative_to(HERE.parents[1])}: {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
