"""Checks: one result compared with the exact reference, under a tolerance from rounding analysis.

Tolerances come from the dtype's unit roundoff ``u`` and a running error
bound of the exact reference (:mod:`derivcheck.engine.reference`). For element ``i``:

    tol_i = κ · u · (s_i + max_k s_k),   κ = 4

``s`` is the reference's rounding scale (:mod:`derivcheck.engine.reference` says how
it is made for the output and for each gradient): the first-order rounding
bound ``M`` of the reference expression (:mod:`derivcheck.engine.rounding`), which
counts rounding at the size of every intermediate, so cancellation is
covered. The ``max_k s_k`` floor admits algorithms that differ from the
reference but are as sound (a max-shifted or tanh-based formula).

Two constants are set by hand, not derived: κ = 4, a margin for the gap
between a first-order bound and what an algorithm of the same family can
round; and the floor's weight of 1 on ``max_k s_k``.

A first-order bound is a worst case: through a recurrence it grows with the
number of steps (each step multiplies it by the absolute values of the
step's Jacobian), and a check whose largest tolerance reaches ``WEAK`` of
its largest exact value could miss a real error; :func:`reach` measures
that, and verify says so in a note (a statement about the check, not the layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Check:
    name: str  # "forward", "grad x", "shape", "layer raised"
    passed: bool
    trial: int | None = None
    step: int | None = None
    seed: int | None = None
    dims: dict | None = None
    hyper: dict | None = None  # the trial's hyperparameters where they differ from the run's (Rule.trial_hyper)
    where: str | None = None  # where the layer keeps it: "Affine.dW", "grads[0]"
    index: list | None = None
    expected: float | None = None
    got: float | None = None
    abs_err: float | None = None
    rel_err: float | None = None
    tol: float | None = None
    message: str = ""
    diagnosis: list | None = None

    @property
    def severity(self) -> float:
        """How far past its tolerance the worst element is (0 when passing)."""
        if self.abs_err is None or self.tol is None:
            return np.inf if not self.passed else 0.0
        return self.abs_err / self.tol if self.tol > 0 else np.inf


def unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


KAPPA = 4
WEAK = 0.01  # set by hand: a check that admits errors of 1% of its largest value gets a note (see the module doc)


def tolerance(scale, dtype) -> np.ndarray:
    """Each element's tolerance, from its rounding scale (the module doc's formula)."""
    u = unit_roundoff(dtype)
    scale = np.asarray(scale, dtype=np.float64)
    return np.maximum(KAPPA * u * (scale + scale.max(initial=0.0)), np.finfo(np.float64).tiny)


def reach(expected, scale, dtype) -> float:
    """The largest tolerance over the largest exact magnitude: how large an error the check lets through,
    relative to the values (0 when every exact value is 0: there is no size to be relative to)."""
    expected = np.abs(np.asarray(expected, dtype=np.float64))
    top = float(expected.max(initial=0.0))
    return float(tolerance(scale, dtype).max()) / top if top > 0 else 0.0


def compare(name, expected, got, scale, dtype, **context) -> Check:
    """Compare one result with the exact reference; the tolerance is set as in the module doc."""
    if got is None:
        return Check(name, False, message=f"the layer gave no value for {name}", **context)
    try:
        raw = np.asarray(got)  # a ragged list cannot be one
        if np.iscomplexobj(raw):
            return Check(name, False, message=f"{name} has complex values (dtype {raw.dtype}); the exact result is real", **context)
        got_arr = raw.astype(np.float64)
    except (TypeError, ValueError):
        return Check(name, False, message=f"{name} is a {type(got).__name__}, not an array of numbers", **context)
    expected = np.asarray(expected, dtype=np.float64)
    if got_arr.shape != expected.shape:
        if expected.shape == () and got_arr.size == 1:  # a scalar (a loss) handed back as [value]
            got_arr = got_arr.reshape(())
        else:
            return Check(name, False, message=f"{name} has shape {got_arr.shape}, expected {expected.shape}", **context)
    if expected.size == 0:  # nothing to compare (no rule has an empty array today; say so rather than crash)
        return Check(name, True, message="no elements", **context)
    tol = tolerance(np.asarray(scale, dtype=np.float64).reshape(expected.shape), dtype)
    with np.errstate(all="ignore"):  # inf - inf and inf / inf are what NaN and inf below stand for
        err = np.abs(got_arr - expected)
        err = np.where(np.isnan(err), np.inf, err)
        ratio = err / tol
        worst = np.unravel_index(int(np.argmax(ratio)), expected.shape)
        e, g = float(expected[worst]), float(got_arr[worst])
        rel = float(err[worst] / abs(e)) if e != 0 else (0.0 if err[worst] == 0 else float("inf"))
    return Check(
        name,
        bool(np.all(err <= tol) and np.all(np.isfinite(tol))),  # an infinite tolerance judges nothing
        index=[int(i) for i in worst],
        expected=e,
        got=g,
        abs_err=float(err[worst]),
        rel_err=rel,
        tol=float(tol[worst]),
        **context,
    )
