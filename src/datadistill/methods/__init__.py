"""Distillation methods, one file each behind ``Method`` (``base``), found by name.

Adding a method is one new file with a ``@register("name")`` class, plus its import below so the
registry sees it; the outer loop (``distill``) never names a method.
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import Method, MethodLoss, Setup

METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: make ``cls`` available as ``--method name``."""
    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; accepted: {', '.join(sorted(METHODS))}")
    return METHODS[name]


from . import wang2018  # noqa: E402,F401  (registers itself)
from . import gm  # noqa: E402,F401
from . import mtt  # noqa: E402,F401  (registers itself)
from . import dm  # noqa: E402,F401

__all__ = ["METHODS", "Method", "MethodLoss", "Setup", "method_class", "register"]
