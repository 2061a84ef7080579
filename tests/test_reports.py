"""The whole report of every broken example, as a user reads it: pinned against tests/golden/broken_reports.json.

Every field a user sees is compared: each check's name, verdict, location and message; for a
failing check the trial, step, seed and sizes it failed at, its worst element, and expected and
got (to 6 digits); the warnings, diagnosis (messages and hints), notes and the reproduce line.
A changed word in a report fails here; when the change is meant, regenerate the file:

    DERIVCHECK_UPDATE_GOLDEN=1 python -m pytest tests/test_reports.py -n 0

and read its diff before committing it.
"""
import json
import os

import pytest

import derivcheck
from derivcheck.verify import verify

from bindings import BROKEN, EXAMPLES

GOLDEN = EXAMPLES.parent / "tests" / "golden" / "broken_reports.json"
UPDATE = os.environ.get("DERIVCHECK_UPDATE_GOLDEN") == "1"


def _digits(v):
    if isinstance(v, float):
        return float(f"{v:.6g}") if v == v and abs(v) != float("inf") else str(v)  # nan and inf as text: nan != nan
    return v


def snapshot(rep) -> dict:
    data = json.loads(json.dumps(rep.to_json(), default=str).replace(str(EXAMPLES), "examples"))
    for c in data["checks"]:
        if c["passed"]:  # a passing check's error is rounding, which the BLAS and CPU decide, and so is the trial
            for k in ("index", "expected", "got", "abs_err", "rel_err", "tol", "trial", "step", "seed", "dims"):
                c.pop(k, None)
        else:
            for k in ("expected", "got", "abs_err", "rel_err", "tol"):
                if k in c:
                    c[k] = _digits(c[k])
    for d in data["diagnosis"]:
        d["evidence"] = {k: round(v, 3) if k == "residual_over_tol" and isinstance(v, float) and abs(v) < float("inf")
                         else _digits(v) for k, v in d["evidence"].items()}
    return data


def _report(target, rule, hyper, dtype, strict):
    return verify(str(EXAMPLES / "broken" / "layers.py") + ":" + target, derivcheck.load_rule(rule), hyper=hyper,
                  dtype=dtype, strict=strict)


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.mark.parametrize("target,rule,hyper,dtype,caught,kind,strict", BROKEN, ids=[b[0] for b in BROKEN])
def test_the_report_of_each_broken_example_is_as_pinned(target, rule, hyper, dtype, caught, kind, strict, golden):
    key = f"{target}-{rule}-{dtype}" + ("-strict" if strict else "")
    got = snapshot(_report(target, rule, hyper, dtype, strict))
    if UPDATE:
        golden[key] = got
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[key] = got
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        return
    assert key in golden, f"no pinned report for {key}: regenerate (see the module doc)"
    assert got == golden[key]
