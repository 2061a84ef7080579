"""micrograd (Karpathy's scalar autograd) and the many ``Value`` classes written after it: a ``Value`` holds
one number in ``data`` and its gradient in ``grad``; each operation (``__add__``, ``__mul__``, ``__pow__``,
``tanh``, ``relu``, ``exp``, ...) returns a new Value whose ``_backward`` closure adds the operation's local
derivative times ``out.grad`` into its operands' ``grad``; ``backward()`` seeds the root with 1 and calls the
closures in reverse topological order of ``_prev``.

The target is the Value class and the rule names the operation (``--rule mul`` checks ``__mul__``). Each element
of the trial's arrays is one scalar graph: fresh Values for the operands, the operation, the output's ``grad``
set to that element of the upstream gradient (not 1, so a ``_backward`` that forgets ``out.grad`` is caught), and
every ``_backward`` of the graph the operation built (``__sub__`` written as ``self + (-other)`` makes two
nodes) called once, in reverse topological order, as ``backward()`` does.
"""
from __future__ import annotations

import inspect

import numpy as np

from derivcheck.check.conventions.base import Adapter, LayerError, Outcome, call_user, mentions
from derivcheck.errors import DerivcheckError

# rule -> the Value method that computes it; pow's exponent is the rule's hyperparameter c, a plain number;
# square is x * x, one node as both operands, whose _backward must add (+=) both terms into x.grad
OPERATIONS = {"add": "__add__", "sub": "__sub__", "mul": "__mul__", "div": "__truediv__", "neg": "__neg__",
              "pow": "__pow__", "square": "__mul__", "exp": "exp", "log": "log", "tanh": "tanh", "relu": "relu",
              "sigmoid": "sigmoid", "sin": "sin", "cos": "cos"}
CHILDREN = ("_prev", "_children")  # where a node keeps its operands: micrograd's name, then a common other


def is_value_class(obj) -> bool:
    """A micrograd-style scalar: a class whose methods use ``self.data``, ``self.grad`` and ``_backward``."""
    return (inspect.isclass(obj) and mentions(obj, "data") and mentions(obj, "grad")
            and (mentions(obj, "_backward") or any(mentions(obj, c) for c in CHILDREN)))


class MicrogradAdapter(Adapter):
    style = "micrograd"
    order = 68

    @classmethod
    def claims(cls, obj, module, name):
        return 1 if is_value_class(obj) else None

    @classmethod
    def refuses(cls, obj, name):
        if not is_value_class(obj):
            return f"style micrograd needs a Value class (data, grad, a _backward per operation), and '{name}' is not one"
        return ""

    def prepare(self):
        rule = self.rule
        method = OPERATIONS.get(rule.name)
        if method is None:
            raise DerivcheckError(
                f"{self.name} is a micrograd Value: derivcheck checks its operations one at a time, each against its "
                f"rule ({', '.join(f'--rule {r} for {m}' for r, m in OPERATIONS.items() if callable(getattr(self.obj, m, None)))}); "
                f"rule '{rule.name}' is none of them")
        if not callable(getattr(self.obj, method, None)):
            raise DerivcheckError(f"{self.name} has no {method}, the operation rule '{rule.name}' checks: pick another "
                                  f"rule (--rule)")
        self.method = method
        self.operands = list(rule.inputs)

    def build(self, values):
        pass  # fresh Values for every element of every call

    def _value(self, x):
        return call_user(self.obj, [(None, x)], f"{self.name}({x!r})")

    def run(self, values, cotangent) -> Outcome:
        shape = np.shape(values[self.operands[0]])
        dtype = np.asarray(values[self.operands[0]]).dtype
        out = np.empty(shape, dtype=object)  # each element as the Value holds it, so the array has its dtype
        grads = {n: np.empty(shape, dtype=object) for n in self.operands}
        cot = np.broadcast_to(np.asarray(cotangent), shape)
        for i in np.ndindex(*shape):
            leaves = [self._value(dtype.type(values[n][i])) for n in self.operands]
            if self.rule.name == "pow":
                args = [(None, self.hyper["c"])]
            elif self.rule.name == "square":
                args = [(None, leaves[0])]
            else:
                args = [(None, leaf) for leaf in leaves[1:]]
            node = call_user(getattr(leaves[0], self.method), args, f"{self.name}.{self.method}")
            out[i] = self._number(node, f"{self.name}.{self.method}'s result .data", "data")
            node.grad = dtype.type(cot[i])
            for n in reversed(self._graph(node)):
                call_user(n._backward, [], f"{self.name}.{self.method}: _backward")
            for name, leaf in zip(self.operands, leaves):
                grads[name][i] = self._number(leaf, f"{name}.grad", "grad")
        return Outcome(_numbers(out), {n: _numbers(g) for n, g in grads.items()})

    def _number(self, node, what: str, attr: str):
        value = getattr(node, attr, None)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise LayerError(what, TypeError(f"is {type(value).__name__}, not a number"))
        return value

    def _graph(self, root) -> list:
        """The nodes the operation made, children before parents (micrograd's build_topo), from ``root`` down to
        the leaves; what has no ``_backward`` (a plain number) ends a branch."""
        order, seen = [], set()

        def visit(v):
            if id(v) in seen or not callable(getattr(v, "_backward", None)):
                return
            seen.add(id(v))
            for attr in CHILDREN:
                for child in getattr(v, attr, ()) or ():
                    visit(child)
            order.append(v)

        visit(root)
        return order

    def grad_location(self, n) -> str:
        return f"{n}.grad after {self.name}.{self.method}'s _backward"


def _numbers(elements):
    """The elements as one array of the type they share (np.float32 stays float32; Python floats are float64)."""
    return np.array(elements.tolist()) if elements.size else elements.astype(np.float64)
