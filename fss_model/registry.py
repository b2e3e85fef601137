"""Name -> constructor registries for models and backbones (timm-style `register_model` / `build_model`).

A model is its constructor plus how it is trained. Adding one is one file::

    from fss_model.recipe import DENET_TEMPLATE, TOY, Recipe

    @register_model(
        "mynet",
        official=Recipe(lr=1e-3, steps=30_000, batch_size=4, backbone="resnet50"),  # its release
        toy=TOY.replace(model_kwargs={"depth": 64}),  # the CPU preset (TOY: SGD 0.01, 600 steps)
        ways=(1, 2),
        tiny_kwargs={"backbone": "small"},
    )
    def mynet(**kwargs) -> nn.Module: ...

    model = build_model("mynet", num_classes=21, backbone="resnet50")
    list_models()  # -> [..., "mynet"]

`official` and `toy` (fss_model.recipe.Recipe) are what params.yaml's `auto` values of train.*,
backbone.name/frozen and model_kwargs become for `source: official` / `source: toy`
(train.params resolves them); a model without the recipe of a source stops there with one line,
and tests/fss_model/test_models.py checks that every registered model has both. `ways` (episode
ways a model supports) and `tiny_kwargs` (constructor kwargs of a tiny CPU build, used by the
registry-driven tests) are metadata read with `model_entry(name)`; a module registers its model
when imported (fss_model/__init__.py imports each).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

import torch.nn as nn

from fss_model.recipe import Recipe, Recipes
from pipeline.errors import UserError

T = TypeVar("T")


class ModelArgumentError(UserError, ValueError):
    """An unknown model or backbone name, or constructor arguments that do not fit; one line."""


# The largest integer a constructor argument may take. The registered methods' widths are at most 2048
# channels (ResNet layer4), class counts 81 (COCO) and iteration counts single digits; a 200000-wide
# conv layer would ask for terabytes before failing. Checked before anything is built.
MAX_INT_ARGUMENT = 4096


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered constructor and its metadata."""

    name: str
    fn: Callable[..., T]
    ways: tuple[int, ...] = (1, 2)  # episode ways the model supports (AMP is 1-way only)
    tiny_kwargs: Mapping[str, Any] = field(default_factory=dict)  # kwargs for a tiny CPU test build
    recipes: Recipes = field(default_factory=Recipes)  # how it is trained, per params `source`


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
        recipes: Recipes | None = None,
    ) -> Callable[..., T]:
        name = name or fn.__name__
        if name in self._entries:
            # a silent overwrite would make build(name) depend on import order
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, fn, tuple(ways), dict(tiny_kwargs or {}), recipes or Recipes())
        return fn

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ModelArgumentError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}"
            )
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> T:
        entry = self.entry(name)
        check_arguments(f"{self.kind} {name!r}", entry.fn, kwargs)
        return entry.fn(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def constructor_parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """The named parameters `fn` accepts, following `**kwargs` into the class it returns (its return
    annotation) and on through the base classes each `__init__` forwards to; None if unknowable."""
    params: dict[str, inspect.Parameter] = {}
    targets = _inits(fn) if inspect.isclass(fn) else [fn]
    while targets:
        target = targets.pop(0)
        forwards = False
        for p in inspect.signature(target).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                params.setdefault(p.name, p)
        if not forwards:
            return params
        if not targets:  # a builder function: its kwargs go to the class it returns
            try:
                returned = typing.get_type_hints(target).get("return")
            except (NameError, TypeError):
                return None
            if not inspect.isclass(returned) or not issubclass(returned, nn.Module):
                return None
            targets = _inits(returned)
    return None


def _inits(cls: type) -> list[Callable[..., Any]]:
    """The `__init__`s a class's construction may pass through, most derived first (not nn.Module's)."""
    return [k.__init__ for k in cls.__mro__ if "__init__" in vars(k) and k not in (nn.Module, object)]  # type: ignore[misc]


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _ints(item)]
    return []


def check_arguments(what: str, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """ModelArgumentError (one line) before building when `kwargs` do not fit `fn`'s constructor: an
    unknown name, a value whose type differs from the default's, a negative value where the
    default is a count, or an integer beyond MAX_INT_ARGUMENT."""
    params = constructor_parameters(fn)
    if params is not None:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            known = ", ".join(sorted(params))
            raise ModelArgumentError(f"{what} has no argument {unknown[0]!r} (its arguments: {known})")
        for key, value in kwargs.items():
            default = params[key].default
            if default is inspect.Parameter.empty or default is None or value is None:
                continue
            want = float if isinstance(default, float) else type(default)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
                continue
            if not isinstance(value, want) or isinstance(value, bool) != isinstance(default, bool):
                got, kind = type(value).__name__, type(default).__name__
                raise ModelArgumentError(f"{what}: argument {key}={value!r} is a {got}, not a {kind}")
            # a size, count or rate (a default >= 0) is not negative; 0 can be meaningful (SG-One's
            # exit_padding), and a 0 that cannot build is refused by the meta-device build of `check`
            counts = isinstance(default, (int, float)) and not isinstance(default, bool) and default >= 0
            if counts and value < 0:
                raise ModelArgumentError(f"{what}: argument {key}={value!r} must be >= 0")
    for key, value in kwargs.items():
        if any(abs(v) > MAX_INT_ARGUMENT for v in _ints(value)):
            raise ModelArgumentError(
                f"{what}: argument {key}={value!r} is beyond {MAX_INT_ARGUMENT} "
                "(fss_model.registry.MAX_INT_ARGUMENT): refused before building"
            )


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
    official: Recipe | None = None,
    toy: Recipe | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]: ...
def register_model(
    fn_or_name: Callable[..., nn.Module] | str | None = None,
    /,
    *,
    ways: tuple[int, ...] = (1, 2),
    tiny_kwargs: Mapping[str, Any] | None = None,
    official: Recipe | None = None,
    toy: Recipe | None = None,
) -> Any:
    """Register a model constructor: bare `@register_model` (name = function name) or with arguments.

    `official` / `toy`: the model's training recipe per params `source` (module docstring).
    `tiny_kwargs` default to `{"backbone": "small"}` so that every model gets a fast CPU test build.
    """
    tiny = {"backbone": "small"} if tiny_kwargs is None else tiny_kwargs
    recipes = Recipes(official=official, toy=toy)
    if callable(fn_or_name):
        return MODELS.register(fn_or_name, ways=ways, tiny_kwargs=tiny, recipes=recipes)

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return MODELS.register(fn, name=fn_or_name, ways=ways, tiny_kwargs=tiny, recipes=recipes)

    return decorator


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an unknown name raises ValueError listing the known ones."""
    return MODELS.build(name, **kwargs)


def list_models() -> list[str]:
    """Sorted names of the registered models."""
    return MODELS.names()


def model_entry(name: str) -> Entry[nn.Module]:
    """Registration metadata of a model (`ways`, `tiny_kwargs`, `recipes`)."""
    return MODELS.entry(name)
