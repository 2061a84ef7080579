"""The element-by-element tier's Jacobian: SymPy's diff once per input element, or reverse accumulation.

    python bench/jacobian.py                           # about half a minute
    python bench/jacobian.py --only softmax_with_loss  # one rule

For a few rules at small shapes: the symbolic output elements are built once,
then every output element's partials by the input elements it contains are
taken two ways, in the same run: ``e.diff(s)`` for each symbol ``s`` (what
``derive_by_array`` does) and :func:`derivcheck.engine.derive.gradient` (one walk of
the element's sub-expressions). The two must agree at random values; the
table prints both times and their ratio.
"""
from __future__ import annotations

import time

import numpy as np

from derivcheck.engine import rules, symarray
from derivcheck.engine.derive import gradient

CASES = [("lstm", {"N": 2, "D": 3, "H": 4}), ("gru", {"N": 2, "D": 3, "H": 4}), ("layernorm", {"N": 3, "D": 4}),
         ("softmax_with_loss", {"N": 3, "C": 4}), ("max_pool", None)]


def outputs(rule, dims):
    syms = {n: symarray.symbols(n, rule.shape_of(i.shape, dims)) for n, i in rule.inputs.items()}
    labels = {n: symarray.symbols(n, rule.shape_of(lab.symbolic_shape(), dims)) for n, lab in rule.labels.items()}
    env = rule.environment(dims, rule.resolve_hyper(), {**syms, **labels})
    out = symarray.asarray(rule.formula.evaluate(env, backend="symbolic")).ravel()
    every = [s for a in (*syms.values(), *labels.values()) for s in a.ravel()]
    return out, {s for a in syms.values() for s in a.ravel()}, every


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=[c[0] for c in CASES], help="only this rule (repeatable)")
    only = ap.parse_args().only
    print(f"{'rule':<20} {'sizes':<16} {'partials':>8} {'diff per element':>17} {'reverse':>9} {'ratio':>7}  agree")
    for name, dims in CASES:
        if only and name not in only:
            continue
        rule = rules.load_rule(name)
        dims = dims or rule.example_dims()
        out, wanted, every = outputs(rule, dims)
        t = time.perf_counter()
        by_diff = [{s: e.diff(s) for s in e.free_symbols & wanted} for e in out]
        t_diff = time.perf_counter() - t
        t = time.perf_counter()
        by_reverse = [gradient(e, wanted) for e in out]
        t_rev = time.perf_counter() - t
        rng = np.random.default_rng(0)
        values = {s: float(rng.normal()) for s in every}
        worst = max((abs(float(a.get(s, 0).xreplace(values)) - float(b.get(s, 0).xreplace(values)))
                     for a, b in zip(by_diff, by_reverse) for s in set(a) | set(b)), default=0.0)
        count = sum(len(b) for b in by_reverse)
        sizes = ",".join(f"{k}={v}" for k, v in dims.items())
        print(f"{name:<20} {sizes:<16} {count:>8} {t_diff:>16.2f}s {t_rev:>8.2f}s {t_diff / t_rev:>7.1f}  "
              f"{'yes' if worst < 1e-12 else 'NO'} (largest difference {worst:.1e})")


if __name__ == "__main__":
    main()
