"""ML-From-Scratch (``mlfromscratch/deep_learning``): three kinds of classes.

- **Layers** are built from sizes (``Dense(n_units)``); the network gives each its input shape
  (``set_input_shape``) and an optimizer (``initialize(optimizer)``), from which the layer makes its
  parameters and one copy of the optimizer per parameter (``self.W_opt = copy.copy(optimizer)``).
  ``forward_pass(X, training=True)`` returns the output; ``backward_pass(accum_grad)`` returns the gradient
  of the input and **updates the parameters itself** (``self.W = self.W_opt.update(self.W, grad_w)``),
  storing no gradient. derivcheck hands ``initialize`` a probe optimizer: its ``update(w, grad)`` records
  ``grad`` as the gradient of the parameter ``w`` is, and returns ``w - grad`` (a step with learning rate 1,
  as training would take one), so that a backward computing its input's gradient with the weights after
  their update is caught. The trial's values replace the parameters before each step.
- **Activation functions** are objects with ``__call__(x)`` and ``gradient(x)``, the element-wise
  derivative, which the ``Activation`` layer multiplies by the upstream gradient: derivcheck does the same,
  so the check holds ``dout * gradient(x)`` to the exact gradient (a softmax whose ``gradient`` is the
  Jacobian's diagonal ``p(1 - p)`` fails there).
- **Losses** are objects with ``loss(y, y_pred)`` and ``gradient(y, y_pred)``, element-wise, the labels
  first; the check holds ``dout * gradient(y, y_pred)`` to the gradient of ``loss``.
"""
from __future__ import annotations

import inspect

import numpy as np

from derivcheck.check.binding import norm_name, params_of
from derivcheck.check.conventions.base import Adapter, LayerError, Outcome, call_user, constructor_args, own, sizes_of
from derivcheck.errors import DerivcheckError

LAYER, ACTIVATION, LOSS = "layer", "activation function", "loss"


def _defines(cls, name: str) -> bool:
    """``cls`` or a class it inherits from, other than ``object``, defines ``name``."""
    return any(name in vars(c) for c in inspect.getmro(cls) if c is not object)


def kind_of(obj) -> str | None:
    """Which of the convention's three kinds the class ``obj`` is, or None."""
    if not inspect.isclass(obj):
        return None
    if callable(getattr(obj, "forward_pass", None)) and callable(getattr(obj, "backward_pass", None)):
        return LAYER
    if _defines(obj, "gradient") and _defines(obj, "loss"):
        return LOSS
    if _defines(obj, "gradient") and _defines(obj, "__call__"):
        return ACTIVATION
    return None


class ProbeOptimizer:
    """What derivcheck hands ``initialize``: the layer copies it once per parameter. ``update(w, grad)``
    records the gradient the layer computed for the array ``w`` and returns ``w - grad``."""

    def __init__(self):
        self.updates = []  # (the parameter as the layer passed it, its gradient), in call order

    def __copy__(self):
        return ProbeOptimizer()

    def __deepcopy__(self, memo):
        return ProbeOptimizer()

    def update(self, w, grad_wrt_w):
        self.updates.append((w, own(grad_wrt_w)))
        if isinstance(w, np.ndarray) and isinstance(grad_wrt_w, np.ndarray) and grad_wrt_w.shape == w.shape:
            return w - grad_wrt_w
        return w  # a gradient of another shape is recorded and judged as it is; it must not reshape the parameter


def _hyper_of(rule, param: str) -> str | None:
    """The rule hyperparameter (passed to layers) a constructor parameter names, by its name or another name."""
    for n, h in rule.hyper.items():
        if h.to_layer and norm_name(param) in {norm_name(n), *(norm_name(a) for a in h.names)}:
            return n
    return None


class MlfsAdapter(Adapter):
    style = "mlfs"
    order = 65
    rule_forms = {"affine": "nnfs"}  # Dense's bias w0 is (1, H), as nnfs's: affine_nnfs; reshape_mlfs is its own

    @classmethod
    def claims(cls, obj, module, name):
        return 3 if kind_of(obj) is not None else None

    @classmethod
    def refuses(cls, obj, name):
        if kind_of(obj) is None:
            return (f"style mlfs needs a class with forward_pass and backward_pass (a layer), with __call__ and gradient "
                    f"(an activation function) or with loss and gradient (a loss), and '{name}' is none of these")
        return ""

    def prepare(self):
        rule, self.kind, self.attrs = self.rule, kind_of(self.obj), {}  # attrs: rule input -> the layer's attribute
        inputs = list(rule.inputs)
        labels = [n for n, lab in rule.labels.items() if lab.given]
        self.first, self.held_names = inputs[0], inputs[1:]
        if self.kind == LOSS:
            if len(inputs) != 1 or len(labels) != 1:
                raise DerivcheckError(
                    f"{self.name} is an ML-From-Scratch loss (loss(y, y_pred), gradient(y, y_pred)); rule '{rule.name}' "
                    f"takes inputs {', '.join(inputs)} and labels {', '.join(labels) or 'none'}, where a loss takes one "
                    f"prediction and one label: pick the rule it implements (--rule), an element-wise one such as square_loss")
            self.label = labels[0]
        elif labels:
            raise DerivcheckError(f"{self.name} is an ML-From-Scratch {self.kind}, which takes no labels; rule '{rule.name}' "
                                  f"takes {', '.join(labels)}: pick the rule it implements (--rule)")
        if self.kind == ACTIVATION and self.held_names:
            raise DerivcheckError(f"{self.name} is an ML-From-Scratch activation function of x alone; rule '{rule.name}' "
                                  f"takes {', '.join(inputs)}: pick the rule it implements (--rule)")
        if self.kind == LAYER and rule.output == ():  # a scalar (None: the formula's shape, not declared)
            raise DerivcheckError(f"{self.name} is an ML-From-Scratch layer, and rule '{rule.name}' gives a scalar: a loss "
                                  f"in this convention is a class with loss(y, y_pred) and gradient(y, y_pred)")
        # the constructor: a rule hyperparameter by name (LeakyReLU(alpha)), else a required parameter takes a
        # size the parameters have and the input has not (Dense(n_units): H)
        self.ctor_params = [(p.name, _hyper_of(rule, p.name)) for p in params_of(self.obj.__init__, skip_self=True)
                            if p.default is p.empty or _hyper_of(rule, p.name) is not None]
        forward = self.obj.forward_pass if self.kind == LAYER else None
        self.takes_training = forward is not None and any(p.name == "training" for p in params_of(forward, skip_self=True))

    def build(self, values):
        x_dims = {s for s in self.rule.inputs[self.first].shape if isinstance(s, str)}
        # Dense's W (D, H): H, a size of its parameters that its input has not
        args = constructor_args(self.name, self.ctor_params, self.layer_hyper,
                                sizes_of(self.rule, self.held_names, values, skip=x_dims),
                                "the sizes of the layer's parameters that its input does not have")
        built = f"{self.name}({', '.join(f'{p}={v!r}' for p, v in args)})"
        try:
            self.instance = call_user(self.obj, args, built)
            if self.kind == LAYER:
                self._initialize(tuple(int(s) for s in np.shape(values[self.first])[1:]))
        except LayerError as exc:  # built from derivcheck's reading of the rule's sizes: no evidence against the layer
            raise DerivcheckError(
                f"derivcheck built {built} from rule '{self.rule.name}' (a constructor's required parameters get the rule's "
                f"hyperparameters by name, then the sizes of the layer's parameters that its input does not have) and "
                f"{exc}: pick the rule it implements (--rule), or give the parameter a rule hyperparameter's name") from None
        if self.kind != LAYER:
            return
        self.attrs = self._parameters()
        for n, a in self.attrs.items():  # as initialize made them: the rule's shapes, or it is another operation
            held = getattr(self.instance, a)
            if np.shape(held) != np.shape(values[n]):
                raise DerivcheckError(f"{self.name}.initialize made {a} of shape {np.shape(held)}; rule '{self.rule.name}' "
                                      f"gives {n} the shape {np.shape(values[n])}: pick the rule it implements (--rule)")
        self.update_params(values)

    def _initialize(self, shape: tuple):
        """What ML-From-Scratch's NeuralNetwork does to a layer it adds: one example's shape, then an optimizer."""
        if callable(getattr(self.instance, "set_input_shape", None)):
            call_user(self.instance.set_input_shape, [(None, shape)], f"{self.name}.set_input_shape")
        elif hasattr(self.instance, "input_shape"):
            self.instance.input_shape = shape
        if callable(getattr(self.instance, "initialize", None)):
            call_user(self.instance.initialize, [(None, ProbeOptimizer())], f"{self.name}.initialize")

    def _parameters(self) -> dict:
        """Rule input -> the layer's attribute holding it: the same name (case and underscores aside), else the
        arrays ``initialize`` made, in order (Dense's W, w0 for the rule's weights, biases)."""
        own_arrays = [a for a, v in vars(self.instance).items() if isinstance(v, np.ndarray)]
        optimized = [a[:-len("_opt")] for a, v in vars(self.instance).items()
                     if isinstance(v, ProbeOptimizer) and a.endswith("_opt") and a[:-len("_opt")] in own_arrays]
        by_norm = {norm_name(a): a for a in own_arrays}
        attrs = {n: by_norm[norm_name(n)] for n in self.held_names if norm_name(n) in by_norm}
        rest = [a for a in (optimized or own_arrays) if a not in attrs.values()]
        for n in self.held_names:
            if n not in attrs and rest:
                attrs[n] = rest.pop(0)
        missing = [n for n in self.held_names if n not in attrs]
        if missing:
            raise DerivcheckError(
                f"{self.name} holds no array for {', '.join(missing)} after initialize(optimizer): in the ML-From-Scratch "
                f"convention a layer makes its parameters in initialize, each with an optimizer copy (self.W_opt); rule "
                f"'{self.rule.name}' takes {', '.join(self.held_names)}: pick the rule it implements (--rule)")
        return attrs

    def update_params(self, values):
        """The trial's values into the parameters, as a fresh copy in the trial's dtype (whatever the probe's
        update left there)."""
        for n, a in self.attrs.items():
            setattr(self.instance, a, np.array(values[n], copy=True))

    def held(self, values):
        return {**values, **{n: getattr(self.instance, a) for n, a in self.attrs.items()}}

    def run(self, values, cotangent) -> Outcome:
        x = values[self.first]
        if self.kind != LAYER:  # a value and its element-wise derivative, of (x) or of (y, y_pred)
            args = [(None, x)] if self.kind == ACTIVATION else [(None, values[self.label]), (None, x)]
            value, called = (self.instance, "__call__") if self.kind == ACTIVATION else (self.instance.loss, "loss")
            out = own(call_user(value, args, f"{self.name}.{called}"))
            grad = own(call_user(self.instance.gradient, args, f"{self.name}.gradient"))
            return Outcome(out, {self.first: _times(cotangent, grad)})
        params = {n: getattr(self.instance, a) for n, a in self.attrs.items()}  # as forward uses them
        for probe in self._probes():
            probe.updates.clear()
        out = own(call_user(self.instance.forward_pass, [(None, x)] + ([("training", True)] if self.takes_training else []),
                            f"{self.name}.forward_pass"))
        dx = own(call_user(self.instance.backward_pass, [(None, cotangent)], f"{self.name}.backward_pass"))
        grads = {self.first: dx}
        updates = [u for probe in self._probes() for u in probe.updates]
        for n, w in params.items():
            mine = [g for p, g in updates if p is w]
            # one optimizer shared by several parameters may be handed one twice: the steps add up
            grads[n] = sum(mine[1:], mine[0]) if mine else None
        return Outcome(out, grads)

    def _probes(self) -> list:
        return [v for v in vars(self.instance).values() if isinstance(v, ProbeOptimizer)]

    def grad_location(self, n) -> str:
        if self.kind == ACTIVATION:
            return f"dout * {self.name}.gradient(x)"
        if self.kind == LOSS:
            return f"dout * {self.name}.gradient(y, y_pred)"
        if n == self.first:
            return f"{self.name}.backward_pass's return"
        a = self.attrs.get(n, n)
        return f"{self.name}.backward_pass: update({a}, grad)"


def _times(cotangent, grad):
    """``dout * gradient``, as the ML-From-Scratch ``Activation`` layer and a network's loss apply it."""
    if grad is None:
        return None
    try:
        return np.asarray(cotangent) * grad
    except (TypeError, ValueError) as exc:  # a gradient that does not broadcast against dout: the layer's
        raise LayerError("dout * gradient", exc) from exc

