"""The deeplearning.ai course (Neural Networks and Deep Learning): examples are columns, ``Z = W·A + b``
with ``A`` (n_prev, m), ``W`` (n, n_prev), ``b`` (n, 1); ``linear_forward(A, W, b) -> (Z, cache)`` and
``linear_backward(dZ, cache) -> (dA_prev, dW, db)``; ``relu(Z) -> (A, cache)`` with ``relu_backward(dA, cache)``.

The course's gradients of activations (dA, dZ) are m times the cost's, where m is the number of examples:
``dAL`` starts as the derivative of one example's loss, ``linear_backward`` divides dW and db by m and hands
dA_prev back undivided. So the judge's upstream gradient is passed multiplied by m, and the gradients of the
inputs that have the examples' axis (the rule's first input's last axis) are divided by m again: each
function is then held to the exact derivative of the cost, as the course's formulas state it.
"""
from __future__ import annotations

import inspect

import numpy as np

from derivcheck.check.conventions.base import Outcome
from derivcheck.check.conventions.functional import FunctionalAdapter

# what a module of the course defines (its dnn_app_utils and the assignments' files): functions of this
# convention, whatever their names
COURSE = ("L_model_forward", "L_model_backward", "linear_activation_forward", "linear_activation_backward",
          "initialize_parameters_deep")


class DlaiAdapter(FunctionalAdapter):
    style = "dlai"
    order = 60

    @classmethod
    def claims(cls, obj, module, name):
        """-1, before CS231n's pairs (0): a function of a module that is recognisably the course's."""
        if obj is not None and not inspect.isfunction(obj):
            return None
        return -1 if any(inspect.isfunction(getattr(module, m, None)) for m in COURSE) else None

    def per_example(self, n: str) -> bool:
        """Rule input ``n`` has the examples' axis (the rule's first input's last): an activation, whose gradient
        the course keeps m times the cost's."""
        first = next(iter(self.rule.inputs.values()))
        return bool(first.shape) and first.shape[-1] in self.rule.inputs[n].shape

    def run(self, values, cotangent) -> Outcome:
        if self.loss_fn is not None:  # a cost: its value only
            return super().run(values, cotangent)
        first = next(iter(self.rule.inputs))
        m = int(np.shape(values[first])[-1]) if np.ndim(values[first]) else 1  # the number of examples
        outcome = super().run(values, np.asarray(cotangent) * m)
        for n, g in outcome.grads.items():
            if g is not None and self.per_example(n):
                outcome.grads[n] = np.asarray(g) / m
        return outcome

    def grad_location(self, n) -> str:
        where = super().grad_location(n)
        return f"{where} / m" if self.per_example(n) else where
