"""Seed 000's network as the notes first write it: layers and predict(x), no loss yet (its bugs fixed).

derivcheck checks each layer's forward on what flows through predict; there is
no backward to check.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dlfs2"))
from layers import Affine, Sigmoid  # noqa: E402


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size):
        self.w1 = np.random.randn(input_size, hidden_size)
        self.b1 = np.random.randn(hidden_size)
        self.w2 = np.random.randn(hidden_size, output_size)
        self.b2 = np.random.randn(output_size)
        self.layers = [Affine(self.w1, self.b1), Sigmoid(), Affine(self.w2, self.b2)]
        self.params = []
        for layer in self.layers:
            self.params += layer.params

    def predict(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x
