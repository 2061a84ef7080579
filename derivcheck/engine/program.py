"""Compiled index notation as data: nodes of NumPy steps, evaluated at any size, stored as JSON.

:mod:`derivcheck.engine.indexeval` compiles a SymPy expression into a list of
nodes, children before parents. Each node is a *kind* (``sum``, ``ufunc``,
``indexed``...) with JSON parameters (einsum labels, a ufunc's name, a size
written as ``["*", [2, ["sym", "H"]]]``); its NumPy step is built from those
alone, here. So a derivation compiled once is stored in the cache as its
node table (:func:`dump`) and read back by :func:`load` without SymPy: a warm
run neither imports SymPy nor rebuilds expressions. The table is data: a kind
outside :data:`KINDS`, a parameter of the wrong type or a child that is not an
earlier node is a ``ValueError``, and the entry is rebuilt.

Every intermediate is an array whose axes are labelled by small integers (index
variables). The labels of each node are known when it is built, so how its
operands are transposed and broadcast onto each other is decided then, once;
evaluating is a loop over the list, and a node shared by several expressions
(a VJP and its error bound) is computed once per evaluation (the env's
:data:`MEMO`). ``backend="mpmath"`` evaluates the same nodes on object arrays
of ``mpmath.mpf`` (the 50-digit reference of the stability probe); mpmath is
imported only then.
"""
from __future__ import annotations

import itertools
import math
import re
import string

import numpy as np

from derivcheck.engine.ops import ELEMENTWISE
from derivcheck.errors import Unsupported

DOUT = "dout_"  # the cotangent's name in expressions (rule names cannot end in _)
WEIGHT = "w_"  # the reuse term's weights |dout| * |out| (see reference.py)
MEMO = "__memo__"  # an env entry: {node key: result}, shared by the expressions of one evaluation


def bound_name(name: str) -> str:
    """The env name of an inexact input's running error bound (see ``generic.GenericDerivation``); it ends
    in ``_``, which a rule's names cannot, and the cotangent's (``dout_``) is ``dout__bound_``."""
    return f"{name}_bound_"


# ---------------------------------------------------------------------------
# backends


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
            self.ufunc = {name: np.frompyfunc(op.mp, 1, 1) for name, op in ELEMENTWISE.items()}
            self.float = object
        else:
            raise ValueError(name)

    def number(self, spec: list):
        """A number node's value: ``["q", p, q]`` (p/q exactly) or ``["f", repr of the double, SymPy's text]``."""
        if self.name == "numpy":
            return np.asarray(int(spec[1]) / int(spec[2]) if spec[0] == "q" else float(spec[1]))
        import mpmath

        if spec[0] == "q":
            return np.asarray(mpmath.mpf(int(spec[1])) / int(spec[2]), dtype=object)
        return np.asarray(mpmath.mpf(spec[2]), dtype=object)


_BACKENDS = {"numpy": Backend("numpy")}


def backend(name: str) -> Backend:
    if name not in _BACKENDS:
        _BACKENDS[name] = Backend(name)
    return _BACKENDS[name]


# ---------------------------------------------------------------------------
# nodes


class Node:
    """One step: ``op(env, backend, *children's arrays)`` -> an array whose axes are ``labels`` (every axis
    full size). ``kind`` and ``params`` say what it computes; the step itself is built from them alone."""

    __slots__ = ("key", "kind", "params", "labels", "op", "children")

    def __init__(self, kind: str, params: list, children: tuple = ()):
        if kind not in KINDS:
            raise ValueError(f"unknown node kind {kind!r}")
        self.kind, self.params, self.children = kind, params, tuple(children)
        labels, self.op = KINDS[kind](params, self.children)
        self.labels = tuple(labels)
        self.key = next(_KEYS)  # the node's entry in an evaluation's MEMO; children are made first


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


def _label(value) -> int:
    if type(value) is not int:
        raise ValueError(f"bad label {value!r}")
    return value


def _arity(children: tuple, n: int) -> tuple:
    if len(children) != n:
        raise ValueError(f"{len(children)} children where {n} are needed")
    return children


# -- sizes: int | ["sym", name] | ["+", [size, ...]] | ["*", [size, ...]] | ["prog", node table] (rounded)


def size_fn(spec):
    """``env -> int`` for a size spec: Python integers, exactly."""
    if type(spec) is int:
        return lambda env: spec
    if not isinstance(spec, list) or len(spec) != 2 or not isinstance(spec[0], str):
        raise ValueError(f"bad size {spec!r}")
    tag, arg = spec
    if tag == "sym":
        _name(arg)
        return lambda env: int(env[arg])
    if tag in ("+", "*") and isinstance(arg, list):
        parts = [size_fn(a) for a in arg]
        if tag == "+":
            return lambda env: sum(p(env) for p in parts)
        return lambda env: math.prod(p(env) for p in parts)
    if tag == "prog":
        nodes = table_nodes(arg)
        if not nodes:
            raise ValueError("an empty size program")
        program, root = _program(nodes[-1]), nodes[-1].key

        def fn(env):
            with np.errstate(all="ignore"):
                return int(round(float(_run(program, {}, env, _BACKENDS["numpy"])[root])))

        return fn
    raise ValueError(f"bad size {spec!r}")


# -- the kinds: (params, children) -> (labels, op)


_DECIMAL = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|inf|nan)")


def _number(params, children):
    _arity(children, 0)
    spec = params
    if not (isinstance(spec, list) and len(spec) == 3 and spec[0] in ("q", "f") and all(isinstance(s, str) for s in spec[1:])):
        raise ValueError(f"bad number {spec!r}")
    if spec[0] == "q":
        _small_int(spec[1]), _small_int(spec[2])
        if int(spec[2]) == 0:
            raise ValueError("a zero denominator")
    elif not all(len(s) <= MAX_DIGITS * 2 and _DECIMAL.fullmatch(s) for s in spec[1:]):
        raise ValueError(f"bad number {spec!r}")
    numbers = {"numpy": _BACKENDS["numpy"].number(spec)}

    def number(env, be):
        hit = numbers.get(be.name)
        if hit is None:
            hit = numbers[be.name] = be.number(spec)
        return hit

    return (), number


MAX_DIGITS = 40  # integers in a stored table: the engine writes small ones; a huge one is corruption


def _small_int(text) -> int:
    if not isinstance(text, str) or len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError("integer out of bounds")
    return int(text)


def _flag(params, children):
    _arity(children, 0)
    if not isinstance(params, bool):
        raise ValueError(f"bad flag {params!r}")
    flag = np.asarray(params)
    return (), lambda env, be: flag


def _arange(params, children):
    _arity(children, 0)
    label, size = _label(params[0]), size_fn(params[1])
    return (label,), lambda env, be: np.arange(size(env))


def _name(value) -> str:
    """An array's or a value's name in the env: a rule's names, or the engine's own (``dout_``, ``x_bound_``)."""
    if not isinstance(value, str) or not value.isidentifier() or value.startswith("__"):
        raise ValueError(f"bad name {value!r}")
    return value


def _symbol(params, children):
    _arity(children, 0)
    _name(params)
    name = params

    def symbol(env, be):
        return np.asarray(env[name], dtype=be.float) if be.float is not object else np.asarray(env[name], dtype=object)

    return (), symbol


def _indexed(params, children):
    """``params = [array name, positions]``, a position per axis: ``["fixed", int]`` or ``["label", label,
    offset size, count size]`` (the positions offset..offset+count-1: a slice's index is i + 2*H)."""
    _arity(children, 0)
    name, positions = params
    if not isinstance(positions, list):
        raise ValueError("bad indexed node")
    _name(name)
    steps = []
    labels_in = []
    for axis, p in enumerate(positions):
        if p[0] == "fixed" and type(p[1]) is int and p[1] >= 0:
            steps.append((axis, ("fixed", p[1])))
        elif p[0] == "label" and len(p) == 4:
            labels_in.append(_label(p[1]))
            steps.append((axis, ("label", p[1], size_fn(p[2]), size_fn(p[3]))))
        else:
            raise ValueError(f"bad position {p!r}")
    unique = tuple(dict.fromkeys(labels_in))
    diagonal = len(unique) != len(labels_in)
    letters = {lab: string.ascii_letters[i] for i, lab in enumerate(unique)}
    spec = "".join(letters[lab] for lab in labels_in) + "->" + "".join(letters[lab] for lab in unique)
    steps.reverse()  # last axis first: an integer removes its axis, and arrays of positions do not combine in one subscript

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

    return unique, indexed


def _logical(op):
    return lambda a, b: op(np.asarray(a, dtype=bool), np.asarray(b, dtype=bool))


_COMBINE = {"add": np.add, "multiply": np.multiply, "maximum": np.maximum, "minimum": np.minimum,
            "and": _logical(np.logical_and), "or": _logical(np.logical_or)}


def _fold(params, children):
    """``combine`` over the children's values, aligned by label; broadcast to the full size of every label."""
    if params not in _COMBINE or not children:
        raise ValueError(f"bad fold {params!r}")
    combine = _COMBINE[params]
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

    return union, fold


def _unary(fn):
    def kind(params, children):
        (inner,) = _arity(children, 1)
        return inner.labels, fn(params)
    return kind


def _ufunc(name):
    if name not in ELEMENTWISE:
        raise ValueError(f"unknown function {name!r}")
    return lambda env, be, a: be.ufunc[name](a)


def _binary(op):
    def kind(params, children):
        union, align = _aligned(_arity(children, 2))
        return union, op(params, align)
    return kind


def _equal(params, align):  # a KroneckerDelta or IsMax: 1 where the two arguments are equal, else 0
    def delta(env, be, a, b):
        a, b = align([a, b])
        return (a == b).astype(be.float)
    return delta


_RELATIONS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal}


def _relation(params, align):
    if params not in _RELATIONS:
        raise ValueError(f"bad relation {params!r}")
    op = _RELATIONS[params]
    return lambda env, be, a, b: op(*align([a, b]))


def _piecewise(params, children):
    if len(children) < 2 or len(children) % 2:
        raise ValueError("a piecewise needs (expression, condition) pairs")
    union, align = _aligned(children)
    count = len(children) // 2

    def piecewise(env, be, *arrays):
        # the last piece whose condition holds is overwritten by earlier ones: first match wins
        arrays = align(arrays)
        shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
        out = np.broadcast_to(arrays[-2], shape).copy()
        for k in range(count - 2, -1, -1):
            cond = np.broadcast_to(arrays[2 * k + 1], shape).astype(bool)
            out = np.where(cond, np.broadcast_to(arrays[2 * k], shape), out)
        return out

    return union, piecewise


SMALL_EINSUM = 4096  # set by hand: below this many multiply-adds, np.einsum_path costs more than the product


def _sum(params, children):
    """``params = [bound labels, sizes of the bound indices no factor reads]``: the sum over the bound labels of
    the product of the children (one ``einsum``), times the count of each absent index's terms."""
    if not children:
        raise ValueError("a sum of nothing")
    bound = [_label(v) for v in params[0]]
    absent = [size_fn(s) for s in params[1]]
    factors = children
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

    return keep, summed


def _max(params, children):
    """The maximum over the bound labels ``params`` (indexed.ReduceMax): NumPy's max over their axes."""
    (body,) = _arity(children, 1)
    bound = [_label(v) for v in params]
    axes = tuple(body.labels.index(v) for v in bound if v in body.labels)
    keep = tuple(lab for lab in body.labels if lab not in bound)
    if not axes:  # a body free of an index: the same value throughout
        return keep, lambda env, be, a: a
    return keep, lambda env, be, a: np.max(a, axis=axes)


def _same(params, children):
    """The same array as the child, its axes named ``params`` (the same expression under other index names)."""
    (inner,) = _arity(children, 1)
    labels = tuple(_label(v) for v in params)
    if len(labels) != len(inner.labels):
        raise ValueError("a renamed node with another number of axes")
    return labels, lambda env, be, a: a


KINDS = {
    "number": _number,
    "flag": _flag,
    "arange": _arange,  # an index variable used as a value
    "symbol": _symbol,
    "indexed": _indexed,
    "fold": _fold,
    "inverse": _unary(lambda p: lambda env, be, b: 1 / b),
    "square": _unary(lambda p: lambda env, be, b: b * b),
    "power": _binary(lambda p, align: lambda env, be, b, e: np.power(*align([b, e]))),
    "ufunc": _unary(_ufunc),
    "equal": _binary(_equal),
    "heaviside": _unary(lambda p: lambda env, be, a: _heaviside(a)),
    "sign": _unary(lambda p: lambda env, be, a: np.sign(a)),
    "not": _unary(lambda p: lambda env, be, a: np.logical_not(a)),
    "relation": _binary(_relation),
    "piecewise": _piecewise,
    "sum": _sum,
    "max": _max,
    "same": _same,
}


# ---------------------------------------------------------------------------
# evaluation


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


class Compiled:
    """``fn(env, backend)`` -> the array of ``root`` with axes ``free`` (labels) in that order, of sizes ``sizes``."""

    def __init__(self, root: Node, free: tuple, sizes: list):
        self.root, self.free, self.sizes = root, tuple(free), list(sizes)
        self.nodes = _program(root)  # children before parents
        self._stray = any(lab not in self.free for lab in root.labels)
        present = [i for i in self.free if i in root.labels]
        self._order = [root.labels.index(i) for i in present]
        self._present = [i in root.labels for i in self.free]
        self._sizes = [size_fn(s) for s in self.sizes]

    def shape(self, env: dict) -> tuple:
        """The result's shape at the sizes in ``env`` (Python integers)."""
        return tuple(size(env) for size in self._sizes)

    def __call__(self, env: dict, backend_name: str = "numpy"):
        be = backend(backend_name)
        if self._stray:
            raise Unsupported("an index is free in the expression but not an output index")
        memo = env.get(MEMO)
        if memo is None:
            memo = {}
        with np.errstate(all="ignore"):
            a = np.asarray(_run(self.nodes, memo, env, be)[self.root.key])
        if self._order:
            a = np.transpose(a, self._order)
        shape = self.shape(env)
        if self.free:
            it = iter(np.shape(a))
            a = np.reshape(a, [next(it) if p else 1 for p in self._present])
        return np.array(np.broadcast_to(a, shape), dtype=be.float)


class Evaluator:
    """A generic derivation's numeric side: its forward, VJP and error bounds, each a :class:`Compiled`.

    ``inexact`` names inputs (and ``DOUT``) whose values carry rounding of their own, whose bounds the
    env holds at :func:`bound_name`. ``vjp``, ``M`` and ``support`` map each input to its VJP, that VJP's
    running error bound and the outputs it reuses (see reference.py)."""

    def __init__(self, out: Compiled, out_M: Compiled, vjp: dict, M: dict, support: dict, inexact: tuple = ()):
        self.out, self.out_M, self._vjp, self._M, self._support = out, out_M, vjp, M, support
        self.inexact = tuple(inexact)

    def forward(self, env, backend="numpy"):
        return self.out(env, backend)

    def forward_bound(self, env):
        return self.out_M(env)

    def vjp(self, env, backend="numpy") -> dict:
        return {n: f(env, backend) for n, f in self._vjp.items()}

    def vjp_bounds(self, env) -> dict:
        return {n: f(env) for n, f in self._M.items()}

    def vjp_support(self, env) -> dict:
        return {n: f(env) for n, f in self._support.items()}

    def output_shape(self, dims: dict) -> tuple:
        return self.out.shape(dims)

    def parts(self) -> dict:
        """Every compiled expression by a name of its own: ``out``, ``out_M``, ``vjp:x``, ``M:x``, ``support:x``."""
        parts = {"out": self.out, "out_M": self.out_M}
        for n in self._vjp:
            parts.update({f"vjp:{n}": self._vjp[n], f"M:{n}": self._M[n], f"support:{n}": self._support[n]})
        return parts

    @classmethod
    def from_parts(cls, parts: dict, inputs, inexact: tuple = ()) -> "Evaluator":
        return cls(parts["out"], parts["out_M"], {n: parts[f"vjp:{n}"] for n in inputs},
                   {n: parts[f"M:{n}"] for n in inputs}, {n: parts[f"support:{n}"] for n in inputs}, inexact)


# ---------------------------------------------------------------------------
# storing


MAX_NODES = 2_000_000  # a stored table: the engine writes tens of thousands at most


def dump_table(roots) -> tuple[list, dict]:
    """The nodes ``roots`` need as a JSON table ``[kind, params, [child rows]]``, children before parents, and
    each root's row (by ``id``)."""
    nodes = {}
    for root in roots:
        for nd in _program(root):
            nodes[nd.key] = nd
    rows = {}
    table = []
    for key in sorted(nodes):
        nd = nodes[key]
        rows[key] = len(table)
        table.append([nd.kind, nd.params, [rows[c.key] for c in nd.children]])
    return table, {id(r): rows[r.key] for r in roots}


def table_nodes(table) -> list:
    """Nodes from a :func:`dump_table` table; anything malformed raises ValueError."""
    if not isinstance(table, list) or len(table) > MAX_NODES:
        raise ValueError("malformed node table")
    built: list = []
    for row in table:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[2], list)):
            raise ValueError("malformed node")
        children = []
        for ref in row[2]:
            if type(ref) is not int or not 0 <= ref < len(built):
                raise ValueError(f"bad node reference {ref!r}")
            children.append(built[ref])
        try:
            built.append(Node(row[0], row[1], tuple(children)))
        except (TypeError, IndexError, KeyError) as exc:
            raise ValueError(f"malformed {row[0]} node: {exc}") from None
    return built


def dump(parts: dict) -> dict:
    """Named :class:`Compiled` expressions as JSON: one node table, each expression its root row, free labels and sizes."""
    table, rows = dump_table([c.root for c in parts.values()])
    return {"table": table, "parts": {name: [rows[id(c.root)], list(c.free), c.sizes] for name, c in parts.items()}}


def load(data) -> dict:
    """What :func:`dump` wrote, as named :class:`Compiled` expressions; ValueError when it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("parts"), dict):
        raise ValueError("malformed program")
    nodes = table_nodes(data.get("table"))
    parts = {}
    for name, part in data["parts"].items():
        if not (isinstance(part, list) and len(part) == 3 and type(part[0]) is int and 0 <= part[0] < len(nodes)
                and isinstance(part[1], list) and isinstance(part[2], list) and len(part[1]) == len(part[2])):
            raise ValueError(f"malformed part {name!r}")
        try:
            parts[name] = Compiled(nodes[part[0]], tuple(_label(v) for v in part[1]), part[2])
        except (TypeError, IndexError, KeyError) as exc:
            raise ValueError(f"malformed part {name!r}: {exc}") from None
    return parts
