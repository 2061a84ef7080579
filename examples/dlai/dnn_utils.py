"""A small library in the convention of the deeplearning.ai course (Neural Networks and Deep Learning),
written for derivcheck's examples: examples are columns, Z = W·A + b; each step returns its output and a
cache, and its backward takes the upstream gradient and that cache. As in the course, the gradients of
activations are per example (dAL is one example's loss derivative) and linear_backward divides dW and db
by m. Verify one with

    derivcheck verify examples/dlai/dnn_utils.py:linear_forward
"""
import numpy as np


def sigmoid(Z):
    A = 1 / (1 + np.exp(-Z))
    return A, Z


def sigmoid_backward(dA, cache):
    s = 1 / (1 + np.exp(-cache))
    return dA * s * (1 - s)


def relu(Z):
    return np.maximum(Z, 0), Z


def relu_backward(dA, cache):
    return np.where(cache > 0, dA, 0.0).astype(dA.dtype)


def linear_forward(A, W, b):
    return W @ A + b, (A, W, b)


def linear_backward(dZ, cache):
    A_prev, W, b = cache
    m = A_prev.shape[1]
    dW = dZ @ A_prev.T / m
    db = dZ.sum(axis=1, keepdims=True) / m
    dA_prev = W.T @ dZ
    return dA_prev, dW, db


def linear_activation_forward(A_prev, W, b, activation):
    Z, linear_cache = linear_forward(A_prev, W, b)
    A, activation_cache = relu(Z) if activation == "relu" else sigmoid(Z)
    return A, (linear_cache, activation_cache)


def linear_activation_backward(dA, cache, activation):
    linear_cache, activation_cache = cache
    dZ = relu_backward(dA, activation_cache) if activation == "relu" else sigmoid_backward(dA, activation_cache)
    return linear_backward(dZ, linear_cache)


def initialize_parameters_deep(layer_dims, seed=1):
    rng = np.random.default_rng(seed)
    parameters = {}
    for l in range(1, len(layer_dims)):
        parameters[f"W{l}"] = rng.standard_normal((layer_dims[l], layer_dims[l - 1])) / np.sqrt(layer_dims[l - 1])
        parameters[f"b{l}"] = np.zeros((layer_dims[l], 1))
    return parameters


def L_model_forward(X, parameters):
    caches, A = [], X
    L = len(parameters) // 2
    for l in range(1, L + 1):
        A, cache = linear_activation_forward(A, parameters[f"W{l}"], parameters[f"b{l}"], "relu" if l < L else "sigmoid")
        caches.append(cache)
    return A, caches


def compute_cost(AL, Y):
    m = Y.shape[1]
    Y = Y.astype(AL.dtype)  # 0/1 labels, often integers: the cost stays in AL's precision
    cost = -(Y * np.log(AL) + (1 - Y) * np.log(1 - AL)).sum() / m
    return np.squeeze(cost)


def L_model_backward(AL, Y, caches):
    grads = {}
    L = len(caches)
    dA = -(Y / AL - (1 - Y) / (1 - AL))
    for l in reversed(range(L)):
        dA_prev, grads[f"dW{l + 1}"], grads[f"db{l + 1}"] = linear_activation_backward(
            dA, caches[l], "sigmoid" if l == L - 1 else "relu")
        grads[f"dA{l}"] = dA_prev
        dA = dA_prev
    return grads
