"""Each broken example, checked once as the gate checks it, held to three things.

1. The gate's own judgement (gate.Result.ok, on a check called as gate.verify_arguments
   says): it fails, exit 1, on exactly the checks its caught-by names, with the diagnosis
   it names (so `derivcheck check examples` passes).
2. What a user is owed beyond that: no hypothesis but the right one is reported, each
   reported residual is computed; a finding that is a warning passes without --strict.
3. Its whole report, as a user reads it, pinned against tests/golden/broken_reports.json.
   Every field a user sees is compared: each check's name, verdict, location and message;
   for a failing check the trial, step, seed and sizes it failed at, its worst element,
   and expected and got (to 6 digits); the warnings, diagnosis (messages and hints), notes
   and the reproduce line. A changed word in a report fails here; when the change is
   meant, regenerate the file:

    DERIVCHECK_UPDATE_GOLDEN=1 python -m pytest tests/test_reports.py -n 0

and read its diff before committing it.
"""
import json
import os

import pytest

from derivcheck.run.gate import Result, verify_arguments
from derivcheck.check.verify import verify

from bindings import BROKEN_BINDINGS, EXAMPLES

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


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.mark.parametrize("binding", BROKEN_BINDINGS, ids=[b.target.rpartition(":")[2] for b in BROKEN_BINDINGS])
def test_each_broken_example_is_caught_where_the_catalogue_says_and_reports_as_pinned(binding, golden):
    target, rule, options = verify_arguments(binding)
    rep = verify(target, rule, **options)  # in this process, so that mutation testing reaches it; isolation: test_isolation.py
    result = Result(binding, rep)
    assert result.ok and rep.exit_code == 1, (result.verdict, result.mismatch, rep.reproduce)  # 1. the gate's own judgement
    failing = {c.name for c in rep.checks if not c.passed}
    caught = binding.caught_by
    if caught[0].startswith("warning:"):  # 2. a warning: no check fails, no diagnosis; a pass without --strict
        assert binding.strict and failing == set() and rep.diagnosis == [], (failing, rep.diagnosis)
        lenient = verify(target, rule, **options | {"strict": False})
        assert lenient.verdict == "pass" and lenient.exit_code == 0
        assert caught[0].split(":", 1)[1] in {w.kind for w in lenient.warnings}
    else:
        assert failing == set(caught), failing
        kinds = [d["kind"] for d in rep.diagnosis]
        # the right hypothesis and no other (once per check it explains: MulLayerNotSwapped's two gradients)
        want = set(binding.diagnosis)
        assert set(kinds) == want and len(kinds) == len({d["check"] for d in rep.diagnosis}), rep.diagnosis
        for d in rep.diagnosis:  # a hypothesis that holds explains every element: residual <= 1, computed
            r = d["evidence"].get("residual_over_tol")
            assert r is None or r <= 1 or d["kind"] in ("shape", "rebinds-grads", "forward-wrong", "mismatched-sizes"), d
            assert d["message"] and d["hint"] and "residual_over_tol" in d["evidence"] or d["kind"] == "numerical-stability", d
    key = f"{binding.target.rpartition(':')[2]}-{binding.rule}-{binding.dtype}" + ("-strict" if binding.strict else "")
    got = snapshot(rep)  # 3. the whole report
    if UPDATE:
        golden[key] = got
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[key] = got
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        return
    assert key in golden, f"no pinned report for {key}: regenerate (see the module doc)"
    assert got == golden[key]


def _documented_schema() -> str:
    doc = (EXAMPLES.parent / "docs" / "ci.md").read_text()
    return doc.split("## The JSON report", 1)[1].split("```", 2)[1]


def test_every_key_and_kind_a_report_writes_is_in_the_documented_schema():
    # docs/ci.md holds the JSON schema (one home; report.py points there): a key or a kind added to the
    # reports without its line there fails here
    import re
    from pathlib import Path

    import derivcheck
    from derivcheck.results import Report, Warning_
    from derivcheck.vocab import DIAGNOSIS_KINDS

    schema = _documented_schema()
    documented = set(re.findall(r'"([a-z_]+)":', schema))
    rep = Report("t.py:Net", "network", "dlfs1", "float64", 0, 1, 1, {}, layers=[{"name": "A", "kind": "Affine", "rule": "affine"}])
    rep.warnings.append(Warning_("dtype", "m", 0))
    written = set(rep.to_json()) | {k for w in rep.to_json()["warnings"] for k in w}
    golden = json.loads(GOLDEN.read_text())
    for data in golden.values():
        written |= set(data) | {k for c in data["checks"] for k in c} | {k for d in data["diagnosis"] for k in d} \
            | {k for d in data["diagnosis"] for k in d.get("evidence", {})}
    assert written and written <= documented | {"layers"} and '"layers":' in schema, sorted(written - documented)
    code = "".join(p.read_text() for p in Path(derivcheck.__file__).parent.rglob("*.py"))
    kinds = set(re.findall(r'warn\([a-z_.]+, "([a-z-]+)"', code))
    assert kinds and all(f'"{k}"' in schema for k in kinds), sorted(k for k in kinds if f'"{k}"' not in schema)
    assert all(k in schema for k in DIAGNOSIS_KINDS), [k for k in DIAGNOSIS_KINDS if k not in schema]
