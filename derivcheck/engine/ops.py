"""The element-wise functions of the formula language: one record each, read by every backend.

Adding one (say ``sinh``) is one entry here, plus a rule that uses it and its tests:
the symbolic tier (``symarray``), the index-notation tier (``indexed``), the numeric
formula backend (``formula``), compiled index notation in NumPy and at 50 digits
(``indexeval``), the running error bound (``rounding``), the cache's node whitelist
(``cache``) and ``explain`` all take it from :data:`ELEMENTWISE`.
``tests/test_engine.py`` evaluates every entry in every backend against NumPy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mpmath
import numpy as np
import sympy


@dataclass(frozen=True)
class Elementwise:
    name: str  # as a rule's formula writes it
    sym: Callable  # the SymPy function both symbolic tiers build with
    np: Callable  # the NumPy ufunc: the numeric backend and compiled index notation
    mp: Callable  # the mpmath function: the 50-digit reference of the stability probe
    slope: Callable | None  # |f'(a)| from a and f(a), for the error bound at numbers; None where SymPy has no node

    @property
    def node(self) -> bool:
        """SymPy keeps it as a node of its own (exp(x)); sqrt(x) is the power x**(1/2), bounded as a power."""
        return isinstance(self.sym, sympy.FunctionClass)


ELEMENTWISE = {op.name: op for op in (
    Elementwise("exp", sympy.exp, np.exp, mpmath.exp, lambda a, fa: fa),
    Elementwise("log", sympy.log, np.log, mpmath.log, lambda a, fa: 1 / a),
    Elementwise("tanh", sympy.tanh, np.tanh, mpmath.tanh, lambda a, fa: 1 - fa * fa),
    Elementwise("sin", sympy.sin, np.sin, mpmath.sin, lambda a, fa: np.cos(a)),
    Elementwise("cos", sympy.cos, np.cos, mpmath.cos, lambda a, fa: -np.sin(a)),
    Elementwise("sqrt", sympy.sqrt, np.sqrt, mpmath.sqrt, None),
    Elementwise("abs", sympy.Abs, np.abs, abs, lambda a, fa: 1.0),
)}

NODES = {op.sym: op for op in ELEMENTWISE.values() if op.node}  # SymPy function class -> its record
