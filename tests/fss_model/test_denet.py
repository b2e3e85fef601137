"""DENet's rules: weight extension, binary background, K-shot mean, freezing, and backbone weight loading."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm

from fss_model import build_model
from fss_model.backbones import build_backbone, imagenet_cache_path, list_backbones, load_weights
from fss_model.denet import DENet
from fss_model.layers import IGNORE_INDEX, binary_way_logits, encode_episode, episode_cross_entropy

SIZE = 65


def small_denet(**kw) -> DENet:
    torch.manual_seed(0)
    kw = {"backbone": "small", "num_classes": 7, "depth": 32, "frozen": False, **kw}
    model = build_model("denet", **kw)
    assert isinstance(model, DENet)
    return model


def episode(way: int, shot: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, SIZE, SIZE, generator=g)
    s = torch.randn(2, way, shot, 3, SIZE, SIZE, generator=g)
    m = torch.zeros(2, way, shot, SIZE, SIZE, dtype=torch.long)
    m[..., 8:40, 16:56] = 1
    m[..., :4, :] = IGNORE_INDEX
    ids = torch.tensor([[3, 5], [6, 1]])[:, :way]
    return q, s, m, ids


def expected_prototype(model: DENet, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One support's prototype, recomputed by hand: gate, sum(m*F)/(sum(m)+1e-3), projection."""
    feats = model.embed(img[None])[0]
    h, w = feats.shape[-2:]
    m = nn.functional.interpolate((mask == 1).float()[None, None], size=(h, w), mode="nearest")[0]
    gate = model.attention.gate((feats * m).mean(dim=(1, 2))[None, :, None, None])[0]
    gated = feats * gate
    pooled = (gated * m).sum(dim=(1, 2)) / (m.sum() + 1e-3)
    return model.project(pooled)


def test_episode_rows_are_replaced_by_prototypes_and_logits_are_dot_products():
    model = small_denet().eval()
    q, s, m, ids = episode(way=2, shot=1)
    with torch.no_grad():
        out = model(q, s, m, ids)
        weights = out["weights"]
        for b in range(2):
            for k in range(2):
                proto = expected_prototype(model, s[b, k, 0], m[b, k, 0])
                torch.testing.assert_close(weights[b, ids[b, k]], proto, rtol=1e-4, atol=1e-5)
            others = [c for c in range(7) if c not in ids[b].tolist()]
            # eval: the learned rows are intact (no dropout)
            torch.testing.assert_close(weights[b, others], model.class_weight[others])
        feats = model.embed(q)
        torch.testing.assert_close(out["logits_full"], torch.einsum("bchw,bkc->bkhw", feats, weights))
    assert out["logits_full"].shape == (2, 7, 9, 9)


def test_training_drops_out_only_the_non_episode_rows():
    model = small_denet(dropout=0.5).train()
    protos = torch.randn(2, 2, 32)
    ids = torch.tensor([[3, 5], [6, 1]])
    weights = model.episode_weights(protos, ids)
    w = model.class_weight.detach()
    for b in range(2):
        torch.testing.assert_close(weights[b, ids[b]], protos[b])
        others = [c for c in range(7) if c not in ids[b].tolist()]
        kept = weights[b, others].detach()
        # inverted dropout: every entry is either 0 or scaled by 1 / (1 - p)
        is_zero, is_kept = kept == 0, torch.isclose(kept, 2 * w[others])
        assert (is_zero | is_kept).all() and is_zero.any() and is_kept.any()
    # each episode draws its own mask
    assert not torch.equal(weights[0, 2], weights[1, 2])
    model.eval()
    weights = model.episode_weights(protos, ids)
    torch.testing.assert_close(weights[0, [0, 1, 2, 4, 6]], w[[0, 1, 2, 4, 6]])


def test_binary_background_is_the_max_over_every_other_row():
    # rows: 0 background, 1 base class, 2 and 3 episode classes; 2 pixels
    logits = torch.tensor([[[1.0, 0.0], [5.0, -1.0], [2.0, 7.0], [3.0, 4.0]]]).view(1, 4, 1, 2)
    out = binary_way_logits(logits, torch.tensor([[2, 3]]))
    assert out.shape == (1, 2, 2, 1, 2)
    # way 0 (row 2): fg = row 2; bg = max(rows 0, 1, 3) -> 5 from the base class, 4 from the other way
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([[5.0, 4.0], [2.0, 7.0]]))
    # way 1 (row 3): bg = max(rows 0, 1, 2) -> 5, 7 (the other episode class wins the second pixel)
    torch.testing.assert_close(out[0, 1, :, 0], torch.tensor([[5.0, 7.0], [3.0, 4.0]]))


def test_k_shot_row_is_the_mean_of_the_shot_prototypes():
    model = small_denet().eval()
    q, s, m, ids = episode(way=1, shot=3)
    m[0, 0, 1] = 0
    m[0, 0, 1, 30:60, 30:60] = 1  # shots with different masks
    with torch.no_grad():
        five = model(q, s, m, ids)["weights"]
        singles = [model(q, s[:, :, k : k + 1], m[:, :, k : k + 1], ids)["weights"] for k in range(3)]
    for b in range(2):
        c = ids[b, 0]
        mean = torch.stack([w[b, c] for w in singles]).mean(0)
        torch.testing.assert_close(five[b, c], mean, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(singles[0][b, c], singles[1][b, c])


def test_frozen_backbone_gets_no_gradient_and_freeze_bn_keeps_statistics():
    torch.manual_seed(0)
    model = build_model("denet", backbone="resnet18", num_classes=7, depth=32, frozen=True, freeze_bn=True)
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    assert model.neck.out[1].training  # the neck's BN still trains
    before = [bn.running_mean.clone() for bn in bns]
    q, s, m, ids = episode(way=1, shot=1)
    out = model(q, s, m, ids)
    label = torch.randint(0, 7, (2, SIZE, SIZE))
    model.loss(out, {"query_full_label": label, "query_label": (label > 0).long()})["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.neck.parameters())
    assert model.class_weight.grad is not None and model.project.weight.grad is not None
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(before, bns, strict=True))

    # the release's setting: frozen weights, BN statistics still updated
    released = build_model(
        "denet", backbone="resnet18", num_classes=7, depth=32, frozen=True, freeze_bn=False
    )
    released.train()
    bn = next(m for m in released.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    released(q, s, m, ids)
    assert not torch.equal(stats, bn.running_mean)


def test_separate_passes_give_each_group_its_own_batch_statistics():
    """encode_episode: supports, then the query, each its own BN batch (the release); joint = one batch."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    q, s, _, _ = episode(way=2, shot=2)
    query, supports = encode_episode(bn, q, s, separate=True, supports_first=True)
    torch.testing.assert_close(query, nn.functional.batch_norm(q, None, None, training=True))
    flat = nn.functional.batch_norm(s.flatten(0, 2), None, None, training=True)
    torch.testing.assert_close(supports, flat.unflatten(0, (2, 2, 2)))
    joint_q, joint_s = encode_episode(bn, q, s, separate=False)
    assert joint_s.shape == supports.shape and not torch.allclose(joint_q, query)
    bn.eval()  # running statistics: the two agree
    a, b = (
        encode_episode(bn, q, s, separate=True, supports_first=True),
        encode_episode(bn, q, s, separate=False),
    )
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_cross_entropy_is_averaged_per_episode_then_over_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4, 4)
    target = torch.randint(0, 5, (3, 4, 4))
    target[0, :3] = IGNORE_INDEX  # episode 0 has 4 valid pixels, episode 1 has 16
    target[2] = IGNORE_INDEX  # no valid pixel: adds 0 (the release would give NaN)
    per = [
        nn.functional.cross_entropy(logits[i : i + 1], target[i : i + 1], ignore_index=255) for i in (0, 1)
    ]
    expected = (per[0] + per[1] + 0.0) / 3
    torch.testing.assert_close(episode_cross_entropy(logits, target), expected)
    pixel = nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert not torch.allclose(episode_cross_entropy(logits, target), pixel)
    model = small_denet(ce_average="pixel").eval()
    out = {"logits_full": logits, "way_logits": torch.zeros(3, 1, 2, 4, 4)}
    batch = {"query_full_label": target, "query_label": torch.zeros(3, 4, 4, dtype=torch.long)}
    torch.testing.assert_close(model.loss(out, batch)["ce"], pixel)
    torch.testing.assert_close(small_denet().loss(out, batch)["ce"], expected)  # the default, as released
    with pytest.raises(ValueError, match="ce_average"):
        small_denet(ce_average="median")


# backbone name -> {layer: channels}; sizes at 65 px (stride 8 = 9 x 9, densenet's floored pool: 8 x 8)
DOCUMENTED = {
    "resnet50": ({"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}, 9),
    "resnet101": ({"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}, 9),
    "resnet18": ({"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}, 9),
    "densenet121": ({"layer1": 256, "layer2": 512, "layer3": 1024}, 8),
    "small": ({"layer1": 64, "layer2": 128, "layer3": 128, "layer4": 128}, 9),
    "vgg16": ({"pool3": 256, "pool4": 512, "pool5": 512}, 9),
    "vgg16_panet": ({"conv5": 512}, 9),
    "vgg16_sgone": ({"pool3": 256, "pool4": 512, "pool5": 512}, 9),
    "resnet50_deep": ({"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}, 9),
    "resnet101_deep": ({"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}, 9),
    "vgg16_bn_pfenet": ({"layer2": 256, "layer3": 512, "layer4": 512}, 9),
    "vgg16_hsnet": ({"conv4": 512, "conv5": 512, "pool5": 512}, 8),  # torchvision's floored 2x2 pools
    "resnet50_hsnet": ({"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}, 9),
    "resnet101_hsnet": ({"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}, 9),
}
# sizes at strides 16 and 32 where they differ from 5 and 3
DEEP_SIZES = {"vgg16_hsnet": {16: 4, 32: 2}}
STRIDE4 = dict.fromkeys(
    ("resnet50", "resnet101", "resnet18", "densenet121", "small", "resnet50_hsnet", "resnet101_hsnet"), 17
)
STRIDE4.update(resnet50_deep=17, resnet101_deep=17)


def test_every_backbone_is_documented():
    assert sorted(DOCUMENTED) == list_backbones()


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_backbone_channels_and_stride_8_size(name: str):
    channels, size = DOCUMENTED[name]
    bb = build_backbone(name, out_layers=tuple(channels)).eval()
    assert bb.channels == channels
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, SIZE, SIZE))
    assert list(feats) == list(channels)
    for layer, c in channels.items():
        assert feats[layer].shape[1] == c
        expect = {4: STRIDE4.get(name), 8: size, 16: 5, 32: 3, **DEEP_SIZES.get(name, {})}[bb.strides[layer]]
        assert tuple(feats[layer].shape[-2:]) == (expect, expect), layer
    # out_channels: the last default out layer (layer3; vgg16's default taps end at pool5)
    assert build_backbone(name).out_channels == list(channels.values())[-1 if name.startswith("vgg") else 2]


@pytest.mark.parametrize("name", ["resnet18", "resnet50_hsnet", "vgg16_hsnet", "small"])
def test_block_taps_hold_each_block_and_agree_with_the_stage_output(name: str):
    stages = list(build_backbone(name).channels)[-3:]
    bb = build_backbone(name, out_layers=(stages[-1],)).eval()
    taps = build_backbone(name, out_layers=(*[f"{s}.*" for s in stages], stages[-1])).eval()
    taps.load_state_dict(bb.state_dict())
    first = bb.blocks[stages[0]]
    assert taps.out_layers[:first] == tuple(f"{stages[0]}.{j}" for j in range(first))
    with torch.no_grad():
        x = torch.randn(1, 3, SIZE, SIZE)
        feats = taps(x)
        deepest = bb(x)[stages[-1]]
    assert sum(bb.blocks[s] for s in stages) + 1 == len(feats)
    for tap, value in feats.items():
        assert value.shape[1] == bb.channels[bb.stage_of(tap)], tap
    # the stage's output is computed along the block taps unchanged (block taps never altered in place)
    assert torch.allclose(feats[stages[-1]], deepest, atol=1e-5)
    last_block = f"{stages[-1]}.{bb.blocks[stages[-1]] - 1}"
    if name != "vgg16_hsnet":  # a ResNet block's tap is its sum before the ReLU; small's its child's output
        relu = torch.relu if name.startswith("resnet") else (lambda t: t)
        assert torch.allclose(relu(feats[last_block]), deepest, atol=1e-5)
    if name.startswith("resnet"):
        assert (feats[last_block] < 0).any()  # before the ReLU
    with pytest.raises(ValueError, match="no layer"):
        build_backbone(name, out_layers=(f"{stages[0]}.{bb.blocks[stages[0]]}",))


def test_resnet50_gives_41x41_at_321_px_with_layer3_only():
    bb = build_backbone("resnet50", frozen=True).eval()
    assert not hasattr(bb, "layer4")  # unused stages are not held
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 321, 321))
    assert list(out) == ["layer3"] and out["layer3"].shape == (1, 1024, 41, 41)


def test_unknown_backbone_or_layer_is_rejected():
    with pytest.raises(ValueError, match=r"known: .*resnet50"):
        build_backbone("resnet51")
    with pytest.raises(ValueError, match="no layer"):
        build_backbone("small", out_layers=("layer5",))


def test_load_weights_file_round_trip_is_strict(tmp_path):
    src = build_backbone("resnet18", out_layers=("layer2", "layer3"))
    path = tmp_path / "bb.pt"
    torch.save(src.state_dict(), path)
    dst = build_backbone("resnet18", out_layers=("layer2", "layer3"))
    assert load_weights(dst, str(path)) is dst
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    # a key the backbone does not hold, or a missing one, is an error (never strict=False)
    torch.save({**src.state_dict(), "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match=r"extra\.weight"):
        load_weights(dst, path)
    state = src.state_dict()
    state.pop("layer3.0.conv1.weight")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"layer3\.0\.conv1\.weight"):
        load_weights(dst, path)
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_weights(dst, tmp_path / "nothere.pt")
    before = dst.state_dict()["conv1.weight"].clone()
    load_weights(dst, "none")
    assert torch.equal(before, dst.state_dict()["conv1.weight"])


def test_a_legacy_serialised_torchvision_file_loads(tmp_path):
    """The DENet release's `resnet50-19c8e357.pth` is a full torchvision state_dict in torch's pre-1.6
    (non-zip) format: `backbone.weights: <that file>` reads such a file (here a resnet18 saved so)."""
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-legacy.pth"
    torch.save(full.state_dict(), path, _use_new_zipfile_serialization=False)
    dst = build_backbone("resnet18")
    load_weights(dst, path)
    assert torch.equal(dst.state_dict()["layer3.0.conv1.weight"], full.state_dict()["layer3.0.conv1.weight"])


def test_imagenet_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    bb = build_backbone("resnet18")
    expected = os.path.join(str(tmp_path), "checkpoints", "resnet18-f37072fd.pth")
    assert imagenet_cache_path(bb) == expected
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth") as err:
        load_weights(bb, "imagenet")
    assert expected in str(err.value) and "download.pytorch.org" in str(err.value)
    # a full torchvision state_dict in the cache loads strictly (fc and layer4 are dropped on purpose)
    torch.manual_seed(1)
    reference = tvm.resnet18()
    os.makedirs(os.path.dirname(expected))
    torch.save(reference.state_dict(), expected)
    load_weights(bb, "imagenet")
    assert torch.equal(bb.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        load_weights(build_backbone("small"), "imagenet")
