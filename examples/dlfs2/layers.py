"""Reference layers in the style of Deep Learning from Scratch, book 2 (seed 001).

Every layer has ``params`` and ``grads`` lists; ``backward`` writes the
gradients into the grads slots (``grads[0][...] = dW``), never rebinding them,
so an optimizer holding the lists sees the new values.
"""
import numpy as np


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    x = np.exp(x)
    return x / x.sum(axis=1, keepdims=True)


def cross_entropy_error(y, t):
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t])) / batch_size


class MatMul:
    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.x = None

    def forward(self, x):
        (W,) = self.params
        self.x = x
        return np.dot(x, W)

    def backward(self, dout):
        (W,) = self.params
        dx = np.dot(dout, W.T)
        dW = np.dot(self.x.T, dout)
        self.grads[0][...] = dW
        return dx


class Affine:
    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]
        self.x = None

    def forward(self, x):
        W, b = self.params
        self.x = x
        return np.dot(x, W) + b

    def backward(self, dout):
        W, b = self.params
        dx = np.dot(dout, W.T)
        dW = np.dot(self.x.T, dout)
        db = np.sum(dout, axis=0)  # the bias was repeated over the batch: its gradient sums
        self.grads[0][...] = dW
        self.grads[1][...] = db
        return dx


class Sigmoid:
    def __init__(self):
        self.params, self.grads = [], []
        self.out = None

    def forward(self, x):
        out = 1 / (1 + np.exp(-x))
        self.out = out
        return out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out


class Softmax:
    def __init__(self):
        self.params, self.grads = [], []
        self.out = None

    def forward(self, x):
        self.out = softmax(x)
        return self.out

    def backward(self, dout):
        dx = self.out * dout
        sumdx = np.sum(dx, axis=1, keepdims=True)
        dx -= self.out * sumdx
        return dx


class SoftmaxWithLoss:
    def __init__(self):
        self.params, self.grads = [], []
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        if self.t.size == self.y.size:
            self.t = self.t.argmax(axis=1)
        return cross_entropy_error(self.y, self.t)

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(batch_size), self.t] -= 1
        dx *= dout
        return dx / batch_size


class Repeat:
    """The seed's Repeat node: x (1, D) -> (N, D)."""

    def __init__(self, N):
        self.params, self.grads = [], []
        self.N = N

    def forward(self, x):
        return np.repeat(x, self.N, axis=0)

    def backward(self, dy):
        return np.sum(dy, axis=0, keepdims=True)


class Sum:
    """The seed's Sum node: x (N, D) -> (1, D)."""

    def __init__(self):
        self.params, self.grads = [], []
        self.N = None

    def forward(self, x):
        self.N = x.shape[0]
        return np.sum(x, axis=0, keepdims=True)

    def backward(self, dy):
        return np.repeat(dy, self.N, axis=0)


class RNN:
    """One step of book 2's simple RNN: h_next = tanh(h_prev Wh + x Wx + b)."""

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.cache = None

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
        self.grads[2][...] = np.sum(dt, axis=0)
        return np.dot(dt, Wx.T), np.dot(dt, Wh.T)


class GRU:
    """One step of book 2's GRU. As the book writes it, its weights are attributes (no bias), not a params list.

    Wx (D, 3H) and Wh (H, 3H) hold the update gate z, the reset gate r and the
    candidate h_hat side by side; the gradients go to self.dWx and self.dWh.
    """

    def __init__(self, Wx, Wh):
        self.Wx, self.Wh = Wx, Wh
        self.dWx, self.dWh = None, None
        self.cache = None

    def forward(self, x, h_prev):
        H = self.Wh.shape[0]
        z = sigmoid(np.dot(x, self.Wx[:, :H]) + np.dot(h_prev, self.Wh[:, :H]))
        r = sigmoid(np.dot(x, self.Wx[:, H:2 * H]) + np.dot(h_prev, self.Wh[:, H:2 * H]))
        h_hat = np.tanh(np.dot(x, self.Wx[:, 2 * H:]) + np.dot(r * h_prev, self.Wh[:, 2 * H:]))
        self.cache = (x, h_prev, z, r, h_hat)
        return (1 - z) * h_prev + z * h_hat

    def backward(self, dh_next):
        H = self.Wh.shape[0]
        x, h_prev, z, r, h_hat = self.cache
        # the candidate: h_hat = tanh(x Wx_h + (r * h_prev) Wh_h)
        da_hat = dh_next * z * (1 - h_hat ** 2)
        d_rh = np.dot(da_hat, self.Wh[:, 2 * H:].T)
        # the update gate: h_next = (1 - z) h_prev + z h_hat
        da_z = dh_next * (h_hat - h_prev) * z * (1 - z)
        # the reset gate reaches the output through r * h_prev
        da_r = d_rh * h_prev * r * (1 - r)
        da = np.hstack((da_z, da_r, da_hat))  # the three pre-activations, side by side as in Wx and Wh
        self.dWx = np.dot(x.T, da)
        self.dWh = np.hstack((np.dot(h_prev.T, da_z), np.dot(h_prev.T, da_r), np.dot((r * h_prev).T, da_hat)))
        dx = np.dot(da, self.Wx.T)
        dh_prev = dh_next * (1 - z) + d_rh * r + np.dot(da_z, self.Wh[:, :H].T) + np.dot(da_r, self.Wh[:, H:2 * H].T)
        return dx, dh_prev


class LSTM:
    """One step of book 2's LSTM: two outputs, h_next and c_next, and a backward that takes a gradient for each.

    Wx (D, 4H), Wh (H, 4H) and b (4H,) hold the forget gate f, the candidate g,
    the input gate i and the output gate o side by side, in that order.
    """

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.cache = None

    def forward(self, x, h_prev, c_prev):
        Wx, Wh, b = self.params
        H = h_prev.shape[1]
        A = np.dot(x, Wx) + np.dot(h_prev, Wh) + b
        f, g = sigmoid(A[:, :H]), np.tanh(A[:, H:2 * H])
        i, o = sigmoid(A[:, 2 * H:3 * H]), sigmoid(A[:, 3 * H:])
        c_next = f * c_prev + g * i
        h_next = o * np.tanh(c_next)
        self.cache = (x, h_prev, c_prev, f, g, i, o, c_next)
        return h_next, c_next

    def backward(self, dh_next, dc_next):
        Wx, Wh, b = self.params
        x, h_prev, c_prev, f, g, i, o, c_next = self.cache
        tanh_c = np.tanh(c_next)
        ds = dc_next + dh_next * o * (1 - tanh_c ** 2)  # c_next reaches the loss directly and through h_next
        df = ds * c_prev * f * (1 - f)
        dg = ds * i * (1 - g ** 2)
        di = ds * g * i * (1 - i)
        do = dh_next * tanh_c * o * (1 - o)
        dA = np.hstack((df, dg, di, do))  # the four pre-activations, side by side as in Wx, Wh and b
        self.grads[0][...] = np.dot(x.T, dA)
        self.grads[1][...] = np.dot(h_prev.T, dA)
        self.grads[2][...] = dA.sum(axis=0)
        return np.dot(dA, Wx.T), np.dot(dA, Wh.T), ds * f


class TimeRNN:
    """The RNN cell over the T steps of xs (N, T, D), the state carried from step to step.

    The state starts at zero, or, with ``stateful=True``, where the last call left it.
    Backward runs the steps in reverse: each step's dh_prev joins the next step's
    upstream gradient, and the cells' parameter gradients add up.
    """

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.layers = None
        self.h, self.dh = None, None
        self.stateful = stateful

    def forward(self, xs):
        N, T, _ = xs.shape
        H = self.params[1].shape[0]
        if not self.stateful or self.h is None:
            self.h = np.zeros((N, H), dtype=xs.dtype)
        hs = np.empty((N, T, H), dtype=xs.dtype)
        self.layers = []
        for t in range(T):
            layer = RNN(*self.params)
            self.h = layer.forward(xs[:, t, :], self.h)
            hs[:, t, :] = self.h
            self.layers.append(layer)
        return hs

    def backward(self, dhs):
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, self.params[0].shape[0]), dtype=dhs.dtype)
        dh, grads = 0, [0, 0, 0]
        for t in reversed(range(T)):
            layer = self.layers[t]
            dxs[:, t, :], dh = layer.backward(dhs[:, t, :] + dh)
            for i, grad in enumerate(layer.grads):
                grads[i] += grad
        for i, grad in enumerate(grads):
            self.grads[i][...] = grad
        self.dh = dh
        return dxs

    def set_state(self, h):
        self.h = h

    def reset_state(self):
        self.h = None


class TimeLSTM:
    """The LSTM cell over the T steps of xs; h and c start at zero (or where the last call left them)."""

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.layers = None
        self.h, self.c, self.dh = None, None, None
        self.stateful = stateful

    def forward(self, xs):
        N, T, _ = xs.shape
        H = self.params[1].shape[0]
        if not self.stateful or self.h is None:
            self.h = np.zeros((N, H), dtype=xs.dtype)
        if not self.stateful or self.c is None:
            self.c = np.zeros((N, H), dtype=xs.dtype)
        hs = np.empty((N, T, H), dtype=xs.dtype)
        self.layers = []
        for t in range(T):
            layer = LSTM(*self.params)
            self.h, self.c = layer.forward(xs[:, t, :], self.h, self.c)
            hs[:, t, :] = self.h
            self.layers.append(layer)
        return hs

    def backward(self, dhs):
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, self.params[0].shape[0]), dtype=dhs.dtype)
        dh, dc, grads = 0, 0, [0, 0, 0]
        for t in reversed(range(T)):
            layer = self.layers[t]
            dxs[:, t, :], dh, dc = layer.backward(dhs[:, t, :] + dh, dc)  # c reaches the loss only through later steps
            for i, grad in enumerate(layer.grads):
                grads[i] += grad
        for i, grad in enumerate(grads):
            self.grads[i][...] = grad
        self.dh = dh
        return dxs

    def set_state(self, h, c=None):
        self.h, self.c = h, c

    def reset_state(self):
        self.h, self.c = None, None


class TimeBiLSTM:
    """Two TimeLSTMs, one over xs and one over xs reversed in time, their states joined along the last axis."""

    def __init__(self, Wx1, Wh1, b1, Wx2, Wh2, b2, stateful=False):
        self.forward_lstm = TimeLSTM(Wx1, Wh1, b1, stateful)
        self.backward_lstm = TimeLSTM(Wx2, Wh2, b2, stateful)
        self.params = self.forward_lstm.params + self.backward_lstm.params
        self.grads = self.forward_lstm.grads + self.backward_lstm.grads

    def forward(self, xs):
        o1 = self.forward_lstm.forward(xs)
        o2 = self.backward_lstm.forward(xs[:, ::-1])[:, ::-1]
        return np.concatenate((o1, o2), axis=2)

    def backward(self, dhs):
        H = dhs.shape[2] // 2
        dxs1 = self.forward_lstm.backward(dhs[:, :, :H])
        dxs2 = self.backward_lstm.backward(dhs[:, ::-1, H:])[:, ::-1]  # the reversed direction's steps, back in order
        return dxs1 + dxs2


class TimeGRU:
    """The GRU cell over the T steps of xs. As the book writes it: weights and gradients are attributes."""

    def __init__(self, Wx, Wh, stateful=False):
        self.Wx, self.Wh = Wx, Wh
        self.dWx, self.dWh = None, None
        self.layers = None
        self.h, self.dh = None, None
        self.stateful = stateful

    def forward(self, xs):
        N, T, _ = xs.shape
        H = self.Wh.shape[0]
        if not self.stateful or self.h is None:
            self.h = np.zeros((N, H), dtype=xs.dtype)
        hs = np.empty((N, T, H), dtype=xs.dtype)
        self.layers = []
        for t in range(T):
            layer = GRU(self.Wx, self.Wh)
            self.h = layer.forward(xs[:, t, :], self.h)
            hs[:, t, :] = self.h
            self.layers.append(layer)
        return hs

    def backward(self, dhs):
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, self.Wx.shape[0]), dtype=dhs.dtype)
        self.dWx, self.dWh, dh = 0, 0, 0
        for t in reversed(range(T)):
            layer = self.layers[t]
            dxs[:, t, :], dh = layer.backward(dhs[:, t, :] + dh)
            self.dWx += layer.dWx
            self.dWh += layer.dWh
        self.dh = dh
        return dxs

    def set_state(self, h):
        self.h = h

    def reset_state(self):
        self.h = None


class Embedding:
    """out = W[idx]; W's gradient adds dout up over repeated ids (np.add.at)."""

    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.idx = None

    def forward(self, idx):
        (W,) = self.params
        self.idx = idx
        return W[idx]

    def backward(self, dout):
        (dW,) = self.grads
        dW[...] = 0
        np.add.at(dW, self.idx, dout)
        return None


class SigmoidWithLoss:
    """Binary cross-entropy of sigmoid(x) against 0/1 labels, mean over the batch (x and t of shape (N,))."""

    def __init__(self):
        self.params, self.grads = [], []

    def forward(self, x, t):
        self.t = t
        self.y = 1 / (1 + np.exp(-x))
        n = x.shape[0]
        # log(sigmoid(x)) and log(1 - sigmoid(x)) without the overflow of exp(-x)
        return (np.sum(np.logaddexp(0, -x) * t) + np.sum(np.logaddexp(0, x) * (1 - t))) / n

    def backward(self, dout=1):
        dx = self.y.copy()
        dx -= self.t  # in y's dtype: the labels are integers
        return dx * dout / self.t.shape[0]


class TimeSigmoidWithLoss:
    """SigmoidWithLoss at every time step (x and t of shape (N, T)), the losses averaged over the steps."""

    def __init__(self):
        self.params, self.grads = [], []

    def forward(self, xs, ts):
        self.layers = [SigmoidWithLoss() for _ in range(xs.shape[1])]
        return sum(layer.forward(xs[:, t], ts[:, t]) for t, layer in enumerate(self.layers)) / len(self.layers)

    def backward(self, dout=1):
        T = len(self.layers)
        return np.stack([layer.backward(dout / T) for layer in self.layers], axis=1)  # dout itself is left as it was


class TimeAffine:
    """Book 2's TimeAffine: one Affine applied at every time step, as a single matrix product."""

    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]
        self.x = None

    def forward(self, x):
        N, T, D = x.shape
        W, b = self.params
        self.x = x
        return (x.reshape(N * T, D) @ W + b).reshape(N, T, -1)

    def backward(self, dout):
        N, T, D = self.x.shape
        W, _ = self.params
        flat = dout.reshape(N * T, -1)
        self.grads[0][...] = self.x.reshape(N * T, D).T @ flat
        self.grads[1][...] = flat.sum(axis=0)
        return (flat @ W.T).reshape(N, T, D)


class TimeSoftmaxWithLoss:
    """Book 2's TimeSoftmaxWithLoss: SoftmaxWithLoss at every step, steps labelled ignore_label not counted."""

    def __init__(self):
        self.params, self.grads = [], []
        self.cache = None
        self.ignore_label = -1

    def forward(self, xs, ts):
        N, T, V = xs.shape
        mask = (ts != self.ignore_label).reshape(N * T)
        ys = softmax(xs.reshape(N * T, V))
        flat_ts = ts.reshape(N * T)
        ls = np.log(ys[np.arange(N * T), flat_ts]) * mask
        self.cache = (flat_ts, ys, mask, (N, T, V))
        return -ls.sum() / mask.sum()

    def backward(self, dout=1):
        ts, ys, mask, (N, T, V) = self.cache
        dx = ys.copy()
        dx[np.arange(N * T), ts] -= 1
        dx *= dout / mask.sum()
        dx *= mask[:, np.newaxis]
        return dx.reshape(N, T, V)


class EmbeddingDot:
    """Book 2's ch04 EmbeddingDot: out[n] = W[idx[n]] · h[n], through an Embedding."""

    def __init__(self, W):
        self.embed = Embedding(W)
        self.params = self.embed.params
        self.grads = self.embed.grads
        self.cache = None

    def forward(self, h, idx):
        target_W = self.embed.forward(idx)
        out = np.sum(target_W * h, axis=1)
        self.cache = (h, target_W)
        return out

    def backward(self, dout):
        h, target_W = self.cache
        dout = dout.reshape(dout.shape[0], 1)
        self.embed.backward(dout * h)
        return dout * target_W


class Dropout:
    """Book 2's Dropout (common/layers.py): as book 1's, with empty params and grads lists."""

    def __init__(self, dropout_ratio=0.5):
        self.params, self.grads = [], []
        self.dropout_ratio = dropout_ratio
        self.mask = None

    def forward(self, x, train_flg=True):
        if train_flg:
            self.mask = np.random.rand(*x.shape) > self.dropout_ratio
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout):
        return dout * self.mask


class TimeDropout:
    """Book 2's TimeDropout: inverted dropout over (N, T, D), its mask a float32 array scaled by 1 / (1 - ratio)."""

    def __init__(self, dropout_ratio=0.5):
        self.params, self.grads = [], []
        self.dropout_ratio = dropout_ratio
        self.mask = None
        self.train_flg = True

    def forward(self, xs):
        if self.train_flg:
            flg = np.random.rand(*xs.shape) > self.dropout_ratio
            scale = 1 / (1.0 - self.dropout_ratio)
            self.mask = flg.astype(np.float32) * scale
            return xs * self.mask
        return xs

    def backward(self, dout):
        return dout * self.mask


class TimeEmbedding:
    """Book 2's TimeEmbedding: an Embedding per time step over ids (N, T); W's gradient summed over the steps."""

    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.layers = None
        self.W = W

    def forward(self, xs):
        N, T = xs.shape
        V, D = self.W.shape
        out = np.empty((N, T, D), dtype=self.W.dtype)
        self.layers = []
        for t in range(T):
            layer = Embedding(self.W)
            out[:, t, :] = layer.forward(xs[:, t])
            self.layers.append(layer)
        return out

    def backward(self, dout):
        N, T, D = dout.shape
        grad = 0
        for t in range(T):
            layer = self.layers[t]
            layer.backward(dout[:, t, :])
            grad += layer.grads[0]
        self.grads[0][...] = grad
        return None


class WeightSum:
    """Attention's weighted sum (book 2, chapter 8): c[n] = Σ_t a[n, t] hs[n, t]. No parameters."""

    def __init__(self):
        self.params, self.grads = [], []
        self.cache = None

    def forward(self, hs, a):
        self.cache = (hs, a)
        return np.einsum("nth,nt->nh", hs, a)

    def backward(self, dc):
        hs, a = self.cache
        dhs = a[:, :, np.newaxis] * dc[:, np.newaxis, :]  # each step's state gets dc, weighted by its a
        da = np.einsum("nth,nh->nt", hs, dc)
        return dhs, da


class AttentionWeight:
    """Attention weights (book 2, chapter 8): a = softmax over t of hs[n, t] · h[n]. No parameters."""

    def __init__(self):
        self.params, self.grads = [], []
        self.softmax = Softmax()
        self.cache = None

    def forward(self, hs, h):
        self.cache = (hs, h)
        return self.softmax.forward(np.einsum("nth,nh->nt", hs, h))

    def backward(self, da):
        hs, h = self.cache
        ds = self.softmax.backward(da)
        dhs = ds[:, :, np.newaxis] * h[:, np.newaxis, :]
        dh = np.einsum("nt,nth->nh", ds, hs)
        return dhs, dh


class Attention:
    """AttentionWeight, then WeightSum: hs is read by both, so its gradient is the sum of both paths."""

    def __init__(self):
        self.params, self.grads = [], []
        self.weight = AttentionWeight()
        self.sum = WeightSum()

    def forward(self, hs, h):
        return self.sum.forward(hs, self.weight.forward(hs, h))

    def backward(self, dout):
        dhs_sum, da = self.sum.backward(dout)
        dhs_weight, dh = self.weight.backward(da)
        return dhs_sum + dhs_weight, dh


class TimeAttention:
    """Attention at every decoder step t over the encoder's states: hs_enc (N, S, H), hs_dec (N, T, H)."""

    def __init__(self):
        self.params, self.grads = [], []
        self.layers = None

    def forward(self, hs_enc, hs_dec):
        self.layers = [Attention() for _ in range(hs_dec.shape[1])]
        return np.stack([layer.forward(hs_enc, hs_dec[:, t]) for t, layer in enumerate(self.layers)], axis=1)

    def backward(self, dout):
        dhs_enc = np.zeros_like(self.layers[0].sum.cache[0])
        dhs_dec = np.empty_like(dout)
        for t, layer in enumerate(self.layers):
            dhs, dh = layer.backward(dout[:, t])
            dhs_enc += dhs  # every step reads all of hs_enc
            dhs_dec[:, t] = dh
        return dhs_enc, dhs_dec
