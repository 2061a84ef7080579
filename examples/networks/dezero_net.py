"""Book 3's two-layer network (step 45) on the DeZero-style core in examples/dezero_style.

    derivcheck verify examples/networks/dezero_net.py:TwoLayerNet
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dezero_style"))
import functions as F  # noqa: E402
import layers as L  # noqa: E402
from layers import Model  # noqa: E402


class TwoLayerNet(Model):
    def __init__(self, hidden_size, out_size):
        super().__init__()
        self.l1 = L.Linear(hidden_size)
        self.l2 = L.Linear(out_size)

    def forward(self, x):
        y = F.sigmoid(self.l1(x))
        y = self.l2(y)
        return y
