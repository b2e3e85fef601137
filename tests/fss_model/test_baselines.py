"""Method-specific rules of the re-implemented baselines: CANet, PGNet, AMP, PANet, SG-One."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fss_model import build_model, list_models, model_entry
from fss_model.amp import ALPHA, AMP
from fss_model.canet import CANet
from fss_model.layers import IGNORE_INDEX, masked_average_pool, upsampled_masked_pool
from fss_model.pairwise import combine_ways, encode_episode
from fss_model.panet import PANet
from fss_model.pgnet import GraphAttentionUnit, PGNet
from fss_model.sgone import SGOne

SIZE = 65  # -> 9 x 9 stride-8 features
BASELINES = ("amp", "canet", "panet", "pgnet", "sgone")
# the release's backbone of each method (what a run on real data builds)
RELEASE = {
    "canet": {"backbone": "resnet50"},
    "pgnet": {"backbone": "resnet50"},
    "amp": {"backbone": "vgg16"},
    "panet": {"backbone": "vgg16_panet"},
    "sgone": {"backbone": "vgg16_sgone"},
}


def tiny(name: str, **kw):
    torch.manual_seed(0)
    return build_model(name, **{**model_entry(name).tiny_kwargs, **kw})


def episode(way: int, shot: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(2, way, shot, SIZE, SIZE, dtype=torch.long)
    masks[..., 16:48, 16:48] = 1
    masks[..., :2, :] = IGNORE_INDEX
    label = torch.randint(0, way + 1, (2, SIZE, SIZE), generator=g)
    return {
        "query_img": torch.randn(2, 3, SIZE, SIZE, generator=g),
        "support_imgs": torch.randn(2, way, shot, 3, SIZE, SIZE, generator=g),
        "support_masks": masks,
        "class_ids": torch.stack([torch.randperm(5, generator=g)[:way] + 1 for _ in range(2)]),
        "query_label": label,
        "query_full_label": label,
    }


def run(model, batch):
    return model(batch["query_img"], batch["support_imgs"], batch["support_masks"], batch["class_ids"])


# ------------------------------------------------------------------------------------------ registry


def test_every_baseline_is_registered_for_both_ways():
    # test_models.py runs every registered model through shapes / loss / one step for these ways
    for name in BASELINES:
        assert name in list_models()
        assert model_entry(name).ways == (1, 2)
    with pytest.raises(
        ValueError, match=r"unknown model 'fwb'; known: amp, canet, denet, (.*, )?panet, (.*, )?pgnet, sgone"
    ):
        build_model("fwb")


@pytest.mark.parametrize("name", BASELINES)
def test_release_backbones_and_the_trainers_uniform_kwargs_build(name: str):
    # meta device: the full-size build is checked without allocating or initialising weights
    with torch.device("meta"):
        model = build_model(name, num_classes=81, frozen=True, freeze_bn=True, **RELEASE[name])
    backbone = model.encoder.backbone if hasattr(model, "encoder") else model.backbone
    assert not any(p.requires_grad for p in backbone.parameters())
    # PANet has no head: frozen, it is the authors' "no training" variant; it is trained end to end
    assert any(p.requires_grad for p in model.parameters()) == (name != "panet")


def test_release_layer_choices():
    with torch.device("meta"):
        canet = build_model("canet", **RELEASE["canet"])
        amp = build_model("amp", **RELEASE["amp"])
        sgone = build_model("sgone", **RELEASE["sgone"])
    assert canet.encoder.embed[0].in_channels == 512 + 1024  # ResNet-50 layer2 + layer3
    assert canet.encoder.backbone.frozen
    assert [c.in_channels for c in amp.classifiers] == [256, 512, 256]  # pool3, pool4, fc(pool5)
    assert all(c.out_channels == 21 and c.bias is None for c in amp.classifiers)
    assert amp.backbone.frozen and not sgone.backbone.frozen
    assert sgone.guide.in_channels == 512 and len(sgone.sides[0]) == 2 and len(sgone.sides[-1]) == 1
    assert [sgone.sides[i][0].in_channels for i in range(3)] == [256, 128 + 512, 128 + 512]  # side3/4/5_1
    assert sgone.classifier[2].padding == (1, 1)  # the exit 1x1 conv as released
    assert set(sgone.backbone.strides.values()) == {8}  # pool3/4/5 all at stride 8
    with torch.device("meta"):
        panet = build_model("panet", **RELEASE["panet"])
    assert panet.backbone.out_layers == ("conv5",) and panet.backbone.strides["conv5"] == 8


@pytest.mark.parametrize("name", ["amp", "panet", "sgone"])
def test_multi_tap_methods_also_run_on_a_single_tap(name: str):
    # the trainer passes only a backbone name: its default taps (one map for small / the ResNets) must do
    model = tiny(name, layers=None).train()
    batch = episode(2, 5)
    out = run(model, batch)
    # PANet and SG-One output at the image size (their releases upsample inside), AMP at stride 8
    size = 9 if name == "amp" else SIZE
    assert out["way_logits"].shape == (2, 2, 2, size, size)
    assert torch.isfinite(model.loss(out, batch)["loss"])


# ------------------------------------------------------------------------------ class-agnostic parts


def test_combine_ways_is_the_releases_n_way_rule():
    pair = torch.randn(3, 1, 2, 4, 4)
    torch.testing.assert_close(combine_ways(pair), pair)
    pair = torch.randn(3, 2, 2, 4, 4)
    out = combine_ways(pair)
    background = pair[:, :, 0].amax(dim=1)
    torch.testing.assert_close(out[:, 0, 1], pair[:, 0, 1])
    torch.testing.assert_close(out[:, 0, 0], torch.maximum(background, pair[:, 1, 1]))
    torch.testing.assert_close(out[:, 1, 0], torch.maximum(background, pair[:, 0, 1]))


def test_canet_runs_three_refinements_through_one_shared_tail():
    model = tiny("canet").eval()
    assert isinstance(model, CANet) and model.refinements == 3
    calls = []
    model.tail.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        run(model, episode(1, 1))
    assert len(calls) == 3
    with pytest.raises(ValueError, match="refinements"):
        build_model("canet", backbone="small", refinements=0)


def test_canet_k_shot_is_the_mean_of_the_per_shot_logits():
    model = tiny("canet").eval()
    batch = episode(1, 5)
    with torch.no_grad():
        five = run(model, batch)["pair_logits"]
        singles = [
            run(model, {**batch, "support_imgs": batch["support_imgs"][:, :, [k]],
                        "support_masks": batch["support_masks"][:, :, [k]]})["pair_logits"]
            for k in range(5)
        ]  # fmt: skip
    torch.testing.assert_close(five, torch.stack(singles).mean(dim=0), atol=1e-5, rtol=1e-4)


def test_class_agnostic_models_ignore_class_ids_and_shot_order():
    batch = episode(2, 5)
    shuffled = {
        **batch,
        "support_imgs": batch["support_imgs"].flip(2),
        "support_masks": batch["support_masks"].flip(2),
        "class_ids": batch["class_ids"] + 7,
    }
    for name in ("canet", "pgnet", "sgone"):
        model = tiny(name).eval()
        with torch.no_grad():
            a, b = run(model, batch)["way_logits"], run(model, shuffled)["way_logits"]
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_pgnet_global_unit_sums_the_shots_and_attention_is_a_softmax():
    torch.manual_seed(0)
    query, supports, values = torch.randn(2, 8, 3, 3), torch.randn(2, 2, 8, 4, 4), torch.randn(2, 2, 8, 4, 4)
    uniform = GraphAttentionUnit(8, uniform=True)
    # every support pixel weighs 1 / (h*w): over 2 shots, twice their mean (as released)
    expected = values.mean(dim=(3, 4)).sum(dim=1)[:, :, None, None].expand(2, 8, 3, 3)
    torch.testing.assert_close(uniform.attend(query, supports, values), expected)
    unit = GraphAttentionUnit(8)
    ones = torch.ones_like(values)  # convex weights of all-ones values sum to one everywhere
    torch.testing.assert_close(unit.attend(query, supports, ones), torch.ones(2, 8, 3, 3))
    model = tiny("pgnet")
    assert (
        isinstance(model, PGNet) and model.scales == (4, 2, 1) and len(model.tail.body) == 4
    )  # 3 res + ASPP
    with pytest.raises(ValueError, match="attention"):
        build_model("pgnet", backbone="small", attention="scrambled")


def test_pgnet_release_attention_is_the_fixed_one_without_the_permute():
    torch.manual_seed(0)
    query, supports, values = torch.randn(2, 8, 3, 5), torch.randn(2, 1, 8, 4, 4), torch.randn(2, 1, 8, 4, 4)
    fixed = GraphAttentionUnit(8, attention="fixed")
    release = GraphAttentionUnit(8, attention="release")
    release.load_state_dict(fixed.state_dict())
    good, scrambled = fixed.attend(query, supports, values), release.attend(query, supports, values)
    # fixed: pixel q of channel c holds sum_k att[q, k] * v[c, k]; release: the [q, c] buffer read as [c, q]
    torch.testing.assert_close(scrambled, good.flatten(2).transpose(1, 2).reshape(2, 8, 3, 5))
    assert not torch.allclose(scrambled, good)
    # the fixed unit is equivariant to permuting query pixels (each pixel attends on its own)
    perm = torch.randperm(15)
    permuted = fixed.attend(query.flatten(2)[..., perm].unflatten(2, (3, 5)), supports, values)
    torch.testing.assert_close(permuted.flatten(2), good.flatten(2)[..., perm])


def test_sgone_guidance_is_a_cosine_in_minus_one_one():
    model = tiny("sgone").eval()
    assert isinstance(model, SGOne)
    batch = episode(1, 5)
    with torch.no_grad():
        feats = model.encode(torch.cat([batch["query_img"], batch["support_imgs"].flatten(0, 2)]))
        query, supports = feats[:2], feats[2:].unflatten(0, (2, 5))
        guide = model.guidance(query, supports, batch["support_masks"].flatten(0, 1))
        assert guide.shape == (2, 1, 9, 9)
        assert guide.min() >= -1 - 1e-5 and guide.max() <= 1 + 1e-5
        # a query whose guidance features equal the mean support vector gets similarity 1 everywhere
        g = model.guide_channels
        fg = (batch["support_masks"].flatten(0, 2) == 1).float()
        vec = upsampled_masked_pool(supports[:, :, :g].flatten(0, 1), fg, 1e-5)
        vec = vec.unflatten(0, (2, 5)).mean(dim=1)
        query = query.clone()
        query[:, :g] = vec[:, :, None, None]
        torch.testing.assert_close(model.guidance(query, supports, batch["support_masks"].flatten(0, 1)),
                                   torch.ones(2, 1, 9, 9))  # fmt: skip


# ----------------------------------------------------------------------------------------------- AMP


def test_amp_imprints_normalised_masked_proxies_and_a_moving_average_background_row():
    model = tiny("amp").eval()
    assert isinstance(model, AMP) and model.alpha == ALPHA == 0.25821
    weight = torch.randn(21, 6)
    supports = torch.randn(2, 1, 2, 6, 9, 9)
    masks = torch.zeros(2, 1, 2, SIZE, SIZE, dtype=torch.long)
    masks[..., 8:40, 8:40] = 1
    masks[..., -3:, :] = IGNORE_INDEX  # neither foreground nor background
    ids = torch.tensor([[3], [7]])
    out = model.imprint(weight, supports, masks, ids)
    assert out.shape == (2, 21, 6) and not out.requires_grad
    flat = supports.flatten(0, 2)
    fg = F.normalize(masked_average_pool(flat, masks.flatten(0, 2)), dim=1).view(2, 2, 6)
    bg = F.normalize(masked_average_pool(flat, (masks.flatten(0, 2) == 0).long()), dim=1).view(2, 2, 6)
    for b in range(2):
        torch.testing.assert_close(out[b, ids[b, 0]], fg[b].mean(dim=0))
        row = weight[0]
        for shot in range(2):
            row = ALPHA * bg[b, shot] + (1 - ALPHA) * row
        torch.testing.assert_close(out[b, 0], row)
        others = [c for c in range(1, 21) if c != ids[b, 0]]
        torch.testing.assert_close(out[b, others], weight[others])


def test_amp_trains_base_classes_and_episodes_leave_parameters_unchanged():
    model = tiny("amp").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = episode(2, 1)
    out = run(model, batch)
    assert out["base_logits"].shape == out["logits_full"].shape == (2, 21, 9, 9)
    losses = model.loss(out, batch)
    expected = F.cross_entropy(F.interpolate(out["base_logits"], size=(SIZE, SIZE), mode="bilinear",
                                             align_corners=True), batch["query_full_label"])  # fmt: skip
    torch.testing.assert_close(losses["loss"], expected)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


# --------------------------------------------------------------------------------------------- PANet


def test_panet_prototypes_and_scaled_cosine_logits():
    model = tiny("panet").eval()
    assert isinstance(model, PANet) and model.scale == 20.0
    batch = episode(2, 1)
    with torch.no_grad():
        out = run(model, batch)
    logits = out["logits"]
    assert out["feature_logits"].shape == (2, 3, 9, 9) and logits.shape == (2, 3, SIZE, SIZE)
    assert out["feature_logits"].abs().max() <= 20 + 1e-4
    torch.testing.assert_close(
        logits, F.interpolate(out["feature_logits"], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    )
    torch.testing.assert_close(out["way_logits"][:, 0, 1], logits[:, 1])
    torch.testing.assert_close(out["way_logits"][:, 0, 0], torch.maximum(logits[:, 0], logits[:, 2]))


def test_panet_background_excludes_the_episodes_other_classes():
    # PANet's getMask: a way's support pixels of another episode class (255 in its mask) are neither
    # its foreground nor background; without them the prototypes are those of the masks' 0/1 pixels only
    model = tiny("panet").eval()
    batch = episode(2, 1)
    masks = batch["support_masks"].clone()
    masks[:, 0, 0, 40:60, 40:60] = IGNORE_INDEX  # where way 0's support shows way 1's class
    with torch.no_grad():
        out = run(model, {**batch, "support_masks": masks})
        as_background = run(model, {**batch, "support_masks": masks.masked_fill(masks == IGNORE_INDEX, 0)})
    assert not torch.allclose(out["feature_logits"][:, 0], as_background["feature_logits"][:, 0])
    torch.testing.assert_close(out["feature_logits"][:, 1:], as_background["feature_logits"][:, 1:])


def _aligned_features(fg_vec: torch.Tensor, bg_vec: torch.Tensor, region: slice) -> torch.Tensor:
    feats = bg_vec[:, None, None].expand(4, 9, 9).clone()
    feats[:, region, region] = fg_vec[:, None, None]
    return feats


def test_panet_alignment_uses_the_query_prediction_as_support_mask():
    model = PANet(backbone="small")
    u, v = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    query = _aligned_features(u, v, slice(2, 6))[None]
    supports = _aligned_features(u, v, slice(2, 6))[None, None, None]
    # logits predict foreground exactly on the query's u region
    logits = torch.zeros(1, 2, 9, 9)
    logits[:, 1, 2:6, 2:6] = 5.0
    good = torch.zeros(1, 1, 1, 9, 9, dtype=torch.long)
    good[..., 2:6, 2:6] = 1  # the support's u region (masks at feature size: no resizing blur)
    aligned = model.alignment_loss(logits, query, supports, good)
    flipped = model.alignment_loss(logits, query, supports, 1 - good)
    assert aligned < 0.1 < 5.0 < flipped


def test_panet_alignment_loss_is_in_the_graph_without_gradient_through_the_prediction():
    model = tiny("panet").train()
    batch = episode(2, 5)
    out = run(model, batch)
    logits = out["feature_logits"]
    align = model.alignment_loss(logits, out["query_feats"], out["support_feats"], batch["support_masks"])
    grads = torch.autograd.grad(align, [out["query_feats"], out["support_feats"]], retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)  # via the query prototypes and the support features
    # the argmax mask is a constant: the logits receive no gradient from the alignment branch
    detached = logits.detach().requires_grad_()
    align = model.alignment_loss(detached, out["query_feats"], out["support_feats"], batch["support_masks"])
    assert torch.autograd.grad(align, detached, allow_unused=True)[0] is None
    # a prediction without foreground skips every way: 0, still differentiable (backward works)
    background = torch.zeros_like(logits)
    background[:, 0] = 1.0
    empty = model.alignment_loss(background, out["query_feats"], out["support_feats"], batch["support_masks"])
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    losses = model.loss(run(model, batch), batch)
    torch.testing.assert_close(losses["loss"], losses["ce"] + losses["align"])


def test_amp_release_imprinting_drifts_across_batches_and_episode_imprinting_does_not():
    batch = episode(1, 2)
    episodic = tiny("amp").eval()
    released = tiny("amp", imprinting="release").eval()
    row = released.classifiers[0].weight[0].clone()
    with torch.no_grad():
        first = run(released, batch)["logits_full"]
        assert not torch.equal(released.classifiers[0].weight[0], row)  # written back in eval mode
        second = run(released, batch)["logits_full"]
        assert not torch.allclose(first, second)  # the same batch again: the drifted row differs
        # per episode: the same episode gives the same output, in any batch and any number of times
        alone = run(episodic, {k: v[:1] for k, v in batch.items()})["logits_full"]
        both = run(episodic, batch)["logits_full"]
        torch.testing.assert_close(both[:1], alone)
        torch.testing.assert_close(run(episodic, batch)["logits_full"], both)
        # a one-episode batch on a fresh module: the release's chain is that episode's own average
        fresh = tiny("amp", imprinting="release").eval()
        torch.testing.assert_close(run(fresh, {k: v[:1] for k, v in batch.items()})["logits_full"], alone)
    # training forwards never write (the release's training forward does not imprint)
    trained = tiny("amp", imprinting="release").train()
    before = trained.classifiers[0].weight.detach().clone()
    run(trained, batch)
    assert torch.equal(trained.classifiers[0].weight, before)
    with pytest.raises(ValueError, match="imprinting"):
        build_model("amp", backbone="small", imprinting="drift")


def test_pairwise_methods_combine_2_way_pairs_at_the_image_size():
    # the release upsamples each way's logits to the label size, then takes the maxima (process_nway)
    model = tiny("canet").eval()
    with torch.no_grad():
        out = run(model, episode(2, 1))
    pair = out["pair_logits"]
    assert pair.shape[-2:] == (9, 9) and out["way_logits"].shape[-2:] == (SIZE, SIZE)
    up = F.interpolate(pair.flatten(1, 2), size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out["way_logits"], combine_ways(up.unflatten(1, (2, 2))))
    with torch.no_grad():
        one = run(model, episode(1, 1))
    assert torch.equal(one["way_logits"], one["pair_logits"])  # 1-way: left at the feature size


def test_sgone_exit_padding_grows_the_map_by_one_pixel_per_side():
    model = tiny("sgone").eval()
    batch = episode(1, 1)
    with torch.no_grad():
        query, supports = encode_episode(model.encode, batch["query_img"], batch["support_imgs"], False)
        logits = model.pair_logits(query, supports[:, 0], batch["support_masks"][:, 0])
        assert logits.shape[-2:] == (11, 11)  # 9 x 9 features, exit 1x1 conv with padding 1
        # the border ring sees only zero padding: it is the exit conv's bias
        bias = model.classifier[2].bias
        torch.testing.assert_close(logits[:, :, 0, :], bias[None, :, None].expand(2, 2, 11))
        out = run(model, batch)
    expected = F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["pair_logits"][:, 0], expected)
    aligned = tiny("sgone", exit_padding=0).eval()
    with torch.no_grad():
        q, s = encode_episode(aligned.encode, batch["query_img"], batch["support_imgs"], False)
        assert aligned.pair_logits(q, s[:, 0], batch["support_masks"][:, 0]).shape[-2:] == (9, 9)


def test_backbone_passes_are_separate_only_while_batchnorm_uses_batch_statistics():
    calls = []
    model = build_model("canet", backbone="resnet18", depth=32, freeze_bn=False)
    model.encoder.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = episode(2, 1)
    with torch.no_grad():
        run(model.train(), batch)
        assert calls == [2, 4]  # the queries, then the supports (the release's two BN batches)
        calls.clear()
        run(model.eval(), batch)
        assert calls == [6]  # running statistics: one pass, the same numbers
