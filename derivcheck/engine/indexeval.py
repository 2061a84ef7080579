"""Compile index-notation expressions into NumPy code, once; evaluate at any size.

An expression such as ``Sum(g[n, l] * x[n, k], (n, 0, N - 1))`` with free
indices ``(k, l)`` becomes a list of nodes, children before parents, each a
small Python closure over NumPy (``einsum`` for a sum of products, ufuncs,
reductions). The nodes are built from the SymPy expression without generating
or executing source code, so an expression read from the cache needs no
``lambdify``; SymPy is not touched when they run.

Every intermediate is an array whose axes are labelled by index variables.
The labels of each node are known when it is built, so how its operands are
transposed and broadcast onto each other is decided then, once; evaluating is
a loop over the list, and a node shared by several expressions (a VJP and its
error bound) is computed once per evaluation. ``backend="mpmath"`` evaluates
the same tree on object arrays of ``mpmath.mpf`` (the 50-digit reference of
the stability probe).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import string

import numpy as np
import sympy
from sympy import Indexed, KroneckerDelta, Sum

from derivcheck.engine.indexed import IsMax, ReduceMax, Unsupported, rebuilt
from derivcheck.engine.ops import ELEMENTWISE, NODES
from derivcheck.engine.symarray import exact


_IDS: dict = {}  # SymPy index variables and sub-expressions -> small ints: cheap to compare at run time


def _id(expr) -> int:
    return _IDS.setdefault(expr, len(_IDS))


def _mp_ufunc(name):
    return np.frompyfunc(ELEMENTWISE[name].mp, 1, 1)


def _heaviside(x):
    x = np.asarray(x)
    return np.where(x > 0, 1.0, np.where(x < 0, 0.0, 0.5)).astype(x.dtype if x.dtype != object else object)


class Backend:
    def __init__(self, name: str):
        self.name = name
        if name == "numpy":
            self.ufunc = {name: op.np for name, op in ELEMENTWISE.items()}
            self.float = np.float64
        elif name == "mpmath":
            self.ufunc = {name: _mp_ufunc(name) for name in ELEMENTWISE}
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


class Node:
    """One step of a compiled expression: ``op(env, backend, *children's arrays)`` -> an array whose axes
    are ``labels`` (index variables' ``_id``, every axis full size). The labels are known when the node is
    built, so aligning operands is decided then, not at each evaluation."""

    __slots__ = ("key", "labels", "op", "children")

    def __init__(self, labels: tuple, op, children: tuple = ()):
        self.key = next(_KEYS)  # the node's entry in an evaluation's MEMO
        self.labels, self.op, self.children = tuple(labels), op, tuple(children)


_KEYS = itertools.count()


def _union(nodes) -> tuple:
    """The labels of ``nodes`` in order of first appearance: the axes of their broadcast."""
    labels: list = []
    for nd in nodes:
        labels += [lab for lab in nd.labels if lab not in labels]
    return tuple(labels)


def _aligner(labels: tuple, union: tuple):
    """A function putting an array with axes ``labels`` on axes ``union`` (transposed, a size-1 axis for
    each label it lacks), or None when it broadcasts as it is."""
    if not labels or labels == union[len(union) - len(labels):]:  # a scalar, or a trailing run of the axes
        return None
    present = [lab for lab in union if lab in labels]
    order = tuple(labels.index(lab) for lab in present)
    where = tuple(slice(None) if lab in labels else None for lab in union)
    if order == tuple(range(len(order))):
        return lambda a: a[where]
    return lambda a: np.transpose(a, order)[where]


def _aligned(children: tuple):
    """(union of the children's labels, a function aligning their arrays onto it)."""
    union = _union(children)
    fns = [_aligner(c.labels, union) for c in children]
    if not any(fns):
        return union, lambda arrays: arrays
    return union, lambda arrays: [a if f is None else f(np.asarray(a)) for f, a in zip(fns, arrays)]


class Compiled:
    """``fn(env, backend)`` -> array whose axes are ``free`` (in that order)."""

    def __init__(self, expr, free: tuple, ranges: dict):
        self.expr, self.free = expr, tuple(free)
        self.ranges = dict(ranges)  # index variable -> size expression (free and bound)
        with sharing():  # an expression repeated inside this one is one node
            root = _compile(expr, self.ranges)
        self._root, self._program = root.key, _program(root)
        free_ids = tuple(_id(i) for i in self.free)
        self._stray = any(lab not in free_ids for lab in root.labels)
        present = [i for i in free_ids if i in root.labels]
        self._order = [root.labels.index(i) for i in present]
        self._present = [i in root.labels for i in free_ids]
        self._sizes = [_size_fn(self.ranges[i]) for i in self.free]

    def shape(self, env: dict) -> tuple:
        """The result's shape at the sizes in ``env`` (Python integers, no SymPy)."""
        return tuple(size(env) for size in self._sizes)

    def __call__(self, env: dict, backend_name: str = "numpy"):
        be = backend(backend_name)
        if self._stray:
            raise Unsupported("an index is free in the expression but not an output index")
        memo = env.get(MEMO)
        if memo is None:
            memo = {}
        with np.errstate(all="ignore"):
            a = np.asarray(_run(self._program, memo, env, be)[self._root])
        if self._order:
            a = np.transpose(a, self._order)
        shape = self.shape(env)
        if self.free:
            it = iter(np.shape(a))
            a = np.reshape(a, [next(it) if p else 1 for p in self._present])
        return np.array(np.broadcast_to(a, shape), dtype=be.float)


def _program(root: Node) -> list:
    """The nodes ``root`` needs, children before parents (keys grow as nodes are built, children first)."""
    seen, todo = {}, [root]
    while todo:
        nd = todo.pop()
        if nd.key not in seen:
            seen[nd.key] = nd
            todo += nd.children
    return [seen[k] for k in sorted(seen)]


def _run(program: list, memo: dict, env: dict, be) -> dict:
    """Evaluate ``program`` into ``memo`` (node key -> array); a node already there is not computed
    again (its children are there too: whoever computed it computed them first)."""
    for nd in program:
        if nd.key not in memo:
            memo[nd.key] = nd.op(env, be, *[memo[c.key] for c in nd.children])
    return memo


def _size_fn(size):
    """``env -> int`` for a size expression (``H``, ``2*H``, ``T - 1``): Python integers, exactly."""
    size = exact(size)
    if size.is_Integer:
        n = int(size)
        return lambda env: n
    if isinstance(size, sympy.Symbol):
        name = str(size)
        return lambda env: int(env[name])
    if (size.is_Add or size.is_Mul) and all(isinstance(a, (sympy.Add, sympy.Mul, sympy.Symbol, sympy.Integer))
                                            for a in sympy.preorder_traversal(size)):
        parts = [_size_fn(a) for a in size.args]
        if size.is_Add:
            return lambda env: sum(p(env) for p in parts)
        return lambda env: math.prod(p(env) for p in parts)
    root = _compile(size, {})
    program = _program(root)

    def fn(env):
        with np.errstate(all="ignore"):
            return int(round(float(_run(program, {}, env, _BACKENDS["numpy"])[root.key])))

    return fn


MEMO = "__memo__"  # an env entry: {node key: result}, shared by the expressions of one evaluation


_SHARED: dict | None = None  # inside sharing(): (expression, ranges) -> its node; {id(ranges): (ranges, key, sizes
# by label)}; (expression, its labels' sizes) -> its node


@contextlib.contextmanager
def sharing():
    """Compile every expression of one derivation with one table: a sub-expression met again (a VJP's
    error bound repeats its sub-expressions many times) is compiled once, and evaluated once per
    evaluation (the env's ``MEMO``)."""
    global _SHARED
    outer = _SHARED
    if outer is None:
        _SHARED = {"nodes": {}, "ranges": {}, "canonical": {}, "renamed": {}, "size": {}}
    try:
        yield
    finally:
        _SHARED = outer


def _compile(expr, ranges: dict) -> Node:
    """The node computing ``expr``; inside :func:`sharing`, one node per expression and ranges."""
    if _SHARED is None:
        return _compile_node(expr, ranges)
    seen = _SHARED["ranges"].get(id(ranges))
    if seen is None or seen[0] is not ranges:  # the dict itself is kept, so its id is not reused
        seen = _SHARED["ranges"][id(ranges)] = (ranges, frozenset(ranges.items()), {_id(v): n for v, n in ranges.items()},
                                                {_id(v): v for v in ranges})
    key = (expr, seen[1])
    hit = _SHARED["nodes"].get(key)
    if hit is None:
        hit = _compile_node(expr, ranges)
        # its value depends on the sizes of its own labels only: compiled where other indices are in range
        # too (the VJP of Wx has the gates' gradient at [n, p] inside, as b's does, with one more index), it
        # is the node already made there
        sizes, symbols = seen[2], seen[3]
        if all(lab in sizes for lab in hit.labels):
            hit = _SHARED["canonical"].setdefault((expr, tuple((lab, sizes[lab]) for lab in hit.labels)), hit)
            # and the same expression under other index names (exp(x[n, c]) in the output, exp(x[p, q]) in a
            # VJP, exp(x[n, k]) inside a sum over k) is the same array, its axes named otherwise: the labels,
            # in the node's axis order, are renamed to placeholders by position, and the sizes must match.
            # Small expressions only: renaming costs the expression's size, and every node is compiled
            if _size(expr) <= RENAMED_SIZE:
                renamed = _renamed(expr, {symbols[lab]: k for k, lab in enumerate(hit.labels)})
                first = _SHARED["renamed"].setdefault((renamed, tuple(sizes[lab] for lab in hit.labels)), hit)
                if first is not hit:
                    hit = Node(hit.labels, _same, (first,))
        _SHARED["nodes"][key] = hit
    return hit


RENAMED_SIZE = 12  # set by hand: exp(-x[i, j]) is 7 (the costly ufuncs of an index); an LSTM's bounds have thousands


def _size(expr) -> int:
    """The number of nodes of ``expr``'s tree (each distinct sub-expression counted once per :func:`sharing`)."""
    sizes = _SHARED["size"]
    hit = sizes.get(expr)
    if hit is None:
        hit = sizes[expr] = 1 + sum(_size(a) for a in expr.args)
    return hit


def _same(env, be, a):
    return a


def _renamed(expr, axes: dict):
    """``expr`` as nested tuples, each symbol of ``axes`` written as its axis number: a key for the form as
    written. Not rebuilt as SymPy, which would simplify it (Abs(-exp(x)) to exp(x)) and clear its own cache."""
    if expr in axes:
        return ("axis", axes[expr])
    if not expr.args:
        return expr
    return (expr.func, tuple(_renamed(a, axes) for a in expr.args))


def _nonnegative(expr) -> bool:
    """Whether ``expr`` is >= 0 (or NaN) at any real values of its symbols, by its form alone: exp, Abs, a
    non-negative number, and sums, products, sums over an index and powers of such. np.abs of it is the
    array itself, bit for bit (none of these gives -0.0), so an error bound's Abs of it is not computed."""
    if expr.is_Number:
        return bool(expr >= 0)
    if isinstance(expr, (sympy.exp, sympy.Abs)):
        return True
    if expr.is_Add or expr.is_Mul:
        return all(_nonnegative(a) for a in expr.args)
    if expr.is_Pow:
        return _nonnegative(expr.args[0])
    if isinstance(expr, Sum):
        return _nonnegative(expr.function)
    return False


_UNARY = tuple((fn, op.name) for fn, op in NODES.items())  # SymPy function -> ufunc name (ops.py)


def _compile_node(expr, ranges: dict) -> Node:
    if expr.is_Number:
        value, numbers = expr, {"numpy": _BACKENDS["numpy"].number(expr)}

        def number(env, be):
            hit = numbers.get(be.name)
            if hit is None:
                hit = numbers[be.name] = be.number(value)
            return hit

        return Node((), number)
    if expr is sympy.true or expr is sympy.false:
        flag = np.asarray(bool(expr))
        return Node((), lambda env, be: flag)
    if isinstance(expr, sympy.Symbol):
        if expr in ranges:  # an index variable used as a value
            size = _size_fn(ranges[expr])
            return Node((_id(expr),), lambda env, be: np.arange(size(env)))
        name = str(expr)

        def symbol(env, be):
            return np.asarray(env[name], dtype=be.float) if be.float is not object else np.asarray(env[name], dtype=object)

        return Node((), symbol)
    if isinstance(expr, Indexed):
        return _compile_indexed(expr, ranges)
    if expr.is_Add or expr.is_Mul:
        return _fold([_compile(a, ranges) for a in expr.args], np.add if expr.is_Add else np.multiply)
    if expr.is_Pow:
        base, p = (_compile(a, ranges) for a in expr.args)
        exponent = expr.args[1]
        if exponent == -1:
            return Node(base.labels, lambda env, be, b: 1 / b, (base,))
        if exponent == 2:
            return Node(base.labels, lambda env, be, b: b * b, (base,))
        union, align = _aligned((base, p))
        return Node(union, lambda env, be, b, e: np.power(*align([b, e])), (base, p))
    if isinstance(expr, sympy.Abs) and len(expr.args) == 1 and _nonnegative(expr.args[0]):
        return _compile(expr.args[0], ranges)
    for cls, name in _UNARY:
        if isinstance(expr, cls):
            if len(expr.args) != 1:
                raise Unsupported(f"{name} with {len(expr.args)} arguments")
            inner = _compile(expr.args[0], ranges)
            return Node(inner.labels, lambda env, be, a, name=name: be.ufunc[name](a), (inner,))
    if isinstance(expr, Sum):
        return _compile_sum(expr, ranges)
    if isinstance(expr, ReduceMax):
        return _compile_max(expr, ranges)
    if isinstance(expr, (KroneckerDelta, IsMax)):  # 1 where the two arguments are equal, else 0
        children = tuple(_compile(x, ranges) for x in expr.args)
        union, align = _aligned(children)

        def delta(env, be, a, b):
            a, b = align([a, b])
            return (a == b).astype(be.float)

        return Node(union, delta, children)
    if isinstance(expr, (sympy.Max, sympy.Min)):
        return _fold([_compile(a, ranges) for a in expr.args], np.maximum if isinstance(expr, sympy.Max) else np.minimum)
    if isinstance(expr, sympy.Heaviside):
        inner = _compile(expr.args[0], ranges)
        if len(expr.args) > 1 and expr.args[1] != sympy.Rational(1, 2):
            raise Unsupported("Heaviside with a value at 0 other than 1/2")
        return Node(inner.labels, lambda env, be, a: _heaviside(a), (inner,))
    if isinstance(expr, sympy.sign):
        inner = _compile(expr.args[0], ranges)
        return Node(inner.labels, lambda env, be, a: np.sign(a), (inner,))
    if isinstance(expr, sympy.Piecewise):
        return _compile_piecewise(expr, ranges)
    if isinstance(expr, sympy.core.relational.Relational) and expr.rel_op in (">", ">=", "<", "<=", "=="):
        children = tuple(_compile(a, ranges) for a in expr.args)
        op = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal}[expr.rel_op]
        union, align = _aligned(children)
        return Node(union, lambda env, be, a, b: op(*align([a, b])), children)
    if isinstance(expr, (sympy.And, sympy.Or)):
        op = np.logical_and if isinstance(expr, sympy.And) else np.logical_or
        return _fold([_compile(a, ranges) for a in expr.args], lambda a, b: op(np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)))
    if isinstance(expr, sympy.Not):
        inner = _compile(expr.args[0], ranges)
        return Node(inner.labels, lambda env, be, a: np.logical_not(a), (inner,))
    raise Unsupported(f"no NumPy form for {type(expr).__name__}")


def _fold(parts: list, combine) -> Node:
    """``combine`` over the parts' values, aligned by label; broadcast to the full size of every label."""
    children = tuple(parts)
    union, align = _aligned(children)
    # when no part has every label (x[i] * y[j]) the broadcast has them all; when one part does, it is that shape
    whole = any(c.labels == union for c in children) or not union

    def fold(env, be, *arrays):
        arrays = align(arrays)
        acc = arrays[0]
        for a in arrays[1:]:
            acc = combine(acc, a)
        if whole:
            return acc
        return np.broadcast_to(acc, np.broadcast_shapes(*(np.shape(a) for a in arrays)))

    return Node(union, fold, children)


def _compile_piecewise(expr, ranges: dict) -> Node:
    children = tuple(_compile(x, ranges) for e, c in expr.args for x in (e, c))
    union, align = _aligned(children)
    count = len(expr.args)

    def piecewise(env, be, *arrays):
        # the last piece whose condition holds is overwritten by earlier ones: first match wins
        arrays = align(arrays)
        shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
        out = np.broadcast_to(arrays[-2], shape).copy()
        for k in range(count - 2, -1, -1):
            cond = np.broadcast_to(arrays[2 * k + 1], shape).astype(bool)
            out = np.where(cond, np.broadcast_to(arrays[2 * k], shape), out)
        return out

    return Node(union, piecewise, children)


def _compile_indexed(expr: Indexed, ranges: dict) -> Node:
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
    # last axis first: an integer removes its axis, and arrays of positions do not combine in one subscript
    steps = [(axis, p) for axis, p in reversed(list(enumerate(positions)))]

    def indexed(env, be):
        a = env[name]
        for axis, p in steps:
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
        return a

    return Node(unique, indexed)


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


def _compile_sum(expr: Sum, ranges: dict) -> Node:
    """Sum over one or more indices; a sum of a product is one ``einsum``, a sum of a sum the sum of
    its terms' sums (so that no term's product is formed over all the indices the terms span)."""
    body = expr.function
    if body.is_Add:
        return _fold([_compile(rebuilt(Sum, t, expr.limits), ranges) for t in body.args], np.add)
    inner_ranges = dict(ranges)
    bound = []
    for var, lo, hi in expr.limits:
        if lo != 0:
            raise Unsupported(f"a sum from {lo}")
        inner_ranges[var] = exact(hi) + 1
        bound.append(var)
    factors = tuple(_compile(f, inner_ranges) for f in _factors(body))
    present = set().union(*(f.labels for f in factors))
    absent = [_size_fn(inner_ranges[var]) for var in bound if _id(var) not in present]  # n equal terms each
    bound = [_id(var) for var in bound]
    union, align = _aligned(factors)
    keep = tuple(lab for lab in union if lab not in bound)
    axes = tuple(union.index(v) for v in bound if v in union)
    einsum = len(union) <= 52
    ids = {lab: i for i, lab in enumerate(union)}
    subscripts = [[ids[lab] for lab in f.labels] for f in factors]
    target = [ids[lab] for lab in keep]
    plans: dict = {}  # operands' shapes -> False (one loop) or the contraction order, found once per shapes

    def summed(env, be, *arrays):
        if be.float is not object and einsum:
            arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
            shapes = tuple(a.shape for a in arrays)
            plan = plans.get(shapes)
            if plan is None:
                operands = [x for a, s in zip(arrays, subscripts) for x in (a, s)]
                sizes = {}
                for s, shape in zip(subscripts, shapes):
                    sizes.update(zip(s, shape))
                # one loop over every label when small: cheaper than finding a path; else BLAS where it can
                plan = plans[shapes] = False if math.prod(sizes.values()) <= SMALL_EINSUM else \
                    np.einsum_path(*operands, target, optimize="greedy")[0]
            out = np.einsum(*[x for a, s in zip(arrays, subscripts) for x in (a, s)], target, optimize=plan)
        else:
            arrays = align(arrays)
            prod = arrays[0]
            for a in arrays[1:]:
                prod = prod * a
            prod = np.broadcast_to(prod, np.broadcast_shapes(*(np.shape(a) for a in arrays)))
            out = prod.sum(axis=axes) if axes else prod
        if absent:
            out = out * math.prod(count(env) for count in absent)
        return out

    return Node(keep, summed, factors)


def _compile_max(expr, ranges: dict) -> Node:
    """The maximum over one or more indices (indexed.ReduceMax): NumPy's max over their axes."""
    inner_ranges = dict(ranges)
    bound = []
    for var, lo, hi in expr.limits:
        if lo != 0:
            raise Unsupported(f"a max from {lo}")
        inner_ranges[var] = exact(hi) + 1
        bound.append(_id(var))
    body = _compile(expr.function, inner_ranges)
    axes = tuple(body.labels.index(v) for v in bound if v in body.labels)
    keep = tuple(lab for lab in body.labels if lab not in bound)
    if not axes:  # a body free of an index: the same value throughout
        return Node(keep, lambda env, be, a: a, (body,))
    return Node(keep, lambda env, be, a: np.max(a, axis=axes), (body,))
