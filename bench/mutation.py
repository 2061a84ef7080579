"""Mutation testing of derivcheck's checking code: one deliberate bug at a time, then the tests.

    pip install -e '.[mutation]' && python bench/mutation.py [--list]

mutmut (configured under [tool.mutmut] in pyproject.toml) mutates derivcheck's
files in a copy (mutants/) and runs, for each mutant, the tests that reach the
mutated function. This script runs the mutants of the code that decides a
verdict (CHECKING below) and prints the score: killed, survived, and each
survivor that is not listed in EQUIVALENT with the reason it changes nothing.
A survivor that is not equivalent is a missing test. Exit code 1 when there is one.

--list prints the mutants' names only. Takes about an hour on two cores.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = [sys.executable, "-m", "mutmut"]

V = "derivcheck.verify.xǁVerifierǁ"
# The code that decides a verdict, as mutmut names its functions (module.x_function or module.xǁClassǁmethod).
CHECKING = [
    "derivcheck.checks.*",                              # comparison and tolerance
    "derivcheck.rules.xǁRuleǁplanned_dims__mutmut_*",  # the trial plan: distinct, equal, size-1, random sizes
    V + "trial_dims__mutmut_*",
    V + "cotangent__mutmut_*",
    V + "run__mutmut_*",                               # the verdict from the trials and the probe
    V + "run_trial__mutmut_*",
    V + "compare_outcome__mutmut_*",
    V + "rebound_slots__mutmut_*",                     # side effects: grads[0] = dW
    V + "_side_effects__mutmut_*",                     # side effects: writes into x, W, dout
    V + "_stale_check__mutmut_*",                      # stale state across two forwards
    V + "stability_check__mutmut_*",                   # extreme inputs
    V + "_stability_of__mutmut_*",
    V + "_final_loss__mutmut_*",                       # a loss that ignores dout
    V + "judged_in__mutmut_*",
    "derivcheck.diagnose.*",                           # diagnosis
    "derivcheck.adapters.xǁDlfs2Adapterǁrun__mutmut_*",  # side effects: rebound grads slots
    "derivcheck.adapters.x__same_array__mutmut_*",
]

# mutant -> why it cannot change a result (checked by reading; each is one line)
EQUIVALENT = {
}


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
    args = ap.parse_args()
    if not args.report:
        cmd = MUTMUT + (["print-time-estimates"] if args.list else ["run"]) + CHECKING
        subprocess.run(cmd, cwd=ROOT, check=False)
        if args.list:
            return 0
    from fnmatch import fnmatch

    status = {n: s for n, s in results().items() if any(fnmatch(n, p) for p in CHECKING)}
    killed = sum(s == "killed" for s in status.values())
    survivors = sorted(n for n, s in status.items() if s == "survived")
    other = sorted((n, s) for n, s in status.items() if s not in ("killed", "survived"))
    equivalent = [n for n in survivors if n in EQUIVALENT]
    missing = [n for n in survivors if n not in EQUIVALENT]
    print(f"mutants of the checking code: {len(status)}; killed {killed}; survived {len(survivors)} "
          f"({len(equivalent)} equivalent, {len(missing)} missing a test); other {len(other)}")
    for n in equivalent:
        print(f"  equivalent  {n}: {EQUIVALENT[n]}")
    for n in missing:
        print(f"  SURVIVED    {n}   (mutmut show {n})")
    for n, s in other:
        print(f"  {s:<11} {n}")
    return 1 if missing or other else 0


if __name__ == "__main__":
    sys.exit(main())
