"""Verification reports as text (for people) and JSON (for machines).

The JSON schema (``derivcheck verify --format json``) is documented in docs/ci.md, "The JSON
report"; tests/test_reports.py checks that every key and kind a report writes is documented there.
"""
from __future__ import annotations

import json

from derivcheck.results import pair, visible


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _idx(check) -> str:
    name = check.name.rpartition("grad ")[2] if "grad " in check.name else "out"  # "grad W", "Affine1: grad W"
    return f"{name}[{','.join(map(str, check.index))}]" if check.index else name


def text(report) -> str:
    lines = [
        f"derivcheck verify {visible(report.target)}" + (" (a network, each layer against its rule)" if report.rule == "network"
                                                 else f" --rule {report.rule}"),
        f"style {report.style}, {report.dtype}, seed {report.seed}, {report.trials} trial(s) x {report.steps} step(s)",
    ]
    width = max((len(c.name) for c in report.checks), default=8)
    for c in report.checks:
        mark = "PASS" if c.passed else "FAIL"
        where = f"  ({visible(c.where)})" if c.where and c.where != "forward output" else ""
        if c.abs_err is not None:
            lines.append(f"  {mark} {visible(c.name):<{width}}  worst abs err {_fmt(c.abs_err)} (tol {_fmt(c.tol)}){where}")
        else:
            lines.append(f"  {mark} {visible(c.name):<{width}}{where}")
        if not c.passed:
            at = ", ".join(f"{k}={v}" for k, v in (c.dims or {}).items())
            if c.hyper:
                at += " with " + ", ".join(f"{k}={v}" for k, v in c.hyper.items())
            if c.trial is not None:
                lines.append(f"       trial {c.trial} (seed {c.seed}) step {c.step} at {at}")
            if c.message:
                lines.append(f"       {visible(c.message, '       ')}")
            if c.abs_err is not None:
                e, g = pair(c.expected, c.got)
                lines.append(
                    f"       worst element {_idx(c)}: expected {e}, got {g} "
                    f"(abs err {_fmt(c.abs_err)}, rel err {_fmt(c.rel_err)}, tol {_fmt(c.tol)})"
                )
    if report.warnings:
        lines.append("warnings:" + (" (failing under --strict)" if report.strict else ""))
        lines += [f"  - {w.kind}: {visible(w.message, '    ')}" for w in report.warnings]
    if report.diagnosis:
        lines.append("diagnosis:")
        for d in report.diagnosis:
            lines.append(f"  - {visible(d['message'], '    ')}")
            lines.append(f"    hint: {visible(d['hint'], '    ')}")
    if report.notes:
        lines.append("notes:")
        lines += [f"  - {visible(n, '    ')}" for n in report.notes]
    only = f" (forward only: {visible(report.forward_only)}, so there is no gradient to check)" if report.forward_only else ""
    lines.append(f"verdict: {report.verdict.upper()}{only}")
    if report.verdict != "pass":
        lines.append(f"reproduce: {visible(report.reproduce)}")
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
