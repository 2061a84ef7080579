"""Verification reports as text (for people) and JSON (for machines).

The JSON schema (``derivcheck verify --format json``)::

    {
      "target": "examples/dlfs1/layers.py:Affine", "rule": "affine",
      "style": "dlfs1", "dtype": "float64", "seed": 0, "trials": 5, "steps": 2,
      "hyper": {"axis": "1"},                  # as given on the command line
      "verdict": "pass" | "fail" | "error",
      "checks": [{"name": "grad W", "passed": false, "where": "Affine.dW",
                  "trial": 1, "step": 0, "seed": 1, "dims": {"N": 3, ...},
                  "hyper": {"stride": 2},      # only where the trial's hyperparameters differ from the run's
                  "index": [2, 1], "expected": 0.52, "got": -1.2,
                  "abs_err": 1.7, "rel_err": 3.3, "tol": 4.4e-15,
                  "message": "..."}],
      "warnings": [{"kind": "mutates-input" | "stale-state" | "dtype",
                    "message": "...", "trial": 0}],
      "diagnosis": [{"check": "grad W", "kind": "transposed", "message": "...", "hint": "...",
                     "evidence": {"residual_over_tol": 0.0}}],
      # kinds: transposed, sign-flipped, constant-factor, missing-reduction, wrong-axis,
      # extra-reduction, kept-axis, operand-transposed, upstream-ignored, input-instead-of-output, accumulates, stale-state,
      # shape, forward-wrong, numerical-stability, rebinds-grads, swapped, mask-ignored,
      # wiring (a network's connections), regularization (a CS231n model's L2 term in its loss or grads)
      # residual_over_tol: the corrected candidate's worst error over the check's tolerance
      # (<= 1: it explains every element); inf for kinds found by elimination or by shape,
      # which have no corrected candidate (stale-state, shape, rebinds-grads); for
      # forward-wrong, the forward check's own error over tolerance
      "notes": ["at the kink x = 0 the layer's derivative is 0 ..."],   # with --kinks
      "reproduce": "derivcheck verify ... --seed 1 --trials 1 --shape N=3,D=3,H=3",
      "forward_only": "",   # or why only the forward was checked: "Sigmoid has a forward method and no backward"
      "layers": [{"name": "Affine1", "kind": "Affine", "rule": "affine"}, ...]   # a network's only (rule "network"):
                            # its layers in forward order, the loss layer last; rule null for a layer with no rule
    }

A check's ``index``/``expected``/``got`` describe its worst element (largest
error relative to its tolerance) over all trials; ``trial``, ``step``, ``seed``
and ``dims`` say where that was.
"""
from __future__ import annotations

import json


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def pair(expected: float, got: float) -> tuple[str, str]:
    """Expected and got with enough digits to tell them apart (-1.4013 vs -1.4013 will not do)."""
    for digits in (6, 9, 12, 17):
        e, g = f"{expected:.{digits}g}", f"{got:.{digits}g}"
        if e != g or expected == got:
            return e, g
    return e, g


def _idx(check) -> str:
    name = check.name.rpartition("grad ")[2] if "grad " in check.name else "out"  # "grad W", "Affine1: grad W"
    return f"{name}[{','.join(map(str, check.index))}]" if check.index else name


def text(report) -> str:
    lines = [
        f"derivcheck verify {report.target}" + (" (a network, each layer against its rule)" if report.rule == "network"
                                                 else f" --rule {report.rule}"),
        f"style {report.style}, {report.dtype}, seed {report.seed}, {report.trials} trial(s) x {report.steps} step(s)",
    ]
    width = max((len(c.name) for c in report.checks), default=8)
    for c in report.checks:
        mark = "PASS" if c.passed else "FAIL"
        where = f"  ({c.where})" if c.where and c.where != "forward output" else ""
        if c.abs_err is not None:
            lines.append(f"  {mark} {c.name:<{width}}  worst abs err {_fmt(c.abs_err)} (tol {_fmt(c.tol)}){where}")
        else:
            lines.append(f"  {mark} {c.name:<{width}}{where}")
        if not c.passed:
            at = ", ".join(f"{k}={v}" for k, v in (c.dims or {}).items())
            if c.hyper:
                at += " with " + ", ".join(f"{k}={v}" for k, v in c.hyper.items())
            if c.trial is not None:
                lines.append(f"       trial {c.trial} (seed {c.seed}) step {c.step} at {at}")
            if c.message:
                lines.append(f"       {c.message}")
            if c.abs_err is not None:
                e, g = pair(c.expected, c.got)
                lines.append(
                    f"       worst element {_idx(c)}: expected {e}, got {g} "
                    f"(abs err {_fmt(c.abs_err)}, rel err {_fmt(c.rel_err)}, tol {_fmt(c.tol)})"
                )
    if report.warnings:
        lines.append("warnings:" + (" (failing under --strict)" if report.strict else ""))
        lines += [f"  - {w.kind}: {w.message}" for w in report.warnings]
    if report.diagnosis:
        lines.append("diagnosis:")
        for d in report.diagnosis:
            lines.append(f"  - {d['message']}")
            lines.append(f"    hint: {d['hint']}")
    if report.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in report.notes]
    only = f" (forward only: {report.forward_only}, so there is no gradient to check)" if report.forward_only else ""
    lines.append(f"verdict: {report.verdict.upper()}{only}")
    if report.verdict != "pass":
        lines.append(f"reproduce: {report.reproduce}")
    return "\n".join(lines)


def as_json(report) -> str:
    return json.dumps(report.to_json(), indent=2, default=_jsonable)


def error_json(target: str, rule: str | None, message: str) -> str:
    return json.dumps({"target": target, "rule": rule, "verdict": "error", "error": message, "checks": [],
                       "warnings": [], "diagnosis": [], "reproduce": ""}, indent=2)


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)
