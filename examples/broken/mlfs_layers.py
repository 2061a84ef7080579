"""Broken layers in ML-From-Scratch's convention (see examples/mlfs/layers.py for the correct ones):
each has one bug, catalogued in examples/broken/README.md and caught by the gate (examples/derivcheck.toml)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlfs.layers import Dense, SquareLoss  # noqa: E402


class DenseDxFromUpdatedWeights(Dense):
    def backward_pass(self, accum_grad):
        self.W = self.W_opt.update(self.W, self.X.T @ accum_grad)
        self.w0 = self.w0_opt.update(self.w0, accum_grad.sum(axis=0, keepdims=True))
        return accum_grad @ self.W.T  # the weights after their update, not those forward used


class DenseBiasNotSummed(Dense):
    def backward_pass(self, accum_grad):
        W = self.W
        self.W = self.W_opt.update(self.W, self.X.T @ accum_grad)
        self.w0 = self.w0_opt.update(self.w0, accum_grad)  # one row per example, not their sum
        return accum_grad @ W.T


class SoftmaxDiagonalGradient:
    def __call__(self, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def gradient(self, x):
        p = self(x)
        return p * (1 - p)  # the Jacobian's diagonal only: each output depends on every input of its row


class SquareLossSignFlipped(SquareLoss):
    def gradient(self, y, y_pred):
        return y - y_pred  # the derivative in y, not in y_pred
