"""Seed 000's network ending in the seed's Softmax, which divides exp(x - max) by the unshifted sum(exp(x)).

A forward-only network (predict, no loss): the wrong layer is named by its forward.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dlfs2"))
from layers import Affine, Sigmoid  # noqa: E402


class Softmax:
    def __init__(self):
        self.params = []

    def forward(self, x):
        return np.exp(x - np.max(x)) / np.sum(np.exp(x))  # BUG: the seed's; the sum is neither shifted nor per row


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size):
        self.layers = [Affine(np.random.randn(input_size, hidden_size), np.random.randn(hidden_size)), Sigmoid(),
                       Affine(np.random.randn(hidden_size, output_size), np.random.randn(output_size)), Softmax()]
        self.params = []
        for layer in self.layers:
            self.params += layer.params

    def predict(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x
