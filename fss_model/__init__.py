"""FSS models built by name (`build_model`, `list_models`); backbones live in fss_model.backbones."""

from fss_model.registry import build_model, list_models, model_entry, register_model

__all__ = ["build_model", "list_models", "model_entry", "register_model"]
