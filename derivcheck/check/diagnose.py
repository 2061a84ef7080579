"""Diagnosis: name the bug behind a wrong gradient by testing structured hypotheses.

Each hypothesis is a corrected candidate ("the layer returned the transpose
of the right gradient", "... times 1/N", ...). It is tested against what the
layer returned, with the same tolerance as the check itself (see verify.py). A
hypothesis that holds is reported with its evidence: the residual after the
correction, in units of the tolerance (≤ 1 means it explains every element).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from derivcheck.checks import compare, unit_roundoff
from derivcheck.engine.formula import shape_text
from derivcheck.results import pair


@dataclass
class Context:
    """What a diagnosis may use about one step."""

    rule: object
    derivation: object
    dims: dict
    ref: dict  # reference input values (float64)
    cot: np.ndarray
    dtype: object
    earlier: dict  # input -> [expected gradients of the earlier steps of this trial]
    earlier_passed: bool  # the earlier steps of this trial passed this check
    others: dict = field(default_factory=dict)  # every other input -> (its right gradient, its rounding scale) at this step
    earlier_ref: list = field(default_factory=list)  # the reference values of this trial's earlier steps, in order


def _ratio(candidate, got, scale, dtype) -> float:
    """The candidate's worst error over the check's tolerance (compare's, in ``dtype``): <= 1 explains every element."""
    if np.shape(candidate) != np.shape(got):
        return np.inf
    candidate = np.asarray(candidate, dtype=np.float64)
    c = compare("hypothesis", candidate, got, np.abs(scale) + np.abs(candidate), dtype)
    return c.severity


def _near(candidate, got, dtype) -> bool:
    """``got`` agrees with ``candidate`` to half the dtype's digits: close enough to be worth an exact test."""
    if np.shape(candidate) != np.shape(got):
        return False
    c, g = np.asarray(candidate, dtype=np.float64), np.asarray(got, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.abs(g - c) <= np.sqrt(unit_roundoff(dtype)) * (np.abs(c) + np.abs(c).max(initial=0.0))))


def _found(kind, check, message, hint, residual) -> dict:
    return {"check": check, "kind": kind, "message": f"{check}: {message}", "hint": hint,
            "evidence": {"residual_over_tol": float(residual)}}


def _factor_name(k: float, dims: dict) -> str | None:
    """'1/N (N=3)'; every reading when several fit ('2, which is also N here (N=2)')."""
    names = []
    for d, n in dims.items():
        if n > 1:
            for name, value in ((f"{d}", float(n)), (f"1/{d}", 1.0 / n)):
                if abs(k - value) <= 1e-6 * abs(value):
                    names.append(f"{name} ({d}={n})")
    for name, value in (("2", 2.0), ("1/2", 0.5)):
        if abs(k - value) <= 1e-6 * value:
            return f"{name}, which is also {' or '.join(names)} here" if names else name
    return " or ".join(names) or None


def diagnose_gradient(name: str, expected, got, scale, ctx: Context) -> list[dict]:
    check = f"grad {name}"
    E = np.asarray(expected, dtype=np.float64)
    try:
        G = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return []
    dt, c = ctx.dtype, np.asarray(ctx.cot, dtype=np.float64)
    out: list[dict] = []

    def holds(candidate, sc=scale):
        return _ratio(candidate, G, sc, dt)

    swapped = _swapped(name, G, ctx)
    if G.shape != E.shape:
        if swapped:  # a gradient of another input's shape, and its value
            return [swapped]
        if G.ndim == 2 and G.shape == E.shape[::-1] and (r := holds(E.T, np.abs(scale).T if np.ndim(scale) == 2 else scale)) <= 1:
            out.append(_found("transposed", check, f"has shape {G.shape}, the transpose of {name}'s {E.shape}, and equals the right gradient transposed",
                              "swap the operands' order or transpose (x.T @ dout, not dout.T @ x)", r))
        elif G.ndim == E.ndim + 1 and G.shape[0] == 1 and G.shape[1:] == E.shape and (r := _ratio(E, G[0], np.abs(scale), dt)) <= 1:
            out.append(_found("kept-axis", check, f"has shape {G.shape}: the right values, with the summed axis kept (keepdims=True)",
                              f"drop the kept axis: d{name} of shape {E.shape}, as {name} has (sum without keepdims, or "
                              f"reshape); an optimizer would broadcast {name} to {G.shape} otherwise", r))
        elif G.ndim == E.ndim + 1 and G.shape[1:] == E.shape and (r := _ratio(E, G.sum(axis=0), np.abs(scale), dt)) <= 1:
            out.append(_found("missing-reduction", check, f"has an extra leading axis of size {G.shape[0]}: one gradient per position that shares {name}, not their sum",
                              f"sum over every axis that shares {name}: d{name} = dout.sum(axis=0) for a batch, "
                              f"dout.sum(axis=(0, 1)) for a batch of sequences", r))
        elif (kept := _kept_axes(E, G)) and (r := _ratio(E, G.sum(axis=kept, keepdims=True), np.abs(scale), dt)) <= 1:
            axes = ", ".join(str(a) for a in kept)
            out.append(_found("missing-reduction", check, f"has shape {G.shape} where {name} has {E.shape}: one gradient per "
                              f"position that shares {name}, not their sum",
                              f"sum over axis {axes}, keeping it as {name} does: d{name} = dout.sum(axis="
                              f"{kept[0] if len(kept) == 1 else kept}, keepdims=True)", r))
        else:
            axis_hit = _wrong_axis(E, G, c, dt)
            if axis_hit:
                out.append(_found("wrong-axis", check, *axis_hit))
            elif G.ndim < E.ndim:
                for a in range(E.ndim):
                    if (r := _ratio(E.sum(axis=a), G, np.abs(scale).sum(axis=a), dt)) <= 1:
                        out.append(_found("extra-reduction", check, f"is the right gradient summed over axis {a}: a reduction too many",
                                          f"do not sum d{name} over axis {a}", r))
                        break
        if G.ndim == E.ndim > 2 and sorted(G.shape) == sorted(E.shape):
            import itertools

            for perm in itertools.permutations(range(E.ndim)):
                if perm != tuple(range(E.ndim)) and (r := _ratio(E.transpose(perm), G, np.abs(scale).transpose(perm), dt)) <= 1:
                    out.append(_found("transposed", check, f"equals the right gradient with its axes permuted by {list(perm)}",
                                      f"apply the inverse permutation: np.transpose(gy, {[int(i) for i in np.argsort(perm)]})", r))
                    break
        if not out:
            out.append(_found("shape", check, f"has shape {G.shape}, but {name} has shape {E.shape}",
                              f"a gradient has its parameter's shape: {E.shape}", np.inf))
        return out

    if E.ndim == 2 and E.shape[0] == E.shape[1] and not np.allclose(E, E.T) and (r := holds(E.T, np.abs(scale).T)) <= 1:
        out.append(_found("transposed", check, "equals the right gradient transposed", "swap the operands or transpose the result", r))
    if (r := holds(-E)) <= 1:
        out.append(_found("sign-flipped", check, "equals the right gradient with its sign flipped", "check the sign of each term", r))
    elif swapped:  # where the other input's gradient is -E (x - y), the sign says it more simply
        out.append(swapped)
    denom = float(np.sum(E * E))
    if denom > 0:
        k = float(np.sum(G * E) / denom)
        upstream = _upstream_ignored(name, E, G, c, scale, ctx)
        if upstream:
            out.append(upstream)  # for a loss this is also a constant factor, 1/dout: say the specific thing
        elif c.ndim == 0 and c != 0 and (r := holds(-E / c, np.abs(scale) / abs(float(c)))) <= 1:
            out.append(_found("sign-flipped", check, f"is the gradient for dout = 1 with its sign flipped, and dout was "
                              f"{float(c):.6g}: the sign is wrong and dout is not multiplied",
                              "check the sign of each term, and multiply by the upstream gradient: dx = dx * dout", r))
        elif abs(k - 1) > 1e-6 and abs(k + 1) > 1e-6 and k != 0 and (r := holds(k * E, np.abs(k) * np.abs(scale))) <= 1:
            named = _factor_name(k, ctx.dims)
            what = f"a factor of {named}" if named else f"a constant factor {k:.6g}"
            found = _found("constant-factor", check, f"is off by {what}",
                           "look for a missing or extra division by the batch size (mean vs sum), or a stray 2 or 0.5", r)
            found["evidence"]["factor"] = k
            out.append(found)
    if not out and (operand := _operand_transposed(name, G, scale, ctx)):
        out.append(operand)
    if not out and (term := _regularization(name, E, G, scale, ctx)):
        out.append(term)
    if not out and (diagonal := _diagonal_only(name, E, G, scale, ctx)):
        out.append(diagonal)
    if not out and (other_eps := _epsilon(name, G, scale, ctx)):
        out.append(other_eps)
    if not out and (inverted := _mask_inverted(name, E, G, scale, ctx)):
        out.append(inverted)
    if not out and (first := _first_example_only(name, E, G, scale, ctx)):
        out.append(first)
    if not out and (decay := _weight_decay(name, E, G, scale, ctx)):
        out.append(decay)
    from_output = _input_for_output(name, G, scale, ctx)
    if from_output:
        out.append(from_output)
    unmasked = _mask_ignored(name, G, scale, ctx)
    if unmasked:
        out.append(unmasked)
    earlier = ctx.earlier.get(name, [])
    if earlier:
        acc = E + np.sum(earlier, axis=0)
        if (r := holds(acc, np.abs(scale) * (len(earlier) + 1))) <= 1:
            out.append(_found("accumulates", check, "equals the sum of this and the earlier calls' gradients: it accumulates",
                              "overwrite the gradient (grads[0][...] = dW), do not add to it (+=)", r))
        elif ctx.earlier_passed and not out and (stale := _stale(name, G, scale, ctx)):
            out.append(stale)
    return out


def _regularization(name, E, G, scale, ctx) -> dict | None:
    """The regularization term's gradient at another multiple: CS231n's ``dW += reg * W`` for a loss with
    ``reg * sum(W ** 2)`` (whose gradient is 2 * reg * W), or the term left out. The rule's own term R is the
    gradient at reg minus the gradient at reg = 0; the layer's is G - (E - R), fitted as k * R."""
    derivation = ctx.derivation
    if derivation is None or "reg" not in ctx.rule.hyper or not float(derivation.hyper.get("reg") or 0):
        return None
    from derivcheck.engine import reference

    R = E - np.asarray(reference.at(ctx.rule, {**derivation.hyper, "reg": 0.0}, ctx.dims).vjp(ctx.cot, **ctx.ref)[name])
    denom = float(np.sum(R * R))
    if denom == 0:
        return None
    k = float(np.sum((G - (E - R)) * R) / denom)
    if abs(k - 1) < 1e-6 or (r := _ratio(E - R + k * R, G, np.abs(scale) + abs(k) * np.abs(R), ctx.dtype)) > 1:
        return None
    times = "left out" if abs(k) < 1e-6 else f"{k:.6g} times the rule's"
    return _found("regularization", f"grad {name}", f"has the regularization term's gradient {times} (reg = "
                  f"{float(derivation.hyper['reg']):g}): a loss with reg * sum({name} ** 2) has 2 * reg * {name} in d{name}",
                  f"d{name} += 2 * reg * {name} for reg * np.sum({name} * {name}); reg * {name} goes with 0.5 * reg * np.sum({name} * {name})", r)


DIAGONAL_SIZE = 64  # set by hand: the diagonal costs one VJP per element; a failing trial at the small sizes has a few


def _diagonal_only(name, E, G, scale, ctx) -> dict | None:
    """``dout * d out[i] / d x[i]``: an element-wise derivative where each output depends on other inputs too
    (ML-From-Scratch's softmax ``gradient``, ``p * (1 - p)``), the Jacobian's diagonal without the rest."""
    derivation = ctx.derivation
    if (derivation is None or tuple(derivation.output_shape) != E.shape or not 1 < E.size <= DIAGONAL_SIZE
            or not set(ctx.rule.inputs) <= set(ctx.ref)):
        return None
    diagonal = np.empty(E.size)
    for i in range(E.size):
        unit = np.zeros(E.size)
        unit[i] = 1.0
        diagonal[i] = np.asarray(derivation.vjp(unit.reshape(E.shape), **ctx.ref)[name], dtype=np.float64).flat[i]
    candidate = np.asarray(ctx.cot, dtype=np.float64) * diagonal.reshape(E.shape)
    if _near(candidate, E, ctx.dtype):  # a diagonal Jacobian: the candidate is the right gradient
        return None
    if (r := _ratio(candidate, G, np.abs(scale) + np.abs(candidate), ctx.dtype)) > 1:
        return None
    return _found("diagonal-only", f"grad {name}", f"is dout times the Jacobian's diagonal, d out[i] / d {name}[i], alone: "
                  f"each output depends on the other elements of {name} too, and their terms are missing",
                  "the gradient is the full vector-Jacobian product (for a softmax: dx = out * (dout - sum(dout * out, "
                  "axis=-1, keepdims=True))); an element-wise derivative cannot express it", r)


def _operand_transposed(name, G, scale, ctx) -> dict | None:
    """The gradient as if a square matrix input were transposed: ``dx = dout @ W`` where ``dout @ W.T`` belongs
    (the bug shows as a shape error at distinct sizes, and as wrong values where W is square)."""
    if ctx.derivation is None:
        return None
    for m, v in ctx.ref.items():
        v = np.asarray(v)
        if m == name or m not in ctx.rule.inputs or v.ndim != 2 or v.shape[0] != v.shape[1] or np.allclose(v, v.T):
            continue
        candidate = ctx.derivation.vjp(ctx.cot, **{**ctx.ref, m: v.T})[name]
        if (r := _ratio(candidate, G, np.abs(scale), ctx.dtype)) <= 1:
            return _found("operand-transposed", f"grad {name}", f"is the gradient with {m} transposed: {m} enters d{name} "
                          f"untransposed where its transpose belongs (or the other way round)",
                          f"transpose {m} in d{name} (dx = dout @ W.T for out = x @ W)", r)
    return None


def _mask_ignored(name, G, scale, ctx) -> dict | None:
    """The gradient with a mask label all True: the mask applied to the loss (or dropout's output) but not to the gradient."""
    for m, lab in ctx.rule.labels.items():
        if lab.kind not in ("mask", "kept"):  # (a mask that leaves nothing out gives the right gradient, which never matches here)
            continue
        candidate = ctx.derivation.vjp(ctx.cot, **{**ctx.ref, m: np.ones_like(ctx.ref[m])})[name]
        if (r := _ratio(candidate, G, np.abs(scale), ctx.dtype)) <= 1:
            return _found("mask-ignored", f"grad {name}", f"is the gradient with every {m} True: the positions {m} leaves "
                          f"out still get a gradient", f"multiply d{name} by the mask too, as the forward does", r)
    return None


def _mask_inverted(name, E, G, scale, ctx) -> dict | None:
    """``dout`` where the right gradient is 0 and 0 where it is ``dout``: a ReLU's ``x <= 0``, or dropout's dropped
    elements, where ``x > 0`` or the kept ones belong. Only for a gradient that is ``dout`` masked (each element 0
    or dout's), and a mask that blocks some elements and passes others."""
    c = np.asarray(ctx.cot, dtype=np.float64)
    if c.shape != E.shape or c.size < 2:
        return None
    passed = np.abs(E - c) <= 1e-12 * np.abs(c)
    blocked = E == 0
    if not np.all(passed | blocked) or not passed.any() or not (blocked & (c != 0)).any():
        return None
    if (r := _ratio(c - E, G, np.abs(scale) + np.abs(c), ctx.dtype)) > 1:
        return None
    return _found("mask-inverted", f"grad {name}", "passes dout where the right gradient blocks it and blocks it where it "
                  "passes: the mask is inverted", "use the mask the forward used (x > 0 for a ReLU, the kept elements for "
                  "dropout), not its complement", r)


def _first_example_only(name, E, G, scale, ctx) -> dict | None:
    """The gradient for the first example's upstream gradient alone (``db = dout[0]``, where the examples share b and
    their gradients add up), when the others' would change it."""
    c = np.asarray(ctx.cot, dtype=np.float64)
    if ctx.derivation is None or c.ndim < 1 or c.shape[0] < 2:
        return None
    first = np.zeros_like(c)
    first[0] = c[0]
    candidate = np.asarray(ctx.derivation.vjp(first, **ctx.ref)[name], dtype=np.float64)
    if candidate.shape != G.shape or _near(candidate, E, ctx.dtype):
        return None
    if (r := _ratio(candidate, G, np.abs(scale), ctx.dtype)) > 1:
        return None
    return _found("first-example-only", f"grad {name}", "is the gradient of the first example's upstream gradient alone "
                  "(dout[0]): the other examples' terms are missing", f"sum over the examples: d{name} adds up every "
                  f"example's term (dout.sum(axis=0) for a bias)", r)


def _weight_decay(name, E, G, scale, ctx) -> dict | None:
    """The right gradient plus a multiple of the input itself (``dW += lam * W`` in backward): weight decay, which
    the rule has no term for (a rule's own ``reg`` term at another multiple is _regularization's, tried first)."""
    if name not in ctx.ref:
        return None
    V = np.asarray(ctx.ref[name], dtype=np.float64)
    denom = float(np.sum(V * V))
    if V.shape != G.shape or denom == 0:
        return None
    k = float(np.sum((G - E) * V) / denom)
    if abs(k) < 1e-12 or (r := _ratio(E + k * V, G, np.abs(scale), ctx.dtype)) > 1:  # (_ratio adds the term's size)
        return None
    return _found("weight-decay", f"grad {name}", f"is the right gradient plus {k:.6g} * {name}: a weight-decay term the "
                  f"rule does not have", f"leave weight decay to the optimizer (or to the loss, whose rule then has the "
                  f"penalty): d{name} without {k:.6g} * {name}", r)


def _stale(name, G, scale, ctx) -> dict | None:
    """The gradient at this call's dout with an earlier call's values: one value (the cached x), then all of them."""
    if ctx.derivation is None:
        return None
    for step, old in enumerate(ctx.earlier_ref):
        trials = [([n], {**ctx.ref, n: old[n]}) for n in old]  # (a value that did not change gives the right gradient)
        trials.append((sorted(old), old))
        for names, values in trials:
            candidate = ctx.derivation.vjp(ctx.cot, **values)[name]
            if (r := _ratio(candidate, G, np.abs(scale), ctx.dtype)) <= 1:
                what = f"{names[0]} from call {step + 1}" if len(names) == 1 else f"every value from call {step + 1}"
                return _found("stale-state", f"grad {name}",
                              f"was right in the first {len(ctx.earlier_ref)} call(s) and is now the gradient with {what}: "
                              f"state from an earlier call is reused",
                              "store what backward needs (x, y, masks) on every forward call", r)
    return None


def _swapped(name, G, ctx) -> dict | None:
    """The layer returned another input's right gradient for ``name`` (MulLayer without its swap, a tuple out of order)."""
    for other, (E, scale) in ctx.others.items():
        if other != name and (r := _ratio(E, G, np.abs(scale), ctx.dtype)) <= 1:
            return _found("swapped", f"grad {name}", f"equals the right gradient of {other}: the two are swapped",
                          f"return each input's own gradient, in the inputs' order (d{name} goes with {name}); "
                          f"a product's gradient takes the other factor (dx = dout * y, dy = dout * x)", r)
    return None


def _upstream_ignored(name, E, G, c, scale, ctx) -> dict | None:
    """The gradient at dout = 1 (a scalar dout) or dout = all ones, judged with the check's own rounding
    scale at that dout (a small gradient is no reason to reject it: a correct loss's can be small)."""
    check = f"grad {name}"
    if c.ndim == 0:
        if c != 0 and (r := _ratio(E / c, G, np.abs(scale) / abs(float(c)), ctx.dtype)) <= 1:
            return _found("upstream-ignored", check, f"is the gradient for dout = 1, but dout was {float(c):.6g}: it is not multiplied by dout",
                          "multiply by the upstream gradient: dx = dx * dout", r)
        return None
    ones = ctx.derivation.vjp(np.ones_like(c), **ctx.ref)[name]
    if not _near(ones, G, ctx.dtype):  # not this gradient to half the digits: no rounding explains it
        return None
    scale = ctx.derivation.evaluate(np.ones_like(c), **ctx.ref)[2][name]  # its rounding scale (a recurrence's is costly)
    if (r := _ratio(ones, G, np.abs(scale), ctx.dtype)) <= 1:
        return _found("upstream-ignored", check, "is the gradient for dout = all ones: the upstream gradient is ignored",
                      "multiply by dout", r)
    return None


def _input_for_output(name, G, scale, ctx) -> dict | None:
    rule = ctx.rule
    if rule.from_output is None or name not in rule.inputs:
        return None
    x = np.asarray(ctx.ref[name], dtype=np.float64)
    env = rule.environment(ctx.dims, ctx.derivation.hyper, {**ctx.ref, "out": x})
    wrong = np.asarray(ctx.cot, dtype=np.float64) * np.asarray(rule.from_output.evaluate(env, backend="numeric"), dtype=np.float64)
    if (r := _ratio(wrong, G, np.abs(scale), ctx.dtype)) <= 1:
        formula = rule.from_output.text.strip()
        return _found("input-instead-of-output", f"grad {name}",
                      f"is dout * ({formula}) with the input {name} where the output belongs",
                      f"save the forward output and use it: dout * ({formula}) with out = the forward's result", r)
    return None


def _kept_axes(E, G) -> tuple:
    """The axes where a parameter of the same rank has size 1 (nnfs's and ML-From-Scratch's biases (1, H)) and
    the gradient does not, every other axis alike; () when the shapes differ otherwise."""
    if G.ndim != E.ndim:
        return ()
    kept = tuple(a for a in range(E.ndim) if E.shape[a] == 1 and G.shape[a] != 1)
    return kept if kept and all(G.shape[a] == E.shape[a] for a in range(E.ndim) if a not in kept) else ()


def _wrong_axis(E, G, c, dtype):
    """E is a reduction of dout over some axes, and G the same reduction over others."""
    if c.ndim == 0:
        return None
    right = wrong = None
    for a in range(c.ndim):
        for kd in (True, False):
            R = c.sum(axis=a, keepdims=kd)
            if R.shape == E.shape and right is None and _ratio(R, E, np.abs(c).sum(axis=a, keepdims=kd), dtype) <= 1:
                right = (a, kd)
            if R.shape == G.shape and wrong is None and (r := _ratio(R, G, np.abs(c).sum(axis=a, keepdims=kd), dtype)) <= 1:
                wrong = (a, kd, r)
    if right and wrong and right[0] != wrong[0]:
        return (f"sums dout over axis {wrong[0]} where the forward repeated along axis {right[0]}",
                f"sum over axis {right[0]}: np.sum(dout, axis={right[0]}{', keepdims=True' if right[1] else ''})", wrong[2])
    return None


def settle_factor(found: dict, seen: list[tuple[float, dict]]) -> None:
    """Name a constant factor by the reading that fits every failing trial (2 vs N when N=2)."""
    readings = {"2": lambda d: 2.0, "1/2": lambda d: 0.5}
    for dim in seen[0][1]:
        readings[dim] = lambda d, dim=dim: float(d[dim])
        readings[f"1/{dim}"] = lambda d, dim=dim: 1.0 / d[dim]
    fits = [name for name, value in readings.items()
            if all(abs(k - value(d)) <= 1e-6 * abs(value(d)) for k, d in seen)]
    if len(seen) < 2:
        return
    if fits:
        found["message"] = f"{found['check']}: is off by a factor of {' or '.join(fits)} (in each of {len(seen)} failing trials)"
    elif all(abs(k - seen[0][0]) <= 1e-6 * abs(seen[0][0]) for k, _ in seen):
        # one number at every size: no size it was named after in one trial (IH = 4 = a 2x2 window) fits them all
        found["message"] = f"{found['check']}: is off by a constant factor {seen[0][0]:.6g} (in each of {len(seen)} failing trials)"


EPSILONS = (1e-2, 1e-3, 1e-4, 1e-5, 2e-5, 1e-6, 1e-7, 1e-8, 1e-10, 1e-12, 0.0)  # set by hand: the values sources use


def _other_epsilon(rule, hyper: dict, dims: dict, value_at, got, scale, dtype) -> tuple | None:
    """(eps, residual) for the first of the usual epsilons at which ``value_at(the rule's bound there)`` explains
    every element of ``got``; None when the rule has no float eps or none fits."""
    if "eps" not in rule.hyper or rule.hyper["eps"].type != "float" or got is None:
        return None
    from derivcheck.engine import reference

    try:
        G = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    for eps in EPSILONS:
        if eps == float(hyper["eps"]):
            continue
        candidate = np.asarray(value_at(reference.at(rule, {**hyper, "eps": eps}, dims)), dtype=np.float64)
        if candidate.shape == G.shape and (r := _ratio(candidate, G, np.abs(scale) + np.abs(candidate), dtype)) <= 1:
            return eps, r
    return None


def _eps_finding(check: str, eps: float, hyper: dict, r: float) -> dict:
    return _found("epsilon", check, f"is the rule's at eps = {eps:g}, where the rule's is {float(hyper['eps']):g}: the "
                  f"layer adds another epsilon", f"if eps = {eps:g} is meant, check it there: --hyper eps={eps:g} (in a "
                  f"config, hyper = {{ eps = {eps:g} }})", r)


def diagnose_epsilon(rule, hyper: dict, dims: dict, ref: dict, got, scale, dtype) -> dict | None:
    """A forward that is the rule's at another epsilon (ML-From-Scratch's batchnorm adds 0.01 where the rule adds
    1e-5)."""
    fit = _other_epsilon(rule, hyper, dims, lambda bound: bound.forward(**ref), got, scale, dtype)
    return _eps_finding("forward", fit[0], hyper, fit[1]) if fit else None


def _epsilon(name, G, scale, ctx) -> dict | None:
    """A gradient that is the rule's at another epsilon (with the forward's, see diagnose_epsilon)."""
    if ctx.derivation is None or not set(ctx.rule.inputs) <= set(ctx.ref):
        return None
    hyper = ctx.derivation.hyper
    fit = _other_epsilon(ctx.rule, hyper, ctx.dims, lambda bound: bound.vjp(ctx.cot, **ctx.ref)[name], G, scale, ctx.dtype)
    return _eps_finding(f"grad {name}", fit[0], hyper, fit[1]) if fit else None


def diagnose_forward(check) -> dict:
    if check.expected is None:  # no element to show (a shape, or no value)
        message = f"forward: {check.message}"
    else:
        e, g = pair(check.expected, check.got)
        message = (f"forward: the output itself is wrong (out[{','.join(map(str, check.index or []))}]: expected {e}, "
                   f"got {g}); gradients built on it are suspect too")
    return {"check": "forward", "kind": "forward-wrong", "message": message,
            "hint": "fix the forward pass first", "evidence": {"residual_over_tol": float(check.severity)}}


# NumPy's words for two axes that a product pairs but that differ: matmul / @, then np.dot
_MISMATCH = re.compile(r"size (\d+) is different from (\d+)|(\d+) \(dim \d+\) != (\d+) \(dim \d+\)")


def diagnose_raised(message: str, stage: str, rule, dims: dict) -> list[dict] | None:
    """A product of mismatched axes in the layer's raise, named by the rule's sizes: the two sizes NumPy names
    are each exactly one of the trial's dimensions (sizes are distinct where the trial plan can make them so),
    so the report can say which dimensions the layer paired (D against H: a transpose missing or extra)."""
    m = _MISMATCH.search(message)
    if m is None:
        return None
    a, b = (int(g) for g in m.groups() if g is not None)
    named = [[d for d, n in dims.items() if n == size] for size in (a, b)]
    if any(len(n) != 1 for n in named) or named[0] == named[1]:
        return None  # a size that two dimensions share, or none: nothing to name
    da, db = named[0][0], named[1][0]
    shapes = [f"{n} {shape_text(inp.shape)}" for n, inp in rule.inputs.items()]
    if not rule.outputs and rule.output:  # one output, not a scalar: the upstream gradient's shape
        shapes.append(f"dout {shape_text(rule.output)}")
    closed = [f"d{n} = {f.text}" for n, f in rule.closed_forms.items()] if stage.endswith("backward") else []
    hint = (f"in the line the error names, find the product whose operands hold {da} and {db}"
            + (f"; the rule's gradients are {', '.join(closed)}" if closed else ""))
    return [_found("mismatched-sizes", "layer raised", f"{stage} multiplied an axis of size {a} ({da}) with one of size "
                   f"{b} ({db}): with {', '.join(shapes)}, an operand is transposed where it should not be, or not "
                   f"where it should", hint, float("inf"))]
