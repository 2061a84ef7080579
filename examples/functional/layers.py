"""Reference layers in the CS231n style: ``NAME_forward(...) -> (out, cache)``,
``NAME_backward(dout, cache) -> gradients``; losses ``NAME(x, y) -> (loss, dx)``."""
import numpy as np


def affine_forward(x, w, b):
    out = x @ w + b
    return out, (x, w)


def affine_backward(dout, cache):
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def sigmoid_forward(x):
    out = 1 / (1 + np.exp(-x))
    return out, out


def sigmoid_backward(dout, out):
    return dout * out * (1 - out)


def exp_forward(x):
    out = np.exp(x)
    return out, out


def exp_backward(dout, out):
    return dout * out


def softmax_loss(x, y):
    """Softmax cross-entropy, mean over the batch; y holds class indices."""
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    N = x.shape[0]
    loss = -log_probs[np.arange(N), y].sum() / N
    dx = np.exp(log_probs)
    dx[np.arange(N), y] -= 1
    return loss, dx / N


def cross_entropy_loss(y, t):
    """Cross-entropy of probabilities y against class indices t, mean over the batch."""
    N = y.shape[0]
    picked = y[np.arange(N), t]
    dy = np.zeros_like(y)
    dy[np.arange(N), t] = -1.0 / (picked * N)
    return -np.log(picked).sum() / N, dy


def mean_squared_error(y, t):
    """0.5 * sum((y - t)^2), as in DLFS book 1."""
    diff = y - t
    return 0.5 * np.sum(diff**2), diff


def linear_softmax_loss(W, X, y, reg):
    """CS231n assignment 1: softmax classifier loss and dW, with reg * sum(W * W)."""
    N = X.shape[0]
    scores = X @ W
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(N), y].sum() / N + reg * np.sum(W * W)
    dscores = np.exp(log_probs)
    dscores[np.arange(N), y] -= 1
    return loss, X.T @ dscores / N + 2 * reg * W


def svm_loss(x, y):
    """CS231n layers.svm_loss: multiclass hinge loss, mean over the batch; y holds class indices."""
    N = x.shape[0]
    correct = x[np.arange(N), y]
    margins = np.maximum(0, x - correct[:, np.newaxis] + 1.0)
    margins[np.arange(N), y] = 0
    loss = np.sum(margins) / N
    num_pos = np.sum(margins > 0, axis=1)
    dx = np.zeros_like(x)
    dx[margins > 0] = 1
    dx[np.arange(N), y] -= num_pos
    return loss, dx / N


def svm_loss_vectorized(W, X, y, reg):
    """CS231n assignment 1: linear SVM loss and dW, with reg * sum(W * W)."""
    N = X.shape[0]
    scores = X @ W
    correct = scores[np.arange(N), y][:, np.newaxis]
    margins = np.maximum(0, scores - correct + 1.0)
    margins[np.arange(N), y] = 0
    loss = margins.sum() / N + reg * np.sum(W * W)
    mask = (margins > 0).astype(scores.dtype)
    mask[np.arange(N), y] = -mask.sum(axis=1)
    return loss, X.T @ mask / N + 2 * reg * W


def batchnorm_forward(x, gamma, beta, bn_param):
    """CS231n: batch normalization with its settings in a dict (mode, eps, momentum, running statistics)."""
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    running_mean = bn_param.get("running_mean", np.zeros(x.shape[1], dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(x.shape[1], dtype=x.dtype))
    if mode != "train":
        raise ValueError(f"invalid batchnorm mode {mode!r}")
    mu = x.mean(axis=0)
    xc = x - mu
    var = (xc ** 2).mean(axis=0)
    std = np.sqrt(var + eps)
    xhat = xc / std
    bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * mu
    bn_param["running_var"] = momentum * running_var + (1 - momentum) * var
    return gamma * xhat + beta, (xhat, gamma, std)


def batchnorm_backward(dout, cache):
    """The simplified form: dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / std."""
    xhat, gamma, std = cache
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) / std
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    """CS231n: layer normalization, each sample over its features (the same in train and test)."""
    eps = ln_param.get("eps", 1e-5)
    mu = x.mean(axis=1, keepdims=True)
    xc = x - mu
    std = np.sqrt((xc ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = xc / std
    return gamma * xhat + beta, (xhat, gamma, std)


def layernorm_backward(dout, cache):
    """batchnorm_backward's simplified form, with the means over axis 1."""
    xhat, gamma, std = cache
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True)) / std
    return dx, dgamma, dbeta


def temporal_affine_forward(x, w, b):
    """CS231n (assignment 3): x of shape (N, T, D) through one affine map, (out, cache)."""
    out = x.reshape(x.shape[0] * x.shape[1], -1).dot(w).reshape(x.shape[0], x.shape[1], -1) + b
    return out, (x, w)


def temporal_affine_backward(dout, cache):
    x, w = cache
    N, T, D = x.shape
    flat = dout.reshape(N * T, -1)
    return (flat @ w.T).reshape(N, T, D), x.reshape(N * T, D).T @ flat, flat.sum(axis=0)


def temporal_softmax_loss(x, y, mask):
    """CS231n (assignment 3): softmax loss at every step where mask is True, summed over time, mean over the batch."""
    N, T, V = x.shape
    flat, y_flat, mask_flat = x.reshape(N * T, V), y.reshape(N * T), mask.reshape(N * T)
    shifted = flat - flat.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -np.sum(mask_flat * log_probs[np.arange(N * T), y_flat]) / N
    dx = np.exp(log_probs)
    dx[np.arange(N * T), y_flat] -= 1
    dx *= mask_flat[:, None] / N
    return loss, dx.reshape(N, T, V)


def dropout_forward(x, dropout_param):
    """CS231n's inverted dropout: p is the chance of keeping an element; test mode is the identity."""
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = None
    if mode == "train":
        mask = ((np.random.rand(*x.shape) < p) / p).astype(x.dtype)  # (CS231n's float64 mask upcasts a float32 dx)
        out = x * mask
    else:
        out = x
    return out.astype(x.dtype, copy=False), (dropout_param, mask)


def dropout_backward(dout, cache):
    dropout_param, mask = cache
    return dout * mask if dropout_param["mode"] == "train" else dout
