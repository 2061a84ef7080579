"""The conventions derivcheck knows, found by reading this package: every module here but ``base`` and
``registry`` defines one :class:`~derivcheck.check.conventions.base.Adapter` subclass with a ``style``.

Adding a convention is adding a module (see docs/internals.md): a subclass with ``style``, ``order``,
``claims`` (to be detected), and ``prepare``, ``build``, ``run``; nothing else changes.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from derivcheck.check.conventions import base
from derivcheck.check.conventions.base import OWN_WORK, Adapter, stage
from derivcheck.check.loading import load_target
from derivcheck.errors import DerivcheckError

_NOT_CONVENTIONS = {"base", "registry"}


def _conventions() -> dict[str, type[Adapter]]:
    found: dict[str, type[Adapter]] = {}
    package = base.__name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if info.name in _NOT_CONVENTIONS:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        mine = [v for v in vars(module).values()
                if inspect.isclass(v) and issubclass(v, Adapter) and v.__module__ == module.__name__ and v.style]
        if len(mine) != 1:
            raise ImportError(f"{module.__file__} must define one Adapter subclass with a style (it defines {len(mine)})")
        adapter = mine[0]
        if adapter.style in found:
            raise ImportError(f"{module.__file__}: style '{adapter.style}' is also {found[adapter.style].__module__}'s")
        found[adapter.style] = adapter
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


ADAPTERS = _conventions()  # style -> its Adapter, in the books' order
STYLES = tuple(ADAPTERS)  # the names --style takes


def detect_style(obj, module, name) -> str:
    """The convention ``obj`` is written in: the surest claim among the conventions' (base.Adapter.claims)."""
    ranks = [(rank, adapter.order, style) for style, adapter in ADAPTERS.items()
             if (rank := adapter.claims(obj, module, name)) is not None]
    if ranks:
        return min(ranks)[2]
    if inspect.isclass(obj):
        raise DerivcheckError(f"'{name}' has no forward method: which style is it? (use --style {'|'.join(STYLES)})")
    raise DerivcheckError(f"'{name}' is neither a class nor a function (it is a {type(obj).__name__})")


def make_adapter(spec: str, rule, hyper: dict, layer_hyper: dict, style: str | None = None) -> Adapter:
    obj, module, name = load_target(spec)
    stage(OWN_WORK)
    style = style or detect_style(obj, module, name)
    if style not in ADAPTERS:
        raise DerivcheckError(f"unknown style '{style}' (known: {', '.join(STYLES)})")
    adapter_class = ADAPTERS[style]
    refusal = adapter_class.refuses(obj, name)
    if refusal:
        raise DerivcheckError(refusal)
    if rule.state is not None and not adapter_class.takes_state:
        raise DerivcheckError(f"rule '{rule.name}' sets a layer's state through its method {rule.state.method} (a book-2 "
                              f"layer class); '{name}' is {style} style: pass the state as an argument, with a rule that takes it")
    adapter = adapter_class(obj, module, name, rule, hyper, layer_hyper)
    adapter.prepare()
    if rule.forward_only and not adapter.forward_only:
        adapter.forward_only = f"rule '{rule.name}': {rule.forward_only}"
    return adapter
