"""*Deep Learning from Scratch*, book 3 (DeZero): a ``Function`` subclass, or a function that applies
one, duck-typed: call it with Variables, set the output's ``grad``, ``backward()``, read the inputs'
``grad``."""
from __future__ import annotations

import importlib
import inspect
import sys

import numpy as np

from derivcheck.check.binding import bind
from derivcheck.check.conventions.base import Adapter, LayerError, Outcome, call_user, describe, own
from derivcheck.errors import DerivcheckError


def is_function_class(obj) -> bool:
    if not inspect.isclass(obj):
        return False
    names = {c.__name__ for c in obj.__mro__[1:]}
    return "Function" in names and hasattr(obj, "forward") and hasattr(obj, "backward") and callable(obj)


def layer_base(cls) -> str | None:
    """'Layer' or 'Model' when ``cls`` is a DeZero Layer (one with params() and cleargrads(), made of Functions)."""
    names = [c.__name__ for c in cls.__mro__]
    if "Layer" in names and callable(getattr(cls, "params", None)) and callable(getattr(cls, "cleargrads", None)):
        return "Model" if "Model" in names else "Layer"
    return None


def variable_class(module, obj=None):
    """The Variable class of the DeZero-like framework ``obj`` belongs to."""
    classes = [obj] if inspect.isclass(obj) else []
    classes += [v for v in vars(module).values() if is_function_class(v)]
    candidates = [module] + [sys.modules.get(c.__module__) for cls in classes for c in cls.__mro__]
    for mod in candidates:
        if mod is not None and inspect.isclass(getattr(mod, "Variable", None)):
            return mod.Variable
    try:
        return importlib.import_module("dezero").Variable
    except ModuleNotFoundError as exc:
        if exc.name == "dezero":
            return None  # no dezero installed: the caller says there is no Variable class
        raise DerivcheckError(f"importing the dezero package failed: {describe(exc)}") from None
    except Exception as exc:  # an installed dezero that is broken: say so, not "no Variable class"
        raise DerivcheckError(f"importing the dezero package failed: {describe(exc)}") from None


def _among_functions(fn, module) -> bool:
    """``fn`` is defined in a module of DeZero functions (dezero.functions): one that defines Function classes of
    its own and no CS231n-style NAME_forward function (a module of both keeps its plain functions functional)."""
    name = getattr(module, "__name__", None)
    members = vars(module)
    return (getattr(fn, "__module__", None) == name
            and any(is_function_class(v) and getattr(v, "__module__", None) == name for v in members.values())
            and not any(k.endswith("_forward") and inspect.isfunction(v) for k, v in members.items()))


def _applies_function(fn, module, depth: int = 3) -> bool:
    """``fn`` applies a DeZero Function, makes Variables, or calls a function of its module that does
    (``flatten`` calls ``reshape``, which applies ``Reshape``), up to ``depth`` calls deep."""
    names = set(getattr(fn, "__code__", None).co_names if hasattr(fn, "__code__") else ())
    if any(is_function_class(getattr(module, n, None)) or n in ("Variable", "as_variable") for n in names):
        return True
    return depth > 0 and any(inspect.isfunction(f := getattr(module, n, None)) and f is not fn
                             and _applies_function(f, module, depth - 1) for n in names)


def dezero_data(v):
    """A DeZero Variable's array (``v.data``); an ndarray, or None, as it is (an ndarray's own ``.data`` is its
    buffer, a memoryview)."""
    return v if isinstance(v, np.ndarray) or v is None else getattr(v, "data", v)


def dezero_grad(cotangent, y):
    """A cotangent as ``y.grad``: a Variable from DeZero's step 32 on (backward takes create_graph), an array before."""
    cot = np.asarray(cotangent, dtype=np.asarray(y.data).dtype)
    try:
        if "create_graph" in inspect.signature(y.backward).parameters:
            return type(y)(cot)
    except (TypeError, ValueError):
        pass
    return cot


class DezeroAdapter(Adapter):
    style = "dezero"
    order = 30

    @classmethod
    def claims(cls, obj, module, name):
        if is_function_class(obj):
            return 1
        if inspect.isfunction(obj):
            # a function of a DeZero-like module (it applies or composes Functions: MatMul()(x, W),
            # linear_simple; or it sits among the Function classes its module defines and works through
            # Variable's operators, as embed_id's W[x])
            return 1 if _applies_function(obj, module) or _among_functions(obj, module) else None
        layer = layer_base(obj) if inspect.isclass(obj) and hasattr(obj, "forward") else None
        if layer is not None:
            raise DerivcheckError(
                f"'{name}' is a DeZero {layer} (dezero.layers, dezero.models): it makes its parameters at its first call "
                f"and applies Functions, whose gradients its parameters collect; verify the Functions it applies "
                f"(dezero.functions:linear, dezero.functions_conv:conv2d, ...), or a Model class of your own that uses "
                f"it, in a file: a Model is checked as a network, node by node")
        return None

    def prepare(self):
        cls = self.obj
        self.Variable = variable_class(self.module, cls)
        if self.Variable is None:
            raise DerivcheckError(f"no Variable class found for DeZero-style '{self.name}' (in its module or the dezero package)")
        if self.rule.outputs:
            raise DerivcheckError(f"rule '{self.rule.name}' has several outputs ({', '.join(self.rule.outputs)}), and a DeZero "
                                  f"function with several outputs is not supported yet: check it in another style")
        if inspect.isclass(cls):
            self.binding = bind(self.rule, cls.__init__, cls.forward, self.name, call_takes_all_inputs=True)
        else:  # a function that builds and applies a Function: f(x, W) / reshape(x, shape)
            self.binding = bind(self.rule, None, cls, self.name, call_takes_all_inputs=True)
        self.config = self._config()

    def _config(self):
        """DeZero's Config class, whose ``train`` this rule's ``train`` sets around each call (test mode), or None.

        A rule without ``train`` leaves the framework as it is (train mode, as a fresh process starts);
        a framework without ``Config.train`` is always in train mode, so only a test-mode rule is refused.
        """
        if "train" not in self.rule.hyper:
            return None
        config = getattr(sys.modules.get(self.Variable.__module__), "Config", None)
        if config is not None and isinstance(getattr(config, "train", None), bool):
            return config
        if self.hyper["train"]:
            return None
        raise DerivcheckError(
            f"rule '{self.rule.name}' runs DeZero functions in test mode (Config.train = False), and the framework of "
            f"'{self.name}' ({self.Variable.__module__}) has no Config class with a train flag to switch: check it with "
            f"the train-mode rule, or give the framework DeZero's `class Config: train = True`")

    def run(self, values, cotangent) -> Outcome:
        if self.config is None:
            return self._run(values, cotangent)
        before = self.config.train
        self.config.train = self.hyper["train"]
        try:
            return self._run(values, cotangent)
        finally:
            self.config.train = before

    def build(self, values):
        pass  # a Function is built afresh for every call

    def _run(self, values, cotangent) -> Outcome:
        variables = {n: self.Variable(values[n]) for _, kind, n in self.binding.call if kind == "input"}
        arrays = [variables.get(n, values.get(n)) for _, kind, n in self.binding.call if kind in ("input", "label")]
        hypers = {p: self._value(kind, n, values) for p, kind, n in self.binding.call if kind in ("hyper", "dict", "pair")}
        if inspect.isclass(self.obj):  # Function(hyper...)(*inputs)
            ctor = {p: self._value(kind, n, values) for p, (kind, n) in self.binding.ctor.items()}
            fn = call_user(self.obj, list(ctor.items()), f"{self.name}({', '.join(ctor)})")
            y = call_user(fn, [(None, a) for a in arrays], f"{self.name}.forward")
        else:  # a function applying a Function: f(x, W), reshape(x, shape=...)
            y = call_user(self.obj, [(None, a) for a in arrays] + list(hypers.items()), self.name)
        if isinstance(y, (list, tuple)):
            y = y[0]
        if not hasattr(y, "data") or not hasattr(y, "backward"):
            raise LayerError(self.name, TypeError(f"returned {type(y).__name__}, not a Variable"))
        out = own(y.data)  # as it is now, whatever backward does to the array
        if self.forward_only:
            return Outcome(out, {}, forward_only=self.forward_only)
        y.grad = dezero_grad(cotangent, y)
        if not any(v is y for v in variables.values()):
            call_user(y.backward, [], f"{self.name}.backward")
        # else: y is an input handed back (DeZero's sum_to(x, x.shape) returns x): a leaf whose
        # gradient is the cotangent itself; DeZero's backward() on a leaf would fail on its missing creator
        grads = {n: dezero_data(getattr(v, "grad", None)) for n, v in variables.items()}
        return Outcome(out, grads)

    def grad_location(self, n) -> str:
        return f"{n}.grad"
