"""PFENet's rules beyond the golden parity: N-way extension, K-shot averaging, prior, backbone plumbing."""

from __future__ import annotations

import pytest
import torch

from fss_model import build_model, model_entry
from fss_model.backbones import build_backbone, load_weights
from fss_model.pairwise import combine_ways
from fss_model.pfenet import prior_mask


def tiny(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("pfenet", **{**model_entry("pfenet").tiny_kwargs, **kw}).eval()


def episode(way: int, shot: int, size: int = 41) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    query = torch.randn(2, 3, size, size, generator=g)
    supports = torch.randn(2, way, shot, 3, size, size, generator=g)
    masks = (torch.rand(2, way, shot, size, size, generator=g) > 0.6).long()
    masks[..., :2, :] = 255  # ignore never counts as foreground
    return query, supports, masks, torch.arange(1, way + 1).expand(2, way)


def test_two_way_is_one_pass_per_way_combined_by_the_n_way_rule():
    model = tiny()
    q, s, m, c = episode(way=2, shot=2)
    with torch.no_grad():
        out = model(q, s, m, c)
        for w in range(2):
            alone = model(q, s[:, [w]], m[:, [w]], c[:, [w]])["way_logits"][:, 0]
            torch.testing.assert_close(out["pair_logits"][:, w], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["way_logits"], combine_ways(out["pair_logits"]))
    assert out["way_logits"].shape == (2, 2, 2, 41, 41)
    assert [a.shape[-1] for a in out["aux_logits"]] == [int(b) for b in model.pyramid_bins]


def test_k_shot_averages_prototypes_and_priors_so_repeated_shots_equal_one_shot():
    model = tiny()
    q, s, m, c = episode(way=1, shot=1)
    with torch.no_grad():
        one = model(q, s, m, c)["way_logits"]
        three = model(q, s.expand(-1, -1, 3, -1, -1, -1), m.expand(-1, -1, 3, -1, -1), c)["way_logits"]
    torch.testing.assert_close(three, one, atol=1e-5, rtol=1e-5)


def test_prior_is_min_max_normalised_best_cosine_and_scale_free():
    g = torch.Generator().manual_seed(2)
    query, support = torch.rand(3, 8, 5, 5, generator=g), torch.rand(3, 8, 4, 4, generator=g)
    prior = prior_mask(query, support)
    assert prior.shape == (3, 1, 5, 5)
    flat = prior.flatten(1)
    torch.testing.assert_close(flat.amin(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.amax(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(prior_mask(3.0 * query, 0.5 * support), prior, atol=1e-5, rtol=0)
    # a query pixel equal to a support pixel has cosine 1, the highest there is: it gets prior 1
    query[0, :, 2, 3] = support[0, :, 1, 1]
    assert prior_mask(query, support)[0, 0, 2, 3] == pytest.approx(1.0, abs=1e-5)


def test_frozen_backbone_as_released_and_trainable_head():
    model = tiny(frozen=True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone."))


def test_backbone_runs_in_two_parts_like_the_whole():
    bb = build_backbone("small", out_layers=("layer1", "layer2", "layer3")).eval()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        whole = bb(x)
        head = bb(x, until="layer2")
        tail = bb(head["layer2"], after="layer2")
    assert set(head) == {"layer1", "layer2"} and set(tail) == {"layer3"}
    torch.testing.assert_close(tail["layer3"], whole["layer3"])
    with pytest.raises(ValueError, match="runs no layer"):
        bb(x, until="layer4")


def test_deep_stem_resnet_takes_pspnet_weight_files(tmp_path):
    bb = build_backbone("resnet50_deep", out_layers=("layer2", "layer3", "layer4"))
    state = bb.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 3, 3) and state["conv3.weight"].shape == (128, 64, 3, 3)
    assert state["layer1.0.conv1.weight"].shape == (64, 128, 1, 1)
    for name, m in bb.layer3.named_modules():  # every 3x3 conv of layer3 dilated 2, PSPNet's rule
        if name.endswith("conv2"):
            assert m.dilation == (2, 2) and m.stride == (1, 1)
    # a PSPNet-style file: the backbone's keys plus the classifier it does not hold
    path = tmp_path / "resnet50_v2.pth"
    torch.save({**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, path)
    load_weights(bb, path)
    with torch.no_grad():
        assert bb(torch.randn(1, 3, 65, 65))["layer4"].shape == (1, 2048, 9, 9)
