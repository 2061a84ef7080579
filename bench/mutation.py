"""Mutation testing of derivcheck's checking code: one deliberate bug at a time, then the tests.

    pip install -e '.[mutation]' && python bench/mutation.py [--list]

mutmut (configured under [tool.mutmut] in pyproject.toml) mutates derivcheck's
files in a copy (mutants/) and runs, for each mutant, the tests that reach the
mutated function. This script runs the mutants of the code that decides a
verdict (CHECKING below) and prints the score: killed, survived, and each
survivor that is not listed in EQUIVALENT with the reason it changes nothing.
A survivor that is not equivalent is a missing test. Exit code 1 when there is one.

--list prints the mutants' names only. Takes about an hour on two cores; --only PATTERN... runs and
scores the mutants of some functions (those changed since a whole run) in minutes.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = [sys.executable, "-m", "mutmut"]

V = "derivcheck.check.verify.xǁVerifierǁ"
# The code that decides a verdict, as mutmut names its functions (module.x_function or module.xǁClassǁmethod).
CHECKING = [
    "derivcheck.checks.*",                              # comparison and tolerance
    "derivcheck.engine.rules.xǁRuleǁplanned_dims__mutmut_*",  # the trial plan: distinct, equal, size-1, random sizes
    V + "trial_dims__mutmut_*",
    V + "cotangent__mutmut_*",
    V + "run__mutmut_*",                               # the verdict from the trials and the probe
    V + "run_trial__mutmut_*",
    "derivcheck.check.judge.*",                              # the one judgement: alternatives, final loss, dtype, notes
    V + "rebound_slots__mutmut_*",                     # side effects: grads[0] = dW
    V + "_side_effects__mutmut_*",                     # side effects: writes into x, W, dout
    V + "_stale_check__mutmut_*",                      # stale state across two forwards
    V + "stability_check__mutmut_*",                   # extreme inputs
    V + "_stability_of__mutmut_*",
    "derivcheck.check.diagnose.*",                           # diagnosis
    "derivcheck.check.conventions.dlfs2.xǁDlfs2Adapterǁrun__mutmut_*",  # side effects: rebound grads slots
    "derivcheck.check.conventions.base.x_same_array__mutmut_*",
    "derivcheck.check.conventions.base.xǁAdapterǁstep__mutmut_*",  # side effects: writes into inputs and dout
    "derivcheck.check.conventions.base.xǁAdapterǁrepeat__mutmut_*",  # stale state: two forwards, one backward
    "derivcheck.wire.*",  # what the judge believes of the layer's process: plain data only
]

# Survivors that cannot change a verdict or a report, each with its reason: (mutant name pattern, text in
# the mutated line, why). Matched on the line, not mutmut's numbering, which moves when the code does.
_RESIDUAL = "a residual of exactly 1.0 (the worst error equal to the tolerance to the last bit) does not occur"
_FLOAT64 = "every caller passes float64 arrays, so the conversion changes nothing"
EQUIVALENT = [
    ("derivcheck.checks.*", "dtype=None)", _FLOAT64),
    ("derivcheck.checks.*", "np.asarray(expected, )", _FLOAT64),
    ("derivcheck.checks.*", "np.asarray(scale, )", _FLOAT64),
    ("derivcheck.checks.*", 'float("INF")', "the same number"),
    ("derivcheck.check.diagnose.*", ") < 1:", _RESIDUAL),
    ("derivcheck.check.diagnose.*", "dtype=None)", _FLOAT64),
    ("derivcheck.check.diagnose.*", "np.asarray(expected, )", _FLOAT64),
    ("derivcheck.check.diagnose.*", "np.asarray(ctx.cot, )", _FLOAT64),
    ("derivcheck.check.diagnose.*", "np.asarray(candidate, )", _FLOAT64),
    ("derivcheck.check.diagnose.*", "np.asarray(ctx.ref[name], )", _FLOAT64),
    ("derivcheck.check.diagnose.*", 'backend="numeric"), )', _FLOAT64),
    ("derivcheck.check.diagnose.*", "evaluate(env, )", "the symbolic backend gives the same values as objects, converted to float64"),
    ("derivcheck.check.diagnose.x__ratio*", 'compare("', "the comparison's name is never read, only its severity"),
    ("derivcheck.check.diagnose.x__ratio*", "compare(None,", "the comparison's name is never read, only its severity"),
    ("derivcheck.check.diagnose.x__factor_name*", "if n >= 1:", "a size of 1 names the factor 1, which is never named (k = 1 is not a factor)"),
    ("derivcheck.check.diagnose.*", "< 1e-6 *", "a factor off by exactly one millionth does not occur"),
    ("derivcheck.check.diagnose.x__wrong_axis*", "if c.ndim == 1:", "a 1-D dout has one axis: there is no other to have summed over"),
    ("derivcheck.check.diagnose.x_diagnose_gradient*", "elif G.ndim <= E.ndim:", "at equal ranks the summed candidate has another rank, so it never matches"),
    ("derivcheck.check.diagnose.x_diagnose_gradient*", "if denom >= 0:", "denom = 0 means an all-zero right gradient, whose factor 0/0 is never named"),
    ("derivcheck.check.diagnose.x_diagnose_gradient*", "ctx.earlier.get(name, ", "no earlier gradients either way"),
    ("derivcheck.check.diagnose.x_diagnose_gradient*", "== 2) or True else scale", ".T of a scalar or a vector is itself"),
    ("derivcheck.check.diagnose.x__upstream_ignored*", "if c != 1 and", "a loss's dout is drawn from +-[1.5, 3], never 1"),
    ("derivcheck.check.diagnose.*", ")) >= 1:", _RESIDUAL),
    ("derivcheck.check.diagnose.*", "[name], ).flat[i]", _FLOAT64),
    ("derivcheck.check.diagnose.*", "**ctx.ref)[name], )", _FLOAT64),
    ("derivcheck.check.diagnose.*", "np.asarray(got, )", "_ratio converts to float64 itself"),
    ("derivcheck.check.diagnose.*", "dims)), )", _FLOAT64),
    ("derivcheck.check.diagnose.x__other_epsilon*", '!= "float" and got is None', "a got of None becomes a 0-d nan, "
     "another shape than every candidate: no fit either way"),
    ("derivcheck.check.diagnose.x__kept_axes*", "or True else ()", "kept axes where another axis differs give a sum "
     "of another shape than the parameter's, which _ratio never accepts (inf)"),
    ("derivcheck.check.diagnose.x__kept_axes*", "return kept if kept or all(", "kept axes where another axis differs "
     "give a sum of another shape than the parameter's, which _ratio never accepts (inf)"),
    ("derivcheck.check.diagnose.x__mask_inverted*", "passed = np.abs(E - c) < 1e-12", "E equal to a nonzero dout "
     "passes either way; where dout is 0, E is 0 and counts as blocked either way"),
    ("derivcheck.check.diagnose.x__mask_inverted*", "1e-12 / np.abs(c)", "a masked gradient is dout copied exactly "
     "or 0; the thresholds differ only for an E within 1e-12 of dout that is not dout"),
    ("derivcheck.check.diagnose.x__diagonal_only*", "if _near(", "the guard skips a candidate equal to the right "
     "gradient, which a failing gradient never matches within its tolerance"),
    ("derivcheck.check.diagnose.x__diagonal_only*", "not 1 <= E.size", "a single element's Jacobian is its diagonal: "
     "the candidate is the right gradient, which the guard skips"),
    ("derivcheck.check.diagnose.x__weight_decay*", "abs(k) <= 1e-12", "a fitted coefficient of exactly 1e-12 does not occur"),
    ("derivcheck.check.diagnose.x__first_example_only*", "_near(", "the guard skips a candidate equal to the right "
     "gradient, which a failing gradient never matches within its tolerance (and the candidate has E's shape, "
     "which G has on this path)"),
    ("derivcheck.check.verify.*", 'float("INF")', "the same number"),
    ("derivcheck.check.diagnose.*", 'float("INF")', "the same number"),
    ("derivcheck.check.verify.*", "np.errstate(", "only which NumPy warnings are shown changes"),
    ("derivcheck.check.verify.xǁVerifierǁ_stability_of*", "< limit", "an exact value of exactly the dtype's largest float does not occur"),
    ("derivcheck.check.verify.xǁVerifierǁ_stability_of*", "np.asarray(exact, ", "an array of 50-digit numbers either way"),
    ("derivcheck.check.verify.xǁVerifierǁ_stability_of*", ", 1.0)", "elements that are not judged are masked out again below"),
    ("derivcheck.check.verify.xǁVerifierǁ_stability_of*", "0.0) if False", "elements that are not judged are masked out again below"),
    ("derivcheck.check.verify.xǁVerifierǁ_stability_of*", "ratio.max() >= 1", _RESIDUAL),
    ("derivcheck.check.verify.xǁVerifierǁ_stability_of*", "finfo(None).tiny", "np.finfo(None) is float64's"),
    ("derivcheck.check.verify.xǁVerifierǁ_stability_of*", "if (ex[idx]) or True", "err / 0 is inf, the value given in that case"),
    ("derivcheck.check.verify.xǁVerifierǁstability_check*", "spec.stress.low >= 0", "no stress domain starts at exactly 0"),
    ("derivcheck.check.verify.xǁVerifierǁstability_check*", "v.astype(None)", "astype(None) is float64, the reference's dtype"),
    ("derivcheck.check.verify.xǁVerifierǁstability_check*", "self._stability_of(None,", "only whether the alternative fails is read"),
    ("derivcheck.check.verify.xǁVerifierǁstability_check*", "got, ref, None, seed)", "only whether the alternative fails is read"),
    ("derivcheck.check.verify.xǁVerifierǁstability_check*", "got, ref, dims, None)", "only whether the alternative fails is read"),
    ("derivcheck.check.verify.xǁVerifierǁstability_check*", "for k in range(len(self.alternatives) + 1)",
     "k = 0 is the default, already known to fail"),
    ("derivcheck.check.verify.xǁVerifierǁ_final_loss*", "else 1.0", "for a non-scalar dout the comparison at c = 1 is the failed one"),
    ("derivcheck.check.verify.xǁVerifierǁ_stale_check*", "np.array(cot, ", "a layer writing into dout changes the re-check's "
     "reference the same way, so the finding is 'wrong at these values', not stale, either way"),
    ("derivcheck.check.verify.xǁVerifierǁ_stale_check*", "compare(None,", "the comparison's name is never read"),
    ("derivcheck.check.verify.xǁVerifierǁ_stale_check*", "scales[n], None)", "the re-check after one forward judges the same way, "
     "so a mismatch from the dtype is 'wrong at these values', not stale"),
    ("derivcheck.check.verify.xǁVerifierǁ_stale_check*", "self.judged_in(None)", "as above: the re-check judges the same way"),
    ("derivcheck.check.verify.xǁVerifierǁ_stale_check*", "np.ndim(None) == 0", "ignores_dout is only set for a scalar dout"),
    ("derivcheck.check.verify.xǁVerifierǁ_stale_check*", "abs(float(cot))}", "the re-check after one forward judges the same way"),
    ("derivcheck.check.verify.xǁVerifierǁ_stale_check*", "again = None", "a layer that passes its trials and the stale "
     "probe's two forwards, then raises on the third, does not occur in practice (it would crash, not pass)"),
    ("derivcheck.check.diagnose.x_diagnose_gradient*", ">= 1e-6 and", "a factor off 1 or -1 by exactly one millionth does not occur"),
    ("derivcheck.check.verify.xǁVerifierǁcompare_outcome*", "if got is None and not c.passed:",
     "a check of a missing value never passes, so the condition is the same"),
    ("derivcheck.check.verify.xǁVerifierǁcompare_outcome*", 'history["passed"].get(c.name, ',
     "every check of a step is recorded in history before the next step reads it: the default is never used"),
    ("derivcheck.check.verify.xǁVerifierǁcompare_outcome*", 'history["passed"][c.name] = ',
     "only the first failure of a check is reported, and all its earlier steps passed under either rule"),
    ("derivcheck.check.verify.xǁVerifierǁcompare_outcome*", "require_finite(self.rule, None,",
     "the sizes are read only for the error on a non-finite exact value (checked through the CLI, below)"),
    ("derivcheck.check.verify.xǁVerifierǁcompare_outcome*", '("XXoutputXX"', "only the error on a non-finite exact value says it"),
    ("derivcheck.check.verify.xǁVerifierǁcompare_outcome*", '("OUTPUT"', "only the error on a non-finite exact value says it"),
    ("derivcheck.check.verify.xǁVerifierǁ_side_effects*", "before, equal_nan=", "inputs come from finite domains: there is no NaN to compare"),
    ("derivcheck.check.verify.xǁVerifierǁ_side_effects*", "np.asarray(values[n]), before, )", "inputs come from finite domains: there is no NaN to compare"),
    ("derivcheck.check.conventions.dlfs2.xǁDlfs2Adapterǁrun*", "super().run(values, None)", "a forward-only layer never reads dout"),
    ("derivcheck.check.verify.x_judged_dtype*", "np.finfo(dt).eps >= np.finfo(dtype).eps",
     "a result exactly as precise as the run is judged in the run's dtype either way"),
    ("derivcheck.check.verify.x_judged_dtype*", "np.finfo(None).eps", "runs are float64 or float32: a result less precise than "
     "float64 but not than the run is in the run's own dtype"),
    ("derivcheck.check.verify.xǁVerifierǁcotangent*", "/ rng.choice([-1.0, 1.0])", "dividing by -1 or 1 is multiplying by it"),
    ("derivcheck.check.verify.xǁVerifierǁ_side_effects*", "cot_copy, equal_nan=", "dout is drawn finite: its copy has no NaN to match"),
    ("derivcheck.check.verify.xǁVerifierǁ_side_effects*", "cot_copy, )", "dout is drawn finite: its copy has no NaN to match"),
    ("derivcheck.check.verify.xǁVerifierǁ_weak_tolerance*", "if r < WEAK or", "a reach of exactly WEAK (1%, to the last bit) does not occur"),
    ("derivcheck.check.verify.xǁVerifierǁrun_trial*", "np.array(v, )", "np.array copies by default"),
    ("derivcheck.check.verify.xǁVerifierǁrun_trial*", "np.array(cot, )", "np.array copies by default"),
    ("derivcheck.check.verify.xǁVerifierǁcompare_outcome*", "require_finite(None,",
     "the rule is read only to name it in the error for a non-finite exact value; tests/test_binding_mistakes.py "
     "checks that message through the CLI, in a subprocess mutmut cannot see"),
]


def equivalent(name: str) -> str | None:
    """Why ``name`` cannot change a result, or None (its mutated line, from `mutmut show`, against EQUIVALENT)."""
    from fnmatch import fnmatch

    shown = subprocess.run(MUTMUT + ["show", name], cwd=ROOT, capture_output=True, text=True).stdout
    added = [ln[1:] for ln in shown.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    for pattern, text, why in EQUIVALENT:
        if fnmatch(name, pattern) and any(text in ln for ln in added):
            return why
    return None


def results() -> dict[str, str]:
    out = subprocess.run(MUTMUT + ["results", "--all", "true"], cwd=ROOT, capture_output=True, text=True)
    status = {}
    for line in out.stdout.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name:
            status[name] = state
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the mutants' names and stop")
    ap.add_argument("--report", action="store_true", help="print the last run's score without running")
    ap.add_argument("--only", nargs="+", metavar="PATTERN", help="run and score only the mutants of the checking code "
                    "whose names match (the functions changed since a whole run, as 'derivcheck.checks.x_reach*')")
    args = ap.parse_args()
    selection = args.only or CHECKING
    if not args.report:
        cmd = MUTMUT + (["print-time-estimates"] if args.list else ["run"]) + selection
        subprocess.run(cmd, cwd=ROOT, check=False)
        if args.list:
            return 0
    from fnmatch import fnmatch

    status = {n: s for n, s in results().items()
              if any(fnmatch(n, p) for p in CHECKING) and any(fnmatch(n, p) for p in selection)}
    killed = sum(s == "killed" for s in status.values())
    survivors = sorted(n for n, s in status.items() if s == "survived")
    other = sorted((n, s) for n, s in status.items() if s not in ("killed", "survived"))
    why = {n: equivalent(n) for n in survivors}
    missing = [n for n in survivors if why[n] is None]
    print(f"mutants of the checking code: {len(status)}; killed {killed}; survived {len(survivors)} "
          f"({len(survivors) - len(missing)} equivalent, {len(missing)} missing a test); other {len(other)}")
    for n in survivors:
        if why[n]:
            print(f"  equivalent  {n}: {why[n]}")
    for n in missing:
        print(f"  SURVIVED    {n}   (mutmut show {n})")
    for n, s in other:
        print(f"  {s:<11} {n}")
    return 1 if missing or other else 0


if __name__ == "__main__":
    sys.exit(main())
