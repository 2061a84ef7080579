"""Shape-generic symbolic arrays: index notation with symbolic sizes.

The concrete tier (:mod:`derivcheck.engine.symarray`) gives every element of an array
its own symbol, so its cost grows with the shape. Here an array is one SymPy
expression in *index variables*, one per axis, and its sizes are symbols
(``N``, ``D``): ``x @ W`` at any size is the single expression
``Sum(x[i0, k] * W[k, i1], (k, 0, D - 1))`` with free indices ``(i0, i1)``.

A :class:`TArray` is ``(expr, indices, shape)``. The functions below mirror
the formula language's functions; an operation that cannot be written in
index notation (a reshape that flattens axes, a matmul whose right operand is a stack of matrices) raises
:class:`Unsupported`, and the rule falls back to the concrete tier.
"""
from __future__ import annotations

import builtins
import itertools

import sympy
from sympy import IndexedBase, KroneckerDelta, Sum
from sympy.concrete.expr_with_intlimits import ExprWithIntLimits
from sympy.concrete.expr_with_limits import _common_new

from derivcheck.errors import DerivcheckError, Unsupported
from derivcheck.engine.symarray import RELATIONS, exact, inserted_axis, normalize_axes


_COUNTER = itertools.count()


def fresh_index(prefix: str = "i") -> sympy.Symbol:
    """A new integer index variable, unique in this process."""
    return sympy.Symbol(f"{prefix}{next(_COUNTER)}", integer=True)


class TArray:
    """An array as one expression in its free index variables."""

    __array_priority__ = 1000  # so that numpy scalars defer to our operators

    def __init__(self, expr, indices: tuple, shape: tuple):
        if len(indices) != len(shape):
            raise ValueError("one index per axis")
        self.expr = exact(expr)
        self.indices = tuple(indices)
        self.shape = tuple(exact(s) for s in shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    # -- arithmetic --------------------------------------------------------------
    def _binary(self, other, op):
        return broadcast_apply(op, self, other)

    def __add__(self, other):
        return self._binary(other, lambda a, b: a + b)

    def __radd__(self, other):
        return broadcast_apply(lambda a, b: a + b, other, self)

    def __sub__(self, other):
        return self._binary(other, lambda a, b: a - b)

    def __rsub__(self, other):
        return broadcast_apply(lambda a, b: a - b, other, self)

    def __mul__(self, other):
        return self._binary(other, lambda a, b: a * b)

    def __rmul__(self, other):
        return broadcast_apply(lambda a, b: a * b, other, self)

    def __truediv__(self, other):
        return self._binary(other, lambda a, b: a / b)

    def __rtruediv__(self, other):
        return broadcast_apply(lambda a, b: a / b, other, self)

    def __pow__(self, other):
        return self._binary(other, lambda a, b: a**b)

    def __rpow__(self, other):
        return broadcast_apply(lambda a, b: a**b, other, self)

    def __neg__(self):
        return TArray(-self.expr, self.indices, self.shape)

    def __pos__(self):
        return self

    def __repr__(self):
        return f"TArray({self.expr}, indices={self.indices}, shape={self.shape})"


def asarray(value) -> TArray:
    """A number, an expression or a nested list as a TArray."""
    if isinstance(value, TArray):
        return value
    if isinstance(value, (list, tuple)):
        items = [asarray(v) for v in value]
        if not items:
            raise Unsupported("empty list")
        if any(i.ndim for i in items):
            raise Unsupported("nested list literals")
        # a literal vector: select its entries with KroneckerDelta
        i = fresh_index()
        expr = sympy.Add(*(v.expr * KroneckerDelta(i, k) for k, v in enumerate(items)))
        return TArray(expr, (i,), (len(items),))
    if isinstance(value, bool):
        return TArray(sympy.true if value else sympy.false, (), ())
    return TArray(exact(value), (), ())  # a number; anything else (text) is refused


def variable(name: str, shape: tuple) -> TArray:
    """An input array ``name`` of symbolic ``shape``: ``name[i0, i1, ...]``."""
    if not shape:
        return TArray(sympy.Symbol(name, real=True), (), ())
    idx = tuple(fresh_index() for _ in shape)
    return TArray(IndexedBase(name, real=True)[idx], idx, shape)


def _broadcast_shape(shapes):
    nd = builtins.max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(nd):
        sizes = {s[len(s) - nd + axis] for s in shapes if len(s) - nd + axis >= 0}
        non_one = {s for s in sizes if s != 1}
        if len(non_one) > 1:
            raise DerivcheckError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        out.append(non_one.pop() if non_one else sympy.Integer(1))
    return tuple(out)


def _placed(a: TArray, shape: tuple, indices: tuple):
    """``a``'s expression broadcast to ``shape`` with free ``indices``."""
    lead = len(shape) - a.ndim
    sub = {}
    for axis, (idx, size) in enumerate(zip(a.indices, a.shape)):
        target = shape[lead + axis]
        sub[idx] = indices[lead + axis] if size == target else sympy.Integer(0)
    return a.expr.xreplace(sub)


def broadcast_apply(fn, *args) -> TArray:
    """Element-wise ``fn`` of the arguments' expressions, with NumPy broadcasting."""
    arrays = [asarray(a) for a in args]
    shape = _broadcast_shape([a.shape for a in arrays])
    indices = tuple(fresh_index() for _ in shape)
    return TArray(fn(*(_placed(a, shape, indices) for a in arrays)), indices, shape)


def elementwise(fn):
    """Element-wise ``fn`` (a SymPy function) over index-notation arrays, with NumPy broadcasting."""
    return lambda *args: broadcast_apply(fn, *args)


exp = elementwise(sympy.exp)  # softmax and sigmoid are written with them
log = elementwise(sympy.log)
maximum = elementwise(sympy.Max)
minimum = elementwise(sympy.Min)


def sigmoid(x):
    return 1 / (1 + exp(-asarray(x)))


def compare(op: str, a, b) -> TArray:
    return broadcast_apply(RELATIONS[op], a, b)


def where(cond, a, b) -> TArray:
    return broadcast_apply(lambda c, x, y: sympy.Piecewise((x, c), (y, True)), cond, a, b)


def sum(x, axis=None, keepdims: bool = False) -> TArray:  # noqa: A001 - mirrors numpy
    x = asarray(x)
    axes = normalize_axes(axis, x.ndim)
    expr = x.expr
    for a in reversed(axes):
        expr = Sum(expr, (x.indices[a], 0, x.shape[a] - 1))
    return _reduced(x, expr, axes, keepdims)


def _reduced(x: TArray, expr, axes, keepdims: bool) -> TArray:
    """``expr``, a reduction of ``x`` over ``axes``, with the axes kept at size 1 or dropped."""
    if keepdims:
        kept = tuple(fresh_index() if a in axes else x.indices[a] for a in range(x.ndim))
        shape = tuple(sympy.Integer(1) if a in axes else x.shape[a] for a in range(x.ndim))
        return TArray(expr, kept, shape)
    rest = [a for a in range(x.ndim) if a not in axes]
    return TArray(expr, tuple(x.indices[a] for a in rest), tuple(x.shape[a] for a in rest))


def mean(x, axis=None, keepdims: bool = False) -> TArray:
    x = asarray(x)
    count = sympy.Mul(*(x.shape[a] for a in normalize_axes(axis, x.ndim)))
    return sum(x, axis, keepdims) / count


class ReduceMax(ExprWithIntLimits):
    """``max`` of ``function`` over the limits' indices, as ``Sum`` is their sum.

    Its derivative routes to the argmax: d/ds max_j f(j) = Σ_j [f(j) = max] ∂f(j)/∂s,
    exact wherever the maximum is attained once (random values never tie; at a
    tie the element-by-element tier's Heaviside splits evenly, this one does not).
    """

    __slots__ = ()

    def __new__(cls, function, *symbols, **assumptions):
        pre = _common_new(cls, function, *symbols, discrete=True, **assumptions)
        if not isinstance(pre, tuple):
            return pre
        function, limits, _ = pre
        obj = sympy.Expr.__new__(cls, **assumptions)
        obj._args = (function, *limits)
        obj.is_commutative = function.is_commutative
        return obj

    def _eval_derivative(self, s):
        f = self.function
        # the maximum again under fresh names: the sum below binds this one's indices
        rename = {v: fresh_index("m") for v, _, _ in self.limits}
        return Sum(IsMax(f, self.xreplace(rename)) * f.diff(s), *self.limits)


def rebuilt(cls, function, limits):
    """A ``Sum`` (or ``ReduceMax``) of ``function`` over ``limits`` taken as they are: the parts of one
    SymPy already built (read back from the cache, or a term of one's sum). SymPy's constructor
    would check them again, walking the whole expression for piecewise parts: most of loading a
    derivation's time."""
    obj = sympy.Expr.__new__(cls)
    obj._args = (function, *(sympy.Tuple(*lim) for lim in limits))
    obj.is_commutative = function.is_commutative
    return obj


class IsMax(sympy.Function):
    """1 where its arguments are equal (an element is the maximum), else 0: ReduceMax's routing.

    Not a Piecewise: SymPy folds a Piecewise out of the Sum that binds its index.
    Piecewise constant, so its derivative is 0 and it rounds nothing.
    """

    is_real = True

    def fdiff(self, argindex=1):
        return sympy.Integer(0)


def max(x, axis=None, keepdims: bool = False):  # noqa: A001
    x = asarray(x)
    axes = normalize_axes(axis, x.ndim)
    if not axes:
        return x
    return _reduced(x, ReduceMax(x.expr, *((x.indices[a], 0, x.shape[a] - 1) for a in axes)), axes, keepdims)


def matmul(a, b) -> TArray:
    a, b = asarray(a), asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise DerivcheckError("matmul: scalar operands are not allowed, use *")
    if b.ndim > 2:  # a stack of matrices on the right: broadcasting batch axes has no form here yet
        raise Unsupported("batched matmul")
    # a of any rank against a matrix contracts a's last axis with b's first: (N, T, D) @ (D, H) is (N, T, H)
    inner_a, inner_b = a.shape[-1], b.shape[0]
    if inner_a != inner_b:
        raise DerivcheckError(f"matmul: shapes {a.shape} and {b.shape} do not line up")
    k = fresh_index("k")
    ea = a.expr.xreplace({a.indices[-1]: k})
    eb = b.expr.xreplace({b.indices[0]: k})
    expr = Sum(ea * eb, (k, 0, inner_a - 1))
    indices = a.indices[:-1] + b.indices[1:]
    shape = a.shape[:-1] + b.shape[1:]
    return TArray(expr, indices, shape)


def transpose(x, axes=None) -> TArray:
    x = asarray(x)
    perm = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
    if sorted(perm) != list(range(x.ndim)):
        raise DerivcheckError(f"axes {axes} are not a permutation of {x.ndim} axes")
    return TArray(x.expr, tuple(x.indices[a] for a in perm), tuple(x.shape[a] for a in perm))


def slice_(x, bounds) -> TArray:
    """``x[a0:b0, a1:b1, ...]`` (bounds checked by the formula): each index shifted by its start."""
    x = asarray(x)
    indices = tuple(fresh_index() for _ in x.shape)
    sub = {old: new + exact(a) for old, new, (a, _) in zip(x.indices, indices, bounds)}
    return TArray(x.expr.xreplace(sub), indices, tuple(exact(b) - exact(a) for a, b in bounds))


def stack(arrays) -> TArray:
    """Arrays of one shape stacked on a new first axis: ``Σ_j δ(k, j) a_j``, with ``k`` the new index."""
    items = [asarray(a) for a in arrays]
    shape = items[0].shape
    k = fresh_index()
    indices = tuple(fresh_index() for _ in shape)
    expr = sympy.Add(*(KroneckerDelta(k, j) * _placed(a, shape, indices) for j, a in enumerate(items)))
    return TArray(expr, (k, *indices), (len(items), *shape))


def reshape(x, shape):
    """A reshape that keeps the shape, or only inserts or drops axes of size 1 (``reshape(gamma, [1, C, 1, 1])``):
    each other axis keeps its index. Any other (flattening, splitting) needs flat indices: unsupported."""
    x = asarray(x)
    shape = tuple(exact(s) for s in shape)
    if len(shape) == x.ndim and all(s == t for s, t in zip(shape, x.shape)):
        return x
    kept_in = [i for i, s in enumerate(x.shape) if s != 1]
    kept_out = [j for j, s in enumerate(shape) if s != 1]
    if len(kept_in) == len(kept_out) and all(x.shape[i] == shape[j] for i, j in zip(kept_in, kept_out)):
        indices = tuple(fresh_index() for _ in shape)
        sub = {x.indices[i]: sympy.Integer(0) for i, s in enumerate(x.shape) if s == 1}
        sub.update({x.indices[i]: indices[j] for i, j in zip(kept_in, kept_out)})
        return TArray(x.expr.xreplace(sub), indices, shape)
    raise Unsupported("reshape that changes the shape (flat indices need floor and mod)")


def expand_dims(x, axis) -> TArray:
    """An axis of size 1 inserted at ``axis``: the reshape that only inserts it."""
    x = asarray(x)
    shape = list(x.shape)
    shape.insert(inserted_axis(axis, x.ndim), sympy.Integer(1))
    return reshape(x, shape)


def repeat(x, repeats, axis=None) -> TArray:
    x = asarray(x)
    if axis is None or not isinstance(axis, int):
        raise Unsupported("repeat without an axis")
    a = axis % x.ndim
    if x.shape[a] != 1:
        raise Unsupported("repeat along an axis longer than 1")
    shape = x.shape[:a] + (exact(repeats),) + x.shape[a + 1 :]
    return broadcast_to(x, shape)


def broadcast_to(x, shape) -> TArray:
    x = asarray(x)
    shape = tuple(exact(s) for s in shape)
    if len(shape) < x.ndim or any(s != 1 and s != t for s, t in zip(x.shape, shape[len(shape) - x.ndim :])):
        raise DerivcheckError(f"shape {x.shape} does not broadcast to {shape}")
    indices = tuple(fresh_index() for _ in shape)
    return TArray(_placed(x, shape, indices), indices, shape)


def concatenate(arrays, axis=0):
    raise Unsupported("concatenation (an index split between two arrays)")


def zeros(shape) -> TArray:
    return broadcast_to(0, shape)


def sum_to(x, shape) -> TArray:
    x = asarray(x)
    shape = tuple(exact(s) for s in shape)
    lead = x.ndim - len(shape)
    if lead < 0:
        raise DerivcheckError(f"sum_to: cannot sum shape {x.shape} to the longer shape {shape}")
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and x.shape[i + lead] != 1)
    y = sum(x, axes, keepdims=True) if axes else x
    if lead:
        y = TArray(y.expr, y.indices[lead:], y.shape[lead:])
    if any(a != b for a, b in zip(y.shape, shape)):
        raise DerivcheckError(f"sum_to: shape {x.shape} does not broadcast to {shape}")
    return y


def softmax(x, axis=-1) -> TArray:
    e = exp(asarray(x))
    return e / sum(e, axis, keepdims=True)


def log_softmax(x, axis=-1) -> TArray:
    x = asarray(x)
    return x - log(sum(exp(x), axis, keepdims=True))


def pick(y, t) -> TArray:
    y, t = asarray(y), asarray(t)
    if y.shape != t.shape:
        raise DerivcheckError(f"pick: labels of shape {t.shape} do not match scores of shape {y.shape}")
    return sum(y * t, axis=-1)


def onehot(t) -> TArray:
    return asarray(t)


def windows(x, kh, kw, stride=1, pad=0):
    raise Unsupported("sliding windows (strided, padded indices)")


def conv2d(x, W, stride=1, pad=0):
    raise Unsupported("convolution (strided, padded indices)")


def deconv2d(x, W, stride=1, pad=0):
    raise Unsupported("transposed convolution (strided, padded indices)")
