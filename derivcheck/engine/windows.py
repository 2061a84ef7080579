"""Windows of (N, C, H, W) images in plain NumPy indexing, and convolution on float arrays.

:func:`patches` serves float arrays (the formula language's numeric backend) and
object arrays of SymPy expressions (``symarray.windows``, ``conv2d``,
``deconv2d``) alike, so both read one layout: the books' and CS231n's.
"""
from __future__ import annotations

import numpy as np


def whole_numbers(*settings) -> None:
    """Each (name, value, least) a whole number of at least ``least`` (a window's size, a stride, a pad)."""
    for name, value, least in settings:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"the {name} must be an integer of at least {least}, not {value!r}")


def patches(x: np.ndarray, kh: int, kw: int, stride: int = 1, pad: int = 0, zero=0) -> np.ndarray:
    """The (N, C, OH, OW, kh, kw) windows of an (N, C, H, W) array, zero-padded by ``pad``, every ``stride``.

    Plain NumPy indexing, so it serves object arrays (padded with ``zero``: SymPy's 0 for the symbolic
    tier) and float arrays alike:
    ``out[n, c, i, j, p, q] = padded[n, c, i*stride + p, j*stride + q]``, with
    OH = (H + 2*pad - kh) // stride + 1 (the books' and CS231n's floor).
    """
    x = np.asarray(x)
    whole_numbers(("window height", kh, 1), ("window width", kw, 1), ("stride", stride, 1), ("pad", pad, 0))
    if x.ndim != 4:
        raise ValueError(f"windows are taken of an (N, C, H, W) array, not of shape {x.shape}")
    n, c, h, w = x.shape
    if x.dtype == object:
        padded = np.full((n, c, h + 2 * pad, w + 2 * pad), zero, dtype=object)
    else:
        padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} window does not fit an image of {h}x{w} padded by {pad}")
    rows = (np.arange(oh) * stride)[:, None] + np.arange(kh)[None, :]  # (OH, kh)
    cols = (np.arange(ow) * stride)[:, None] + np.arange(kw)[None, :]  # (OW, kw)
    return padded[:, :, rows[:, None, :, None], cols[None, :, None, :]]


def filter_windows(x, W: np.ndarray, stride: int, pad: int, zero=0) -> np.ndarray:
    """The windows of ``x`` that (F, C, kh, kw) filters ``W`` see, after checking the two agree."""
    if W.ndim != 4:
        raise ValueError(f"conv2d's filters have shape (F, C, kh, kw), not {W.shape}")
    win = patches(x, W.shape[2], W.shape[3], stride, pad, zero)
    if win.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d: {win.shape[1]} image channels, {W.shape[1]} filter channels")
    return win


def np_conv2d(x, W, stride: int = 1, pad: int = 0) -> np.ndarray:
    """``symarray.conv2d`` on float arrays: ``einsum`` over the windows."""
    W = np.asarray(W)
    return np.einsum("ncijpq,fcpq->nfij", filter_windows(x, W, stride, pad), W)


def deconv_shapes(x: np.ndarray, W: np.ndarray, stride, pad) -> None:
    """Check a transposed convolution's arguments: (N, C, H, W) images, (C, F, kh, kw) filters, an output of at least 1x1."""
    whole_numbers(("stride", stride, 1), ("pad", pad, 0))
    if x.ndim != 4 or W.ndim != 4:
        raise ValueError(f"deconv2d takes (N, C, H, W) images and (C, F, kh, kw) filters, not {x.shape} and {W.shape}")
    if x.shape[1] != W.shape[0]:
        raise ValueError(f"deconv2d: {x.shape[1]} image channels, {W.shape[0]} filter channels (the filters' first axis)")
    for size, k in ((x.shape[2], W.shape[2]), (x.shape[3], W.shape[3])):
        if stride * (size - 1) + k - 2 * pad < 1:
            raise ValueError(f"deconv2d: a {size}-pixel side, a {k}-pixel filter, stride {stride} and pad {pad} "
                             f"leave no output (stride * (size - 1) + k - 2 * pad < 1)")


def scatter_windows(parts: np.ndarray, stride: int, pad: int, zero) -> np.ndarray:
    """The adjoint of :func:`patches`: each window's (kh, kw) values of an (N, F, H, W, kh, kw) array added
    at its place, ``out[n, f, i*stride + p, j*stride + q] += parts[n, f, i, j, p, q]``, then ``pad``
    cut from each side: (N, F, OH, OW), OH = stride * (H - 1) + kh - 2 * pad (col2im)."""
    n, f, h, w, kh, kw = parts.shape
    full = np.full((n, f, stride * (h - 1) + kh, stride * (w - 1) + kw), zero, dtype=parts.dtype)
    for p in range(kh):
        for q in range(kw):
            full[:, :, p:p + stride * (h - 1) + 1:stride, q:q + stride * (w - 1) + 1:stride] += parts[..., p, q]
    return full[:, :, pad:full.shape[2] - pad, pad:full.shape[3] - pad]


def np_deconv2d(x, W, stride: int = 1, pad: int = 0) -> np.ndarray:
    """``symarray.deconv2d`` on float arrays."""
    x, W = np.asarray(x), np.asarray(W)
    deconv_shapes(x, W, stride, pad)
    return scatter_windows(np.einsum("nchw,cfpq->nfhwpq", x, W), stride, pad, 0)
