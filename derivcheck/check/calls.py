"""Record the layer functions a CS231n-style model calls, and pair each forward with its backward.

A CS231n model (``TwoLayerNet.loss(X, y) -> (loss, grads)``) is made of module
functions, not layer objects: ``affine_relu_forward(x, w, b) -> (out, cache)``,
``affine_relu_backward(dout, cache) -> (dx, dw, db)``, a loss
``softmax_loss(x, y) -> (loss, dx)``. While the model runs, every such function
the model's module can reach is wrapped, so each call is recorded (copies of what
went in and came out), including calls inside other recorded functions
(``affine_relu_forward`` calling ``affine_forward`` and ``relu_forward``). What a
call writes into the arrays it was given is noted (``FnCall.wrote``): the network
check compares the copies made at the call, and warns of the write.

Which functions: the plain Python functions, in the model's module and in the
modules those functions come from, named ``NAME_forward``/``NAME_backward``
(also with a ``_naive``, ``_fast`` or ``_alt`` suffix) or containing ``loss``.

A backward is paired with the forward whose cache it was given (the very object);
a backward given something else (``relu_backward(dout, h1)``, h1 being the output)
is paired with the latest unpaired forward of its name, and says so.
"""
from __future__ import annotations

import re
import types
from dataclasses import dataclass, field

import numpy as np

from derivcheck.check.conventions.base import own, stage

_LAYER_FN = re.compile(r"^(?P<stem>\w+?)_(?P<kind>forward|backward)(?:_(?:naive|fast|alt|vectorized))?$")


def role(name: str) -> tuple[str, str] | None:
    """('forward' | 'backward' | 'loss', stem) for a layer function's name, None for any other name."""
    m = _LAYER_FN.match(name)
    if m:
        return m.group("kind"), m.group("stem")
    if "loss" in name and not name.startswith("_"):
        return "loss", name
    return None


def changed(now, before) -> bool:
    """An array (or an array in a tuple, a cache) whose values are no longer those of its copy ``before``."""
    if isinstance(now, np.ndarray) and isinstance(before, np.ndarray):
        return now.shape != before.shape or not np.array_equal(now, before, equal_nan=True)
    if isinstance(now, tuple) and isinstance(before, tuple) and len(now) == len(before):
        return any(changed(a, b) for a, b in zip(now, before))
    return False


def written(fn, args: tuple, kwargs: dict, copies: tuple) -> list[str]:
    """The names of the arguments a call of ``fn`` wrote into: their values differ from ``copies``, made as it began."""
    names = arg_names(fn, args, kwargs)
    return [names[i] for i, (now, before) in enumerate(zip((*args, *kwargs.values()), copies)) if changed(now, before)]


def arg_names(fn, args: tuple, kwargs: dict) -> list[str]:
    """The names of a call's arguments, positional then keyword (``arg1`` where the signature cannot say)."""
    import inspect

    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i + 1}" for i in range(len(args))] + list(kwargs)


@dataclass
class FnCall:
    """One recorded call of a layer function."""

    index: int  # in the order the calls began
    fn: types.FunctionType
    role: str  # forward, backward or loss
    stem: str  # affine for affine_forward; the whole name for a loss
    args: tuple  # copies, positional (keyword arguments after them, in order)
    raw: tuple  # the very objects passed (a backward's cache is found by identity)
    parent: int | None  # the recorded call it ran inside
    out: object = None  # a copy of what it returned
    raw_out: object = None  # what it returned (kept alive, so identities stay unique)
    number: int = 0  # 1 for the first call of this function, 2 for the second, ...
    pair: "FnCall | None" = None  # a forward's backward, a backward's forward
    paired_by: str = ""  # "cache" or "order"
    children: list = field(default_factory=list)
    wrote: list = field(default_factory=list)  # the names of the arguments it wrote into (values changed by the call)

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def label(self) -> str:
        return f"{self.name}#{self.number}"

    @property
    def cache(self):
        """A forward's cache (the pair's second item); a backward's cache argument (its last)."""
        if self.role == "forward":
            return self.raw_out[1] if isinstance(self.raw_out, tuple) and len(self.raw_out) == 2 else None
        return self.raw[-1] if self.raw else None


class Recorder:
    """``with Recorder(module) as rec: model.loss(X, y)`` leaves the calls in ``rec.calls``."""

    def __init__(self, module):
        self.calls: list[FnCall] = []
        self._stack: list[int] = []
        self._counts: dict[str, int] = {}
        self._installed: list[tuple[dict, str, object]] = []
        self._wrappers: dict[int, object] = {}
        self._module = module

    def __enter__(self):
        todo, seen = [vars(self._module)], set()
        while todo:
            space = todo.pop()
            if id(space) in seen:
                continue
            seen.add(id(space))
            for name, value in list(space.items()):
                if isinstance(value, types.FunctionType) and role(name) and value.__name__ == name:
                    space[name] = self._wrap(value)
                    self._installed.append((space, name, value))
                    todo.append(value.__globals__)
        return self

    def __exit__(self, *exc):
        for space, name, value in reversed(self._installed):
            space[name] = value
        self._installed.clear()
        return False

    def _wrap(self, fn):
        if id(fn) in self._wrappers:
            return self._wrappers[id(fn)]
        kind, stem = role(fn.__name__)

        def wrapper(*args, **kwargs):
            raw = (*args, *kwargs.values())
            self._counts[fn.__name__] = self._counts.get(fn.__name__, 0) + 1
            call = FnCall(len(self.calls), fn, kind, stem, own(raw), raw, self._stack[-1] if self._stack else None,
                          number=self._counts[fn.__name__])
            self.calls.append(call)
            if call.parent is not None:
                self.calls[call.parent].children.append(call)
            self._stack.append(call.index)
            stage(fn.__name__)
            try:
                out = fn(*args, **kwargs)
            finally:
                self._stack.pop()
            call.raw_out, call.out = out, own(out)
            call.wrote = written(fn, args, kwargs, call.args)
            return out

        wrapper.__wrapped__ = fn
        wrapper.__name__ = fn.__name__
        self._wrappers[id(fn)] = wrapper
        return wrapper


def pair(calls: list[FnCall]) -> None:
    """Pair each backward with its forward: by the cache it was given, else by order (latest unpaired first)."""
    forwards = [c for c in calls if c.role == "forward"]
    for b in (c for c in calls if c.role == "backward"):
        same = [f for f in forwards if f.stem == b.stem]
        f = next((f for f in same if f.pair is None and f.cache is not None and f.cache is b.cache), None)
        how = "cache"
        if f is None:
            f = next((f for f in reversed(same) if f.pair is None and f.index < b.index), None)
            how = "order"
        if f is not None:
            f.pair, b.pair = b, f
            f.paired_by = b.paired_by = how
