"""*Deep Learning from Scratch*, book 1: ``Affine(W, b)``; ``forward(x)`` (a loss: ``forward(x, t)``);
``backward(dout)`` returns dx; parameter gradients in ``d<Name>`` attributes (``dW``, ``db``)."""
from __future__ import annotations

import inspect

from derivcheck.check.binding import bind
from derivcheck.check.conventions.base import (Adapter, Outcome, backward_like, call_user, cannot_take, own,
                                                pack_outputs, same_array, split_cotangent)
from derivcheck.errors import DerivcheckError


def dlfs1_gradient(layer, attr: str, n: str):
    """Book 1's gradient of the parameter held in ``layer.attr`` (rule input ``n``): dW, or grad_W, or W_grad."""
    for cand in (f"d{attr}", f"d{n}", f"grad_{attr}", f"{attr}_grad"):
        if hasattr(layer, cand):
            return getattr(layer, cand)
    return None


class Dlfs1Adapter(Adapter):
    style = "dlfs1"
    order = 10
    takes_state = True

    @classmethod
    def claims(cls, obj, module, name):
        return 4 if inspect.isclass(obj) and hasattr(obj, "forward") else None

    @classmethod
    def refuses(cls, obj, name):
        if not inspect.isclass(obj):
            return f"style {cls.style} needs a class, and '{name}' is a {type(obj).__name__}"
        if not callable(getattr(obj, "forward", None)):
            return f"style {cls.style} needs a class with a forward method (and a backward, to check one), and {name} has none"
        return ""

    def prepare(self):
        self.binding = bind(self.rule, self.obj.__init__, self.obj.forward, self.name, call_takes_all_inputs=False)
        if not callable(getattr(self.obj, "backward", None)):
            others = backward_like(self.obj)
            if others:  # a backward by another name: checking the forward alone would call a wrong layer verified
                raise DerivcheckError(
                    f"{self.name} has no backward method, but it has {', '.join(f'{m}()' for m in others)}: the {self.style} "
                    f"convention calls backward({', '.join(self.douts)}) and derivcheck does not know what {others[0]} "
                    f"takes and returns. Name it backward, or add a two-line subclass in a file of yours "
                    f"(class Checked({self.name}):\n    def backward(self, dout): return self.{others[0]}(dout)) and "
                    f"verify that")
            self.forward_only = f"{self.name} has a forward method and no backward"
        else:
            unfit = cannot_take(self.obj.backward, len(self.douts))
            if unfit:
                raise DerivcheckError(
                    f"{self.name}.backward{unfit}: the {self.style} convention calls backward({', '.join(self.douts)}) "
                    f"alone, so derivcheck cannot call it as written. If it follows another convention, say which "
                    f"(--style); else give the extra parameters defaults, or wrap the layer in a subclass whose "
                    f"backward({', '.join(self.douts)}) calls it with what it needs")
        state = self.rule.state
        if state is not None and not callable(getattr(self.obj, state.method, None)):
            raise DerivcheckError(f"{self.name} has no method {state.method}: rule '{self.rule.name}' sets its state "
                                  f"({', '.join(state.names)}) with {state.method}({', '.join(state.names)}) before each forward")

    def build(self, values):
        args = self._ctor_args(self.binding, values)
        self.instance = call_user(self.obj, list(args.items()), f"{self.name}({', '.join(args)})")
        self._set_flags()
        self.param_arrays = {n: values[n] for n in self.params}  # the arrays handed over
        # labels the constructor takes (book 1's running_mean): refreshed in place each step, as parameters are
        self.label_arrays = {n: values[n] for kind, n in self.binding.ctor.values() if kind == "label"}

    def _set_flags(self):
        """A hyperparameter no parameter takes, named as an attribute the constructor set, is set there:
        book 2's TimeDropout has no train_flg argument, and its models switch ``layer.train_flg``."""
        bound = {n for _, n in self.binding.ctor.values()} | {n for _, _, n in self.binding.call}
        own = vars(self.instance) if hasattr(self.instance, "__dict__") else {}
        self.flags = {n: self.layer_hyper[n] for n, h in self.rule.hyper.items()
                      if h.to_layer and n not in bound and n in own and isinstance(own[n], type(self.layer_hyper[n]))}
        for n, value in self.flags.items():
            setattr(self.instance, n, value)

    @property
    def flags_note(self) -> str:
        """What _set_flags set, as the report says it."""
        flags = getattr(self, "flags", {})
        if not flags:
            return ""
        return (f"set {', '.join(f'{self.name}.{n} = {v}' for n, v in flags.items())} after construction "
                f"(no parameter takes {', '.join(flags)})")

    def attribute_of(self, name: str) -> str | None:
        """The attribute that holds the parameter bound to rule input ``name``."""
        target = self.param_arrays[name]
        for attr, value in vars(self.instance).items():
            if value is target:
                return attr
        for attr, value in vars(self.instance).items():
            if same_array(value, target):
                return attr
        return None

    def update_params(self, values):
        """What an optimizer does between steps: new values written into the same arrays."""
        for n in self.params:
            self.param_arrays[n][...] = values[n]
        self._refresh_labels(values)

    def _refresh_labels(self, values):
        for n, held in self.label_arrays.items():
            held[...] = values[n]

    def forward_call(self, values) -> tuple:
        """One call of the layer's forward (after setting its state, for a rule with one): (its output as the
        reference has it, what is wrong with it or "")."""
        state = self.rule.state
        if state is not None:
            call_user(getattr(self.instance, state.method), [(None, values[n]) for n in state.names], f"{self.name}.{state.method}")
        out = own(call_user(self.instance.forward, self._call_args(self.binding, values), f"{self.name}.forward"))
        return pack_outputs(self.rule, out, f"{self.name}.forward")

    def backward_call(self, cotangent):
        """One call of the layer's backward, given one upstream gradient per output; what it returns."""
        return call_user(self.instance.backward, [(None, c) for c in split_cotangent(self.rule, cotangent)], f"{self.name}.backward")

    def held(self, values):
        return {**values, **{n: self.param_arrays[n] for n in self.params}}

    def run(self, values, cotangent) -> Outcome:
        out, problem = self.forward_call(values)
        if self.forward_only:
            return Outcome(out, {}, forward_only=self.forward_only, output_problem=problem)
        return Outcome(out, self.gradients(self.backward_call(cotangent)), output_problem=problem)

    def gradients(self, dx) -> dict:
        """Every rule input's gradient after a backward call that returned ``dx``."""
        grads = {}
        data = [n for _, kind, n in self.binding.call if kind == "input"]
        if len(data) == 1:
            grads[data[0]] = dx
        elif data:
            parts = dx if isinstance(dx, (tuple, list)) else (dx,)
            grads.update(zip(data, parts))
        for n in self.params:
            grads[n] = self._param_grad(n)
        for n, attr in (self.rule.state.grads.items() if self.rule.state else ()):
            grads[n] = getattr(self.instance, attr, None)  # a state's gradient: book 2's TimeRNN.dh
        return grads

    def _param_grad(self, n):
        return dlfs1_gradient(self.instance, self.attribute_of(n) or n, n)

    def grad_location(self, n) -> str:
        if self.rule.state is not None and n in self.rule.state.grads:
            return f"{self.name}.{self.rule.state.grads[n]}"
        if n not in self.params:
            data = [m for _, kind, m in self.binding.call if kind == "input"]
            suffix = f"[{data.index(n)}]" if len(data) > 1 else ""
            return f"{self.name}.backward({', '.join(self.douts)}){suffix}"
        return f"{self.name}.d{self.attribute_of(n) or n}"
