"""CS231n's two-layer network (assignment 2, fc_net.py), as the assignment writes it, on the reference layers.

    derivcheck verify examples/networks/cs231n_net.py:TwoLayerNet

affine - relu - affine - softmax, with L2 regularization of the weights (0.5 * reg * sum W**2).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "functional"))
from layers import affine_backward, affine_forward, softmax_loss  # noqa: E402
from layer_utils import affine_relu_backward, affine_relu_forward  # noqa: E402


class TwoLayerNet:
    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10, weight_scale=1e-3, reg=0.0):
        self.params = {}
        self.reg = reg
        self.params["W1"] = np.random.normal(0, weight_scale, (input_dim, hidden_dim))
        self.params["b1"] = np.zeros(hidden_dim)
        self.params["W2"] = np.random.normal(0, weight_scale, (hidden_dim, num_classes))
        self.params["b2"] = np.zeros(num_classes)

    def loss(self, X, y=None):
        W1, b1 = self.params["W1"], self.params["b1"]
        W2, b2 = self.params["W2"], self.params["b2"]
        h1, cache1 = affine_relu_forward(X, W1, b1)
        scores, cache2 = affine_forward(h1, W2, b2)
        if y is None:
            return scores
        grads = {}
        loss, dscores = softmax_loss(scores, y)
        loss += 0.5 * self.reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
        dh1, grads["W2"], grads["b2"] = affine_backward(dscores, cache2)
        dX, grads["W1"], grads["b1"] = affine_relu_backward(dh1, cache1)
        grads["W1"] += self.reg * W1
        grads["W2"] += self.reg * W2
        return loss, grads


class FullyConnectedNet:
    """{affine - relu} x (L - 1) - affine - softmax, as fc_net.py's FullyConnectedNet without dropout or normalization."""

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, reg=0.0, weight_scale=1e-2, dtype=np.float32):
        self.reg = reg
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = dtype
        self.params = {}
        dims = [input_dim] + list(hidden_dims) + [num_classes]
        for i in range(self.num_layers):
            self.params["W%d" % (i + 1)] = weight_scale * np.random.randn(dims[i], dims[i + 1])
            self.params["b%d" % (i + 1)] = np.zeros(dims[i + 1])
        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)

    def loss(self, X, y=None):
        X = X.astype(self.dtype)
        caches, out = [], X
        for i in range(1, self.num_layers):
            out, cache = affine_relu_forward(out, self.params["W%d" % i], self.params["b%d" % i])
            caches.append(cache)
        L = self.num_layers
        scores, cache = affine_forward(out, self.params["W%d" % L], self.params["b%d" % L])
        caches.append(cache)
        if y is None:
            return scores
        loss, dout = softmax_loss(scores, y)
        grads = {}
        dout, grads["W%d" % L], grads["b%d" % L] = affine_backward(dout, caches.pop())
        for i in range(L - 1, 0, -1):
            dout, grads["W%d" % i], grads["b%d" % i] = affine_relu_backward(dout, caches.pop())
        for i in range(1, L + 1):
            W = self.params["W%d" % i]
            loss += 0.5 * self.reg * np.sum(W * W)
            grads["W%d" % i] += self.reg * W
        return loss, grads
