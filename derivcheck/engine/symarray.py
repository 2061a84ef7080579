"""Symbolic arrays: NumPy object arrays whose elements are SymPy expressions.

NumPy gives broadcasting, reshape, transpose, repeat and reductions on object
arrays for free; SymPy gives exact elements. Matrix products are built the way
the seed notes do it, as a ``tensorcontraction`` of a ``tensorproduct``.
Every function here takes and returns object arrays (0-d for scalars).
"""
from __future__ import annotations

import functools
import operator

import numpy as np
import sympy
from sympy.tensor.array import ImmutableDenseNDimArray, tensorcontraction, tensorproduct

from derivcheck.engine.windows import deconv_shapes, filter_windows, patches, scatter_windows


def exact(value):
    """A number or an expression as SymPy, and nothing else.

    Strings are refused, never parsed: ``sympify("...")`` runs ``eval``, and a
    rule file, a config or a command line could hand us one (a ``choice``
    hyperparameter's value, say).
    """
    if isinstance(value, sympy.Basic):
        return value
    if isinstance(value, (bool, np.bool_)):
        return sympy.true if value else sympy.false
    if isinstance(value, (int, np.integer)):
        return sympy.Integer(int(value))
    if isinstance(value, (float, np.floating)):
        return sympy.Float(float(value))
    raise ValueError(f"{value!r} is not a number (a {type(value).__name__})")


def asarray(value) -> np.ndarray:
    """Wrap a number, an expression or a nested list as an object array."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return value
    if isinstance(value, str):
        raise ValueError(f"{value!r} is text, not a number")
    arr = np.asarray(value, dtype=object)
    return elementwise(exact)(arr) if arr.size else arr


def symbols(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array of real symbols named ``name_i_j`` (valid Python identifiers)."""
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        suffix = "".join(f"_{i}" for i in idx)
        out[idx] = sympy.Symbol(f"{name}{suffix}", real=True)
    return out


def elementwise(fn, nargs: int = 1):
    """Element-wise ``fn`` (a SymPy function) over object arrays of expressions, with NumPy broadcasting."""
    ufunc = np.frompyfunc(fn, nargs, 1)

    def apply(*args):
        result = ufunc(*args)
        return result if isinstance(result, np.ndarray) else np.asarray(result, dtype=object)

    return apply


exp = elementwise(sympy.exp)  # softmax and sigmoid are written with them
log = elementwise(sympy.log)
maximum = elementwise(sympy.Max, 2)
minimum = elementwise(sympy.Min, 2)


def sigmoid(x):
    return 1 / (1 + exp(-x))


RELATIONS = {  # the formula language's comparisons, for both symbolic tiers
    ">": sympy.StrictGreaterThan,
    ">=": sympy.GreaterThan,
    "<": sympy.StrictLessThan,
    "<=": sympy.LessThan,
}


def compare(op: str, a, b) -> np.ndarray:
    """Element-wise relation (kept symbolic; NumPy would ask for its truth value)."""
    return elementwise(RELATIONS[op], 2)(asarray(a), asarray(b))


def where(cond, a, b) -> np.ndarray:
    return elementwise(lambda c, x, y: sympy.Piecewise((x, c), (y, True)), 3)(cond, asarray(a), asarray(b))


def normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    """NumPy's ``axis`` argument (None, an int or several) as sorted non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    norm = []
    for a in axes:
        if not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array of {ndim} dimension(s)")
        norm.append(a % ndim)
    return tuple(sorted(set(norm)))


def _reduce(x, axis, keepdims: bool, combine) -> np.ndarray:
    x = asarray(x)
    axes = normalize_axes(axis, x.ndim)
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, rest + list(axes))
    kept_shape = tuple(x.shape[a] for a in rest)
    flat = moved.reshape(kept_shape + (-1,))
    out = np.empty(kept_shape, dtype=object)
    for idx in np.ndindex(*kept_shape):
        out[idx] = combine(list(flat[idx]))
    if keepdims:
        out = out.reshape(tuple(1 if a in axes else n for a, n in enumerate(x.shape)))
    return out


def sum(x, axis=None, keepdims: bool = False) -> np.ndarray:  # noqa: A001 - mirrors numpy
    return _reduce(x, axis, keepdims, lambda items: sympy.Add(*items))


def mean(x, axis=None, keepdims: bool = False) -> np.ndarray:
    x = asarray(x)
    count = functools.reduce(operator.mul, (x.shape[a] for a in normalize_axes(axis, x.ndim)), 1)
    return sum(x, axis, keepdims) / sympy.Integer(count)


def max(x, axis=None, keepdims: bool = False) -> np.ndarray:  # noqa: A001
    return _reduce(x, axis, keepdims, lambda items: sympy.Max(*items))


def _to_sympy(x: np.ndarray) -> ImmutableDenseNDimArray:
    return ImmutableDenseNDimArray(x.ravel().tolist(), x.shape)


def _from_sympy(a) -> np.ndarray:
    shape = tuple(a.shape)
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        out[idx] = a[idx]
    return out


def _matmul2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # (m, k) x (k, n): contract the inner pair of indices of the outer product.
    return _from_sympy(tensorcontraction(tensorproduct(_to_sympy(a), _to_sympy(b)), (1, 2)))


def matmul(a, b) -> np.ndarray:
    """``a @ b`` with NumPy's rules for 1-D operands and batch dimensions."""
    a, b = asarray(a), asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: scalar operands are not allowed, use *")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} do not line up "
            f"({a2.shape[-1]} != {b2.shape[-2]})"
        )
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    a2 = np.broadcast_to(a2, batch + a2.shape[-2:])
    b2 = np.broadcast_to(b2, batch + b2.shape[-2:])
    out = np.empty(batch + (a2.shape[-2], b2.shape[-1]), dtype=object)
    for idx in np.ndindex(*batch):
        out[idx] = _matmul2d(a2[idx], b2[idx])
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return np.ascontiguousarray(out)


def reshape(x, shape) -> np.ndarray:
    return np.reshape(asarray(x), tuple(shape)).copy()


def expand_dims(x, axis: int) -> np.ndarray:
    """``x`` with an axis of size 1 inserted at ``axis`` (DeZero's expand_dims: a reshape)."""
    x = asarray(x)
    return np.expand_dims(x, inserted_axis(axis, x.ndim)).copy()


def inserted_axis(axis, ndim: int) -> int:
    """Where an axis inserted into an array of ``ndim`` axes goes: -1 is after the last, as in NumPy."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or not -ndim - 1 <= axis <= ndim:
        raise ValueError(f"expand_dims: axis {axis!r} is not a place to insert an axis into {ndim} axes ({-ndim - 1}..{ndim})")
    return int(axis) % (ndim + 1)


def transpose(x, axes=None) -> np.ndarray:
    return np.transpose(asarray(x), None if axes is None else tuple(axes)).copy()


def repeat(x, repeats: int, axis=None) -> np.ndarray:
    return np.repeat(asarray(x), repeats, axis=axis)


def broadcast_to(x, shape) -> np.ndarray:
    return np.broadcast_to(asarray(x), tuple(shape)).copy()


def zeros(shape) -> np.ndarray:
    """An array of exact zeros: a recurrence's first state (book 2's ``self.h = np.zeros((N, H))``)."""
    return broadcast_to(0, shape)


def concatenate(arrays, axis=0) -> np.ndarray:
    """Arrays joined along an existing axis (book 2's TimeBiLSTM joins its two directions' states)."""
    if not isinstance(arrays, list) or len(arrays) < 2:
        raise ValueError("concatenate takes a list of at least two arrays, as in concatenate([a, b], axis=2)")
    return np.concatenate([asarray(a) for a in arrays], axis=axis)


def sum_to(x, shape) -> np.ndarray:
    """DeZero's ``sum_to``: sum ``x`` so that it has ``shape`` (inverse of broadcast_to)."""
    x = asarray(x)
    shape = tuple(shape)
    lead = x.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"sum_to: cannot sum shape {x.shape} to the longer shape {shape}")
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1)
    y = sum(x, axes, keepdims=True) if axes else x
    if lead:
        y = y.reshape(y.shape[lead:])
    if y.shape != shape:
        raise ValueError(f"sum_to: shape {x.shape} does not broadcast to {shape}")
    return y


def softmax(x, axis=-1) -> np.ndarray:
    e = exp(asarray(x))
    return e / sum(e, axis, keepdims=True)


def log_softmax(x, axis=-1) -> np.ndarray:
    x = asarray(x)
    return x - log(sum(exp(x), axis, keepdims=True))


def pick(y, t) -> np.ndarray:
    """Pick ``y[n, t[n]]`` for one-hot (symbolic) labels ``t``: ``sum(y * t, -1)``."""
    y, t = asarray(y), asarray(t)
    if y.shape != t.shape:
        raise ValueError(f"pick: labels of shape {t.shape} do not match scores of shape {y.shape}")
    return sum(y * t, axis=-1)


def onehot(t) -> np.ndarray:
    """Labels are carried one-hot in the symbolic world already; this names the intent."""
    return asarray(t)


def windows(x, kh: int, kw: int, stride: int = 1, pad: int = 0) -> np.ndarray:
    """:func:`patches` of a symbolic array (pooling: ``max(windows(...), axis=[4, 5])``)."""
    return patches(asarray(x), kh, kw, stride, pad, zero=sympy.Integer(0))


def conv2d(x, W, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Cross-correlation of (N, C, H, W) images with (F, C, kh, kw) filters: (N, F, OH, OW).

    ``out[n, f, i, j] = Σ_c Σ_p Σ_q windows(x)[n, c, i, j, p, q] · W[f, c, p, q]``,
    what im2col followed by a matrix product computes.
    """
    W = asarray(W)
    win = filter_windows(asarray(x), W, stride, pad, zero=sympy.Integer(0))
    return sum(win[:, None] * W[None, :, :, None, None], axis=(2, 5, 6))


def deconv2d(x, W, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Transposed convolution of (N, C, H, W) images with (C, F, kh, kw) filters: (N, F, OH, OW).

    ``out[n, f, i*stride + p - pad, j*stride + q - pad] += Σ_c x[n, c, i, j] · W[c, f, p, q]``, with
    OH = stride * (H - 1) + kh - 2 * pad: each input pixel spreads a filter-sized patch (DeZero's
    deconv2d, col2im of Wᵀx), the adjoint of :func:`conv2d` with the same filters, stride and pad.
    """
    x, W = asarray(x), asarray(W)
    deconv_shapes(x, W, stride, pad)
    parts = sum(x[:, :, None, :, :, None, None] * W[None, :, :, None, None, :, :], axis=1)
    return scatter_windows(parts, stride, pad, sympy.Integer(0))
