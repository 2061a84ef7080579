"""DeZero-style Layers and Models (book 3, steps 44-45): parameters kept by the layer, Linear, Model.

A Model is called on an array and returns a Variable; its Functions are recorded
in the graph that backward() walks. derivcheck checks a Model by walking that
graph: each Function against its rule, and each Parameter's gradient.
"""
import numpy as np

import functions as F
from core import Variable


class Parameter(Variable):
    pass


class Layer:
    def __init__(self):
        self._params = set()

    def __setattr__(self, name, value):
        if isinstance(value, (Parameter, Layer)):
            self._params.add(name)
        super().__setattr__(name, value)

    def __call__(self, *inputs):
        outputs = self.forward(*inputs)
        return outputs

    def forward(self, *inputs):
        raise NotImplementedError

    def params(self):
        for name in self._params:
            obj = self.__dict__[name]
            if isinstance(obj, Layer):
                yield from obj.params()
            else:
                yield obj

    def cleargrads(self):
        for param in self.params():
            param.cleargrad()


class Linear(Layer):
    def __init__(self, out_size, in_size=None):
        super().__init__()
        self.in_size, self.out_size = in_size, out_size
        self.W = Parameter(None, name="W")
        if in_size is not None:
            self._init_W()
        self.b = Parameter(np.zeros(out_size), name="b")

    def _init_W(self):
        self.W.data = np.random.randn(self.in_size, self.out_size) * np.sqrt(1 / self.in_size)

    def forward(self, x):
        if self.W.data is None:  # the input size is learnt at the first call
            self.in_size = x.shape[1]
            self._init_W()
        return F.linear(x, self.W, self.b)


class Model(Layer):
    pass
