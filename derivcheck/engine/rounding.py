"""Running error bounds: how much rounding an expression's evaluation can pick up.

``magnitude(e)`` is a SymPy expression ``M(e)`` such that evaluating ``e`` in
floating point with unit roundoff ``u`` gives an error of at most about
``u * M(e)``. This is first-order running error analysis (Wilkinson). Inputs
are exact, and every operation rounds its own result:

    M(x) = 0                    M(a1 + ... + an) = Σ M(ai) + (n-1) Σ |ai|
    M(a * b) = |a| M(b) + |b| M(a) + |a b|
    M(a ** p) = |p a**(p-1)| M(a) + |a**p|
    M(f(a)) = |f'(a)| M(a) + |f(a)|        (exp, log, tanh, ...)
    M(Σ_{j<n} a_j) = Σ_j M(a_j) + (n-1) Σ_j |a_j|   (a sum over indices, as the
                                                     shape-generic tier writes it)

Sums are charged their partial sums, so cancellation inside a layer (``y - t``
for a confident softmax) is counted at the size of what cancels. A
different but reasonable algorithm rounds at similar magnitudes.
"""
from __future__ import annotations

import numpy as np
import sympy

from derivcheck.engine.indexed import IsMax
from derivcheck.engine.ops import sympy_nodes

NODES = sympy_nodes()  # SymPy function class -> its record (ops.py)

_SMOOTH = (*NODES, sympy.sinh, sympy.cosh)  # f(a) with a derivative: M(f(a)) = |f'(a)| M(a) + |f(a)|


def _abs(e):
    """|e| without SymPy's sign analysis, which costs more than the rest of the bound together.

    A product is split into the product of its factors' magnitudes, so that a sum
    of |products| stays a sum of products (one einsum in the generic tier).
    """
    if e.is_Mul:
        return sympy.Mul(*(_abs(a) for a in e.args))
    return e if e.is_number and e >= 0 else sympy.Abs(e, evaluate=False)


def magnitude(expr, memo: dict | None = None, inexact: dict | None = None):
    """``M(expr)``; ``inexact`` maps an input's name to the name of its own bound: an input computed
    with rounding (a recurrence's state, from earlier steps) has ``M(h[i]) = m_h[i]``, not 0."""
    memo = {} if memo is None else memo
    if expr in memo:
        return memo[expr]
    M = lambda e: magnitude(e, memo, inexact)  # noqa: E731
    name = str(expr.base.label) if isinstance(expr, sympy.Indexed) else expr.name if expr.is_Symbol else None
    if inexact and name in inexact:
        out = (sympy.IndexedBase(inexact[name], real=True)[expr.indices] if isinstance(expr, sympy.Indexed)
               else sympy.Symbol(inexact[name], real=True))
    elif expr.is_Number or expr.is_Symbol or isinstance(expr, (sympy.logic.boolalg.BooleanAtom, sympy.Indexed, sympy.KroneckerDelta)):
        out = sympy.Integer(0)  # exact inputs, and a delta's 0 or 1
    elif isinstance(expr, sympy.Sum):
        # n terms over all the sum's indices together, as one Add of n terms would be charged
        body, limits = expr.function, expr.limits
        count_less_one = sympy.Mul(*(hi - lo + 1 for _, lo, hi in limits)) - 1
        out = sympy.Sum(M(body), *limits) + count_less_one * sympy.Sum(_abs(body), *limits)
    elif expr.is_Add:
        n = len(expr.args)
        out = sympy.Add(*(M(a) for a in expr.args)) + (n - 1) * sympy.Add(*(_abs(a) for a in expr.args))
    elif expr.is_Mul:
        # a1 * a2 * ... : each factor's error scaled by the others, plus one rounding per product
        terms = []
        for i, a in enumerate(expr.args):
            others = sympy.Mul(*(expr.args[:i] + expr.args[i + 1 :]))
            m = M(a)
            if m != 0:
                terms.append(_abs(others) * m)
        out = sympy.Add(*terms) + (len(expr.args) - 1) * _abs(expr)
    elif expr.is_Pow:
        base, p = expr.args
        dbase = M(base)
        if p.is_Number:
            out = _abs(p * base ** (p - 1)) * dbase + _abs(expr)
        else:  # a ** b with a symbolic exponent: treat as exp(b log a)
            out = _abs(expr) * (_abs(p / base) * dbase + _abs(sympy.log(base)) * M(p) + 1)
    elif isinstance(expr, _SMOOTH):
        (arg,) = expr.args
        slope = _abs(expr.fdiff()) if not isinstance(expr, sympy.Abs) else sympy.Integer(1)
        out = slope * M(arg) + _abs(expr)
    elif isinstance(expr, (sympy.Max, sympy.Min)):
        out = sympy.Max(*(M(a) for a in expr.args))
    elif isinstance(expr, sympy.Piecewise):
        out = sympy.Piecewise(*((M(e), c) for e, c in expr.args))
    elif isinstance(expr, (sympy.Heaviside, sympy.sign, IsMax)):
        out = sympy.Integer(0)  # piecewise constant away from its kink
    else:  # an unknown node: charge one rounding of its value
        out = _abs(expr)
    memo[expr] = out
    return out


class NotNumeric(Exception):
    """An expression node :func:`bounds_at` cannot evaluate: compile :func:`magnitude` instead."""


_SLOPES = {  # |f'(a)| from a and f(a): the derivatives magnitude() takes with fdiff, numerically
    **{fn: op.slope for fn, op in NODES.items()},  # the language's functions (ops.py)
    sympy.sinh: lambda a, fa: np.cosh(a),  # and two SymPy may write itself
    sympy.cosh: lambda a, fa: np.sinh(a),
}
_FUNCTIONS = {**{fn: op.np for fn, op in NODES.items()}, sympy.sinh: np.sinh, sympy.cosh: np.cosh, sympy.sign: np.sign}
_RELATIONS = {sympy.StrictGreaterThan: np.greater, sympy.GreaterThan: np.greater_equal,
              sympy.StrictLessThan: np.less, sympy.LessThan: np.less_equal}


class _Walk:
    """The value of each node of an expression graph at ``values`` (symbol -> number), each shared node once."""

    def __init__(self, values: dict):
        self.values, self.value = values, {}

    def __call__(self, e):
        V, values = self, self.values
        key = id(e)
        if key in self.value:
            return self.value[key]
        if e.is_Number:
            v = np.float64(float(e))
        elif e.is_Symbol:
            v = np.float64(values[e])
        elif e.is_Add:
            v = np.sum([V(a) for a in e.args])
        elif e.is_Mul:
            v = np.prod([V(a) for a in e.args])
        elif e.is_Pow:
            v = np.power(V(e.args[0]), V(e.args[1]))
        elif e.func in _FUNCTIONS and len(e.args) == 1:
            v = _FUNCTIONS[e.func](V(e.args[0]))
        elif isinstance(e, (sympy.Max, sympy.Min)):
            v = (max if isinstance(e, sympy.Max) else min)(V(a) for a in e.args)
        elif isinstance(e, sympy.Heaviside):
            a = V(e.args[0])
            v = np.float64(1.0 if a > 0 else 0.0 if a < 0 else (V(e.args[1]) if len(e.args) > 1 else 0.5))
        elif isinstance(e, sympy.Piecewise):
            v = V(self.branch(e))
        elif isinstance(e, sympy.logic.boolalg.BooleanAtom):
            v = bool(e)
        elif e.func in _RELATIONS:
            v = bool(_RELATIONS[e.func](V(e.args[0]), V(e.args[1])))
        else:
            raise NotNumeric(type(e).__name__)
        self.value[key] = v
        return v

    def branch(self, e):
        for piece, cond in e.args:
            if self(cond):
                return piece
        raise NotNumeric("a Piecewise with no branch that holds")


def values_at(exprs, values: dict) -> np.ndarray:
    """Each scalar expression's value at ``values``, walking the expression graph once (each shared
    subexpression once): an unrolled recurrence's Jacobian, without compiling it. Raises NotNumeric."""
    V = _Walk(values)
    with np.errstate(all="ignore"):
        return np.array([V(sympy.sympify(e)) for e in exprs], dtype=np.float64)


def bounds_at(exprs, values: dict) -> np.ndarray:
    """``magnitude(e)`` of each scalar expression, evaluated at ``values`` (symbol -> number), without building it.

    The same rules as :func:`magnitude`, applied to numbers while the expression graph is walked once,
    each shared subexpression once: for an unrolled recurrence, whose expressions are small graphs but
    exponentially large trees, building and compiling ``magnitude`` takes minutes. The element-by-element
    tier only (no sums over indices); raises :class:`NotNumeric` at a node it cannot evaluate.
    """
    V = _Walk(values)
    _branch = V.branch
    bound: dict = {}

    def M(e):
        key = id(e)
        if key in bound:
            return bound[key]
        if e.is_Number or e.is_Symbol:
            m = 0.0
        elif e.is_Add:
            m = sum(M(a) for a in e.args) + (len(e.args) - 1) * sum(abs(V(a)) for a in e.args)
        elif e.is_Mul:
            mags = [abs(V(a)) for a in e.args]
            m = (len(e.args) - 1) * abs(V(e))
            for i, a in enumerate(e.args):
                ma = M(a)
                if ma != 0:
                    m += np.prod(mags[:i] + mags[i + 1:]) * ma
        elif e.is_Pow:
            base, p = e.args
            if p.is_Number:
                m = abs(V(p) * np.power(V(base), V(p) - 1)) * M(base) + abs(V(e))
            else:
                m = abs(V(e)) * (abs(V(p) / V(base)) * M(base) + abs(np.log(V(base))) * M(p) + 1)
        elif e.func in _SLOPES:
            (arg,) = e.args
            m = abs(_SLOPES[e.func](V(arg), V(e))) * M(arg) + abs(V(e))
        elif isinstance(e, (sympy.Max, sympy.Min)):
            m = max(M(a) for a in e.args)
        elif isinstance(e, sympy.Piecewise):
            m = M(_branch(e))
        elif isinstance(e, (sympy.Heaviside, sympy.sign)):
            m = 0.0
        else:
            raise NotNumeric(type(e).__name__)
        bound[key] = m
        return m

    with np.errstate(all="ignore"):
        return np.array([M(sympy.sympify(e)) for e in exprs], dtype=np.float64)
