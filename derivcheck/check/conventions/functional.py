"""CS231n: ``NAME_forward(...) -> (out, cache)`` and ``NAME_backward(dout, cache) -> grads``; or a loss
``NAME(x, y) -> (loss, dx)``; or a function that only computes a value."""
from __future__ import annotations

import inspect
import re

import numpy as np

from derivcheck.check.binding import bind, norm_name, params_of
from derivcheck.check.conventions.base import Adapter, Outcome, call_user, count, own, pack_outputs, split_cotangent
from derivcheck.errors import DerivcheckError


class FunctionalAdapter(Adapter):
    style = "functional"
    order = 40

    @classmethod
    def claims(cls, obj, module, name):
        if obj is None or (inspect.isfunction(obj) and (hasattr(module, f"{name}_backward") or name.endswith("_forward"))):
            return 0  # a NAME_forward/NAME_backward pair
        return 2 if inspect.isfunction(obj) else None  # a loss (x, y) -> (loss, dx), or a function computing a value

    def build(self, values):
        pass

    def prepare(self):
        if inspect.isclass(self.obj):
            raise DerivcheckError(f"style functional needs functions, and '{self.name}' is a class: try --style dlfs1, dlfs2 or dezero")
        fwd = getattr(self.module, f"{self.name}_forward", None)
        bwd_name = f"{self.name}_backward"
        # NAME_forward, NAME_backward, and CS231n's variants: conv_forward_naive with conv_backward_naive,
        # batchnorm_backward_alt (a second backward of batchnorm_forward)
        parts = re.fullmatch(r"(?P<base>.+?)_(?P<which>forward|backward)(?P<suffix>_[A-Za-z0-9]+)?", self.name)
        if fwd is None and parts is not None:
            # a suffix counts only where its pair exists: temporal_softmax_loss_mask_forward_only is a loss function
            base, suffix = parts["base"], parts["suffix"] or ""
            if parts["which"] == "forward" and (not suffix or hasattr(self.module, f"{base}_backward{suffix}")):
                fwd, bwd_name = self.obj, f"{base}_backward{suffix}"
            elif parts["which"] == "backward":  # the backward named: check it with its forward
                fwd = getattr(self.module, f"{base}_forward{suffix}", None) or getattr(self.module, f"{base}_forward", None)
                if fwd is not None:
                    bwd_name = self.name
                elif not suffix:
                    raise DerivcheckError(f"found {self.name} but no {base}_forward next to it: a backward is checked with its forward")
        bwd = getattr(self.module, bwd_name, None)
        if fwd is not None and bwd is None:
            raise DerivcheckError(f"found {fwd.__name__} but no {bwd_name} next to it")
        if fwd is None and callable(bwd) and callable(self.obj) and not inspect.isclass(self.obj):
            fwd = self.obj  # NAME(x) -> (out, cache) beside NAME_backward(dout, cache): the deeplearning.ai course's relu
        self.loss_fn = None
        if fwd is None:
            if not callable(self.obj):
                raise DerivcheckError(f"'{self.name}' is not a function")
            self.loss_fn = self.obj  # NAME(x, y) -> (loss, dx)
            fwd = self.obj
        self.fwd, self.bwd, self.bwd_name = fwd, bwd, bwd_name
        self.binding = bind(self.rule, None, fwd, self.name, call_takes_all_inputs=True)
        # a backward that takes a hyperparameter too, by its name: the deeplearning.ai course's
        # linear_activation_backward(dA, cache, activation)
        hypers = {norm_name(n): n for n, h in self.rule.hyper.items() if h.to_layer}
        self.bwd_hyper = [(q.name, hypers[norm_name(q.name)]) for q in (params_of(bwd, skip_self=False)[1:] if bwd else [])
                          if norm_name(q.name) in hypers]

    def run(self, values, cotangent) -> Outcome:
        args = self._call_args(self.binding, values)
        result = own(call_user(self.fwd, args, f"{self.fwd.__name__}"))
        k = len(self.rule.outputs) or 1
        if self.forward_only:  # a test mode (or a rule of a value only): (out, cache) or out alone, no backward called
            out = (tuple(result[:k]) if k > 1 else result[0]) if isinstance(result, tuple) and len(result) == k + 1 else result
            out, problem = pack_outputs(self.rule, out, self.fwd.__name__)
            return Outcome(out, {}, forward_only=self.forward_only, output_problem=problem)
        if self.loss_fn is not None and isinstance(result, (np.ndarray, np.generic, float, int)) and not isinstance(result, bool):
            return Outcome(result, {}, forward_only=f"{self.name} returns one value and has no {self.name}_backward next to it")
        if not isinstance(result, tuple) or len(result) != k + 1:
            if k > 1:
                raise DerivcheckError(
                    f"{self.fwd.__name__} returned {count(result)}, not {k + 1}: rule '{self.rule.name}' has {k} outputs, so "
                    f"the functional style is NAME_forward(...) -> ({', '.join(self.rule.outputs)}, cache) with "
                    f"NAME_backward({', '.join(self.douts)}, cache)")
            raise DerivcheckError(
                f"{self.fwd.__name__} returned a {type(result).__name__}, not a pair: the functional style is "
                f"NAME_forward(...) -> (out, cache) with NAME_backward(dout, cache), or a loss NAME(x, y) -> (loss, dx). "
                f"A function that only computes a value has no backward to check")
        data = [n for _, kind, n in self.binding.call if kind == "input"]
        if self.loss_fn is not None:
            out, dx = result
            parts = dx if isinstance(dx, tuple) else (dx,)
            # a loss function gives the gradient for an upstream gradient of 1
            grads = {n: None if g is None else np.asarray(g) * np.asarray(cotangent) for n, g in zip(data, parts)}
            return Outcome(out, grads)
        *out, cache = result
        out, problem = pack_outputs(self.rule, tuple(out) if k > 1 else out[0], self.fwd.__name__)
        back = call_user(self.bwd, [(None, c) for c in split_cotangent(self.rule, cotangent)] + [(None, cache)]
                         + [(q, self.layer_hyper[n]) for q, n in self.bwd_hyper], self.bwd_name)
        parts = back if isinstance(back, tuple) else (back,)
        return Outcome(out, dict(zip(data, parts)), output_problem=problem)

    def grad_location(self, n) -> str:
        data = [m for _, kind, m in self.binding.call if kind == "input"]
        if n not in data:
            return self.bwd_name if self.loss_fn is None else self.name
        if self.loss_fn is not None:  # (loss, dx): the gradient is the pair's second item
            return f"{self.name}(...)[1]" + (f"[{data.index(n)}]" if len(data) > 1 else "")
        return f"{self.bwd_name}(...)[{data.index(n)}]"
