"""The element-wise functions of the formula language: one record each, read by every backend.

Adding one (say ``sinh``) is one entry here, plus a rule that uses it and its tests:
the symbolic tier (``symarray``), the index-notation tier (``indexed``), the numeric
formula backend (``formula``), compiled index notation in NumPy and at 50 digits
(``indexeval``, ``program``), the running error bound (``rounding``), the cache's node
whitelist (``exprcodec``) and ``explain`` all take it from :data:`ELEMENTWISE`.
``tests/test_engine.py`` evaluates every entry in every backend against NumPy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Elementwise:
    """SymPy and mpmath are named, not imported: a warm run evaluates stored NumPy steps and imports neither."""

    name: str  # as a rule's formula writes it
    sym_name: str  # the SymPy function both symbolic tiers build with (sympy.<sym_name>)
    np: Callable  # the NumPy ufunc: the numeric backend and compiled index notation
    mp_name: str  # the mpmath function: the 50-digit reference of the stability probe (mpmath.<mp_name>)
    slope: Callable | None  # |f'(a)| from a and f(a), for the error bound at numbers; None where SymPy has no node

    @property
    def sym(self) -> Callable:
        import sympy

        return getattr(sympy, self.sym_name)

    @property
    def mp(self) -> Callable:
        import mpmath

        return getattr(mpmath, self.mp_name)

    @property
    def node(self) -> bool:
        """SymPy keeps it as a node of its own (exp(x)); sqrt(x) is the power x**(1/2), bounded as a power."""
        import sympy

        return isinstance(self.sym, sympy.FunctionClass)


ELEMENTWISE = {op.name: op for op in (
    Elementwise("exp", "exp", np.exp, "exp", lambda a, fa: fa),
    Elementwise("log", "log", np.log, "log", lambda a, fa: 1 / a),
    Elementwise("tanh", "tanh", np.tanh, "tanh", lambda a, fa: 1 - fa * fa),
    Elementwise("sin", "sin", np.sin, "sin", lambda a, fa: np.cos(a)),
    Elementwise("cos", "cos", np.cos, "cos", lambda a, fa: -np.sin(a)),
    Elementwise("sqrt", "sqrt", np.sqrt, "sqrt", None),
    Elementwise("abs", "Abs", np.abs, "fabs", lambda a, fa: 1.0),
)}


@functools.cache
def sympy_nodes() -> dict:
    """SymPy function class -> its record, for the functions SymPy keeps as nodes of their own (imports SymPy)."""
    return {op.sym: op for op in ELEMENTWISE.values() if op.node}
