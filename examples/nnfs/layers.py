"""A small layer library in the convention of *Neural Networks from Scratch in Python* (the nnfs book),
written for derivcheck's examples: classes named Layer_, Activation_ and Loss_; forward(inputs) stores
self.output and returns nothing; backward(dvalues) stores self.dinputs (and the parameters' dweights,
dbiases). A loss's forward gives one loss per sample, calculate their mean, and its backward takes the
prediction and the labels (the loss ends the graph). Verify one with

    derivcheck verify examples/nnfs/layers.py:Layer_Dense
"""
import numpy as np


class Layer_Dense:
    """inputs (N, D) · weights (D, H) + biases (1, H); the layer makes its own parameters."""

    def __init__(self, n_inputs, n_neurons, weight_regularizer_l2=0.0):
        self.weights = 0.1 * np.random.standard_normal((n_inputs, n_neurons))
        self.biases = np.zeros((1, n_neurons))
        self.weight_regularizer_l2 = weight_regularizer_l2

    def forward(self, inputs, training):
        self.inputs = inputs
        self.output = inputs @ self.weights + self.biases

    def backward(self, dvalues):
        self.dweights = self.inputs.T @ dvalues
        self.dbiases = dvalues.sum(axis=0, keepdims=True)
        if self.weight_regularizer_l2 > 0:  # the penalty λ·ΣW² a Loss adds for this layer
            self.dweights = self.dweights + 2 * self.weight_regularizer_l2 * self.weights
        self.dinputs = dvalues @ self.weights.T


class Layer_Dropout:
    """Inverted dropout: rate is the chance of dropping; the kept elements are scaled by 1 / (1 - rate)."""

    def __init__(self, rate):
        self.keep = 1 - rate

    def forward(self, inputs, training):
        if not training:
            self.output = inputs.copy()
            return
        self.mask = ((np.random.random_sample(inputs.shape) < self.keep) / self.keep).astype(inputs.dtype)
        self.output = inputs * self.mask

    def backward(self, dvalues):
        self.dinputs = dvalues * self.mask


class Activation_Linear:
    """A regression model's last activation: the identity."""

    def forward(self, inputs, training):
        self.output = inputs.copy()

    def backward(self, dvalues):
        self.dinputs = dvalues.copy()


class Activation_ReLU:
    def forward(self, inputs, training):
        self.inputs = inputs
        self.output = np.where(inputs > 0, inputs, 0.0).astype(inputs.dtype)

    def backward(self, dvalues):
        self.dinputs = np.where(self.inputs > 0, dvalues, 0.0).astype(dvalues.dtype)


class Activation_Sigmoid:
    def forward(self, inputs, training):
        self.output = 1 / (1 + np.exp(-inputs))

    def backward(self, dvalues):
        self.dinputs = dvalues * self.output * (1 - self.output)


class Activation_Softmax:
    def forward(self, inputs, training):
        shifted = np.exp(inputs - inputs.max(axis=1, keepdims=True))
        self.output = shifted / shifted.sum(axis=1, keepdims=True)

    def backward(self, dvalues):
        # each row's Jacobian diag(p) - p pᵀ applied to its dvalues, without forming it
        p = self.output
        self.dinputs = p * (dvalues - (dvalues * p).sum(axis=1, keepdims=True))


class Loss:
    def calculate(self, output, y):
        return np.mean(self.forward(output, y))


class Loss_CategoricalCrossentropy(Loss):
    """y_true: class indices (N,) or one-hot rows (N, C)."""

    def forward(self, y_pred, y_true):
        # the book clips to [1e-7, 1 - 1e-7], which changes the loss of a confident mistake (derivcheck's
        # extreme-input probe says so); the smallest positive float keeps log finite and changes nothing else
        kept = np.clip(y_pred, np.finfo(y_pred.dtype).tiny, 1.0)
        if y_true.ndim == 1:
            picked = kept[np.arange(len(kept)), y_true]
        else:
            picked = (kept * y_true).sum(axis=1)
        return -np.log(picked)

    def backward(self, dvalues, y_true):
        samples, classes = dvalues.shape
        if y_true.ndim == 1:
            y_true = np.eye(classes, dtype=dvalues.dtype)[y_true]
        self.dinputs = -y_true / dvalues / samples


class Loss_MeanSquaredError(Loss):
    def forward(self, y_pred, y_true):
        return ((y_true - y_pred) ** 2).mean(axis=-1)

    def backward(self, dvalues, y_true):
        samples, outputs = dvalues.shape
        self.dinputs = 2 * (dvalues - y_true) / outputs / samples


class Loss_BinaryCrossentropy(Loss):
    """Each of the D sigmoid outputs against its own 0/1 label."""

    def forward(self, y_pred, y_true):
        kept = np.clip(y_pred, np.finfo(y_pred.dtype).tiny, 1.0 - np.finfo(y_pred.dtype).epsneg)
        return -(y_true * np.log(kept) + (1 - y_true) * np.log(1 - kept)).mean(axis=-1)

    def backward(self, dvalues, y_true):
        samples, outputs = dvalues.shape
        y_true = y_true.astype(dvalues.dtype)  # 0/1 labels, often integers
        self.dinputs = -(y_true / dvalues - (1 - y_true) / (1 - dvalues)) / outputs / samples


class Loss_MeanAbsoluteError(Loss):
    def forward(self, y_pred, y_true):
        return np.abs(y_true - y_pred).mean(axis=-1)

    def backward(self, dvalues, y_true):
        samples, outputs = dvalues.shape
        self.dinputs = np.sign(dvalues - y_true) / outputs / samples


class Activation_Softmax_Loss_CategoricalCrossentropy:
    """Softmax and cross-entropy in one: forward returns the mean loss; backward takes the softmax output."""

    def __init__(self):
        self.activation = Activation_Softmax()
        self.loss = Loss_CategoricalCrossentropy()

    def forward(self, inputs, y_true):
        self.activation.forward(inputs, True)
        self.output = self.activation.output
        return self.loss.calculate(self.output, y_true)

    def backward(self, dvalues, y_true):
        samples = len(dvalues)
        if y_true.ndim == 2:
            y_true = y_true.argmax(axis=1)
        self.dinputs = dvalues.copy()
        self.dinputs[np.arange(samples), y_true] -= 1
        self.dinputs = self.dinputs / samples
