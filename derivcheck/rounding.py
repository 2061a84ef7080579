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

import sympy

from .indexed import IsMax


def _abs(e):
    """|e| without SymPy's sign analysis, which costs more than the rest of the bound together.

    A product is split into the product of its factors' magnitudes, so that a sum
    of |products| stays a sum of products (one einsum in the generic tier).
    """
    if e.is_Mul:
        return sympy.Mul(*(_abs(a) for a in e.args))
    return e if e.is_number and e >= 0 else sympy.Abs(e, evaluate=False)


def magnitude(expr, memo: dict | None = None):
    memo = {} if memo is None else memo
    if expr in memo:
        return memo[expr]
    M = lambda e: magnitude(e, memo)  # noqa: E731
    if expr.is_Number or expr.is_Symbol or isinstance(expr, (sympy.logic.boolalg.BooleanAtom, sympy.Indexed, sympy.KroneckerDelta)):
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
    elif isinstance(expr, (sympy.exp, sympy.log, sympy.tanh, sympy.sinh, sympy.cosh, sympy.sin, sympy.cos, sympy.Abs)):
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
