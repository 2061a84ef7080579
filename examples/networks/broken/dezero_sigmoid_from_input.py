"""Book 3's two-layer network with a Sigmoid Function of its own whose backward uses x where y belongs."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dezero_style"))
import layers as L  # noqa: E402
from core import Function  # noqa: E402
from layers import Model  # noqa: E402


class Sigmoid(Function):
    def forward(self, x):
        return 1 / (1 + np.exp(-x))

    def backward(self, gy):
        x = self.inputs[0].data
        return gy * x * (1 - x)  # BUG: y * (1 - y), with y the output


class TwoLayerNet(Model):
    def __init__(self, hidden_size, out_size):
        super().__init__()
        self.l1 = L.Linear(hidden_size)
        self.l2 = L.Linear(out_size)

    def forward(self, x):
        y = Sigmoid()(self.l1(x))
        return self.l2(y)
