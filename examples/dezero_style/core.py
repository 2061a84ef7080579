"""A small DeZero-style core (book 3, steps 1-32): Variable, Function, backward.

Gradients are plain ndarrays here (DeZero keeps them as Variables from step 32
on; derivcheck's dezero adapter handles both).
"""
import contextlib
import weakref

import numpy as np


class Config:
    """DeZero's switch between train mode (dropout drops, batchnorm uses the batch) and test mode."""

    train = True


@contextlib.contextmanager
def test_mode():
    before = Config.train
    Config.train = False
    try:
        yield
    finally:
        Config.train = before


def as_array(x):
    return np.asarray(x) if np.isscalar(x) or isinstance(x, np.generic) else x


class Variable:
    def __init__(self, data, name=None):
        data = as_array(data)
        if data is not None and not isinstance(data, np.ndarray):
            raise TypeError(f"{type(data)} is not supported")
        self.data = data
        self.name = name
        self.grad = None
        self.creator = None
        self.generation = 0

    @property
    def shape(self):
        return self.data.shape

    def set_creator(self, func):
        self.creator = func
        self.generation = func.generation + 1

    def cleargrad(self):
        self.grad = None

    def backward(self, retain_grad=False):
        if self.grad is None:
            self.grad = np.ones_like(self.data)
        funcs, seen = [], set()

        def add(f):
            if f not in seen:
                funcs.append(f)
                seen.add(f)
                funcs.sort(key=lambda g: g.generation)

        add(self.creator)
        while funcs:
            f = funcs.pop()
            gys = [out().grad for out in f.outputs]
            gxs = f.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for x, gx in zip(f.inputs, gxs):
                x.grad = gx if x.grad is None else x.grad + gx
                if x.creator is not None:
                    add(x.creator)
            if not retain_grad:
                for out in f.outputs:
                    out().grad = None


def as_variable(obj):
    return obj if isinstance(obj, Variable) else Variable(obj)


class Function:
    def __call__(self, *inputs):
        inputs = [as_variable(x) for x in inputs]
        ys = self.forward(*[x.data for x in inputs])
        if not isinstance(ys, tuple):
            ys = (ys,)
        outputs = [Variable(as_array(y)) for y in ys]
        self.generation = max(x.generation for x in inputs)
        for out in outputs:
            out.set_creator(self)
        self.inputs = inputs
        self.outputs = [weakref.ref(out) for out in outputs]
        return outputs if len(outputs) > 1 else outputs[0]

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, *gys):
        raise NotImplementedError
