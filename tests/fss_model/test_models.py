"""Registry-driven checks: every registered model builds tiny, runs each supported episode shape, learns."""

from __future__ import annotations

import pytest
import torch

import fss_model
from fss_model import build_model, list_models, model_entry
from fss_model.layers import IGNORE_INDEX

SIZE = 65  # -> 9 x 9 stride-8 features: the smallest size where every ASPP branch still sees context
BATCH = 2


def make_batch(way: int, shot: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random episode batch in the design.md format (images already normalised floats)."""
    g = torch.Generator().manual_seed(seed)
    support_masks = torch.randint(0, 2, (BATCH, way, shot, SIZE, SIZE), generator=g)
    support_masks[..., :3, :] = IGNORE_INDEX  # an ignore band, as VOC draws on borders
    support_masks[..., 20:40, 20:40] = 1  # every support has foreground
    # distinct class ids per episode, small enough for any num_classes >= 6
    class_ids = torch.stack([torch.randperm(5, generator=g)[:way] + 1 for _ in range(BATCH)])
    query_label = torch.randint(0, way + 1, (BATCH, SIZE, SIZE), generator=g)
    query_label[:, -2:, :] = IGNORE_INDEX
    full = torch.zeros_like(query_label)
    for i in range(way):
        full = torch.where(query_label == i + 1, class_ids[:, i, None, None], full)
    full = full.masked_fill(query_label == IGNORE_INDEX, IGNORE_INDEX)
    return {
        "query_img": torch.randn(BATCH, 3, SIZE, SIZE, generator=g),
        "support_imgs": torch.randn(BATCH, way, shot, 3, SIZE, SIZE, generator=g),
        "support_masks": support_masks,
        "class_ids": class_ids,
        "query_label": query_label,
        "query_full_label": full,
    }


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return model(batch["query_img"], batch["support_imgs"], batch["support_masks"], batch["class_ids"])


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **model_entry(name).tiny_kwargs)


def test_registry_lists_and_rejects_unknown_names():
    assert "denet" in list_models()
    assert fss_model.list_models() == sorted(fss_model.list_models())
    with pytest.raises(ValueError, match=r"unknown model 'nope'; known: .*denet"):
        build_model("nope")


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        fss_model.register_model("denet")(lambda **kw: torch.nn.Identity())


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_and_finite_loss(name: str):
    model = tiny(name).train()
    for way in model_entry(name).ways:
        for shot in (1, 5):
            batch = make_batch(way, shot)
            out = forward(model, batch)
            logits = out["way_logits"]
            assert logits.dtype == torch.float32
            assert logits.shape[:3] == (BATCH, way, 2), (way, shot)
            # feature resolution (stride 8 of 65 px) or input resolution
            assert tuple(logits.shape[-2:]) in {(9, 9), (8, 8), (SIZE, SIZE)}
            assert torch.isfinite(logits).all()
            losses = model.loss(out, batch)
            assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
            assert losses["loss"].requires_grad
            assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", list_models())
def test_one_sgd_step_lowers_the_loss_on_a_fixed_batch(name: str):
    model = tiny(name).train()
    batch = make_batch(1, 1, seed=1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(123)  # same dropout masks before and after the step: a fair comparison
        return model.loss(forward(model, batch), batch)["loss"]

    before = loss()
    opt.zero_grad()
    before.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after < before, (float(before), float(after))


@pytest.mark.parametrize("name", list_models())
def test_eval_forward_is_deterministic(name: str):
    model = tiny(name).eval()
    batch = make_batch(1, 1)
    with torch.no_grad():
        a, b = forward(model, batch)["way_logits"], forward(model, batch)["way_logits"]
    torch.testing.assert_close(a, b)
