"""Name -> constructor registries for models and backbones (timm-style `register_model` / `build_model`).

Usage::

    @register_model                      # registered as "denet" (the function's name)
    def denet(**kwargs) -> nn.Module: ...

    @register_model("canet", ways=(1, 2), tiny_kwargs={"backbone": "small"})
    def _canet(**kwargs) -> nn.Module: ...

    model = build_model("denet", num_classes=21, backbone="resnet50")
    list_models()  # -> ["canet", "denet"]

`ways` (episode ways a model supports) and `tiny_kwargs` (constructor kwargs of a tiny CPU build, used by
the registry-driven tests in tests/fss_model/test_models.py) are metadata read with `model_entry(name)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

import torch.nn as nn

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered constructor and its metadata."""

    name: str
    fn: Callable[..., T]
    ways: tuple[int, ...] = (1, 2)  # episode ways the model supports (AMP is 1-way only)
    tiny_kwargs: Mapping[str, Any] = field(default_factory=dict)  # kwargs for a tiny CPU test build


class Registry(Generic[T]):
    """A name -> constructor table; `kind` names what it holds in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        fn: Callable[..., T],
        name: str | None = None,
        ways: tuple[int, ...] = (1, 2),
        tiny_kwargs: Mapping[str, Any] | None = None,
    ) -> Callable[..., T]:
        name = name or fn.__name__
        if name in self._entries:
            # a silent overwrite would make build(name) depend on import order
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, fn, tuple(ways), dict(tiny_kwargs or {}))
        return fn

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> T:
        return self.entry(name).fn(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


MODELS: Registry[nn.Module] = Registry("model")


@overload
def register_model(fn: Callable[..., nn.Module], /) -> Callable[..., nn.Module]: ...
@overload
def register_model(
    name: str | None = None,
    /,
    *,
    ways: tuple[int, ...] = (1, 2),
    tiny_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]: ...
def register_model(
    fn_or_name: Callable[..., nn.Module] | str | None = None,
    /,
    *,
    ways: tuple[int, ...] = (1, 2),
    tiny_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Register a model constructor: bare `@register_model` (name = function name) or with arguments.

    `tiny_kwargs` default to `{"backbone": "small"}` so that every model gets a fast CPU test build.
    """
    tiny = {"backbone": "small"} if tiny_kwargs is None else tiny_kwargs
    if callable(fn_or_name):
        return MODELS.register(fn_or_name, ways=ways, tiny_kwargs=tiny)

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return MODELS.register(fn, name=fn_or_name, ways=ways, tiny_kwargs=tiny)

    return decorator


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an unknown name raises ValueError listing the known ones."""
    return MODELS.build(name, **kwargs)


def list_models() -> list[str]:
    """Sorted names of the registered models."""
    return MODELS.names()


def model_entry(name: str) -> Entry[nn.Module]:
    """Registration metadata of a model (`ways`, `tiny_kwargs`)."""
    return MODELS.entry(name)
