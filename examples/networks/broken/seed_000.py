"""Seed 000's TwoLayerNet with its two bugs, completed with book 2's forward/backward.

`self.b1` is assigned twice (so `b2` never exists) and the layers are built
from the unbound names w1, b1, w2, b2: the constructor cannot run.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dlfs2"))
from layers import Affine, Sigmoid, SoftmaxWithLoss  # noqa: E402


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size):
        self.w1 = np.random.randn(input_size, hidden_size)
        self.b1 = np.random.randn(hidden_size)
        self.w2 = np.random.randn(hidden_size, output_size)
        self.b1 = np.random.randn(output_size)  # BUG: b2

        self.layers = [
            Affine(w1, b1),  # BUG: self.w1, self.b1  # noqa: F821
            Sigmoid(),
            Affine(w2, b2),  # noqa: F821
        ]
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
