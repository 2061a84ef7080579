"""A small layer library in the convention of ML-From-Scratch (``mlfromscratch/deep_learning``), written for
derivcheck's examples. Three kinds of classes:

- layers, built from sizes: the network calls ``set_input_shape(shape)`` and ``initialize(optimizer)``,
  where a layer makes its parameters and one optimizer copy per parameter; ``forward_pass(X, training)``
  returns the output; ``backward_pass(accum_grad)`` returns the input's gradient and hands each
  parameter's gradient to its optimizer, which returns the updated parameter;
- activation functions, ``__call__(x)`` and ``gradient(x)`` (the element-wise derivative);
- losses, ``loss(y, y_pred)`` and ``gradient(y, y_pred)``, element by element, the labels first.

Verify one with

    derivcheck verify examples/mlfs/layers.py:Dense
"""
import copy

import numpy as np


class Layer:
    def set_input_shape(self, shape):
        self.input_shape = shape

    def forward_pass(self, X, training=True):
        raise NotImplementedError

    def backward_pass(self, accum_grad):
        raise NotImplementedError


class Dense(Layer):
    """X (N, D) · W (D, H) + w0 (1, H)."""

    def __init__(self, n_units, input_shape=None):
        self.n_units = n_units
        self.input_shape = input_shape

    def initialize(self, optimizer):
        scale = 1 / np.sqrt(self.input_shape[0])
        self.W = np.random.uniform(-scale, scale, (self.input_shape[0], self.n_units))
        self.w0 = np.zeros((1, self.n_units))
        self.W_opt = copy.copy(optimizer)
        self.w0_opt = copy.copy(optimizer)

    def forward_pass(self, X, training=True):
        self.X = X
        return X @ self.W + self.w0

    def backward_pass(self, accum_grad):
        W = self.W  # the weights forward used: the update below replaces self.W
        self.W = self.W_opt.update(self.W, self.X.T @ accum_grad)
        self.w0 = self.w0_opt.update(self.w0, accum_grad.sum(axis=0, keepdims=True))
        return accum_grad @ W.T


class Dropout(Layer):
    """Drops each element with probability p in training, without rescaling (test mode scales by 1 - p)."""

    def __init__(self, p=0.2):
        self.p = p

    def forward_pass(self, X, training=True):
        self.keep = np.random.uniform(size=X.shape) > self.p if training else 1 - self.p
        return X * self.keep

    def backward_pass(self, accum_grad):
        return accum_grad * self.keep


class BatchNormalization(Layer):
    """Normalizes each feature over the batch, with ML-From-Scratch's eps = 0.01 (an attribute, not a parameter):
    check it with --hyper eps=0.01, the rule's eps being 1e-5."""

    def __init__(self, momentum=0.99):
        self.momentum = momentum
        self.eps = 0.01

    def initialize(self, optimizer):
        self.gamma = np.ones(self.input_shape)
        self.beta = np.zeros(self.input_shape)
        self.gamma_opt = copy.copy(optimizer)
        self.beta_opt = copy.copy(optimizer)

    def forward_pass(self, X, training=True):
        self.centered = X - X.mean(axis=0)
        self.inv_std = 1 / np.sqrt(X.var(axis=0) + self.eps)
        self.normalized = self.centered * self.inv_std
        return self.gamma * self.normalized + self.beta

    def backward_pass(self, accum_grad):
        gamma = self.gamma
        self.gamma = self.gamma_opt.update(self.gamma, (accum_grad * self.normalized).sum(axis=0))
        self.beta = self.beta_opt.update(self.beta, accum_grad.sum(axis=0))
        dnorm = accum_grad * gamma
        return self.inv_std * (dnorm - dnorm.mean(axis=0) - self.normalized * (dnorm * self.normalized).mean(axis=0))


class Reshape(Layer):
    """Each example to ``shape``, the batch axis kept: a dense layer's output to images."""

    def __init__(self, shape, input_shape=None):
        self.shape = tuple(shape)
        self.input_shape = input_shape

    def forward_pass(self, X, training=True):
        self.before = X.shape
        return X.reshape((X.shape[0],) + self.shape)

    def backward_pass(self, accum_grad):
        return accum_grad.reshape(self.before)


class Sigmoid:
    def __call__(self, x):
        return 1 / (1 + np.exp(-x))

    def gradient(self, x):
        s = self(x)
        return s * (1 - s)


class TanH:
    def __call__(self, x):
        return np.tanh(x)

    def gradient(self, x):
        return 1 - np.tanh(x) ** 2


class ReLU:
    def __call__(self, x):
        return np.maximum(x, 0)

    def gradient(self, x):
        return (x > 0).astype(x.dtype)


class LeakyReLU:
    def __init__(self, alpha=0.2):
        self.alpha = alpha

    def __call__(self, x):
        return np.where(x > 0, x, self.alpha * x)

    def gradient(self, x):
        return np.where(x > 0, 1, self.alpha).astype(x.dtype)


class ELU:
    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def __call__(self, x):
        return np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))

    def gradient(self, x):
        return np.where(x > 0, 1, self(x) + self.alpha).astype(x.dtype)


class SELU:
    def __init__(self):
        self.alpha = 1.6732632423543772848170429916717
        self.scale = 1.0507009873554804934193349852946

    def __call__(self, x):
        return self.scale * np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))

    def gradient(self, x):
        return self.scale * np.where(x > 0, 1, self.alpha * np.exp(np.minimum(x, 0))).astype(x.dtype)


class SoftPlus:
    """log(1 + exp(x)) as logaddexp(0, x): no overflow for large x."""

    def __call__(self, x):
        return np.logaddexp(0, x)

    def gradient(self, x):
        return np.exp(-np.logaddexp(0, -x))  # the sigmoid, also without overflow


class SquareLoss:
    def loss(self, y, y_pred):
        return 0.5 * (y - y_pred) ** 2

    def gradient(self, y, y_pred):
        return y_pred - y


class CrossEntropy:
    """Each output's own yes/no cross-entropy against one-hot labels."""

    def loss(self, y, p):
        p = np.clip(p, 1e-15, 1 - 1e-15)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    def gradient(self, y, p):
        p = np.clip(p, 1e-15, 1 - 1e-15)
        return (p - y) / (p * (1 - p))
