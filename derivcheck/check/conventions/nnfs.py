"""*Neural Networks from Scratch in Python* (the nnfs book): ``Layer_Dense(n_inputs, n_neurons)`` makes its
own ``weights`` and ``biases``; ``forward(inputs)`` (from chapter 18: ``forward(inputs, training)``) returns
nothing and sets ``self.output``; ``backward(dvalues)`` sets ``self.dinputs``, ``self.dweights``,
``self.dbiases``. A loss ``forward(y_pred, y_true)`` returns the per-sample losses and ``calculate`` their
mean; its ``backward(dvalues, y_true)`` takes the prediction (no upstream gradient: a loss ends the graph)
and sets ``dinputs`` to the gradient of the mean; the softmax-and-loss class's takes the softmax output.

The layer's own arrays are replaced by the trial's after construction (``layer.weights = W``), as the book's
optimizers write them; a rule in this convention's form names its inputs as the layer's attributes
(``affine_nnfs``: inputs, weights, biases of shape (1, H)).
"""
from __future__ import annotations

import ast
import inspect
import textwrap

import numpy as np

from derivcheck.check.binding import Binding, norm_name, params_of
from derivcheck.check.conventions.base import (Adapter, LayerError, Outcome, call_user, constructor_args, mentions, own,
                                               sizes_of)
from derivcheck.errors import DerivcheckError

TRAINING = ("training",)  # forward's mode flag from chapter 18 on: the trials train


def _stores_output(method, attr: str | None = "output") -> bool:
    """``method`` sets ``self.<attr>`` (any attribute when ``attr`` is None) and returns no value."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    except (OSError, TypeError, SyntaxError):
        return False
    stores = any(isinstance(n, ast.Attribute) and attr in (None, n.attr) and isinstance(n.ctx, ast.Store)
                 and isinstance(n.value, ast.Name) and n.value.id == "self" for n in ast.walk(tree))
    returns = any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(tree))
    return stores and not returns


class NnfsAdapter(Adapter):
    style = "nnfs"
    order = 50

    @classmethod
    def claims(cls, obj, module, name):
        # self.dinputs is this convention's alone: the book's every backward sets it; before backward
        # (chapters 2 to 8) a forward that stores self.output and returns nothing, or a loss with calculate
        if not inspect.isclass(obj) or not hasattr(obj, "forward"):
            return None
        backward = getattr(obj, "backward", None)
        told = (mentions(obj, "dinputs") or callable(getattr(obj, "calculate", None))
                or (_stores_output(obj.forward) and (backward is None or _stores_output(backward, attr=None))))
        return 3 if told else None

    @classmethod
    def refuses(cls, obj, name):
        if not inspect.isclass(obj) or not callable(getattr(obj, "forward", None)):
            return f"style nnfs needs a class with a forward method (Layer_Dense, Activation_ReLU, Loss_...), and '{name}' is not one"
        return ""

    @property
    def is_loss(self) -> bool:
        return self.rule.output == () and bool(self.rule.labels)

    def prepare(self):
        """forward takes the rule's first input and its labels, in order; the other inputs are the layer's own
        arrays, attributes named as the rule names them; the constructor's required parameters take the
        rule's hyperparameters by name, then the sizes of those arrays (Layer_Dense(n_inputs, n_neurons))."""
        rule, inputs = self.rule, list(self.rule.inputs)
        labels = [n for n, lab in rule.labels.items() if lab.given]
        self.held_names = inputs[1:]
        forward = params_of(self.obj.forward, skip_self=True)
        call = [p for p in forward if p.name not in TRAINING]
        required = [p for p in call if p.default is p.empty]
        data = inputs[:1] + labels
        if len(required) != len(data):
            raise DerivcheckError(
                f"{self.name}.forward takes ({', '.join(p.name for p in call)}); rule '{rule.name}' in the nnfs convention "
                f"passes it {', '.join(data)}: pick the rule it implements (--rule) or another --style")
        self.binding = Binding()
        self.binding.call = [(None, "input" if n in rule.inputs else "label", n) for n in data]  # by position
        self.takes_training = len(call) < len(forward)
        hypers = {norm_name(n): n for n, h in rule.hyper.items() if h.to_layer}
        self.ctor_params = [(p.name, hypers.get(norm_name(p.name))) for p in params_of(self.obj.__init__, skip_self=True)
                            if p.default is p.empty or norm_name(p.name) in hypers]
        self.binding.ctor = {p: ("hyper", n) for p, n in self.ctor_params if n is not None}
        if not callable(getattr(self.obj, "backward", None)):
            self.forward_only = f"{self.name} has a forward method and no backward"

    def build(self, values):
        where = f"the sizes of the arrays the layer holds ({', '.join(self.held_names) or 'none, for rule ' + repr(self.rule.name)})"
        # weights (D, H): n_inputs, n_neurons
        args = constructor_args(self.name, self.ctor_params, self.layer_hyper, sizes_of(self.rule, self.held_names, values), where)
        self.instance = call_user(self.obj, args, f"{self.name}({', '.join(p for p, _ in args)})")
        missing = [n for n in self.held_names if not isinstance(getattr(self.instance, n, None), np.ndarray)]
        if missing:
            raise DerivcheckError(
                f"{self.name} holds no array called {', '.join(missing)} after construction: in the nnfs convention a "
                f"layer's parameters are its attributes, named as the rule names its inputs (rule affine_nnfs: weights, "
                f"biases); pick the rule in this form (--rule) or name the attributes so")
        self.update_params(values)

    def update_params(self, values):
        """Between steps, as the book's optimizers change them: the layer's parameters become the new values (a
        fresh copy, in the trial's dtype, bound to the attribute the rule names)."""
        for n in self.held_names:
            held = getattr(self.instance, n)
            if held.shape != np.shape(values[n]):
                raise DerivcheckError(f"{self.name}.{n} has shape {held.shape}; rule '{self.rule.name}' gives {n} the shape "
                                      f"{np.shape(values[n])}")
            setattr(self.instance, n, np.array(values[n], copy=True))  # in the trial's dtype, as the layer then computes

    def held(self, values):
        return {**values, **{n: getattr(self.instance, n) for n in self.held_names}}

    def run(self, values, cotangent) -> Outcome:
        args = self._call_args(self.binding, values)
        returned = call_user(self.instance.forward, args + ([("training", True)] if self.takes_training else []),
                             f"{self.name}.forward")
        if self.is_loss:  # the batch mean: Loss.calculate(output, y), or what a softmax-and-loss forward returns
            calculate = getattr(self.instance, "calculate", None)
            out = (call_user(calculate, args, f"{self.name}.calculate") if callable(calculate) else returned)
        else:
            out = getattr(self.instance, "output", None)
            if out is None:
                raise LayerError(f"{self.name}.forward", AttributeError("set no self.output (the nnfs convention's forward "
                                                                       "sets it and returns nothing)"))
        out = own(np.asarray(out) if np.ndim(out) == 0 else out)
        if self.forward_only:
            return Outcome(out, {}, forward_only=self.forward_only)
        first = self.binding.call[0][2]
        if self.is_loss:  # backward(dvalues, y_true): the softmax output it kept, or the prediction
            kept = getattr(self.instance, "output", None)
            dvalues = kept if isinstance(kept, np.ndarray) and kept.shape == np.shape(values[first]) else values[first]
            labels = [(None, values[n]) for _, kind, n in self.binding.call if kind == "label"]
            call_user(self.instance.backward, [(None, dvalues)] + labels, f"{self.name}.backward")
        else:
            call_user(self.instance.backward, [(None, cotangent)], f"{self.name}.backward")
        grads = {first: own(getattr(self.instance, "dinputs", None))}
        grads.update({n: own(getattr(self.instance, f"d{n}", None)) for n in self.held_names})
        if self.is_loss:  # a loss ends the graph: its gradient is for an upstream gradient of 1, scaled here
            grads = {n: None if g is None else g * np.asarray(cotangent, dtype=np.asarray(g).dtype) for n, g in grads.items()}
        return Outcome(out, grads)

    def grad_location(self, n) -> str:
        where = f"{self.name}.dinputs" if n == self.binding.call[0][2] else f"{self.name}.d{n}"
        return where + (" × dout" if self.is_loss else "")  # a loss's backward takes no dout (run() multiplies)
