"""Backbones returning named feature maps, built by name; `load_weights` is the only weight loader.

API::

    bb = build_backbone("resnet50", frozen=True, freeze_bn=True, out_layers=("layer2", "layer3"))
    feats = bb(images)           # {"layer2": [N, 512, h, w], "layer3": [N, 1024, h, w]}
    bb.channels["layer3"]        # 1024; bb.strides["layer3"] == 8; bb.out_channels = last out layer's
    load_weights(bb, "imagenet") # or a state_dict file path, or "none"; called by train/, never here
    list_backbones()             # names below

| name        | layers (channels, stride)                                                  | imagenet |
|-------------|----------------------------------------------------------------------------|----------|
| resnet50    | layer1 256 /4, layer2 512 /8, layer3 1024 /8, layer4 2048 /8               | V1       |
| resnet101   | same as resnet50                                                           | V1       |
| resnet18    | layer1 64 /4, layer2 128 /8, layer3 256 /8, layer4 512 /8                  | V1       |
| resnet50_deep  | as resnet50; PSPNet's deep stem and dilation (PFENet's release)         | file     |
| resnet101_deep | as resnet101; PSPNet's deep stem and dilation (PFENet's release)        | file     |
| densenet121 | layer1 256 /4, layer2 512 /8, layer3 1024 /8                               | V1       |
| vgg16       | pool3 256 /8, pool4 512 /16, pool5 512 /32 (AMP's release)                 | V1       |
| vgg16_panet | conv5 512 /8 (PANet's release)                                             | V1       |
| vgg16_sgone | pool3 256 /8, pool4 512 /8, pool5 512 /8 (SG-One's release)                | V1       |
| vgg16_bn_pfenet | layer2 (pool3) 256 /8, layer3 (pool4) 512 /16, layer4 (conv5_3) 512 /16 | BN V1  |
| small       | layer1 64 /4, layer2 128 /8, layer3 128 /8 (GroupNorm, ~0.6 M params);      | none     |
|             | layer4 128 /16 (two more convs, built only when asked for: HSNet's deepest) |          |

Sizes: the ResNets, "small" and vgg16's pool3 map 321 px -> 41 x 41 (65 px -> 9 x 9): ResNets use
torchvision's `replace_stride_with_dilation=[False, True, True]` (BasicBlock ResNet-18 is dilated here by
hand, which torchvision refuses). densenet121 is the release's variant: transition2's average pool is
removed so denseblock2 and denseblock3 stay at stride 8; its transition1 pool floors, so 321 px -> 40 x 40
(65 px -> 8 x 8). The three VGG16s are torchvision's `features` reshaped as each release does
(`VGGLayout`): vgg16 is AMP's (ceil-mode 2x2 pooling, 321 -> 161 -> 81 -> 41 -> 21 -> 11, dilated conv4
(1, 1, 2) / conv5 (2, 4, 4); `amp_dilation=False` gives plain VGG16); vgg16_panet is PANet's encoder
(3x3/2 pools padded 1, pool4 3x3/1, conv5 dilated 2 with no ReLU after conv5_3, no pool5: 321 -> 41);
vgg16_sgone is SG-One's (3x3/2 pools, pool4 and pool5 3x3/1, no dilation: 321 -> 41 for all three taps).
vgg16_bn_pfenet is PFENet's VGG-16 with BatchNorm (all pools 2x2 ceil mode, 473 -> 237 -> 119 -> 60 -> 30,
no pool5), tapped where its release splits `features` into layer0..layer4; it loads torchvision's
vgg16_bn file. The `_deep` ResNets are PSPNet's ResNets that PFENet's release uses (`model/resnet.py`
with `deep_base=True`): a stem of three 3x3 convs (64, 64, 128) instead of the 7x7, and every 3x3 conv
of layer3 / layer4 dilated 2 / 4 (torchvision leaves the first block of each at the previous dilation).
Their ImageNet weights are not torchvision's: PSPNet's `resnet50_v2.pth` / `resnet101_v2.pth` (the
PFENet README's "initmodel" download) load with `load_weights(bb, path)`, their keys (conv1, bn1, conv2,
bn2, conv3, bn3, layer1..4, fc) being this backbone's.
fc6/fc7 are head-owned (torchvision's are Linear layers for 224 px), so no fc7 map is offered here.
All three load torchvision's ImageNet VGG16 file, as the releases initialise from it.

A backbone holds only the stages up to its deepest `out_layers` entry (no unused ResNet layer4 weights)
and names its modules exactly as torchvision does, so a torchvision state_dict loads strictly once the
keys of the deliberately dropped parts (`unused_prefixes`, e.g. "fc.", "layer4.") are removed.

Block taps: `out_layers` may also name `<stage>.<j>` (block j of a stage) or `<stage>.*` (every block of
it, expanded in order), for the stages listed in `blocks`. A ResNet block's tap is its residual sum before
the block's last ReLU (what HSNet's `extract_feat_res` reads); vgg16_hsnet's blocks are conv4_1..3 and
conv5_1..3 before their ReLU, and pool5 (HSNet's `feat_ids` 17..30); `small`'s are its stage's children.
A block tap has its stage's channels and stride. A tap is never overwritten by an in-place ReLU after it.

`frozen=True`: no parameter requires grad. `freeze_bn=True`: BatchNorm layers stay in eval mode (running
statistics fixed) even under `model.train()`; the release leaves BN in train mode (`freeze_bn=False`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torchvision.models as tvm
from torch import Tensor
from torchvision.models import WeightsEnum

from fss_model.registry import ModelArgumentError, Registry
from pipeline.errors import UserError

BACKBONES: Registry[Backbone] = Registry("backbone")


def register_backbone(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Register a backbone builder under its function name."""
    return BACKBONES.register(fn)


def build_backbone(
    name: str,
    *,
    frozen: bool = False,
    freeze_bn: bool = False,
    out_layers: Sequence[str] | None = None,
    **kwargs: Any,
) -> Backbone:
    """Build a backbone by name (random init); unknown names raise ValueError listing the known ones.

    `out_layers` default: ("layer3",), or ("pool3", "pool4", "pool5") for vgg16.
    """
    backbone = BACKBONES.build(name, frozen=frozen, freeze_bn=freeze_bn, out_layers=out_layers, **kwargs)
    backbone.name = name  # registry name, for error messages
    return backbone


def list_backbones() -> list[str]:
    """Sorted names of the registered backbones."""
    return BACKBONES.names()


class Backbone(nn.Module):
    """Feature extractor base: runs `plan` in order and returns the maps named in `out_layers`.

    Subclasses register their modules under torchvision's names, then call `_finish` with the plan:
    a list of (output name or None, module) steps up to the deepest layer they may expose.
    """

    channels: dict[str, int]  # channels of every layer this family can expose
    strides: dict[str, int]  # output stride of every layer
    blocks: dict[str, int] = {}  # noqa: RUF012  stage -> number of block taps (`<stage>.<j>`)
    default_out: tuple[str, ...] = ("layer3",)
    imagenet_weights: WeightsEnum | None = None  # torchvision weights enum used by load_weights
    unused_prefixes: tuple[str, ...] = ()  # pretrained keys this backbone deliberately does not hold

    def __init__(self, out_layers: Sequence[str] | None, frozen: bool, freeze_bn: bool) -> None:
        super().__init__()
        self.name = type(self).__name__
        self.out_layers = self._expand(tuple(out_layers or self.default_out))
        unknown = [n for n in self.out_layers if not self._known(n)]
        if unknown:
            blocks = [f"{k}.0..{k}.{n - 1}" for k, n in self.blocks.items()]
            known = list(self.channels) + ([f"blocks {', '.join(blocks)}"] if blocks else [])
            raise ModelArgumentError(f"{type(self).__name__} has no layer {unknown}; known: {known}")
        self.frozen = frozen
        self.freeze_bn = freeze_bn
        self._plan: list[tuple[str | None, nn.Module]] = []

    def _expand(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """`<stage>.*` -> every block tap of the stage, in order."""
        out: list[str] = []
        for name in names:
            stage, _, block = name.partition(".")
            count = self.blocks.get(stage, 0) if block == "*" else 0
            out += [f"{stage}.{j}" for j in range(count)] if count else [name]  # no blocks: unknown
        return tuple(out)

    def _known(self, name: str) -> bool:
        stage, dot, block = name.partition(".")
        if not dot:
            return name in self.channels
        return block.isdigit() and int(block) < self.blocks.get(stage, 0)

    @staticmethod
    def stage_of(name: str) -> str:
        """The stage a tap belongs to: "layer3.2" -> "layer3" (a stage's name is its own)."""
        return name.partition(".")[0]

    @property
    def out_channels(self) -> int:
        """Channels of the last entry of `out_layers` (the map single-feature heads use)."""
        return self.channels[self.stage_of(self.out_layers[-1])]

    def wants_blocks(self, stage: str) -> bool:
        """True when some block tap of `stage` is requested (the stage's plan is then per block)."""
        return any(n.startswith(f"{stage}.") for n in self.out_layers)

    def _finish(self, plan: list[tuple[str | tuple[str, ...] | None, nn.Module]]) -> None:
        """Truncate the plan after the deepest requested layer, keep taps from in-place ReLUs, freeze."""
        steps = [((n,) if isinstance(n, str) else tuple(n or ()), m) for n, m in plan]
        last = max(i for i, (names, _) in enumerate(steps) if set(names) & set(self.out_layers))
        steps = steps[: last + 1]
        for i in range(1, len(steps)):
            names, module = steps[i]
            if isinstance(module, nn.ReLU) and module.inplace and set(steps[i - 1][0]) & set(self.out_layers):
                steps[i] = (names, nn.ReLU())  # the ReLU would overwrite the tap just stored
        self._plan = steps
        if self.frozen:
            for p in self.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor, after: str | None = None, until: str | None = None) -> dict[str, Tensor]:
        """The `out_layers` maps of `x`, in forward (plan) order. `after`: `x` is that layer's output, run
        only the steps behind it; `until`: stop at that layer (PFENet runs its deepest stage on masked
        support features)."""
        steps = [names for names, _ in self._plan]

        def index(layer: str) -> int:
            found = [i for i, names in enumerate(steps) if layer in names]
            if not found:
                raise ValueError(f"{self.name} runs no layer {layer!r}; its layers: {self.out_layers}")
            return found[0]

        start = 0 if after is None else index(after) + 1
        stop = len(steps) if until is None else index(until) + 1
        out: dict[str, Tensor] = {}
        for names, module in self._plan[start:stop]:
            x = module(x)
            for name in names:
                if name in self.out_layers:
                    out[name] = x
        return out


# ---------------------------------------------------------------------------------------------- ResNet


class ResNetBackbone(Backbone):
    """torchvision ResNet, layer3/layer4 dilated (stride 8) unless `dilated=False` (torchvision's strides
    4, 8, 16, 32, as HSNet uses it); modules keep torchvision's names."""

    def __init__(
        self,
        arch: Callable[..., tvm.ResNet],
        weights: WeightsEnum,
        widths: tuple[int, int, int, int],
        out_layers: Sequence[str] | None,
        frozen: bool,
        freeze_bn: bool,
        dilated: bool = True,
    ) -> None:
        self.channels = {f"layer{i + 1}": c for i, c in enumerate(widths)}
        deep = (8, 8) if dilated else (16, 32)
        self.strides = {"layer1": 4, "layer2": 8, "layer3": deep[0], "layer4": deep[1]}
        self.imagenet_weights = weights
        basic = widths[0] == 64  # BasicBlock nets: torchvision refuses dilation for them
        dilation = [False, True, True] if dilated and not basic else None
        net = arch(weights=None, replace_stride_with_dilation=dilation)
        self.blocks = {f"layer{i}": len(getattr(net, f"layer{i}")) for i in range(1, 5)}
        super().__init__(out_layers, frozen, freeze_bn)
        if basic and dilated:
            _dilate_basic_layer(net.layer3, 2)
            _dilate_basic_layer(net.layer4, 4)
        deepest = max(int(self.stage_of(n)[-1]) for n in self.out_layers)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        for i in range(1, deepest + 1):
            setattr(self, f"layer{i}", getattr(net, f"layer{i}"))
        self.unused_prefixes = ("fc.", *(f"layer{i}." for i in range(deepest + 1, 5)))
        plan: list[tuple[str | tuple[str, ...] | None, nn.Module]] = [
            (None, self.conv1),
            (None, self.bn1),
            (None, self.relu),
            (None, self.maxpool),
        ]
        for i in range(1, deepest + 1):
            name, layer = f"layer{i}", getattr(self, f"layer{i}")
            if not self.wants_blocks(name):
                plan.append((name, layer))
                continue
            for j, block in enumerate(layer):  # the same computation as the block, its sum exposed
                plan.append((f"{name}.{j}", _ResidualSum(block)))
                plan.append((name if j == len(layer) - 1 else None, nn.ReLU()))
        self._finish(plan)


class _ResidualSum(nn.Module):
    """A torchvision ResNet block up to its residual sum, without the block's last ReLU."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        out = b.relu(b.bn1(b.conv1(x)))
        if isinstance(b, tvm.resnet.Bottleneck):
            out = b.bn3(b.conv3(b.relu(b.bn2(b.conv2(out)))))
        else:
            out = b.bn2(b.conv2(out))
        return out + (x if b.downsample is None else b.downsample(x))


def _dilate_basic_layer(layer: nn.Sequential, dilation: int) -> None:
    """Turn a stride-2 BasicBlock layer into a stride-1 dilated one (what torchvision does for Bottleneck).

    The first block keeps the previous dilation on its first conv (stride removed), every other 3x3
    conv gets `dilation`; kernel shapes are unchanged, so ImageNet weights still load.
    """
    for i, block in enumerate(layer):
        for conv_name in ("conv1", "conv2"):
            conv: nn.Conv2d = getattr(block, conv_name)
            conv.stride = (1, 1)
            d = dilation // 2 if (i == 0 and conv_name == "conv1") else dilation
            conv.dilation, conv.padding = (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


@register_backbone
def resnet50(**kw: Any) -> Backbone:
    """ResNet-50, dilated layer3/4 (the DENet release's backbone)."""
    return ResNetBackbone(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, (256, 512, 1024, 2048), **kw)


@register_backbone
def resnet101(**kw: Any) -> Backbone:
    """ResNet-101, dilated layer3/4."""
    return ResNetBackbone(tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1, (256, 512, 1024, 2048), **kw)


@register_backbone
def resnet50_hsnet(**kw: Any) -> Backbone:
    """ResNet-50 undilated (layer3 /16, layer4 /32): torchvision's network, as HSNet's release uses it."""
    return ResNetBackbone(
        tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, (256, 512, 1024, 2048), dilated=False, **kw
    )


@register_backbone
def resnet101_hsnet(**kw: Any) -> Backbone:
    """ResNet-101 undilated (layer3 /16, layer4 /32): torchvision's network, as HSNet's release uses it."""
    return ResNetBackbone(
        tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1, (256, 512, 1024, 2048), dilated=False, **kw
    )


@register_backbone
def resnet18(**kw: Any) -> Backbone:
    """ResNet-18, dilated layer3/4 by hand (layer3: 256 channels at stride 8)."""
    return ResNetBackbone(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, (64, 128, 256, 512), **kw)


class DeepStemResNetBackbone(Backbone):
    """PSPNet's ResNet as PFENet's release builds it: deep stem (3x3 convs 3->64/2, 64->64, 64->128), every
    3x3 conv of layer3 dilated 2 and of layer4 dilated 4 (stride 8). Module names are PSPNet's file's."""

    channels = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}  # noqa: RUF012
    strides = {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}  # noqa: RUF012

    def __init__(
        self, arch: Callable[..., tvm.ResNet], out_layers: Sequence[str] | None, frozen: bool, freeze_bn: bool
    ) -> None:
        super().__init__(out_layers, frozen, freeze_bn)
        net = arch(weights=None)

        def conv_bn(cin: int, cout: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)

        self.conv1, self.bn1 = conv_bn(3, 64, 2)
        self.conv2, self.bn2 = conv_bn(64, 64, 1)
        self.conv3, self.bn3 = conv_bn(64, 128, 1)
        self.relu, self.maxpool = net.relu, net.maxpool
        first = net.layer1[0]  # the stem now ends with 128 channels, not 64
        first.conv1 = nn.Conv2d(128, 64, 1, bias=False)
        first.downsample[0] = nn.Conv2d(128, 256, 1, bias=False)
        for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
            for name, m in layer.named_modules():
                if name.endswith("conv2"):
                    m.dilation, m.padding, m.stride = (dilation, dilation), (dilation, dilation), (1, 1)
                elif name.endswith("downsample.0"):
                    m.stride = (1, 1)
        deepest = max(int(n[-1]) for n in self.out_layers)
        for i in range(1, deepest + 1):
            setattr(self, f"layer{i}", getattr(net, f"layer{i}"))
        self.unused_prefixes = ("fc.", *(f"layer{i}." for i in range(deepest + 1, 5)))
        plan: list[tuple[str | None, nn.Module]] = []
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            plan += [(None, conv), (None, bn), (None, self.relu)]
        plan.append((None, self.maxpool))
        plan += [(f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, deepest + 1)]
        self._finish(plan)


@register_backbone
def resnet50_deep(**kw: Any) -> Backbone:
    """PSPNet's deep-stem ResNet-50 (PFENet's release); weights: PSPNet's resnet50_v2.pth."""
    return DeepStemResNetBackbone(tvm.resnet50, **kw)


@register_backbone
def resnet101_deep(**kw: Any) -> Backbone:
    """PSPNet's deep-stem ResNet-101 (PFENet's release); weights: PSPNet's resnet101_v2.pth."""
    return DeepStemResNetBackbone(tvm.resnet101, **kw)


# -------------------------------------------------------------------------------------------- DenseNet


class DenseNetBackbone(Backbone):
    """torchvision DenseNet-121 `features` up to denseblock3, transition2's pool removed (as released)."""

    channels = {"layer1": 256, "layer2": 512, "layer3": 1024}  # noqa: RUF012
    strides = {"layer1": 4, "layer2": 8, "layer3": 8}  # noqa: RUF012
    imagenet_weights = tvm.DenseNet121_Weights.IMAGENET1K_V1

    def __init__(self, out_layers: Sequence[str] | None, frozen: bool, freeze_bn: bool) -> None:
        super().__init__(out_layers, frozen, freeze_bn)
        features = tvm.densenet121(weights=None).features
        # no parameters in the pool: removing it keeps the pretrained keys intact
        del features.transition2.pool
        names = {"denseblock1": "layer1", "denseblock2": "layer2", "denseblock3": "layer3"}
        deepest = max(self.out_layers, key=lambda n: int(n[-1]))
        keep: list[str] = []
        for child, _ in features.named_children():
            keep.append(child)
            if names.get(child) == deepest:
                break
        dropped = [c for c, _ in features.named_children() if c not in keep]
        for child in dropped:
            delattr(features, child)
        self.features = features
        self.unused_prefixes = ("classifier.", *(f"features.{c}." for c in dropped))
        self._finish([(names.get(c), getattr(features, c)) for c in keep])


@register_backbone
def densenet121(**kw: Any) -> Backbone:
    """DenseNet-121 as in the DENet release (layer3 = denseblock3, 1024 channels, stride 8)."""
    return DenseNetBackbone(**kw)


# ------------------------------------------------------------------------------------------------ VGG


@dataclass(frozen=True)
class VGGLayout:
    """How a release reshapes torchvision's VGG16 `features` (indices as in `tvm.vgg16().features`).

    taps: output name -> index of the module whose output it is; strides: output name -> stride;
    pools: index -> MaxPool2d (kernel, stride, padding, ceil_mode) replacing torchvision's 2x2/2 pool;
    dilations: conv index -> dilation (padding = dilation); no_relu: ReLU indices replaced by Identity;
    blocks: tap name -> indices of its block taps (`<tap>.<j>`).
    """

    taps: dict[str, int]
    strides: dict[str, int]
    pools: dict[int, tuple[int, int, int, bool]]
    dilations: dict[int, int] = field(default_factory=dict)
    no_relu: tuple[int, ...] = ()
    batch_norm: bool = False  # torchvision's vgg16_bn (indices are then those of its `features`)
    blocks: dict[str, tuple[int, ...]] = field(default_factory=dict)


_CEIL_2X2 = (2, 2, 0, True)  # ceil mode: 321 -> 161 -> 81 -> 41 keeps the odd-size alignment of the masks
_DEEPLAB_3X3 = (3, 2, 1, False)  # DeepLab-v1's VGG pools: 3x3, stride 2, padding 1 (321 -> 161, 65 -> 33)
_DEEPLAB_3X3_S1 = (3, 1, 1, False)
# AMP's release (DENet `model/head/amp.py`): ceil-mode pools, dilated conv4 (1, 1, 2) and conv5 (2, 4, 4)
AMP_LAYOUT = VGGLayout(
    taps={"pool3": 16, "pool4": 23, "pool5": 30},
    strides={"pool3": 8, "pool4": 16, "pool5": 32},
    pools=dict.fromkeys((4, 9, 16, 23, 30), _CEIL_2X2),
    dilations={17: 1, 19: 1, 21: 2, 24: 2, 26: 4, 28: 4},
)
# PANet's encoder (kaixin96/PANet `models/vgg.py`): 3x3 pools, pool4 at stride 1, conv5 dilated 2, no
# ReLU after conv5_3 and no pool5: one 512-channel map at stride 8
PANET_LAYOUT = VGGLayout(
    taps={"conv5": 29},
    strides={"conv5": 8},
    pools={4: _DEEPLAB_3X3, 9: _DEEPLAB_3X3, 16: _DEEPLAB_3X3, 23: _DEEPLAB_3X3_S1},
    dilations={24: 2, 26: 2, 28: 2},
    no_relu=(29,),
)
# SG-One's VGG (xiaomengyc/SG-One `models/vgg/vgg_sg.py`, cfg "D_deeplab"): 3x3 pools, pool4 and pool5 at
# stride 1, no dilation: pool3, pool4 and pool5 all at stride 8
SGONE_LAYOUT = VGGLayout(
    taps={"pool3": 16, "pool4": 23, "pool5": 30},
    strides={"pool3": 8, "pool4": 8, "pool5": 8},
    pools={4: _DEEPLAB_3X3, 9: _DEEPLAB_3X3, 16: _DEEPLAB_3X3, 23: _DEEPLAB_3X3_S1, 30: _DEEPLAB_3X3_S1},
)
# PFENet's VGG-16 with BN (dvlab-research/PFENet `model/PFENet.py` get_vgg16_layer, `model/vgg.py`): all
# pools 2x2 ceil mode; layer2 ends at pool3, layer3 at pool4, layer4 at conv5_3's ReLU (no pool5)
PFENET_VGG_LAYOUT = VGGLayout(
    taps={"layer2": 23, "layer3": 33, "layer4": 42},
    strides={"layer2": 8, "layer3": 16, "layer4": 16},
    pools=dict.fromkeys((6, 13, 23, 33, 43), _CEIL_2X2),
    batch_norm=True,
)
# HSNet's VGG16 (juhongm999/hsnet `model/hsnet.py`): torchvision's `features` unchanged (2x2/2 pools, no
# dilation); its hypercorrelation reads conv4_1..3, conv5_1..3 before their ReLU and pool5 (feat_ids 17..30)
HSNET_LAYOUT = VGGLayout(
    taps={"conv4": 22, "conv5": 29, "pool5": 30},
    strides={"conv4": 8, "conv5": 16, "pool5": 32},
    pools={},
    blocks={"conv4": (17, 19, 21), "conv5": (24, 26, 28), "pool5": (30,)},
)
_VGG_CHANNELS = {"pool3": 256, "pool4": 512, "pool5": 512, "conv4": 512, "conv5": 512}
_VGG_CHANNELS.update(layer2=256, layer3=512, layer4=512)  # PFENet's names


class VGGBackbone(Backbone):
    """torchvision VGG16 `features` reshaped by a release's `VGGLayout`; modules keep torchvision's names."""

    imagenet_weights = tvm.VGG16_Weights.IMAGENET1K_V1

    def __init__(
        self, layout: VGGLayout, out_layers: Sequence[str] | None, frozen: bool, freeze_bn: bool
    ) -> None:
        self.channels = {name: _VGG_CHANNELS[name] for name in layout.taps}
        self.strides = dict(layout.strides)
        self.default_out = tuple(layout.taps)
        if layout.batch_norm:
            self.imagenet_weights = tvm.VGG16_BN_Weights.IMAGENET1K_V1
        self.blocks = {name: len(ids) for name, ids in layout.blocks.items()}
        super().__init__(out_layers, frozen, freeze_bn)
        features = (tvm.vgg16_bn if layout.batch_norm else tvm.vgg16)(weights=None).features
        size = len(features)
        for i, (kernel, stride, padding, ceil) in layout.pools.items():
            features[i] = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
        for i, d in layout.dilations.items():
            conv = features[i]
            assert isinstance(conv, nn.Conv2d)
            conv.dilation, conv.padding = (d, d), (d, d)
        for i in layout.no_relu:
            features[i] = nn.Identity()
        index = dict(layout.taps)
        for stage, ids in layout.blocks.items():
            index.update({f"{stage}.{j}": i for j, i in enumerate(ids)})
        last = max(index[n] for n in self.out_layers)
        for i in range(len(features) - 1, last, -1):
            del features[i]  # parameter-free tail (later pools and ReLUs): torchvision's keys stay valid
        self.features = features
        self.unused_prefixes = ("classifier.", *(f"features.{i}." for i in range(last + 1, size)))
        names_at: dict[int, tuple[str, ...]] = {}
        for name, i in index.items():
            names_at[i] = (*names_at.get(i, ()), name)
        self._finish([(names_at.get(i), m) for i, m in enumerate(features)])


@register_backbone
def vgg16(amp_dilation: bool = True, **kw: Any) -> Backbone:
    """VGG16 as AMP's release uses it (pool3 256 /8, pool4 512 /16, pool5 512 /32); `amp_dilation=False`
    keeps torchvision's undilated convs."""
    layout = AMP_LAYOUT if amp_dilation else dataclasses.replace(AMP_LAYOUT, dilations={})
    return VGGBackbone(layout, **kw)


@register_backbone
def vgg16_panet(**kw: Any) -> Backbone:
    """VGG16 as PANet's release uses it (conv5 512 /8: pool4 stride 1, dilated conv5, no final ReLU)."""
    return VGGBackbone(PANET_LAYOUT, **kw)


@register_backbone
def vgg16_sgone(**kw: Any) -> Backbone:
    """VGG16 as SG-One's release uses it (pool3 256, pool4 512, pool5 512, all at stride 8)."""
    return VGGBackbone(SGONE_LAYOUT, **kw)


@register_backbone
def vgg16_bn_pfenet(**kw: Any) -> Backbone:
    """VGG-16 with BN as PFENet's release uses it (layer2 256 /8, layer3 512 /16, layer4 512 /16)."""
    return VGGBackbone(PFENET_VGG_LAYOUT, **kw)


@register_backbone
def vgg16_hsnet(**kw: Any) -> Backbone:
    """torchvision's VGG16 as HSNet's release uses it (conv4 512 /8, conv5 512 /16, pool5 512 /32; block
    taps conv4_1..3, conv5_1..3 before their ReLU, pool5)."""
    return VGGBackbone(HSNET_LAYOUT, **kw)


# ---------------------------------------------------------------------------------------------- small


def _conv_gn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # GroupNorm: no running statistics, so from-scratch training works at any batch size and
    # freeze_bn (which the toy preset may leave on) cannot freeze untrained statistics
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(min(8, cout // 8), cout),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """x + f(x): keeps the dilated stride-8 stage easy to optimise from scratch."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SmallBackbone(Backbone):
    """Tiny stride-8 conv encoder for the CPU toy benchmark, trained from scratch (no ImageNet weights).

    layer4 (stride 16) exists only when `out_layers` asks for it: HSNet's hypercorrelation pyramid needs
    a coarser third stage; every other head stops at layer3 and holds the same weights as before.
    """

    strides = {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 16}  # noqa: RUF012

    def __init__(
        self,
        out_layers: Sequence[str] | None,
        frozen: bool,
        freeze_bn: bool,
        widths: tuple[int, int, int, int] = (32, 64, 128, 128),
    ) -> None:
        w0, w1, w2, w3 = widths
        self.channels = {"layer1": w1, "layer2": w2, "layer3": w3, "layer4": w3}
        self.blocks = {"layer1": 2, "layer2": 2, "layer3": 1 if w2 == w3 else 2, "layer4": 2}
        super().__init__(out_layers, frozen, freeze_bn)
        self.stem = _conv_gn(3, w0, stride=2)
        self.layer1 = nn.Sequential(_conv_gn(w0, w1, stride=2), _conv_gn(w1, w1))
        self.layer2 = nn.Sequential(_conv_gn(w1, w2, stride=2), _conv_gn(w2, w2))
        # dilated stage at stride 8: a larger receptive field for texture context without downsampling
        proj = [] if w2 == w3 else [_conv_gn(w2, w3)]
        self.layer3 = nn.Sequential(
            *proj, _Residual(nn.Sequential(_conv_gn(w3, w3, dilation=2), _conv_gn(w3, w3, dilation=2)))
        )
        stages = ["layer1", "layer2", "layer3"]
        if any(self.stage_of(n) == "layer4" for n in self.out_layers):
            # built only when asked for (HSNet's deepest stage), so the other heads' weights are unchanged
            self.layer4 = nn.Sequential(_conv_gn(w3, w3, stride=2), _conv_gn(w3, w3))
            stages.append("layer4")
        plan: list[tuple[str | tuple[str, ...] | None, nn.Module]] = [(None, self.stem)]
        for name in stages:
            layer: nn.Sequential = getattr(self, name)
            if not self.wants_blocks(name):
                plan.append((name, layer))
                continue
            last = len(layer) - 1
            plan += [((f"{name}.{j}", name) if j == last else f"{name}.{j}", m) for j, m in enumerate(layer)]
        self._finish(plan)


@register_backbone
def small(**kw: Any) -> Backbone:
    """Tiny stride-8 encoder (layer3: 128 channels), the CPU toy default."""
    return SmallBackbone(**kw)


# -------------------------------------------------------------------------------------------- weights


def imagenet_cache_path(backbone: Backbone) -> str:
    """Where torchvision's ImageNet file for this backbone must be: <torch hub dir>/checkpoints/<file>."""
    if backbone.imagenet_weights is None:
        raise ModelArgumentError(
            f"backbone {backbone.name} has no ImageNet weights; use 'none' or a file path"
        )
    filename = os.path.basename(backbone.imagenet_weights.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


class WeightsError(UserError, RuntimeError):
    """A weights file that cannot be loaded into the backbone; the message names the file and why."""


def load_weights(backbone: Backbone, spec: str | os.PathLike[str]) -> Backbone:
    """Load backbone weights strictly; returns `backbone`. Called by train/, never by a constructor.

    spec: "none" (keep the random init), "imagenet" (torchvision's file from the local torch hub cache
    only, never downloaded: FileNotFoundError naming the expected path and its URL if absent), or the
    path of a state_dict file (the backbone's own `state_dict()` or the full torchvision model's).
    Keys of parts the backbone deliberately omits (`unused_prefixes`) are dropped; any other missing or
    unexpected key, or a file that is not a state_dict, is a WeightsError (one line).
    """
    spec = os.fspath(spec)
    if spec == "none":
        return backbone
    if spec == "imagenet":
        path = imagenet_cache_path(backbone)
        if not os.path.isfile(path):
            assert backbone.imagenet_weights is not None
            raise FileNotFoundError(
                f"ImageNet weights for backbone {backbone.name} not found at {path}; downloads are "
                f"disabled: put {backbone.imagenet_weights.url} there (or set backbone.weights to a "
                "state_dict file or 'none')"
            )
    else:
        path = spec
        if not os.path.isfile(path):
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or pickled objects weights_only refuses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(
            f"backbone weights file {path} is not a readable state_dict file ({type(exc).__name__}: {first})"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"backbone weights file {path} is not a state_dict (a dict of parameter names to tensors); "
            "save `model.state_dict()`, not a checkpoint or a whole model"
        )
    state = {k: v for k, v in state.items() if not k.startswith(backbone.unused_prefixes)}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        why = " ".join(line.strip() for line in str(exc).splitlines())
        raise WeightsError(f"backbone weights file {path} does not fit {backbone.name}: {why}") from exc
    return backbone
