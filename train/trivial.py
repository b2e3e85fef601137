"""Trivial predictors (all foreground, all background, support mask copied onto the query): the floor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _binary_logits(fg: torch.Tensor) -> torch.Tensor:
    """[B, way, H, W] foreground indicator -> way_logits [B, way, 2, H, W] (background, foreground)."""
    fg = fg.float()
    return torch.stack([1.0 - fg, fg], dim=2)


class TrivialPredictor(nn.Module):
    """Same forward signature and output as a model; no parameters, no training."""

    def forward(
        self,
        query_img: torch.Tensor,
        support_imgs: torch.Tensor,
        support_masks: torch.Tensor,
        class_ids: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        b, way = support_masks.shape[:2]
        h, w = query_img.shape[-2:]
        return {"way_logits": _binary_logits(self.foreground(support_masks, b, way, h, w))}

    def foreground(self, support_masks: torch.Tensor, b: int, way: int, h: int, w: int) -> torch.Tensor:
        raise NotImplementedError


class AllForeground(TrivialPredictor):
    """Every query pixel is foreground of every way."""

    def foreground(self, support_masks: torch.Tensor, b: int, way: int, h: int, w: int) -> torch.Tensor:
        return torch.ones(b, way, h, w, device=support_masks.device)


class AllBackground(TrivialPredictor):
    """Every query pixel is background."""

    def foreground(self, support_masks: torch.Tensor, b: int, way: int, h: int, w: int) -> torch.Tensor:
        return torch.zeros(b, way, h, w, device=support_masks.device)


class SupportMask(TrivialPredictor):
    """The support mask resized (nearest) onto the query; K shots vote (foreground if >= half)."""

    def foreground(self, support_masks: torch.Tensor, b: int, way: int, h: int, w: int) -> torch.Tensor:
        fg = (support_masks == 1).float()  # [B, way, shot, Hs, Ws]; ignore counts as background
        shot, hs, ws = fg.shape[2:]
        fg = F.interpolate(fg.reshape(b * way, shot, hs, ws), size=(h, w), mode="nearest")
        return (fg.mean(dim=1) >= 0.5).reshape(b, way, h, w)


TRIVIAL: dict[str, type[TrivialPredictor]] = {
    "all_foreground": AllForeground,
    "all_background": AllBackground,
    "support_mask": SupportMask,
}
