"""Broken layers in the nnfs book's convention (see examples/nnfs/layers.py for the correct ones):
each has one bug, catalogued in examples/broken/README.md and caught by the gate (examples/derivcheck.toml)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnfs.layers import Activation_ReLU, Layer_Dense, Loss_CategoricalCrossentropy, Loss_MeanAbsoluteError  # noqa: E402


class Layer_DenseWeightsTransposed(Layer_Dense):
    def backward(self, dvalues):
        super().backward(dvalues)
        self.dweights = dvalues.T @ self.inputs  # (H, D): the transpose of inputsᵀ · dvalues


class Activation_ReLUMaskFromDvalues(Activation_ReLU):
    def backward(self, dvalues):
        self.dinputs = dvalues.copy()
        self.dinputs[dvalues <= 0] = 0  # the mask of the upstream gradient, not of the inputs


class Loss_MeanAbsoluteErrorSignFlipped(Loss_MeanAbsoluteError):
    def backward(self, dvalues, y_true):
        samples, outputs = dvalues.shape
        self.dinputs = np.sign(y_true - dvalues) / outputs / samples  # sign(t - y): the derivative of |t - y| in t


class Loss_CategoricalCrossentropyNotAveraged(Loss_CategoricalCrossentropy):
    def backward(self, dvalues, y_true):
        super().backward(dvalues, y_true)
        self.dinputs = self.dinputs * len(dvalues)  # the gradient of the sum, where calculate gives the mean
