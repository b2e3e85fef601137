"""FSS models built by name (`build_model`, `list_models`); backbones live in fss_model.backbones."""

from fss_model.registry import build_model, list_models, model_entry, register_model

# importing a model module registers it
from fss_model import amp, canet, denet, hsnet, panet, pfenet, pgnet, sgone  # noqa: F401  isort: skip

__all__ = ["build_model", "list_models", "model_entry", "register_model"]
