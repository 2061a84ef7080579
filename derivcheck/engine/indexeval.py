"""Compile index-notation expressions into NumPy steps, once; evaluate at any size.

An expression such as ``Sum(g[n, l] * x[n, k], (n, 0, N - 1))`` with free
indices ``(k, l)`` becomes a list of :mod:`derivcheck.engine.program` nodes,
children before parents, each a small NumPy step (``einsum`` for a sum of
products, ufuncs, reductions) described by data. The nodes are built from the
SymPy expression without generating or executing source code; they are stored
as they are (``program.dump``), so an expression read from the cache needs
neither ``lambdify`` nor SymPy.

Every intermediate is an array whose axes are labelled by index variables
(here, small integers: :func:`_id`). A node shared by several expressions (a
VJP and its error bound) is compiled once (:func:`sharing`) and computed once
per evaluation.
"""
from __future__ import annotations

import contextlib

import sympy
from sympy import Indexed, KroneckerDelta, Sum

from derivcheck.engine import program
from derivcheck.engine.indexed import IsMax, ReduceMax, rebuilt
from derivcheck.engine.ops import sympy_nodes
from derivcheck.engine.program import Node
from derivcheck.engine.symarray import exact
from derivcheck.errors import Unsupported


_IDS: dict = {}  # SymPy index variables and sub-expressions -> small ints: cheap to compare at run time


def _id(expr) -> int:
    return _IDS.setdefault(expr, len(_IDS))


def compiled(expr, free: tuple, ranges: dict) -> program.Compiled:
    """``expr`` with free indices ``free`` (index variable -> size in ``ranges``, bound ones too), compiled."""
    with sharing():  # an expression repeated inside this one is one node
        root = _compile(expr, dict(ranges))
        sizes = [_size_spec(ranges[i]) for i in free]
    return program.Compiled(root, tuple(_id(i) for i in free), sizes)


def _size_spec(size):
    """A size expression (``H``, ``2*H``, ``T - 1``) as a ``program.size_fn`` spec."""
    size = exact(size)
    if size.is_Integer:
        return int(size)
    if isinstance(size, sympy.Symbol):
        return ["sym", str(size)]
    if (size.is_Add or size.is_Mul) and all(isinstance(a, (sympy.Add, sympy.Mul, sympy.Symbol, sympy.Integer))
                                            for a in sympy.preorder_traversal(size)):
        return ["+" if size.is_Add else "*", [_size_spec(a) for a in size.args]]
    table, _ = program.dump_table([_compile(size, {})])
    return ["prog", table]


def _number_spec(expr) -> list:
    if isinstance(expr, sympy.Rational):
        return ["q", str(expr.p), str(expr.q)]
    as_float = repr(float(expr))
    return ["f", as_float, str(expr) if isinstance(expr, sympy.Float) else as_float]

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
                    hit = Node("same", list(hit.labels), (first,))
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


_UNARY = tuple((fn, op.name) for fn, op in sympy_nodes().items())  # SymPy function -> ufunc name (ops.py)


def _compile_node(expr, ranges: dict) -> Node:
    if expr.is_Number:
        return Node("number", _number_spec(expr))
    if expr is sympy.true or expr is sympy.false:
        return Node("flag", bool(expr))
    if isinstance(expr, sympy.Symbol):
        if expr in ranges:  # an index variable used as a value
            return Node("arange", [_id(expr), _size_spec(ranges[expr])])
        return Node("symbol", str(expr))
    if isinstance(expr, Indexed):
        return _compile_indexed(expr, ranges)
    if expr.is_Add or expr.is_Mul:
        return _fold([_compile(a, ranges) for a in expr.args], "add" if expr.is_Add else "multiply")
    if expr.is_Pow:
        base, p = (_compile(a, ranges) for a in expr.args)
        exponent = expr.args[1]
        if exponent == -1:
            return Node("inverse", None, (base,))
        if exponent == 2:
            return Node("square", None, (base,))
        return Node("power", None, (base, p))
    if isinstance(expr, sympy.Abs) and len(expr.args) == 1 and _nonnegative(expr.args[0]):
        return _compile(expr.args[0], ranges)
    for cls, name in _UNARY:
        if isinstance(expr, cls):
            if len(expr.args) != 1:
                raise Unsupported(f"{name} with {len(expr.args)} arguments")
            return Node("ufunc", name, (_compile(expr.args[0], ranges),))
    if isinstance(expr, Sum):
        return _compile_sum(expr, ranges)
    if isinstance(expr, ReduceMax):
        return _compile_max(expr, ranges)
    if isinstance(expr, (KroneckerDelta, IsMax)):  # 1 where the two arguments are equal, else 0
        return Node("equal", None, tuple(_compile(x, ranges) for x in expr.args))
    if isinstance(expr, (sympy.Max, sympy.Min)):
        return _fold([_compile(a, ranges) for a in expr.args], "maximum" if isinstance(expr, sympy.Max) else "minimum")
    if isinstance(expr, sympy.Heaviside):
        if len(expr.args) > 1 and expr.args[1] != sympy.Rational(1, 2):
            raise Unsupported("Heaviside with a value at 0 other than 1/2")
        return Node("heaviside", None, (_compile(expr.args[0], ranges),))
    if isinstance(expr, sympy.sign):
        return Node("sign", None, (_compile(expr.args[0], ranges),))
    if isinstance(expr, sympy.Piecewise):
        return Node("piecewise", None, tuple(_compile(x, ranges) for e, c in expr.args for x in (e, c)))
    if isinstance(expr, sympy.core.relational.Relational) and expr.rel_op in (">", ">=", "<", "<=", "=="):
        return Node("relation", expr.rel_op, tuple(_compile(a, ranges) for a in expr.args))
    if isinstance(expr, (sympy.And, sympy.Or)):
        return _fold([_compile(a, ranges) for a in expr.args], "and" if isinstance(expr, sympy.And) else "or")
    if isinstance(expr, sympy.Not):
        return Node("not", None, (_compile(expr.args[0], ranges),))
    raise Unsupported(f"no NumPy form for {type(expr).__name__}")


def _fold(parts: list, combine: str) -> Node:
    return Node("fold", combine, tuple(parts))


def _compile_indexed(expr: Indexed, ranges: dict) -> Node:
    positions = []  # per axis: ["fixed", int] or ["label", label, offset, count]: the positions offset..offset+count-1
    for idx in expr.indices:
        if idx.is_Integer:
            positions.append(["fixed", int(idx)])
            continue
        var, offset = (idx, sympy.Integer(0)) if isinstance(idx, sympy.Symbol) and idx in ranges else _shifted(idx, ranges) or (None, None)
        if var is None:
            raise Unsupported(f"index expression {idx} in {expr}")
        positions.append(["label", _id(var), _size_spec(offset), _size_spec(ranges[var])])  # a slice's index is i + 2*H
    return Node("indexed", [str(expr.base.label), positions])


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


def _compile_sum(expr: Sum, ranges: dict) -> Node:
    """Sum over one or more indices; a sum of a product is one ``einsum``, a sum of a sum the sum of
    its terms' sums (so that no term's product is formed over all the indices the terms span)."""
    body = expr.function
    if body.is_Add:
        return _fold([_compile(rebuilt(Sum, t, expr.limits), ranges) for t in body.args], "add")
    inner_ranges = dict(ranges)
    bound = []
    for var, lo, hi in expr.limits:
        if lo != 0:
            raise Unsupported(f"a sum from {lo}")
        inner_ranges[var] = exact(hi) + 1
        bound.append(var)
    factors = tuple(_compile(f, inner_ranges) for f in _factors(body))
    present = set().union(*(f.labels for f in factors))
    absent = [_size_spec(inner_ranges[var]) for var in bound if _id(var) not in present]  # n equal terms each
    return Node("sum", [[_id(var) for var in bound], absent], factors)


def _compile_max(expr, ranges: dict) -> Node:
    """The maximum over one or more indices (indexed.ReduceMax): NumPy's max over their axes."""
    inner_ranges = dict(ranges)
    bound = []
    for var, lo, hi in expr.limits:
        if lo != 0:
            raise Unsupported(f"a max from {lo}")
        inner_ranges[var] = exact(hi) + 1
        bound.append(_id(var))
    return Node("max", bound, (_compile(expr.function, inner_ranges),))
