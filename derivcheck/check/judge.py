"""One judgement: a layer's results at one call against its rule.

A layer is judged by this code alone, whether it is checked by itself
(:mod:`derivcheck.check.verify`) or as a link of a network (:mod:`derivcheck.check.network`):
the same comparison and tolerance (:mod:`derivcheck.checks`), the same ``also``
alternatives (the books' ``log(y + 1e-7)``), the same final-loss rule for a
``backward(dout=1)``, the same dtype findings and the same diagnosis. A network
adds its wiring checks on top; it never judges a layer by other means.
"""
from __future__ import annotations

import functools

import numpy as np

from derivcheck.engine import reference
from derivcheck.checks import WEAK, Check, compare, reach
from derivcheck.check.diagnose import Context, diagnose_epsilon, diagnose_forward, diagnose_gradient
from derivcheck.results import warn


LEAST_PRECISE = np.float32  # the least precise dtype a run is made in (vocab.DTYPES): nothing is judged below it


def judged_dtype(value, dtype):
    """The dtype a result is judged in: the run's ``dtype``, or the result's own when it is less precise,
    but never below float32.

    A layer that computes in float32 whatever it is given (book 2's Time layers
    allocate ``dtype='f'`` buffers) cannot give float64 digits; it is held to
    float32's precision, and a warning says so. A result in float16 is held to
    float32's: else a layer could buy float16's tolerance (about 2000 times
    float32's) by casting what it returns.
    """
    dt = getattr(value, "dtype", None)
    if not (isinstance(dt, np.dtype) and np.issubdtype(dt, np.floating)) or np.finfo(dt).eps <= np.finfo(dtype).eps:
        return dtype
    return dt.type if np.finfo(dt).eps <= np.finfo(LEAST_PRECISE).eps else LEAST_PRECISE


class Judge:
    """Judges one layer's results against ``rule`` at hyperparameters ``hyper`` (``given``: those the user or
    the model set, which are never replaced by an ``also`` alternative), in ``dtype``."""

    def __init__(self, rule, hyper: dict, given: dict, dtype):
        self.rule, self.hyper, self.dtype = rule, hyper, dtype
        self.alternatives = rule.alternatives(given)  # other values a layer may use (also = [...])
        self.ignores_dout = False  # a loss whose gradient is right for dout = 1 only (final_loss)

    def judged_in(self, value):
        """The dtype a result is judged in (:func:`judged_dtype` for this run's dtype)."""
        return judged_dtype(value, self.dtype)

    def alternatives_at(self, dims, cot, ref):
        """The rule's (hyper, out, grads, scales) at each ``also`` value (Rule.alternatives), evaluated
        once, when a check first asks: most steps pass against the default and never do."""
        return functools.cache(lambda: [(alt, *reference.at(self.rule, alt, dims).evaluate(cot, **ref))
                                        for alt in self.alternatives])

    # -- one call ---------------------------------------------------------------
    def call(self, rep, d, ref, cot, output, grads: dict, where: dict, ctx: dict, *, history=None,
             output_problem: str = "", forward_only: str = "", missing: str = "", prefix: str = "") -> list[Check]:
        """The checks of one forward (and backward) call: its ``output`` and each rule input's gradient
        in ``grads`` (None where the layer gave none), against the exact values at ``ref`` and ``cot``.

        ``where`` says where the layer keeps each result ("forward" and each input); ``missing``
        is how the layer's convention is named when a gradient is absent; ``prefix`` names the
        layer inside a network ("Affine1: "); ``history`` is the trial's earlier calls, for the
        diagnosis of accumulated or stale gradients (a fresh one when None).
        """
        history = history if history is not None else {"expected": {n: [] for n in self.rule.inputs}, "passed": {}, "ref": []}
        checks = []
        expected_out, expected_grads, scales = d.evaluate(cot, **ref)
        alternatives = self.alternatives_at(d.dims, cot, ref)
        reference.require_finite(self.rule, d.dims, [
            ("output", expected_out),
            *((f"gradient of {n}", g) for n, g in expected_grads.items()),
            *((f"rounding scale of {n}", sc) for n, sc in scales.items()),
        ])
        lowest = self.lowest_precision([output, *grads.values()])  # what the layer shows it computes in
        name = f"{prefix}forward"
        if output_problem:  # several outputs, not as the rule has them: nothing to compare element by element
            fwd = Check(name, False, where=where["forward"], message=output_problem, **ctx)
        else:
            fwd = compare(name, expected_out, output, scales["forward"], self.judged_in(output), where=where["forward"], **ctx)
        if not fwd.passed and not output_problem:
            fwd = self.alternative(rep, fwd, "forward", expected_out, output, alternatives, ctx)
            fwd = self.computed_lower(rep, fwd, expected_out, output, scales["forward"], lowest, f"{prefix}forward output", ctx)
        if self.rule.outputs and fwd.index:  # the stacked outputs' first index says which output
            fwd.where = f"{where['forward']} {self.rule.outputs[fwd.index[0]]} (out[{fwd.index[0]}])"
        if not fwd.passed:
            fwd.diagnosis = [diagnose_epsilon(self.rule, self.hyper, d.dims, ref, output, scales["forward"], self.dtype)
                             or diagnose_forward(fwd)]
        else:
            self.weak_tolerance(rep, fwd, expected_out, scales["forward"], output, ctx)
        checks.append(fwd)
        self.dtype_warning(rep, output, f"{prefix}forward output", ctx.get("trial"))
        for n in self.rule.inputs:
            if forward_only or n not in grads:  # forward only: nothing to compare the gradients with
                continue  # not this convention's to give (a network's link judged on its data inputs)
            got = grads[n]
            c = compare(f"{prefix}grad {n}", expected_grads[n], got, scales[n], self.judged_in(got), where=where[n], **ctx)
            if got is not None and not c.passed:
                c = self.alternative(rep, c, n, expected_grads[n], got, alternatives, ctx)
                c = self.computed_lower(rep, c, expected_grads[n], got, scales[n], lowest, f"{prefix}gradient of {n} ({where[n]})", ctx)
            if got is None:
                c.message = f"no gradient for '{n}' where {missing} keeps it ({where[n]})"
            elif c.passed:
                self.weak_tolerance(rep, c, expected_grads[n], scales[n], got, ctx)
            else:
                dctx = Context(self.rule, d, ctx["dims"], ref, cot, self.dtype, history["expected"],
                               history["passed"].get(c.name, False),
                               {m: (expected_grads[m], scales[m]) for m in self.rule.inputs if m != n}, list(history["ref"]))
                c.diagnosis = diagnose_gradient(n, expected_grads[n], got, scales[n], dctx)
                c = self.final_loss(rep, c, expected_grads[n], got, scales[n], cot, ctx)
            checks.append(c)
            self.dtype_warning(rep, got, f"{prefix}gradient of {n} ({where[n]})", ctx.get("trial"))
        if prefix:  # named after the layer: "Affine1: grad W: is off by ..."
            for c in checks:
                for dg in c.diagnosis or []:
                    if not dg["check"].startswith(prefix):
                        dg["check"], dg["message"] = c.name, f"{prefix}{dg['message']}"
        for c in checks:
            history["passed"][c.name] = history["passed"].get(c.name, True) and c.passed
        for n in self.rule.inputs:
            history["expected"].setdefault(n, []).append(expected_grads[n])
        history["ref"].append(ref)
        return checks

    # -- the pieces of a judgement ------------------------------------------------
    def alternative(self, rep, check, which, expected, got, alternatives, ctx) -> Check:
        """The check against the rule at its ``also`` hyperparameter values, if one fits."""
        for alt, out, grads, scales in alternatives():
            other = out if which == "forward" else grads[which]
            c = compare(check.name, other, got, scales[which], self.judged_in(got), where=check.where, **ctx)
            if c.passed:
                changed = {k: v for k, v in alt.items() if v != self.hyper[k]}
                diff = float(np.max(np.abs(np.asarray(other, dtype=np.float64) - np.asarray(expected, dtype=np.float64)), initial=0.0))
                said = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in changed.items())
                note = (f"{check.name} is the rule's with {said} (the default is "
                        f"{', '.join(f'{k} = {self.hyper[k]}' for k in changed)}); the two differ by up to {diff:.2g} here")
                if not any(n.split(";")[0] == note.split(";")[0] for n in rep.notes):
                    rep.notes.append(note)
                return c
        return check

    def lowest_precision(self, values):
        """The least precise floating dtype among one call's results, when it is below the run's (else None)."""
        lowest = None
        for v in values:
            dt = self.judged_in(v)
            if dt is not self.dtype and (lowest is None or np.finfo(dt).eps > np.finfo(lowest).eps):
                lowest = dt
        return lowest

    def computed_lower(self, rep, check, expected, got, scale, lowest, what, ctx) -> Check:
        """A result in the run's dtype whose values carry only ``lowest``'s precision, the dtype other results
        of the same call come back in: the layer computes in ``lowest`` somewhere (nnfs.init() patches np.dot
        to return float32, and a float64 bias added after it hides that in the output's dtype). A dtype finding,
        judged with ``lowest``'s precision and warned about (FAIL under --strict); never without that evidence,
        so an error of float32's size in a float64 layer still fails."""
        if lowest is None or check.passed or got is None or self.judged_in(got) is lowest:
            return check
        c = compare(check.name, expected, got, scale, lowest, where=check.where, **ctx)
        if not c.passed:
            return check
        low = np.dtype(lowest).name
        if not any(w.kind == "dtype" and w.message.startswith(f"{what} is ") for w in rep.warnings):
            warn(rep, "dtype", f"{what} is {np.asarray(got).dtype}, but its values carry only {low}'s precision (worst "
                               f"error {check.abs_err:.3g}, within {low}'s tolerance {c.tol:.3g}), as the results the layer "
                               f"hands back in {low} do: it computes in {low} somewhere (np.dot patched to return {low}, "
                               f"as nnfs.init() does?), so it is judged with {low}'s precision", ctx.get("trial"))
        return c

    def final_loss(self, rep, check, expected, got, scale, cot, ctx) -> Check:
        """A loss whose backward ignores dout: right as the graph's end (backward(dout=1)), so a warning.

        Book 1's SoftmaxWithLoss.backward(dout=1) returns (y - t) / N whatever dout is.
        The gradient is held to the exact gradient at dout = 1 instead; if it is that,
        the check passes and a warning says what was not multiplied (FAIL under --strict).
        """
        c = float(cot) if np.ndim(cot) == 0 else 0.0
        if not c or not any(dg["kind"] == "upstream-ignored" for dg in check.diagnosis or []):
            return check
        at_one = compare(check.name, np.asarray(expected) / c, got, np.asarray(scale) / abs(c), self.judged_in(got),
                         where=check.where, **ctx)
        if not at_one.passed:
            return check
        self.ignores_dout = True
        warn(rep, "upstream-ignored", f"{check.where} is the gradient for dout = 1 whatever dout is: right for a loss "
                                      f"that ends the graph (backward(dout=1)), wrong if anything scales the loss "
                                      f"(multiply by dout)", ctx.get("trial"))
        return at_one

    def weak_tolerance(self, rep, check, expected, scale, got, ctx) -> None:
        """A note, once per check, when its tolerance reaches ``checks.WEAK`` of its largest exact value: a
        statement about how much the check can see there (a worst-case bound is loose), not about the layer."""
        dtype = self.judged_in(got)
        r = reach(expected, scale, dtype)
        if r <= WEAK or any(n.startswith(f"{check.name}: the error bound") for n in rep.notes):
            return
        sizes = ", ".join(f"{d}={v}" for d, v in ctx["dims"].items())
        why = (" The bound grows with the number of steps of the recurrence: check at fewer steps (--shape) for a tight check."
               if self.rule.formula.loop is not None else "")
        rep.notes.append(f"{check.name}: the error bound lets through errors up to {r:.2g} of its largest value (at {sizes}, "
                         f"{np.dtype(dtype).name}): a smaller error is not seen there.{why}")

    def dtype_warning(self, rep, value, what, trial):
        if isinstance(value, (list, tuple)):
            warn(rep, "dtype", f"{what} is a Python {type(value).__name__}, not a NumPy array", trial)
        elif isinstance(value, np.ndarray) and value.dtype != self.dtype and value.ndim > 0:
            lower = self.judged_in(value) is not self.dtype
            judged = np.dtype(self.judged_in(value)).name
            warn(rep, "dtype", f"{what} is {value.dtype} for {np.dtype(self.dtype).name} inputs" + (
                f": the layer computes in {value.dtype} (a buffer made with dtype='f'?), so it is judged with "
                f"{judged}'s precision" if lower else ""), trial)
