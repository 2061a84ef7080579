"""Book 2's network on an Affine that rebinds its grads slots (grads[0] = dW): the model's grads list goes stale."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dlfs2"))
from layers import Sigmoid, SoftmaxWithLoss  # noqa: E402


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
        self.grads[0] = np.dot(self.x.T, dout)  # BUG: rebinds the slot the model gathered at construction
        self.grads[1] = np.sum(dout, axis=0)
        return dx


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size):
        I, H, O = input_size, hidden_size, output_size
        self.layers = [Affine(0.01 * np.random.randn(I, H), np.zeros(H)), Sigmoid(),
                       Affine(0.01 * np.random.randn(H, O), np.zeros(O))]
        self.loss_layer = SoftmaxWithLoss()
        self.params, self.grads = [], []
        for layer in self.layers:
            self.params += layer.params
            self.grads += layer.grads

    def predict(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def forward(self, x, t):
        return self.loss_layer.forward(self.predict(x), t)

    def backward(self, dout=1):
        dout = self.loss_layer.backward(dout)
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout
