"""The shape-generic tier: derive a rule's forward and VJP once, for every size.

The rule's formula is evaluated on :mod:`derivcheck.engine.indexed` arrays (index
notation, symbolic sizes). Its vector-Jacobian product is SymPy's ``diff`` of

    L = Σ_o dout[o] · out[o]

by one element ``x[p]`` of each input, with the ``KroneckerDelta`` sums that
``diff`` leaves collapsed (:func:`collapse`). Affine's ``dW`` comes out as
``Σ_n dout[n, l] · x[n, k]``; softmax-with-loss's ``dx`` as the exact
derivative of the rule's formula, never a hand-typed closed form. The
running error bounds (:mod:`derivcheck.engine.rounding`) are taken of the same
expressions, so tolerances at any size come from the same place.

Every expression is compiled once into NumPy steps
(:mod:`derivcheck.engine.indexeval`, :mod:`derivcheck.engine.program`) and
evaluated at any size: the cost of a trial follows the layer's own cost, not
|input| x |output|. Those steps are what the cache stores for a warm run.

A generic derivation is trusted only after :func:`prove` has compared it
with the concrete tier (:mod:`derivcheck.engine.derive`) at several small shapes.
"""
from __future__ import annotations

import sympy
from sympy import Indexed, IndexedBase, KroneckerDelta, Sum

from derivcheck.engine import indexed, indexeval
from derivcheck.engine.indexed import fresh_index
from derivcheck.engine.indexeval import compiled
from derivcheck.engine.program import DOUT, WEIGHT, Evaluator, bound_name
from derivcheck.engine.rounding import magnitude
from derivcheck.engine.symarray import exact
from derivcheck.errors import DerivcheckError, RuleError, Unsupported


def size_symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, integer=True, positive=True)


# ---------------------------------------------------------------------------
# KroneckerDelta sums


def _terms(expr) -> tuple:
    """``expr`` as a sum of products: products distributed over sums, nothing else rewritten."""
    expanded = sympy.expand(expr, deep=False, mul=True, multinomial=False, power_exp=False, power_base=False,
                            log=False, basic=False)
    return sympy.Add.make_args(expanded)


def _same_range(a, var, ranges) -> bool:
    """``a`` takes only values in ``var``'s range 0..size-1."""
    size = ranges.get(var)
    if size is None:
        return False
    if a.is_Integer:
        return a == 0 or (size.is_Integer and 0 <= a < size)
    return isinstance(a, sympy.Symbol) and a in ranges and sympy.simplify(ranges[a] - size) == 0


def _solve_delta(delta, var):
    """The value of ``var`` at which ``delta`` (a KroneckerDelta) is 1, when its arguments differ
    by ``±var`` plus terms free of ``var`` (``KroneckerDelta(p, i + 2*H)`` gives ``p - 2*H``); else None."""
    e = delta.args[0] - delta.args[1]
    slope = e.diff(var)
    if slope not in (1, -1):
        return None
    rest = sympy.expand(e - slope * var)
    if var in rest.free_symbols:
        return None
    return sympy.expand(-rest / slope)


def _within(a, hi):
    """1 where the integer ``a`` lies in 0..hi, else 0: two Heaviside steps (at half-integers, so
    never at their jump). A factor of its own, not a Piecewise around the term: the term stays a
    product, evaluated as one einsum, and only the index ``a`` reads labels the factor spans."""
    half = sympy.Rational(1, 2)
    return sympy.Heaviside(a + half) * sympy.Heaviside(hi - a + half)


def _common_deltas(f) -> list:
    """A sum whose every term has the same delta factor, as [delta, ..., the sum of the rest]:
    ``KD(i, p) * A + KD(i, p) * B`` is ``KD(i, p) * (A + B)``, and the delta can be summed away."""
    if not f.is_Add:
        return [f]
    common = None
    for t in f.args:
        deltas = {g for g in sympy.Mul.make_args(t) if isinstance(g, KroneckerDelta)}
        common = deltas if common is None else common & deltas
        if not common:
            return [f]
    rest = sympy.Add(*(sympy.Mul(*(g for g in sympy.Mul.make_args(t) if g not in common)) for t in f.args))
    return [*common, rest]


def _has_slice_delta(expr, ranges) -> bool:
    """``expr`` holds a delta between indices of different ranges (a slice's ``p == i + 2*H``)."""
    for d in expr.atoms(KroneckerDelta):
        for v in d.free_symbols & ranges.keys():
            a = _solve_delta(d, v)
            if a is not None and not _same_range(a, v, ranges):
                return True
    return False


def _sum_one(body, var, hi, ranges):
    """``Sum(body, (var, 0, hi))`` with any ``KroneckerDelta(var, a)`` factor summed away."""
    if hi == 0:  # a sum of one term
        return body.xreplace({var: sympy.Integer(0)})
    out = []
    work = list(_terms(body))
    while work:
        term = work.pop(0)
        factors = [g for f in sympy.Mul.make_args(term) for g in _common_deltas(f)]
        if any(f.is_Add and _has_slice_delta(f, ranges) for f in factors):
            # a slice's delta inside a sum factor (expand went one level down): summed away, not compared
            # element by element over both ranges. Only then: distributing products loosens the bounds
            # where the factors cancel (layernorm's x - mean(x)).
            more = _terms(term)
            if len(more) > 1:
                work[:0] = more
                continue
        indep = [f for f in factors if var not in f.free_symbols]
        dep = [f for f in factors if var in f.free_symbols]
        if not dep:
            out.append(sympy.Mul(*indep) * (hi + 1))
            continue
        done = False
        for f in dep:
            a = _solve_delta(f, var) if isinstance(f, KroneckerDelta) else None
            if a is not None:
                rest = sympy.Mul(*(g for g in dep if g is not f)).xreplace({var: a})
                if not _same_range(a, var, ranges):  # a slice's index (p - 2*H): only where it falls in var's range
                    rest = rest * _within(a, hi)
                out.append(sympy.Mul(*indep) * rest)
                done = True
                break
        if not done:
            out.append(sympy.Mul(*indep) * Sum(sympy.Mul(*dep), (var, 0, hi)))
    return sympy.Add(*out)


def collapse(expr, ranges: dict):
    """Sum away every ``KroneckerDelta`` whose index runs over a sum; bottom-up."""
    if isinstance(expr, Sum):
        inner = dict(ranges)
        for var, lo, hi in expr.limits:
            if lo != 0:
                raise Unsupported(f"a sum from {lo}")
            inner[var] = exact(hi) + 1
        result = collapse(expr.function, inner)
        for var, _, hi in expr.limits:  # innermost first
            result = _sum_one(result, var, hi, inner)
        return result
    if isinstance(expr, KroneckerDelta):
        a, b = expr.args
        for x, y in ((a, b), (b, a)):
            if x == 0 and isinstance(y, sympy.Symbol) and ranges.get(y) == 1:
                return sympy.Integer(1)
        return expr
    if not expr.args or isinstance(expr, Indexed):
        return expr
    return expr.func(*(collapse(a, ranges) for a in expr.args))


def support(expr, cot: str = DOUT, weight: str = WEIGHT):
    """Σ of ``weight`` over the outputs each term of a VJP reads, for every input element.

    ``expr`` is linear in the cotangent. Each factor that does not read the
    cotangent is replaced by 1 and the cotangent by ``weight``: the result
    bounds Σ_o weight_o over the outputs o that the input element reaches
    (terms that reach the same output count it once each).
    """
    def reads(e):
        return any(str(getattr(s, "label", s)) == cot for s in e.atoms(sympy.Symbol, IndexedBase))

    def walk(e):
        if isinstance(e, Indexed) and str(e.base.label) == cot:
            return IndexedBase(weight, real=True)[e.indices]
        if isinstance(e, sympy.Symbol) and str(e) == cot:
            return sympy.Symbol(weight, real=True)
        if e.is_Mul:
            return sympy.Mul(*(walk(f) for f in e.args if reads(f)))
        if e.is_Add:
            return sympy.Add(*(walk(t) for t in e.args if reads(t)))
        if isinstance(e, Sum):
            return Sum(walk(e.function), *e.limits)
        if isinstance(e, sympy.Piecewise) and not any(reads(c) for _, c in e.args):
            # a term that applies where its condition holds (expand moves factors into the pieces)
            return sympy.Piecewise(*((walk(x) if reads(x) else sympy.Integer(0), c) for x, c in e.args))
        raise Unsupported(f"the cotangent appears inside {type(e).__name__}")

    return walk(expr) if reads(expr) else sympy.Integer(0)


# ---------------------------------------------------------------------------


def _indices(shape, pools: dict) -> tuple:
    """Index variables for an input of ``shape``, the same across a derivation's inputs where the sizes
    are: the gradients of b (4H) and of Wx (D, 4H) both read the gates' gradient at [n, p], one expression,
    which the compiled VJPs then compute once (indexeval.sharing), not once per input's own index name."""
    taken: dict = {}
    out = []
    for size in shape:
        pool = pools.setdefault(size, [])
        k = taken[size] = taken.get(size, -1) + 1
        if k == len(pool):
            pool.append(fresh_index("p"))
        out.append(pool[k])
    return tuple(out)


class GenericDerivation:
    """A rule's forward, VJP and error bounds at symbolic sizes (``exprs``, SymPy), compiled to NumPy
    steps (``evaluator``, a :class:`~derivcheck.engine.program.Evaluator`).

    ``inexact`` names inputs (and ``DOUT``) whose values carry rounding of their own, as a
    recurrence's cell gets its state and its carried gradient from earlier steps: the bounds
    then read each one's bound from the env, at :func:`bound_name` (see ``rounding.magnitude``).
    """

    def __init__(self, rule, hyper: dict, exprs: dict | None = None, inexact: tuple = (), evaluator: Evaluator | None = None):
        """Derived now, or from ``exprs`` (compiled now) or ``exprs`` and their ``evaluator`` (both read from the cache)."""
        self.rule, self.hyper, self.inexact = rule, dict(hyper), tuple(inexact)
        self.exprs = exprs if exprs is not None else self._derive()
        if evaluator is None:
            self._compile()
        else:
            self.evaluator = evaluator

    # -- symbolic ------------------------------------------------------------
    def _derive(self) -> dict:
        rule = self.rule
        # sizes a concrete hyperparameter fixes (broadcast_to's shape = [4, 3]) are numbers, the rest symbols
        sizes = ({d: size_symbol(d) for d in rule.dims}
                 | {d: sympy.Integer(r.min) for d, r in rule.dims.items() if r.min == r.max}  # a size the rule fixes
                 | {d: sympy.Integer(n) for d, n in rule.pinned_dims(self.hyper).items()})
        arrays = {n: indexed.variable(n, rule.shape_of(i.shape, sizes)) for n, i in rule.inputs.items()}
        for n, lab in rule.labels.items():
            arrays[n] = indexed.variable(n, rule.shape_of(lab.symbolic_shape(), sizes))
        env = rule.environment(sizes, self.hyper, arrays)
        try:
            out = indexed.asarray(rule.formula.evaluate(env, backend="generic"))
        except RuleError as exc:
            raise Unsupported(f"{exc.message} (line {exc.line})") from None
        except DerivcheckError as exc:
            raise Unsupported(str(exc)) from None
        ranges = dict(zip(out.indices, out.shape))
        if out.ndim:
            L = Sum(IndexedBase(DOUT, real=True)[out.indices] * out.expr, *((i, 0, s - 1) for i, s in zip(out.indices, out.shape)))
        else:
            L = sympy.Symbol(DOUT, real=True) * out.expr
        inexact = {n: bound_name(n) for n in self.inexact}
        forward_inexact = {n: b for n, b in inexact.items() if n != DOUT}
        exprs = {"out_indices": list(out.indices), "out_shape": list(out.shape), "out": out.expr,
                 "out_M": magnitude(out.expr, inexact=forward_inexact), "vjp": {}}
        pools: dict = {}  # size -> index variables: each input's first axis of that size takes the first, and so on
        for n, spec in rule.inputs.items():
            shape = rule.shape_of(spec.shape, sizes)
            p = _indices(shape, pools)
            element = IndexedBase(n, real=True)[p] if p else sympy.Symbol(n, real=True)
            r = {**ranges, **dict(zip(p, shape))}
            v = collapse(L.diff(element), r)
            exprs["vjp"][n] = {"indices": list(p), "shape": list(shape), "expr": v, "M": magnitude(v, inexact=inexact), "support": support(v)}
        return exprs

    # -- numeric ---------------------------------------------------------------
    def _compile(self):
        """``self.evaluator``: every expression compiled with one table (shared sub-expressions once)."""
        e = self.exprs
        out_ranges = dict(zip(e["out_indices"], e["out_shape"]))
        parts = {}
        with indexeval.sharing():
            parts["out"] = compiled(e["out"], e["out_indices"], out_ranges)
            parts["out_M"] = compiled(e["out_M"], e["out_indices"], out_ranges)
            for n, v in e["vjp"].items():
                ranges = {**out_ranges, **dict(zip(v["indices"], v["shape"]))}
                for name, part in (("vjp", "expr"), ("M", "M"), ("support", "support")):
                    parts[f"{name}:{n}"] = compiled(v[part], v["indices"], ranges)
        self.evaluator = Evaluator.from_parts(parts, e["vjp"], self.inexact)


def entry(g: GenericDerivation, which: str, index: tuple, dims: dict):
    """One element of the output (``which="forward"``) or of an input's VJP, in index notation.

    The free indices take the values in ``index`` and the sizes the values in
    ``dims``; sums stay sums (``Sum(dout[n, 7]*x[n, 3], (n, 0, 99))``), so an
    element at any size prints in one line. ``dout_`` prints as ``dout``.
    """
    if which == "forward":
        expr, free = g.exprs["out"], g.exprs["out_indices"]
    else:
        v = g.exprs["vjp"][which]
        expr, free = v["expr"], v["indices"]
    expr = expr.xreplace({i: sympy.Integer(k) for i, k in zip(free, index)})
    expr = expr.xreplace({size_symbol(d): sympy.Integer(n) for d, n in dims.items()})
    expr = expr.replace(lambda e: isinstance(e, IndexedBase) and str(e.label) == DOUT, lambda e: IndexedBase("dout", real=True))
    expr = expr.xreplace({sympy.Symbol(DOUT, real=True): sympy.Symbol("dout", real=True)})
    bound = sorted({v for s in expr.atoms(Sum) for v, _, _ in s.limits}, key=str)
    names = iter("jmnqrsuvw")
    return expr.xreplace({v: sympy.Symbol(next(names, str(v)), integer=True) for v in bound})
