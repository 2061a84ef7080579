"""What the derivation cache saves: cold (SymPy), from disk, and from memory.

    python bench/cache.py [--only RULE ...]

Every rule's reference (what `verify` uses) is made three ways, in the same run:
  cold    a fresh process with an empty cache folder: the shape-generic derivation, its
          proof against the element-by-element tier at three small shapes, compiled to
          NumPy steps; a rule with no generic form derived element by element at the
          sizes asked for
  disk    a fresh process with the folder the cold run filled: a generic rule's stored
          NumPy steps (read without SymPy); a rule with no generic form, its JSON
          expression trees (SymPy)
  memory  the same process again: a dictionary look-up
It prints seconds per rule and the ratios disk/cold and memory/cold.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import derivcheck
from derivcheck.engine import reference
times = {}
only = set(sys.argv[2:])
for name, rule in sorted(derivcheck.list_rules().items()):
    if only and name not in only:
        continue
    dims = {d: n + 1 for d, n in rule.example_dims().items()}  # one size up: 3, 4, 5, ...
    hyper = rule.resolve_hyper()
    t = time.perf_counter(); reference.at(rule, hyper, dims); first = time.perf_counter() - t
    t = time.perf_counter(); reference.at(rule, hyper, dims); again = time.perf_counter() - t
    times[name] = (first, again)
print(json.dumps(times))
"""


def run(cache: str, only: list) -> dict:
    env = dict(os.environ, DERIVCHECK_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), *only], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], metavar="RULE", help="only this rule (repeatable; default: all)")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache, opts.only)
        warm = run(cache, opts.only)
    if not cold:
        raise SystemExit(f"no rule named {', '.join(opts.only)}")
    print(f"{'rule':<20} {'cold s':>8} {'disk s':>8} {'memory s':>9}")
    for name in cold:
        print(f"{name:<20} {cold[name][0]:8.3f} {warm[name][0]:8.3f} {warm[name][1]:9.5f}")
    tc = sum(v[0] for v in cold.values())
    td = sum(v[0] for v in warm.values())
    tm = sum(v[1] for v in warm.values())
    print(f"\n{'all rules':<20} {tc:8.3f} {td:8.3f} {tm:9.5f}")
    print(f"ratios: disk/cold {td / tc:.2f}, memory/cold {tm / tc:.5f} (same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
