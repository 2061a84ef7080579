"""Compile index-notation expressions into NumPy code, once; evaluate at any size.

An expression such as ``Sum(g[n, l] * x[n, k], (n, 0, N - 1))`` with free
indices ``(k, l)`` becomes a tree of small Python closures over NumPy
(``einsum`` for a sum of products, ufuncs, reductions). The tree is built
from the SymPy expression without generating or executing source code, so an
expression read from the cache needs no ``lambdify``; SymPy is not touched
when the closures run.

Every intermediate is an array whose axes are labelled by index variables;
operands are aligned by label and broadcast. ``backend="mpmath"`` evaluates
the same tree on object arrays of ``mpmath.mpf`` (the 50-digit reference of
the stability probe).
"""
from __future__ import annotations

import contextlib
import math
import string

import numpy as np
import sympy
from sympy import Indexed, KroneckerDelta, Sum

from .indexed import IsMax, ReduceMax, Unsupported, rebuilt
from .symarray import exact


_IDS: dict = {}  # SymPy index variables and sub-expressions -> small ints: cheap to compare at run time


def _id(expr) -> int:
    return _IDS.setdefault(expr, len(_IDS))


class Labelled:
    """An array and the index variable (its ``_id``) of each of its axes (every axis full size)."""

    __slots__ = ("array", "labels")

    def __init__(self, array, labels: tuple):
        self.array, self.labels = array, labels


def _align(items: list[Labelled]) -> tuple[list, tuple]:
    """The arrays transposed and expanded so that they broadcast over the union of labels."""
    labels: list = []
    for it in items:
        labels += [lab for lab in it.labels if lab not in labels]
    out = []
    for it in items:
        a = it.array
        if it.labels:
            order = [it.labels.index(lab) for lab in labels if lab in it.labels]
            a = np.transpose(a, order)
        shape = [a.shape[[lab for lab in labels if lab in it.labels].index(lab)] if lab in it.labels else 1 for lab in labels]
        out.append(np.reshape(a, shape) if labels else a)
    return out, tuple(labels)


def _mp_ufunc(name):
    import mpmath

    fn = {"exp": mpmath.exp, "log": mpmath.log, "tanh": mpmath.tanh, "sin": mpmath.sin, "cos": mpmath.cos, "abs": abs,
          "sqrt": mpmath.sqrt}[name]
    return np.frompyfunc(fn, 1, 1)


def _heaviside(x):
    x = np.asarray(x)
    return np.where(x > 0, 1.0, np.where(x < 0, 0.0, 0.5)).astype(x.dtype if x.dtype != object else object)


class Backend:
    def __init__(self, name: str):
        self.name = name
        if name == "numpy":
            self.ufunc = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "sin": np.sin, "cos": np.cos, "abs": np.abs,
                          "sqrt": np.sqrt}
            self.float = np.float64
        elif name == "mpmath":
            self.ufunc = {k: _mp_ufunc(k) for k in ("exp", "log", "tanh", "sin", "cos", "abs", "sqrt")}
            self.float = object
        else:
            raise ValueError(name)

    def number(self, value):
        if self.name == "numpy":
            return np.asarray(float(value))
        import mpmath

        if isinstance(value, sympy.Rational):
            return np.asarray(mpmath.mpf(value.p) / value.q, dtype=object)
        return np.asarray(mpmath.mpf(str(value)) if isinstance(value, sympy.Float) else mpmath.mpf(float(value)), dtype=object)


_BACKENDS = {"numpy": Backend("numpy")}


def backend(name: str) -> Backend:
    if name not in _BACKENDS:
        _BACKENDS[name] = Backend(name)
    return _BACKENDS[name]


class Compiled:
    """``fn(env, backend)`` -> array whose axes are ``free`` (in that order)."""

    def __init__(self, expr, free: tuple, ranges: dict):
        self.expr, self.free = expr, tuple(free)
        self.ranges = dict(ranges)  # index variable -> size expression (free and bound)
        self._node = _compile(expr, self.ranges)
        self._free = tuple(_id(i) for i in self.free)
        self._sizes = [_size_fn(self.ranges[i]) for i in self.free]

    def __call__(self, env: dict, backend_name: str = "numpy"):
        be = backend(backend_name)
        with np.errstate(all="ignore"):
            res = self._node(env, be)
        free = self._free
        stray = [lab for lab in res.labels if lab not in free]
        if stray:
            raise Unsupported("an index is free in the expression but not an output index")
        a = np.asarray(res.array)
        present = [i for i in free if i in res.labels]
        if present:
            a = np.transpose(a, [res.labels.index(i) for i in present])
        a = np.reshape(a, [a.shape[present.index(i)] if i in present else 1 for i in free]) if free else a
        shape = tuple(size(env) for size in self._sizes)
        return np.array(np.broadcast_to(a, shape), dtype=be.float)


def _size_fn(size):
    size = exact(size)
    if size.is_Integer:
        n = int(size)
        return lambda env: n
    syms = sorted(size.free_symbols, key=str)
    if len(syms) == 1 and size == syms[0]:
        name = str(syms[0])
        return lambda env: int(env[name])
    node = _compile(size, {})

    def fn(env):
        return int(round(float(node(env, _BACKENDS["numpy"]).array)))

    return fn


MEMO = "__memo__"  # an env entry: {expression: result}, shared by the expressions of one evaluation


_SHARED: dict | None = None  # inside sharing(): (expression, ranges) -> its closure, {id(ranges): key of ranges}


@contextlib.contextmanager
def sharing():
    """Compile every expression of one derivation with one table: a sub-expression met again (a VJP's
    error bound repeats its sub-expressions many times) is compiled once."""
    global _SHARED
    outer = _SHARED
    if outer is None:
        _SHARED = {"closures": {}, "ranges": {}}
    try:
        yield
    finally:
        _SHARED = outer


def _compile(expr, ranges: dict):
    """A closure ``(env, backend) -> Labelled`` for ``expr``; a sub-expression met again in the
    same evaluation (the env's ``MEMO`` dict) is not computed again."""
    if _SHARED is None or expr.is_Atom:
        return _compile_fresh(expr, ranges)
    seen = _SHARED["ranges"].get(id(ranges))
    if seen is None or seen[0] is not ranges:  # the dict itself is kept, so its id is not reused
        seen = _SHARED["ranges"][id(ranges)] = (ranges, frozenset(ranges.items()))
    key = (expr, seen[1])
    hit = _SHARED["closures"].get(key)
    if hit is None:
        hit = _SHARED["closures"][key] = _compile_fresh(expr, ranges)
    return hit


def _compile_fresh(expr, ranges: dict):
    node = _compile_node(expr, ranges)
    if expr.is_Atom:
        return node

    key = _id(expr)

    def memoized(env, be):
        memo = env.get(MEMO)
        if memo is None:
            return node(env, be)
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = node(env, be)
        return hit

    return memoized


def _compile_node(expr, ranges: dict):
    if expr.is_Number:
        value = expr

        def number(env, be):
            return Labelled(be.number(value), ())

        return number
    if expr is sympy.true or expr is sympy.false:
        flag = bool(expr)
        return lambda env, be: Labelled(np.asarray(flag), ())
    if isinstance(expr, sympy.Symbol):
        if expr in ranges:  # an index variable used as a value
            size, lab = _size_fn(ranges[expr]), _id(expr)
            return lambda env, be: Labelled(np.arange(size(env)), (lab,))
        name = str(expr)

        def symbol(env, be):
            v = env[name]
            return Labelled(np.asarray(v, dtype=be.float) if be.float is not object else np.asarray(v, dtype=object), ())

        return symbol
    if isinstance(expr, Indexed):
        return _compile_indexed(expr, ranges)
    if expr.is_Add or expr.is_Mul:
        return _fold([_compile(a, ranges) for a in expr.args], np.add if expr.is_Add else np.multiply)
    if expr.is_Pow:
        base, p = (_compile(a, ranges) for a in expr.args)
        exponent = expr.args[1]

        def power(env, be):
            if exponent == -1:
                r = base(env, be)
                return Labelled(1 / r.array, r.labels)
            if exponent == 2:
                r = base(env, be)
                return Labelled(r.array * r.array, r.labels)
            arrays, labels = _align([base(env, be), p(env, be)])
            return Labelled(np.power(arrays[0], arrays[1]), labels)

        return power
    for cls, name in ((sympy.exp, "exp"), (sympy.log, "log"), (sympy.tanh, "tanh"), (sympy.sin, "sin"), (sympy.cos, "cos"),
                      (sympy.Abs, "abs")):
        if isinstance(expr, cls):
            if len(expr.args) != 1:
                raise Unsupported(f"{name} with {len(expr.args)} arguments")
            inner = _compile(expr.args[0], ranges)

            def unary(env, be, inner=inner, name=name):
                r = inner(env, be)
                return Labelled(be.ufunc[name](r.array), r.labels)

            return unary
    if isinstance(expr, Sum):
        return _compile_sum(expr, ranges)
    if isinstance(expr, ReduceMax):
        return _compile_max(expr, ranges)
    if isinstance(expr, (KroneckerDelta, IsMax)):  # 1 where the two arguments are equal, else 0
        a, b = (_compile(x, ranges) for x in expr.args)

        def delta(env, be):
            arrays, labels = _align([a(env, be), b(env, be)])
            return Labelled((arrays[0] == arrays[1]).astype(be.float), labels)

        return delta
    if isinstance(expr, (sympy.Max, sympy.Min)):
        return _fold([_compile(a, ranges) for a in expr.args], np.maximum if isinstance(expr, sympy.Max) else np.minimum)
    if isinstance(expr, sympy.Heaviside):
        inner = _compile(expr.args[0], ranges)
        if len(expr.args) > 1 and expr.args[1] != sympy.Rational(1, 2):
            raise Unsupported("Heaviside with a value at 0 other than 1/2")

        def heaviside(env, be):
            r = inner(env, be)
            return Labelled(_heaviside(r.array), r.labels)

        return heaviside
    if isinstance(expr, sympy.sign):
        inner = _compile(expr.args[0], ranges)
        return lambda env, be: (lambda r: Labelled(np.sign(r.array), r.labels))(inner(env, be))
    if isinstance(expr, sympy.Piecewise):
        pieces = [(_compile(e, ranges), _compile(c, ranges)) for e, c in expr.args]

        def piecewise(env, be):
            # the last piece whose condition holds is overwritten by earlier ones: first match wins
            items = []
            for e, c in pieces:
                items += [e(env, be), c(env, be)]
            arrays, labels = _align(items)
            shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
            out = np.broadcast_to(arrays[-2], shape).copy()
            for k in range(len(pieces) - 2, -1, -1):
                cond = np.broadcast_to(arrays[2 * k + 1], shape).astype(bool)
                out = np.where(cond, np.broadcast_to(arrays[2 * k], shape), out)
            return Labelled(out, labels)

        return piecewise
    if isinstance(expr, sympy.core.relational.Relational) and expr.rel_op in (">", ">=", "<", "<=", "=="):
        left, right = (_compile(a, ranges) for a in expr.args)
        op = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal}[expr.rel_op]

        def relation(env, be):
            arrays, labels = _align([left(env, be), right(env, be)])
            return Labelled(op(arrays[0], arrays[1]), labels)

        return relation
    if isinstance(expr, (sympy.And, sympy.Or)):
        op = np.logical_and if isinstance(expr, sympy.And) else np.logical_or
        return _fold([_compile(a, ranges) for a in expr.args], lambda a, b: op(np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)))
    if isinstance(expr, sympy.Not):
        inner = _compile(expr.args[0], ranges)
        return lambda env, be: (lambda r: Labelled(np.logical_not(r.array), r.labels))(inner(env, be))
    raise Unsupported(f"no NumPy form for {type(expr).__name__}")


def _fold(parts: list, combine):
    """``combine`` over the parts' values, aligned by label (element-wise parts need no alignment)."""
    def fold(env, be):
        items = [p(env, be) for p in parts]
        full = max(items, key=lambda it: len(it.labels))
        if all(not it.labels or it.labels == full.labels for it in items):
            acc = items[0].array
            for it in items[1:]:
                acc = combine(acc, it.array)
            shape = np.shape(full.array)
            return Labelled(acc if np.shape(acc) == shape else np.broadcast_to(acc, shape), full.labels)
        arrays, labels = _align(items)
        acc = arrays[0]
        for a in arrays[1:]:
            acc = combine(acc, a)
        return Labelled(np.broadcast_to(acc, np.broadcast_shapes(*(np.shape(a) for a in arrays))), labels)

    return fold


def _compile_indexed(expr: Indexed, ranges: dict):
    name = str(expr.base.label)
    positions = []  # per axis: ("fixed", int) or ("label", symbol, offset, count): the positions offset..offset+count-1
    for idx in expr.indices:
        if idx.is_Integer:
            positions.append(("fixed", int(idx)))
            continue
        var, offset = (idx, sympy.Integer(0)) if isinstance(idx, sympy.Symbol) and idx in ranges else _shifted(idx, ranges) or (None, None)
        if var is None:
            raise Unsupported(f"index expression {idx} in {expr}")
        positions.append(("label", _id(var), _size_fn(offset), _size_fn(ranges[var])))  # a slice's index is i + 2*H
    labels_in = [p[1] for p in positions if p[0] == "label"]
    unique = tuple(dict.fromkeys(labels_in))
    diagonal = len(unique) != len(labels_in)
    letters = {lab: string.ascii_letters[i] for i, lab in enumerate(unique)}
    spec = "".join(letters[lab] for lab in labels_in) + "->" + "".join(letters[lab] for lab in unique)

    def indexed(env, be):
        a = env[name]
        # last axis first: an integer removes its axis, and arrays of positions do not combine in one subscript
        for axis in range(len(positions) - 1, -1, -1):
            p = positions[axis]
            if p[0] == "fixed":
                a = a[(slice(None),) * axis + (p[1],)]
                continue
            start, count = p[2](env), p[3](env)
            if start == 0 and count == a.shape[axis]:
                continue
            if 0 <= start and start + count <= a.shape[axis]:
                a = a[(slice(None),) * axis + (slice(start, start + count),)]
            else:  # a collapsed delta's index (p - H, or p past this axis): its _within factor zeroes the positions outside
                a = np.take(a, np.clip(np.arange(start, start + count), 0, a.shape[axis] - 1), axis=axis)
        if diagonal:
            a = np.einsum(spec, a)
        return Labelled(a, unique)

    return indexed


def _shifted(idx, ranges: dict):
    """``(i, c)`` when ``idx`` is ``i + c``: ``i`` an index variable, ``c`` free of index variables; else None."""
    idx = sympy.expand(idx)  # -(H - p) is p - H
    if not idx.is_Add:
        return None
    variables = [t for t in idx.args if isinstance(t, sympy.Symbol) and t in ranges]
    if len(variables) != 1:
        return None
    offset = idx - variables[0]
    if offset.free_symbols & set(ranges):
        return None
    return variables[0], offset


def _factors(expr) -> list:
    return list(expr.args) if expr.is_Mul else [expr]


SMALL_EINSUM = 4096  # set by hand: below this many multiply-adds, np.einsum_path costs more than the product


def _compile_sum(expr: Sum, ranges: dict):
    """Sum over one or more indices; a sum of a product is one ``einsum``, a sum of a sum the sum of
    its terms' sums (so that no term's product is formed over all the indices the terms span)."""
    body = expr.function
    if body.is_Add:
        return _fold([_compile(rebuilt(Sum, t, expr.limits), ranges) for t in body.args], np.add)
    limits = list(expr.limits)
    inner_ranges = dict(ranges)
    bound = []
    for var, lo, hi in limits:
        if lo != 0:
            raise Unsupported(f"a sum from {lo}")
        inner_ranges[var] = exact(hi) + 1
        bound.append(var)
    factors = [_compile(f, inner_ranges) for f in _factors(body)]
    counts = {_id(var): _size_fn(inner_ranges[var]) for var in bound}
    bound = [_id(var) for var in bound]

    paths: dict = {}

    def summed(env, be):
        items = [f(env, be) for f in factors]
        present = set().union(*(it.labels for it in items))
        scale = 1
        for var in bound:
            if var not in present:  # the body does not depend on it: n equal terms
                scale *= counts[var](env)
        all_labels = list(dict.fromkeys(lab for it in items for lab in it.labels))
        keep = tuple(lab for lab in all_labels if lab not in bound)
        if be.float is not object and len(all_labels) <= 52:
            ids = {lab: i for i, lab in enumerate(all_labels)}
            operands = []
            for it in items:
                operands += [np.asarray(it.array, dtype=np.float64), [ids[lab] for lab in it.labels]]
            target = [ids[lab] for lab in keep]
            sizes = {}
            for a, labs in zip(operands[0::2], operands[1::2]):
                sizes.update(zip(labs, np.shape(a)))
            if math.prod(sizes.values()) <= SMALL_EINSUM:  # one loop over every label: cheaper than finding a path
                out = np.einsum(*operands, target, optimize=False)
            else:
                # the contraction order, found once per shapes: finding it costs more than a small einsum itself
                key = (tuple(map(tuple, operands[1::2])), tuple(np.shape(a) for a in operands[0::2]), tuple(target))
                path = paths.get(key)
                if path is None:
                    path = paths[key] = np.einsum_path(*operands, target, optimize="greedy")[0]
                out = np.einsum(*operands, target, optimize=path)  # BLAS where it can
        else:
            arrays, labels = _align(items)
            prod = arrays[0]
            for a in arrays[1:]:
                prod = prod * a
            prod = np.broadcast_to(prod, np.broadcast_shapes(*(np.shape(a) for a in arrays)))
            axes = tuple(labels.index(v) for v in bound if v in labels)
            out = prod.sum(axis=axes) if axes else prod
            keep = tuple(lab for lab in labels if lab not in bound)
        if scale != 1:
            out = out * scale
        return Labelled(out, keep)

    return summed


def _compile_max(expr, ranges: dict):
    """The maximum over one or more indices (indexed.ReduceMax): NumPy's max over their axes."""
    inner_ranges = dict(ranges)
    bound = []
    for var, lo, hi in expr.limits:
        if lo != 0:
            raise Unsupported(f"a max from {lo}")
        inner_ranges[var] = exact(hi) + 1
        bound.append(_id(var))
    body = _compile(expr.function, inner_ranges)

    def maximum(env, be):
        r = body(env, be)
        axes = tuple(r.labels.index(v) for v in bound if v in r.labels)
        out = np.max(r.array, axis=axes) if axes else r.array  # a body free of an index: the same value throughout
        return Labelled(out, tuple(lab for lab in r.labels if lab not in bound))

    return maximum
