"""*Deep Learning from Scratch*, book 2: book 1's calls, with ``params`` and ``grads`` lists; backward
writes each gradient into its grads slot (``grads[0][...] = dW``), never rebinds it."""
from __future__ import annotations


from derivcheck.check.conventions.base import Outcome, mentions, same_array
from derivcheck.check.conventions.dlfs1 import Dlfs1Adapter
from derivcheck.errors import DerivcheckError


class Dlfs2Adapter(Dlfs1Adapter):
    style = "dlfs2"
    order = 20

    @classmethod
    def claims(cls, obj, module, name):
        return 3 if super().claims(obj, module, name) is not None and mentions(obj, "grads") else None

    def build(self, values):
        super().build(values)
        self.slots = {}
        params = getattr(self.instance, "params", None)
        grads = getattr(self.instance, "grads", None)
        if self.forward_only and params is None and not self.params:
            params = []  # nothing held: nothing to find
        if self.forward_only and isinstance(params, list) and grads is None:
            grads = [None] * len(params)  # nothing is read from it
        if not isinstance(params, list) or not isinstance(grads, list):
            raise DerivcheckError(f"{self.name} has no params/grads lists after construction: is it --style dlfs1?")
        for n in self.params:
            idx = next((i for i, p in enumerate(params) if p is self.param_arrays[n]), None)
            if idx is None:
                idx = next((i for i, p in enumerate(params) if same_array(p, self.param_arrays[n])), None)
            if idx is None or idx >= len(grads):
                raise DerivcheckError(f"{self.name}.params holds no array equal to the '{n}' it was constructed with")
            self.slots[n] = idx
        self.grad_arrays = list(grads)  # what an optimizer that collected layer.grads holds
        self.param_list = params

    def update_params(self, values):
        for n, i in self.slots.items():
            self.param_list[i][...] = values[n]
        self._refresh_labels(values)

    def held(self, values):
        return {**values, **{n: self.param_list[i] for n, i in self.slots.items()}}

    def run(self, values, cotangent) -> Outcome:
        if self.forward_only:
            return super().run(values, cotangent)
        before = [id(g) for g in self.instance.grads]
        outcome = super().run(values, cotangent)
        grads = self.instance.grads
        for n, i in self.slots.items():
            if id(grads[i]) != before[i]:
                outcome.rebound.append(
                    f"backward rebinds grads[{i}] (grads[{i}] = d{n}) instead of writing into it "
                    f"(grads[{i}][...] = d{n}): an optimizer holding the old grads list never sees the new gradient")
        return outcome

    def _param_grad(self, n):
        return self.instance.grads[self.slots[n]]

    def grad_location(self, n) -> str:
        if n not in self.params:
            return super().grad_location(n)
        return f"{self.name}.grads[{self.slots[n]}]"
