"""Broken steps in the deeplearning.ai course's convention (see examples/dlai/dnn_utils.py for the correct
ones): each has one bug, catalogued in examples/broken/README.md and caught by the gate."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dlai.dnn_utils import L_model_backward, L_model_forward, linear_forward  # noqa: E402,F401  (the course's module)

linear_unaveraged_forward = linear_forward
linear_dA_averaged_forward = linear_forward


def linear_unaveraged_backward(dZ, cache):
    A_prev, W, b = cache
    m = A_prev.shape[1]
    dW = dZ @ A_prev.T  # the sum over the examples: the course's cost is their mean
    db = dZ.sum(axis=1, keepdims=True) / m
    return W.T @ dZ, dW, db


def linear_dA_averaged_backward(dZ, cache):
    A_prev, W, b = cache
    m = A_prev.shape[1]
    dA_prev = W.T @ dZ / m  # dZ is per example: dA_prev stays per example, so no 1/m here
    return dA_prev, dZ @ A_prev.T / m, dZ.sum(axis=1, keepdims=True) / m
