"""DeZero-style Functions (seed 003): element-wise maths, reshape, transpose,
sum, broadcast_to, sum_to and matmul, on the core in core.py."""
import numpy as np

from core import Config, Function, as_variable


def sum_to(x, shape):
    """Sum ``x`` down to ``shape`` (DeZero's utils.sum_to)."""
    ndim = len(shape)
    lead = x.ndim - ndim
    lead_axis = tuple(range(lead))
    axis = tuple(i + lead for i, sx in enumerate(shape) if sx == 1)
    y = x.sum(lead_axis + axis, keepdims=True)
    if lead > 0:
        y = y.squeeze(lead_axis)
    return y


class Sin(Function):
    def forward(self, x):
        return np.sin(x)

    def backward(self, gy):
        return gy * np.cos(self.inputs[0].data)


class Cos(Function):
    def forward(self, x):
        return np.cos(x)

    def backward(self, gy):
        return gy * -np.sin(self.inputs[0].data)


class Exp(Function):
    def forward(self, x):
        return np.exp(x)

    def backward(self, gy):
        return gy * self.outputs[0]().data


class Log(Function):
    def forward(self, x):
        return np.log(x)

    def backward(self, gy):
        return gy / self.inputs[0].data


class Tanh(Function):
    def forward(self, x):
        return np.tanh(x)

    def backward(self, gy):
        y = self.outputs[0]().data
        return gy * (1 - y * y)


class Sigmoid(Function):
    def forward(self, x):
        return 0.5 * np.tanh(0.5 * x) + 0.5  # a stable form, as in DeZero

    def backward(self, gy):
        y = self.outputs[0]().data
        return gy * y * (1 - y)


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.x_shape)


class Transpose(Function):
    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        return np.transpose(x, self.axes)

    def backward(self, gy):
        if self.axes is None:
            return np.transpose(gy)
        inverse = np.argsort([ax % len(self.axes) for ax in self.axes])
        return np.transpose(gy, inverse)


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x):
        self.x_shape = x.shape
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        # put back the summed axes that keepdims=False dropped, then copy along them
        if self.axis is not None and not self.keepdims:
            axes = (self.axis,) if isinstance(self.axis, int) else self.axis
            for a in sorted(ax % len(self.x_shape) for ax in axes):
                gy = np.expand_dims(gy, a)
        elif self.axis is None and not self.keepdims:
            gy = np.reshape(gy, (1,) * len(self.x_shape))
        return np.broadcast_to(gy, self.x_shape).copy()


class BroadcastTo(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        return np.broadcast_to(x, self.shape).copy()

    def backward(self, gy):
        return sum_to(gy, self.x_shape)


class SumTo(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        return sum_to(x, self.shape)

    def backward(self, gy):
        return np.broadcast_to(gy, self.x_shape).copy()


class MatMul(Function):
    def forward(self, x, W):
        return x.dot(W)

    def backward(self, gy):
        x, W = self.inputs
        return gy.dot(W.data.T), x.data.T.dot(gy)


def reshape(x, shape):
    if x.shape == shape:
        return as_variable(x)
    return Reshape(shape)(x)


def matmul(x, W):
    return MatMul()(x, W)


class MeanSquaredError(Function):
    """DeZero's: sum((x0 - x1)^2) / len(x0), with a gradient for both inputs."""

    def forward(self, x0, x1):
        diff = x0 - x1
        return (diff ** 2).sum() / len(diff)

    def backward(self, gy):
        x0, x1 = self.inputs[0].data, self.inputs[1].data
        diff = x0 - x1
        gx0 = gy * diff * (2.0 / len(diff))
        return gx0, -gx0


class BinaryCrossEntropy(Function):
    """DeZero's binary_cross_entropy as one Function: -sum(t log p + (1 - t) log(1 - p)) / N for
    probabilities p and 0/1 labels t (not differentiated)."""

    def forward(self, p, t):
        t = t.astype(p.dtype)  # integer labels: int64 * float32 would be float64
        return -np.sum(t * np.log(p) + (1 - t) * np.log(1 - p)) / len(p)

    def backward(self, gy):
        p = self.inputs[0].data
        t = self.inputs[1].data.astype(p.dtype)  # integer labels: int64 - float32 would be float64
        return gy * (p - t) / (p * (1 - p)) / len(p)


def binary_cross_entropy(p, t):
    return BinaryCrossEntropy()(p, t)


def expand_dims(x, axis):
    """DeZero's: a reshape that inserts an axis of size 1 (a non-negative axis, where list.insert and NumPy agree)."""
    shape = list(x.shape)
    shape.insert(axis, 1)
    return reshape(x, tuple(shape))


def flatten(x):
    """DeZero's: each sample to one row, the batch axis kept."""
    return reshape(x, (x.shape[0], -1))


class LogSoftmax(Function):
    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, x):
        m = x.max(axis=self.axis, keepdims=True)
        return x - (m + np.log(np.exp(x - m).sum(axis=self.axis, keepdims=True)))

    def backward(self, gy):
        y = self.outputs[0]().data
        return gy - np.exp(y) * gy.sum(axis=self.axis, keepdims=True)


class LeakyReLU(Function):
    def __init__(self, slope=0.2):
        self.slope = slope

    def forward(self, x):
        return np.where(x > 0, x, x * self.slope)

    def backward(self, gy):
        x = self.inputs[0].data
        return gy * np.where(x > 0, 1.0, self.slope).astype(x.dtype)


class Clip(Function):
    def __init__(self, x_min, x_max):
        self.x_min, self.x_max = x_min, x_max

    def forward(self, x):
        return np.clip(x, self.x_min, self.x_max)

    def backward(self, gy):
        x = self.inputs[0].data
        return gy * ((x >= self.x_min) & (x <= self.x_max))


class Max(Function):
    """The gradient goes to the element that is the max (DeZero's Max)."""

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def _reduce(self, x):
        return x.max(axis=self.axis, keepdims=True)

    def forward(self, x):
        return x.max(axis=self.axis, keepdims=self.keepdims) if type(self) is Max else x.min(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        x = self.inputs[0].data
        y = self._reduce(x)
        gy = np.reshape(gy, y.shape)  # the reduced axes back, with size 1
        return gy * (x == y)


class Min(Max):
    def _reduce(self, x):
        return x.min(axis=self.axis, keepdims=True)


class Linear(Function):
    """DeZero's F.linear as a Function: x W + b, with b broadcast over the batch."""

    def forward(self, x, W, b):
        return x.dot(W) + b

    def backward(self, gy):
        x, W, b = self.inputs
        return gy.dot(W.data.T), x.data.T.dot(gy), sum_to(gy, b.shape)


def linear(x, W, b):
    return Linear()(x, W, b)


def sigmoid(x):
    return Sigmoid()(x)


# DeZero's arithmetic (dezero/core.py), at equal shapes
class Add(Function):
    def forward(self, x0, x1):
        return x0 + x1

    def backward(self, gy):
        return gy, gy


class Mul(Function):
    def forward(self, x0, x1):
        return x0 * x1

    def backward(self, gy):
        x0, x1 = self.inputs[0].data, self.inputs[1].data
        return gy * x1, gy * x0


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Sub(Function):
    def forward(self, x0, x1):
        return x0 - x1

    def backward(self, gy):
        return gy, -gy


class Div(Function):
    def forward(self, x0, x1):
        return x0 / x1

    def backward(self, gy):
        x0, x1 = self.inputs[0].data, self.inputs[1].data
        return gy / x1, gy * (-x0 / x1 ** 2)


class Pow(Function):
    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x ** self.c

    def backward(self, gy):
        x = self.inputs[0].data
        return self.c * x ** (self.c - 1) * gy


class GetItem(Function):
    """x[slices] for an integer array of row positions; a row picked twice gets both rows of gy back."""

    def __init__(self, slices):
        self.slices = slices

    def forward(self, x):
        return x[self.slices]

    def backward(self, gy):
        x = self.inputs[0].data
        gx = np.zeros_like(x)
        np.add.at(gx, self.slices, gy)  # not gx[self.slices] = gy: a repeated position would keep one row
        return gx


def get_item(x, slices):
    return GetItem(slices)(x)


class Dropout(Function):
    """DeZero's dropout (train mode) as one Function: inverted, its mask drawn in forward."""

    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio

    def forward(self, x):
        self.mask = np.random.rand(*x.shape) > self.dropout_ratio
        self.scale = 1.0 - self.dropout_ratio
        return x * self.mask / self.scale

    def backward(self, gy):
        return gy * self.mask / self.scale


def dropout(x, dropout_ratio=0.5):
    """DeZero's dropout: Dropout in train mode, x itself in test mode."""
    return Dropout(dropout_ratio)(x) if Config.train else as_variable(x)


class BatchNorm(Function):
    """As DeZero's: in train mode normalize each feature over the batch, scale and shift, and update the
    running statistics handed to the constructor in place (with an unbiased variance); in test mode
    (Config.train off) normalize with those running statistics. The backward is train mode's."""

    def __init__(self, mean, var, decay=0.9, eps=2e-5):
        self.avg_mean, self.avg_var, self.decay, self.eps = mean, var, decay, eps

    def forward(self, x, gamma, beta):
        if not Config.train:
            return gamma * (x - self.avg_mean) / np.sqrt(self.avg_var + self.eps) + beta
        mu, var = x.mean(axis=0), x.var(axis=0)
        self.inv_std = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv_std
        m = x.shape[0]
        self.avg_mean *= self.decay
        self.avg_mean += (1 - self.decay) * mu
        self.avg_var *= self.decay
        self.avg_var += (1 - self.decay) * var * m / max(m - 1, 1)
        return gamma * self.xhat + beta

    def backward(self, gy):
        gamma = self.inputs[1].data
        gbeta = gy.sum(axis=0)
        ggamma = (gy * self.xhat).sum(axis=0)
        gxhat = gy * gamma
        gx = self.inv_std * (gxhat - gxhat.mean(axis=0) - self.xhat * (gxhat * self.xhat).mean(axis=0))
        return gx, ggamma, gbeta


def _pair(k):
    return (k, k) if isinstance(k, int) else tuple(k)


def im2col_array(x, kh, kw, stride, pad):
    """The kh x kw windows of x, zero-padded by pad, every stride: (N, C, kh, kw, OH, OW)."""
    N, C, H, W = x.shape
    OH, OW = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    col = np.zeros((N, C, kh, kw, OH, OW), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, :, i, j] = xp[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride]
    return col


def col2im_array(col, shape, stride, pad):
    """The adjoint of im2col_array: each window's values added back where they came from, the padding cut off."""
    N, C, H, W = shape
    _, _, kh, kw, OH, OW = col.shape
    gx = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            gx[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride] += col[:, :, i, j]
    return gx[:, :, pad:pad + H, pad:pad + W]


class Im2col(Function):
    """DeZero's Im2col: the windows as rows of an (N*OH*OW, C*kh*kw) matrix (to_matrix), backward col2im."""

    def __init__(self, kernel_size, stride=1, pad=0, to_matrix=True):
        self.kh, self.kw = _pair(kernel_size)
        self.stride, self.pad, self.to_matrix = stride, pad, to_matrix

    def forward(self, x):
        self.x_shape = x.shape
        col = im2col_array(x, self.kh, self.kw, self.stride, self.pad)
        if self.to_matrix:
            N, C, kh, kw, OH, OW = col.shape
            col = col.transpose(0, 4, 5, 1, 2, 3).reshape(N * OH * OW, -1)
        return col

    def backward(self, gy):
        N, C, H, W = self.x_shape
        OH = (H + 2 * self.pad - self.kh) // self.stride + 1
        OW = (W + 2 * self.pad - self.kw) // self.stride + 1
        if self.to_matrix:
            gy = gy.reshape(N, OH, OW, C, self.kh, self.kw).transpose(0, 3, 4, 5, 1, 2)
        return col2im_array(gy, self.x_shape, self.stride, self.pad)


class AveragePooling(Function):
    """DeZero's AveragePooling(kernel_size, stride=1, pad=0): the mean of each window; kernel_size an int or (kh, kw).

    backward spreads each window's gy over the window's kh * kw elements, divided by kh * kw.
    """

    def __init__(self, kernel_size, stride=1, pad=0):
        self.kernel_size, self.stride, self.pad = _pair(kernel_size), stride, pad

    def _windows(self, shape):
        (kh, kw), s = self.kernel_size, self.stride
        H, W = shape[2] + 2 * self.pad, shape[3] + 2 * self.pad
        return [(i, j, slice(i * s, i * s + kh), slice(j * s, j * s + kw))
                for i in range((H - kh) // s + 1) for j in range((W - kw) // s + 1)]

    def forward(self, x):
        p = self.pad
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        windows = self._windows(x.shape)
        OH, OW = windows[-1][0] + 1, windows[-1][1] + 1
        y = np.empty(x.shape[:2] + (OH, OW), dtype=x.dtype)
        for i, j, rows, cols in windows:
            y[:, :, i, j] = xp[:, :, rows, cols].mean(axis=(2, 3))
        return y

    def backward(self, gy):
        x, p = self.inputs[0].data, self.pad
        g = gy if isinstance(gy, np.ndarray) else gy.data  # a Variable from DeZero step 32 on
        gxp = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p), dtype=g.dtype)
        size = self.kernel_size[0] * self.kernel_size[1]
        for i, j, rows, cols in self._windows(x.shape):
            gxp[:, :, rows, cols] += g[:, :, i, j][:, :, None, None] / size  # overlapping windows add up
        return gxp[:, :, p:p + x.shape[2], p:p + x.shape[3]]


def average_pooling(x, kernel_size, stride=1, pad=0):
    return AveragePooling(kernel_size, stride, pad)(x)


class Deconv2d(Function):
    """DeZero's Deconv2d: col2im of Wᵀx, each pixel spreading a filter-sized patch; W is (C, F, kh, kw).
    Its backward is convolution's forward: gx correlates gy with W, gW pairs x with gy's windows."""

    def __init__(self, stride=1, pad=0):
        self.stride, self.pad = stride, pad

    def forward(self, x, W, b):
        C, F, kh, kw = W.shape
        N, _, H, Wd = x.shape
        OH, OW = self.stride * (H - 1) + kh - 2 * self.pad, self.stride * (Wd - 1) + kw - 2 * self.pad
        col = np.rollaxis(np.tensordot(W, x, (0, 1)), 3)  # (N, F, kh, kw, H, W)
        return col2im_array(col, (N, F, OH, OW), self.stride, self.pad) + b.reshape(1, F, 1, 1)

    def backward(self, gy):
        x, W = self.inputs[0].data, self.inputs[1].data
        g = gy if isinstance(gy, np.ndarray) else gy.data
        col = im2col_array(g, W.shape[2], W.shape[3], self.stride, self.pad)  # (N, F, kh, kw, H, W)
        gx = np.tensordot(col, W, ((1, 2, 3), (1, 2, 3))).transpose(0, 3, 1, 2)
        gW = np.tensordot(x, col, ((0, 2, 3), (0, 4, 5)))
        return gx, gW, g.sum(axis=(0, 2, 3))


def deconv2d(x, W, b, stride=1, pad=0):
    return Deconv2d(stride, pad)(x, W, b)
