"""Deliberately broken layers. Each docstring says what is wrong, and each one
is a mistake people really make when they write layers from scratch.
``examples/broken/README.md`` lists them with the rule each should be checked
against and the check that must catch it."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dezero_style"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import Config, Function  # noqa: E402
from functions import AveragePooling, BatchNorm, BinaryCrossEntropy, Deconv2d, GetItem, Im2col, col2im_array, im2col_array  # noqa: E402
from dlfs1.layers import Dropout, Pooling, col2im, im2col  # noqa: E402  (the reference's: the bug below is in backward only)
from dlfs2.layers import (GRU, LSTM, AttentionWeight, TimeAttention, TimeBiLSTM, TimeDropout, TimeRNN,  # noqa: E402
                          TimeSigmoidWithLoss)
from functional.layers import (  # noqa: E402
    batchnorm_backward, lstm_forward, lstm_step_backward, lstm_step_forward, spatial_batchnorm_forward,
    spatial_groupnorm_forward,
)


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


class AffineDxWithoutTranspose:
    """BUG: dx = dout W instead of dout Wᵀ: a shape error where D != H, wrong values where W is square."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W  # (N, H) @ (D, H): fits only when D == H


class AffineMissingTranspose:
    """BUG: dW = dout^T x instead of x^T dout: the weight gradient is transposed."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = dout.T @ self.x  # (H, D): transposed; with D == H no shape error gives it away
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class AffineBiasNotSummed:
    """BUG: db = dout, not summed over the batch."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout
        return dout @ self.W.T


class AffineBiasFromFirstRow:
    """BUG: db = dout[0], the first example's gradient, where every example's adds up."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout[0].copy()  # the right shape, the first row only
        return dout @ self.W.T


class AffineWeightDecayInBackward:
    """BUG: dW += 1e-2 * W in backward: weight decay, which the loss (or the optimizer) owns, in the layer."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout + 1e-2 * self.W
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class ReluMaskInverted:
    """BUG: the gradient passes where x <= 0 and is blocked where x > 0: the forward's mask, inverted."""

    def forward(self, x):
        self.mask = x <= 0
        return np.where(self.mask, 0.0, x)

    def backward(self, dout):
        return dout * self.mask


class AffineStaleInput:
    """BUG: caches x only on the first forward call; later backward passes use stale input."""

    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = None

    def forward(self, x):
        if self.x is None:
            self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class MatMulRebindsGrads:
    """BUG (side effect): grads[0] = dW rebinds the slot instead of grads[0][...] = dW."""

    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]

    def forward(self, x):
        self.x = x
        return x @ self.params[0]

    def backward(self, dout):
        self.grads[0] = self.x.T @ dout
        return dout @ self.params[0].T


class AffineAccumulatesGrads:
    """BUG: grads[0] += dW accumulates across calls instead of overwriting."""

    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]

    def forward(self, x):
        self.x = x
        return x @ self.params[0] + self.params[1]

    def backward(self, dout):
        self.grads[0] += self.x.T @ dout
        self.grads[1][...] = dout.sum(axis=0)
        return dout @ self.params[0].T


class SoftmaxUnshiftedSum:
    """BUG (seed 000): exp(x - max(x)) / sum(exp(x)) normalises by the unshifted sum."""

    def __init__(self):
        self.params, self.grads = [], []

    def forward(self, x):
        self.out = np.exp(x - np.max(x)) / np.sum(np.exp(x), axis=1, keepdims=True)
        return self.out

    def backward(self, dout):
        dx = self.out * dout
        return dx - self.out * dx.sum(axis=1, keepdims=True)


class SigmoidFromInput:
    """BUG: the derivative uses the input x instead of the output y: dout * x * (1 - x)."""

    def __init__(self):
        self.params, self.grads = [], []

    def forward(self, x):
        self.x = x
        return 1 / (1 + np.exp(-x))

    def backward(self, dout):
        return dout * self.x * (1 - self.x)


class SoftmaxWithLossIgnoresDout:
    """BUG: backward returns (y - t) / N and never multiplies by the upstream gradient dout."""

    def forward(self, x, t):
        self.t, self.y = t, _softmax(x)
        N = x.shape[0]
        return -np.log(self.y[np.arange(N), t]).sum() / N

    def backward(self, dout=1):
        N = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(N), self.t] -= 1
        return dx / N


class ReluWritesIntoDout:
    """BUG (side effect, as in book 1): backward zeroes the caller's dout in place."""

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        return dout


class ReluInPlaceDoubled:
    """BUG: backward works in the caller's dout and doubles it: a reference read from dout afterwards would agree."""

    def forward(self, x):
        self.mask = x <= 0
        return np.maximum(x, 0)

    def backward(self, dout):
        dout[self.mask] = 0
        dout *= 2
        return dout


class AffineSqueezes:
    """BUG: backward squeezes dx, so at N=1 it has shape (D,), not (1, D): only the size-1 trial sees it."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return (dout @ self.W.T).squeeze()


class AffineWritesIntoX:
    """BUG (side effect): forward keeps a copy of x, then zeroes the caller's array "to free it"."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x.copy()
        out = x @ self.W + self.b
        x[...] = 0  # the caller's x, which the previous layer may still need
        return out

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class SigmoidIgnoresDout:
    """BUG: backward returns y (1 - y), the local derivative alone, without multiplying by dout."""

    def forward(self, x):
        self.out = 1 / (1 + np.exp(-x))
        return self.out

    def backward(self, dout):
        return self.out * (1 - self.out)


class AffineOffByTiny:
    """BUG: dW is off by one part in 10^12, far below what finite differences can see."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = (self.x.T @ dout) * (1 + 1e-12)
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class TanhSignFlipped(Function):
    """BUG: gx = gy * (y^2 - 1), the sign flipped."""

    def forward(self, x):
        return np.tanh(x)

    def backward(self, gy):
        y = self.outputs[0]().data
        return gy * (y * y - 1)


class MeanSquaredErrorSameSign(Function):
    """BUG: DeZero's mean squared error with gx1 = gx0: x1 enters as -x1, so its gradient is -gx0."""

    def forward(self, x0, x1):
        diff = x0 - x1
        return (diff ** 2).sum() / len(diff)

    def backward(self, gy):
        diff = self.inputs[0].data - self.inputs[1].data
        gx0 = gy * diff * (2.0 / len(diff))
        return gx0, gx0


class LeakyReLUForgetsSlope(Function):
    """BUG: backward passes gy through on both sides, as if the slope were 1."""

    def __init__(self, slope=0.2):
        self.slope = slope

    def forward(self, x):
        return np.where(x > 0, x, x * self.slope)

    def backward(self, gy):
        return gy * np.ones_like(self.inputs[0].data)


class MaxRoutesToFirst(Function):
    """BUG: max over axis 1 whose gradient goes to the first element of each row, not the largest."""

    def forward(self, x):
        return x.max(axis=1)

    def backward(self, gy):
        gx = np.zeros_like(self.inputs[0].data)
        gx[:, 0] = gy
        return gx


class TransposeSameAxes(Function):
    """BUG: backward applies the same permutation instead of its inverse (hidden when axes reverse)."""

    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        return np.transpose(x, self.axes)

    def backward(self, gy):
        return np.transpose(gy, self.axes)


def softmax_loss_no_mean(x, y):
    """BUG: the loss is a mean over the batch, but dx is not divided by N."""
    p = _softmax(x)
    N = x.shape[0]
    loss = -np.log(p[np.arange(N), y]).sum() / N
    dx = p.copy()
    dx[np.arange(N), y] -= 1
    return loss, dx


def mean_squared_error_factor_two(y, t):
    """BUG: the loss is 0.5 * sum((y - t)^2) but dy = 2 (y - t): off by a factor of 2."""
    return 0.5 * np.sum((y - t) ** 2), 2 * (y - t)


def repeat_forward(x, N):
    return np.repeat(x, N, axis=0), None


def repeat_backward(dy, cache):
    """BUG: sums over the wrong axis (axis=1), so dx has shape (N, 1), not (1, D)."""
    return np.sum(dy, axis=1, keepdims=True)


class RNNBiasSkipsTanh:
    """BUG: db sums dh_next, the gradient at the tanh's output, not dt at its input."""

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]

    def forward(self, x, h_prev):
        Wx, Wh, b = self.params
        h_next = np.tanh(np.dot(h_prev, Wh) + np.dot(x, Wx) + b)
        self.cache = (x, h_prev, h_next)
        return h_next

    def backward(self, dh_next):
        Wx, Wh, b = self.params
        x, h_prev, h_next = self.cache
        dt = dh_next * (1 - h_next ** 2)
        self.grads[0][...] = np.dot(x.T, dt)
        self.grads[1][...] = np.dot(h_prev.T, dt)
        self.grads[2][...] = np.sum(dh_next, axis=0)
        return np.dot(dt, Wx.T), np.dot(dt, Wh.T)


class GRUResetGateDropped(GRU):
    """BUG: the candidate's dWh is h_prevᵀ·da, not (r * h_prev)ᵀ·da: it forgets that the reset gate
    scales h_prev before the candidate's weights (forward is the reference's)."""

    def backward(self, dh_next):
        dx, dh_prev = super().backward(dh_next)
        H = self.Wh.shape[0]
        x, h_prev, z, r, h_hat = self.cache
        da_hat = dh_next * z * (1 - h_hat ** 2)
        self.dWh[:, 2 * H:] = np.dot(h_prev.T, da_hat)
        return dx, dh_prev


class LSTMForgetGateFromNewState(LSTM):
    """BUG: the forget gate's gradient is ds * c_next, not ds * c_prev: f multiplies the state that
    came in, and the new state is the one at hand in backward (forward is the reference's)."""

    def backward(self, dh_next, dc_next):
        Wx, Wh, b = self.params
        x, h_prev, c_prev, f, g, i, o, c_next = self.cache
        tanh_c = np.tanh(c_next)
        ds = dc_next + dh_next * o * (1 - tanh_c ** 2)
        df = ds * c_next * f * (1 - f)
        dg = ds * i * (1 - g ** 2)
        di = ds * g * i * (1 - i)
        do = dh_next * tanh_c * o * (1 - o)
        dA = np.hstack((df, dg, di, do))
        self.grads[0][...] = np.dot(x.T, dA)
        self.grads[1][...] = np.dot(h_prev.T, dA)
        self.grads[2][...] = dA.sum(axis=0)
        return np.dot(dA, Wx.T), np.dot(dA, Wh.T), ds * f


lstm_step_state_skips_h_forward = lstm_step_forward  # the reference's forward (CS231n's), for the broken backward below


def lstm_step_state_skips_h_backward(dnext_h, dnext_c, cache):
    """BUG: dprev_c is dnext_c * f: it forgets that next_c also reaches the loss through next_h."""
    dx, dprev_h, _, dWx, dWh, db = lstm_step_backward(dnext_h, dnext_c, cache)
    f = cache[6]
    return dx, dprev_h, dnext_c * f, dWx, dWh, db


class AttentionWeightSkipsSoftmax(AttentionWeight):
    """BUG: backward takes da for the scores' gradient: it skips the softmax's backward
    (forward is the reference's)."""

    def backward(self, da):
        hs, h = self.cache
        dhs = da[:, :, np.newaxis] * h[:, np.newaxis, :]
        dh = np.einsum("nt,nth->nh", da, hs)
        return dhs, dh


class TimeAttentionEncoderOverwritten(TimeAttention):
    """BUG: dhs_enc = dhs keeps the last decoder step's gradient only; every step reads all of
    hs_enc, so their gradients add up (forward is the reference's)."""

    def backward(self, dout):
        dhs_dec = np.empty_like(dout)
        for t, layer in enumerate(self.layers):
            dhs, dh = layer.backward(dout[:, t])
            dhs_enc = dhs
            dhs_dec[:, t] = dh
        return dhs_enc, dhs_dec


class TimeSigmoidWithLossNoTimeMean(TimeSigmoidWithLoss):
    """BUG: backward hands each step dout, not dout / T: the forward averages the steps' losses,
    so each step's gradient is T times too large (forward is the reference's)."""

    def backward(self, dout=1):
        return np.stack([layer.backward(dout) for layer in self.layers], axis=1)


class AveragePoolingNotDivided(AveragePooling):
    """BUG: backward spreads each window's gy over its elements without dividing by kh * kw: the
    forward takes the mean, not the sum (forward is the reference's)."""

    def backward(self, gy):
        return super().backward(gy) * (self.kernel_size[0] * self.kernel_size[1])


class BatchNormNoMeanTerm:
    """BUG: batchnorm backward without the mean term: dx = dxc, the - dmu / N left out."""

    def __init__(self, gamma, beta, eps=1e-5):
        self.gamma, self.beta, self.eps = gamma, beta, eps

    def forward(self, x):
        self.xc = x - x.mean(axis=0)
        self.std = np.sqrt(np.mean(self.xc ** 2, axis=0) + self.eps)
        self.xn = self.xc / self.std
        return self.gamma * self.xn + self.beta

    def backward(self, dout):
        n = dout.shape[0]
        self.dbeta = dout.sum(axis=0)
        self.dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        dxc = dxn / self.std
        dstd = -np.sum((dxn * self.xc) / (self.std * self.std), axis=0)
        dxc += (2.0 / n) * self.xc * (0.5 * dstd / self.std)
        return dxc


class BatchNormTestUsesBatchStats(BatchNormNoMeanTerm):
    """BUG: train_flg ignored: test mode normalizes with the batch's own statistics, not the running ones
    (a test batch of one sample comes out as beta, whatever it is)."""

    def __init__(self, gamma, beta, running_mean=None, running_var=None, eps=1e-5):
        super().__init__(gamma, beta, eps)
        self.running_mean, self.running_var = running_mean, running_var

    def forward(self, x, train_flg=True):
        return super().forward(x)


class DropoutTestUnscaled(Dropout):
    """BUG: test mode returns x as it is: the books' dropout keeps every element unscaled in train mode,
    so test mode must scale by 1 - dropout_ratio (the expected share kept), or the next layer sees twice the signal."""

    def forward(self, x, train_flg=True):
        return super().forward(x, train_flg) if train_flg else x


class TimeDropoutTestScaled(TimeDropout):
    """BUG: test mode scales by 1 - dropout_ratio, as book 1's Dropout does; TimeDropout already scales the kept
    elements up in train mode (inverted dropout), so its test mode must hand xs back as it is."""

    def forward(self, xs):
        return super().forward(xs) if self.train_flg else xs * (1.0 - self.dropout_ratio)


class Im2colNoTransposeBack(Im2col):
    """BUG: col2im reshapes the row matrix straight to (N, C, kh, kw, OH, OW), without undoing the forward's
    transpose: every window value is added back at another image's, channel's or position's place."""

    def backward(self, gy):
        N, C, H, W = self.x_shape
        OH = (H + 2 * self.pad - self.kh) // self.stride + 1
        OW = (W + 2 * self.pad - self.kw) // self.stride + 1
        return col2im_array(gy.reshape(N, C, self.kh, self.kw, OH, OW), self.x_shape, self.stride, self.pad)


class GetItemOverwrites(GetItem):
    """BUG: gx[slices] = gy, where a row picked twice must get both rows of gy (np.add.at): the assignment keeps the last."""

    def backward(self, gy):
        x = self.inputs[0].data
        gx = np.zeros_like(x)
        gx[self.slices] = gy
        return gx


class Deconv2dFlippedFilters(Deconv2d):
    """BUG: gx correlates gy with the filters turned 180 degrees (as a true convolution would), where the
    adjoint of the forward's patches is the correlation with W as it is: gx is wrong, gW and gb are right."""

    def backward(self, gy):
        x, W = self.inputs[0].data, self.inputs[1].data
        col = im2col_array(gy, W.shape[2], W.shape[3], self.stride, self.pad)
        gx = np.tensordot(col, W[:, :, ::-1, ::-1], ((1, 2, 3), (1, 2, 3))).transpose(0, 3, 1, 2)
        gW = np.tensordot(x, col, ((0, 2, 3), (0, 4, 5)))
        return gx, gW, gy.sum(axis=(0, 2, 3))


class BatchNormTestEpsOutside(BatchNorm):
    """BUG: test mode divides by sqrt(var) + eps, not sqrt(var + eps): off by about eps / (2 var) relative."""

    def forward(self, x, gamma, beta):
        if Config.train:
            return super().forward(x, gamma, beta)
        return gamma * (x - self.avg_mean) / (np.sqrt(self.avg_var) + self.eps) + beta


class BinaryCrossEntropyLogitsGradient(BinaryCrossEntropy):
    """BUG: backward returns (p - t) / N, the gradient of sigmoid-then-cross-entropy with respect to the
    logits, where this loss takes the probabilities: it misses the 1 / (p (1 - p)) of the log's derivative."""

    def backward(self, gy):
        p, t = self.inputs[0].data, self.inputs[1].data
        return gy * (p - t) / len(p)


class PoolingNoTranspose(Pooling):
    """BUG: backward flattens dout as (N, C, OH, OW), where the forward's argmax rows run (N, OH, OW, C)
    (im2col's order): each window's gradient lands in another channel's or position's window."""

    def backward(self, dout):
        size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, size), dtype=dout.dtype)
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dcol = dmax.reshape(dout.shape[0] * dout.shape[2] * dout.shape[3], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


class TimeBiLSTMBackwardNotReversed(TimeBiLSTM):
    """BUG: the backward direction's dxs are added as they come, in its own reversed time order: step t
    gets the gradient of step T - 1 - t (right only at T = 1)."""

    def backward(self, dhs):
        H = dhs.shape[2] // 2
        dxs1 = self.forward_lstm.backward(dhs[:, :, :H])
        dxs2 = self.backward_lstm.backward(dhs[:, ::-1, H:])
        return dxs1 + dxs2


class EmbeddingOverwrites:
    """BUG: dW[idx] = dout, where an id that repeats must add up its rows (np.add.at)."""

    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]

    def forward(self, idx):
        self.idx = idx
        return self.params[0][idx]

    def backward(self, dout):
        dW = self.grads[0]
        dW[...] = 0
        dW[self.idx] = dout
        return None


def linear_softmax_loss_reg_missing(W, X, y, reg):
    """BUG: reg * sum(W * W) is in the loss, but dW has no 2 * reg * W (seen in students' CS231n code)."""
    N = X.shape[0]
    scores = X @ W
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(N), y].sum() / N + reg * np.sum(W * W)
    dscores = np.exp(log_probs)
    dscores[np.arange(N), y] -= 1
    return loss, X.T @ dscores / N


def svm_loss_correct_class_skipped(x, y):
    """BUG: dx counts the violated margins but never subtracts their number at the correct class."""
    N = x.shape[0]
    correct = x[np.arange(N), y]
    margins = np.maximum(0, x - correct[:, np.newaxis] + 1.0)
    margins[np.arange(N), y] = 0
    dx = (margins > 0).astype(x.dtype)
    return np.sum(margins) / N, dx / N


def svm_loss_vectorized_reg_once(W, X, y, reg):
    """BUG: dW carries reg * W where the loss's reg * sum(W * W) needs 2 * reg * W (seen in students' CS231n code)."""
    N = X.shape[0]
    scores = X @ W
    correct = scores[np.arange(N), y][:, np.newaxis]
    margins = np.maximum(0, scores - correct + 1.0)
    margins[np.arange(N), y] = 0
    mask = (margins > 0).astype(scores.dtype)
    mask[np.arange(N), y] = -mask.sum(axis=1)
    return margins.sum() / N + reg * np.sum(W * W), X.T @ mask / N + reg * W


class SigmoidUpcasts:
    """BUG (dtype): computes in float64 and returns float64 for float32 inputs."""

    def __init__(self):
        self.params, self.grads = [], []

    def forward(self, x):
        self.out = 1 / (1 + np.exp(-x.astype(np.float64)))
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out


class SoftmaxWithLossNoShift:
    """BUG (numerical stability): softmax without the max shift. Right for ordinary
    logits, but exp overflows to inf (and inf / inf = nan) for large ones."""

    def forward(self, x, t):
        e = np.exp(x)
        self.y = e / e.sum(axis=1, keepdims=True)
        self.t = t
        N = x.shape[0]
        return -np.log(self.y[np.arange(N), t]).sum() / N

    def backward(self, dout=1):
        N = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(N), self.t] -= 1
        return dx * dout / N


class LogWithEpsilon:
    """BUG (numerical stability): log(x + 1e-7), the book's guard against log(0),
    is wrong by far more than rounding for inputs near 0."""

    def forward(self, x):
        self.x = x
        return np.log(x + 1e-7)

    def backward(self, dout):
        return dout / (self.x + 1e-7)


class MulLayerNotSwapped:
    """BUG: book 1's MulLayer without the swap: dx = dout * x, dy = dout * y."""

    def forward(self, x, y):
        self.x, self.y = x, y
        return x * y

    def backward(self, dout):
        return dout * self.x, dout * self.y


class DivLosesSign(Function):
    """BUG: DeZero's Div with gx1 = gy * x0 / x1^2: the minus sign of d(x0/x1)/dx1 is lost."""

    def forward(self, x0, x1):
        return x0 / x1

    def backward(self, gy):
        x0, x1 = self.inputs[0].data, self.inputs[1].data
        return gy / x1, gy * x0 / x1 ** 2


def layernorm_batch_axis_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    mu = x.mean(axis=1, keepdims=True)
    xc = x - mu
    std = np.sqrt((xc ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = xc / std
    return gamma * xhat + beta, (xhat, gamma, std)


def layernorm_batch_axis_backward(dout, cache):
    """BUG: batchnorm's backward copied for layernorm, with its means still over the batch (axis 0)."""
    xhat, gamma, std = cache
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) / std
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)



def spatial_batchnorm_no_transpose_forward(x, gamma, beta, bn_param):
    return spatial_batchnorm_forward(x, gamma, beta, bn_param)


def spatial_batchnorm_no_transpose_backward(dout, cache):
    """BUG: dout flattened to (N*H*W, C) without moving the channels last first, so the rows it hands
    batchnorm_backward mix channels and positions (the forward does it right)."""
    N, C, H, W = dout.shape
    dx, dgamma, dbeta = batchnorm_backward(dout.reshape(-1, C), cache)
    return dx.reshape(N, H, W, C).transpose(0, 3, 1, 2), dgamma, dbeta


def groupnorm_no_mean_term_forward(x, gamma, beta, G, gn_param):
    return spatial_groupnorm_forward(x, gamma, beta, G, gn_param)


def groupnorm_no_mean_term_backward(dout, cache):
    """BUG: dx without the '- mean(dxhat)' term: the gradient through each group's mean is dropped."""
    xhat, gamma, std = cache
    N, G, K, H, W = xhat.shape
    dxhat = (dout * gamma).reshape(N, G, K, H, W)
    dx = (dxhat - xhat * (dxhat * xhat).mean(axis=(2, 3, 4), keepdims=True)) / std
    dgamma = (dout * xhat.reshape(N, G * K, H, W)).sum(axis=(0, 2, 3), keepdims=True)
    return dx.reshape(N, G * K, H, W), dgamma, dout.sum(axis=(0, 2, 3), keepdims=True)


def temporal_affine_bias_per_step_forward(x, w, b):
    return x @ w + b, (x, w)


def temporal_affine_bias_per_step_backward(dout, cache):
    """BUG: db summed over the batch only, not over time: one bias gradient per step, shape (T, M)."""
    x, w = cache
    return dout @ w.T, np.einsum("ntd,ntm->dm", x, dout), dout.sum(axis=0)


def temporal_softmax_loss_mask_forward_only(x, y, mask):
    """BUG: the mask is applied to the loss but not to dx: steps that do not count still get a gradient."""
    N, T, V = x.shape
    flat, y_flat, mask_flat = x.reshape(N * T, V), y.reshape(N * T), mask.reshape(N * T)
    p = _softmax(flat)
    loss = -np.sum(mask_flat * np.log(p[np.arange(N * T), y_flat])) / N
    dx = p.copy()
    dx[np.arange(N * T), y_flat] -= 1
    return loss, dx.reshape(N, T, V) / N


class TimeSoftmaxWithLossPerSequence:
    """BUG: the loss is a mean over the N * T steps, but dx is divided by N only."""

    def forward(self, xs, ts):
        N, T, V = xs.shape
        self.ts, self.ys = ts, _softmax(xs)
        picked = np.take_along_axis(self.ys, ts[..., None], axis=-1)
        return -np.log(picked).sum() / (N * T)

    def backward(self, dout=1):
        N = self.ts.shape[0]
        dx = self.ys.copy()
        np.put_along_axis(dx, self.ts[..., None], np.take_along_axis(dx, self.ts[..., None], axis=-1) - 1, axis=-1)
        return dx * dout / N


class EmbeddingDotWrongFactor:
    """BUG: dh = dout * h, where h's gradient is dout times the row of W it was dotted with."""

    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]

    def forward(self, h, idx):
        target_W = self.params[0][idx]
        self.cache = (h, target_W, idx)
        return np.sum(target_W * h, axis=1)

    def backward(self, dout):
        h, target_W, idx = self.cache
        dout = dout.reshape(dout.shape[0], 1)
        dW = self.grads[0]
        dW[...] = 0
        np.add.at(dW, idx, dout * h)
        return dout * h


class DropoutMaskIgnored:
    """BUG: backward returns dout, as if every element had been kept: dropped elements still get a gradient."""

    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio
        self.mask = None

    def forward(self, x, train_flg=True):
        self.mask = np.random.rand(*x.shape) > self.dropout_ratio
        return x * self.mask

    def backward(self, dout):
        return dout


class DropoutKeepsTheRatio:
    """BUG: mask = rand < dropout_ratio keeps an element with probability dropout_ratio, not 1 - dropout_ratio
    (invisible at the default 0.5; the catalogue checks it at 0.2)."""

    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio
        self.mask = None

    def forward(self, x, train_flg=True):
        self.mask = np.random.rand(*x.shape) < self.dropout_ratio
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


def dropout_redrawn_forward(x, dropout_param):
    p = dropout_param["p"]
    mask = (np.random.rand(*x.shape) < p) / p
    return x * mask, (dropout_param, x.shape)


def dropout_redrawn_backward(dout, cache):
    """BUG: the mask is drawn again in backward (only its shape was cached), so dx drops other elements."""
    dropout_param, shape = cache
    p = dropout_param["p"]
    return dout * (np.random.rand(*shape) < p) / p


def word_embedding_ids_overwritten_forward(x, W):
    return W[x], (x, W.shape)


def word_embedding_ids_overwritten_backward(dout, cache):
    """BUG: dW[x] += dout adds one row of dout for an id that occurs twice, not both (np.add.at adds each)."""
    x, shape = cache
    dW = np.zeros(shape, dtype=dout.dtype)
    dW[x] += dout
    return dW


class TimeEmbeddingLastStep:
    """BUG: W's gradient is the last time step's only (assigned in the loop), not the sum over the steps."""

    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]

    def forward(self, xs):
        self.xs = xs
        return self.params[0][xs]

    def backward(self, dout):
        dW = self.grads[0]
        for t in range(self.xs.shape[1]):
            dW[...] = 0
            np.add.at(dW, self.xs[:, t], dout[:, t, :])
        return None


class ConvolutionNoTranspose:
    """BUG: book 1's Convolution with dW = (colᵀ dout).reshape(FN, C, FH, FW): the (C·FH·FW, FN)
    product reshaped without its transpose, so the filters' gradients are interleaved."""

    def __init__(self, W, b, stride=1, pad=0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, _, H, W = x.shape
        oh, ow = (H + 2 * self.pad - FH) // self.stride + 1, (W + 2 * self.pad - FW) // self.stride + 1
        self.x, self.col = x, im2col(x, FH, FW, self.stride, self.pad)
        self.col_W = self.W.reshape(FN, -1).T
        return (self.col @ self.col_W + self.b).reshape(N, oh, ow, -1).transpose(0, 3, 1, 2)

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)
        self.db = dout.sum(axis=0)
        self.dW = (self.col.T @ dout).reshape(FN, C, FH, FW)
        return col2im(dout @ self.col_W.T, self.x.shape, FH, FW, self.stride, self.pad)


def max_pool_unstrided_forward(x, pool_param):
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    out = np.zeros((N, C, 1 + (H - ph) // s, 1 + (W - pw) // s), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, i * s:i * s + ph, j * s:j * s + pw].max(axis=(2, 3))
    return out, (x, pool_param)


def max_pool_unstrided_backward(dout, cache):
    """BUG: the window's argmax is found at the right place, then routed to dx[i + p, j + q],
    forgetting the stride: with stride 2, every window but the first sends its gradient elsewhere."""
    x, pool_param = cache
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    dx = np.zeros_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    window = x[n, c, i * s:i * s + ph, j * s:j * s + pw]
                    p, q = np.unravel_index(np.argmax(window), window.shape)
                    dx[n, c, i + p, j + q] += dout[n, c, i, j]
    return dx


class TimeRNNDropsCarriedGradient(TimeRNN):
    """BUG: each step's backward gets only dhs[:, t, :], not dhs[:, t, :] + dh: the gradient that
    reaches h through the later steps is dropped (forward is the reference's). Right at T = 1."""

    def backward(self, dhs):
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, self.params[0].shape[0]), dtype=dhs.dtype)
        grads = [0, 0, 0]
        for t in reversed(range(T)):
            layer = self.layers[t]
            dxs[:, t, :], self.dh = layer.backward(dhs[:, t, :])
            for i, grad in enumerate(layer.grads):
                grads[i] += grad
        for i, grad in enumerate(grads):
            self.grads[i][...] = grad
        return dxs


lstm_cell_forgotten_forward = lstm_forward  # the reference's forward (CS231n's), for the broken backward below


def lstm_cell_forgotten_backward(dh, cache):
    """BUG: every step's backward gets dnext_c = 0: the cell state's gradient is not carried back to
    the step before, as if c reached the loss only through its own step's h."""
    N, T, H = dh.shape
    dx = np.empty((N, T, cache[0][0].shape[1]), dtype=dh.dtype)
    dWx, dWh, db, dprev_h = 0, 0, 0, np.zeros((N, H), dtype=dh.dtype)
    for t in reversed(range(T)):
        dx[:, t, :], dprev_h, _, dWx_t, dWh_t, db_t = lstm_step_backward(dh[:, t, :] + dprev_h, np.zeros((N, H), dtype=dh.dtype), cache[t])
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    return dx, dprev_h, dWx, dWh, db


class TimeRNNStateGradientEarly(TimeRNN):
    """BUG: self.dh, the gradient of the state set with set_state, is saved inside the loop before each
    step's backward: it ends up as the upstream gradient of step 0, not the dh_prev step 0 hands back."""

    def backward(self, dhs):
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, self.params[0].shape[0]), dtype=dhs.dtype)
        dh, grads = 0, [0, 0, 0]
        for t in reversed(range(T)):
            layer = self.layers[t]
            self.dh = dhs[:, t, :] + dh
            dxs[:, t, :], dh = layer.backward(dhs[:, t, :] + dh)
            for i, grad in enumerate(layer.grads):
                grads[i] += grad
        for i, grad in enumerate(grads):
            self.grads[i][...] = grad
        return dxs
