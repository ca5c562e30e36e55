"""A minimal model registry (torchvision `models/_api.py` style): a dict and a decorator.

Each entry is a builder `fn(num_classes, head, pretrained, **kwargs) -> TransferModel` plus what
the `transferlab models` listing and the weight loader need to know about it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.models.base import TransferModel

Builder = Callable[..., TransferModel]

TIMM_PREFIX = "timm:"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: registry name (the architecture's own name, e.g. "inception_v3").
        builder: `fn(num_classes, head, pretrained, **kwargs) -> TransferModel`.
        summary: one line for `transferlab models`.
        pretrained_source: where `pretrained=True` downloads weights from; None if it has none.
        architectures: weights-file `architecture` metadata values this entry can load, each
            mapped to the builder kwargs that build exactly that variant.
    """

    name: str
    builder: Builder
    summary: str
    pretrained_source: str | None = None
    architectures: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def accepts(self) -> dict[str, Mapping[str, Any]]:
        """Every architecture string whose weights load into this entry."""
        return {f"transferlab:{self.name}": {}, **self.architectures}

    def kwarg_names(self) -> set[str]:
        """Keyword arguments the builder takes besides num_classes, head and pretrained."""
        params = inspect.signature(self.builder).parameters
        return {n for n in params if n not in ("num_classes", "head", "pretrained")}


_REGISTRY: dict[str, ModelEntry] = {}
# Name prefixes resolved on the fly (e.g. "timm:" -> any timm model), registered by the family
# module that knows how, so this module imports none of them: registration flows one way.
_PREFIXES: dict[str, Callable[[str], ModelEntry]] = {}


def register_model(
    name: str,
    *,
    summary: str,
    pretrained_source: str | None = None,
    architectures: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder under `name`; a duplicate name is an error."""

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(
            name, fn, summary, pretrained_source, dict(architectures or {})
        )
        return fn

    return decorator


def register_prefix(prefix: str, resolve: Callable[[str], ModelEntry]) -> None:
    """Resolve every name `<prefix><rest>` with `resolve(rest)`; a duplicate prefix is an error."""
    if prefix in _PREFIXES:
        raise ValueError(f"model name prefix {prefix!r} is already registered")
    _PREFIXES[prefix] = resolve


def list_models() -> list[str]:
    """Registered model names, in registration order (`timm:<name>` works for any timm model too)."""
    return list(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry for `name`, or for `timm:<name>` an entry built on the fly."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, resolve in _PREFIXES.items():
        if name.startswith(prefix):
            return resolve(name[len(prefix) :])
    raise TransferlabError(
        f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)} or timm:<any timm model name>"
    )
