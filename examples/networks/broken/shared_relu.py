"""A three-layer book-1 network that uses one Relu instance twice: its mask is the second call's in both backwards."""
import os
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dlfs1"))
from layers import Affine, Relu, SoftmaxWithLoss  # noqa: E402


class ThreeLayerNet:
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        self.params = {"W1": weight_init_std * np.random.randn(input_size, hidden_size), "b1": np.zeros(hidden_size),
                       "W2": weight_init_std * np.random.randn(hidden_size, hidden_size), "b2": np.zeros(hidden_size),
                       "W3": weight_init_std * np.random.randn(hidden_size, output_size), "b3": np.zeros(output_size)}
        relu = Relu()  # BUG: one instance, used twice
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = relu
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = relu
        self.layers["Affine3"] = Affine(self.params["W3"], self.params["b3"])
        self.lastLayer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.lastLayer.forward(self.predict(x), t)

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.lastLayer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        return {f"{p}{i}": getattr(self.layers[f"Affine{i}"], f"d{p}") for i in (1, 2, 3) for p in ("W", "b")}
