"""derivcheck against a finite-difference checker, on the bundled examples.

    python bench/fd_vs_derivcheck.py            # about a minute; --dtype float64 for one dtype,
                                                # --every 4 for every 4th layer only

The finite-difference checker is torch.autograd.gradcheck's algorithm written
in NumPy: central differences with eps = 1e-6, compared with the layer's own
backward by allclose(analytical, numerical, rtol=1e-3, atol=1e-5). In float32
the step is cbrt(float32's machine epsilon) = 4.9e-3, the usual choice for
central differences at that precision (a float64 step would drown in float32
rounding). derivcheck runs with --strict here: its warnings (side effects,
stale state, dtype) count as catches. It runs
through derivcheck's adapters on the same layers, values and cotangents, at
the layer's dtype (gradcheck itself insists on float64; people run the same
idea in float32 anyway). It checks the backward against the layer's own
forward, so it cannot see a wrong forward, a side effect or an overflow at
extreme inputs. NumPy's global generator is reseeded before every call of the
layer, so what the layer draws itself (dropout's mask) is the same draw in
each difference quotient, as one fixes torch's generator for gradcheck.

It prints, per dtype, how many broken layers each method caught and missed,
and how many correct layers it flagged (false alarms). It also prints the time
of each method, measured in this run, and their ratio.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from derivcheck.check.conventions.base import LayerError  # noqa: E402
from derivcheck.check.conventions.registry import make_adapter  # noqa: E402
from derivcheck.run.config import load_config
from derivcheck.vocab import DTYPES  # noqa: E402
from derivcheck.check.loading import model_convention  # noqa: E402
from derivcheck.engine import reference  # noqa: E402
from derivcheck.check.targets import rule_for, variants_for  # noqa: E402
from derivcheck.check.verify import Verifier  # noqa: E402

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3  # torch.autograd.gradcheck's defaults
# broken layers whose bug is below float32's precision (an error of 1e-12): correct in float32, so not copied there
BELOW_FLOAT32 = {"AffineOffByTiny"}
STEPS = {"float64": EPS, "float32": float(np.cbrt(np.finfo(np.float32).eps))}  # a float32 step that float32 can resolve


def gradcheck(binding, rule, trials=3) -> bool:
    """True when the finite-difference check flags the layer."""
    v = Verifier(binding.target, rule, hyper=binding.hyper, dtype=binding.dtype, seed=binding.seed, trials=trials)
    for k in range(trials):
        dims = v.trial_dims(k)
        rng = np.random.default_rng(binding.seed + k)
        d = reference.at(rule, v.hyper, dims)  # shapes only, and the bound derivcheck just used: no SymPy timed here
        values, _ = v.sample(d, rng)
        cot = v.cotangent(d, rng)
        adapter = make_adapter(binding.target, rule, v.hyper, v.layer_hyper(dims), binding.style)
        if adapter.forward_only:  # a test mode: finite differences check a backward against its forward, and there is none
            return False
        try:
            adapter.build(values)
            np.random.seed(binding.seed + k)  # the same draw in every call: dropout's mask stays put
            analytic = {n: None if g is None else np.array(g, dtype=np.float64, copy=True)
                        for n, g in adapter.run(values, cot).grads.items()}

            def loss(vals):
                adapter.update_params(vals)
                np.random.seed(binding.seed + k)
                out = adapter.run(adapter.held(vals), cot).output
                return float(np.sum(np.asarray(cot, dtype=np.float64) * np.asarray(out, dtype=np.float64)))

            for n in rule.inputs:
                a = analytic.get(n)
                if a is None or a.shape != values[n].shape:
                    return True
                numeric = np.zeros_like(a)
                for idx in np.ndindex(*values[n].shape):
                    plus = {m: np.array(x, copy=True) for m, x in values.items()}
                    minus = {m: np.array(x, copy=True) for m, x in values.items()}
                    step = STEPS[binding.dtype]
                    plus[n][idx] += step
                    minus[n][idx] -= step
                    numeric[idx] = (loss(plus) - loss(minus)) / (2 * step)
                if not np.allclose(a, numeric, rtol=RTOL, atol=ATOL):
                    return True
        except LayerError:
            return True
    return False


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=DTYPES, action="append", help="only this dtype (repeatable; default: both)")
    ap.add_argument("--every", type=int, default=1, metavar="K",
                    help="only every K-th layer of the catalogue, for a quick look (default: all; the README's numbers are all)")
    args = ap.parse_args()
    dtypes = args.dtype or list(DTYPES)
    config = load_config(ROOT / "examples" / "derivcheck.toml")
    bindings = [b for b in config.bindings if not model_convention(b.target)]  # one layer at a time (not networks)
    for b in list(bindings):  # broken layers in the other dtype too, unless the bug is the dtype itself
        if b.expect == "fail" and b.dtype == "float64" and b.target.rpartition(":")[2] not in BELOW_FLOAT32:
            bindings.append(dataclasses.replace(b, dtype="float32", id=b.id.replace("float64", "float32")))
    bindings = [b for b in bindings if b.dtype in dtypes][::args.every]
    rows, times = [], {"derivcheck": 0.0, "finite differences": 0.0}
    for b in bindings:
        rule = rule_for(b.rule, b.target)  # a binding without a rule: guessed, as the gate does
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            verifier = Verifier(b.target, rule, hyper=b.hyper, style=b.style, dtype=b.dtype, seed=b.seed,
                                trials=b.trials, steps=b.steps, strict=True, variants=variants_for(b.rule, rule))
            rule = verifier.rule  # the convention's own form of a guessed rule (mean_squared_error_dezero)
            rep = verifier.run()
            times["derivcheck"] += time.perf_counter() - t
            t = time.perf_counter()
            fd = gradcheck(b, rule)
            times["finite differences"] += time.perf_counter() - t
        rows.append((b, rep.verdict != "pass", fd))
    print(f"{'layer':<58} {'dtype':<8} {'broken':<7} {'derivcheck':<11} finite differences")
    for b, dc, fd in rows:
        broken = b.expect == "fail"
        say = lambda flagged: ("caught" if flagged else "MISSED") if broken else ("FALSE ALARM" if flagged else "ok")  # noqa: E731
        print(f"{b.id:<58} {b.dtype:<8} {'yes' if broken else 'no':<7} {say(dc):<11} {say(fd)}")
    print()
    print(f"{'':<8} | {'derivcheck (--strict)':<42} | finite differences (gradcheck: eps={EPS:g}, float32 {STEPS['float32']:.2g}, atol={ATOL:g}, rtol={RTOL:g})")
    for dtype in dtypes:
        sel = [r for r in rows if r[0].dtype == dtype]
        broken = [r for r in sel if r[0].expect == "fail"]
        good = [r for r in sel if r[0].expect == "pass"]

        def tally(i):
            caught = sum(1 for r in broken if r[i])
            return f"caught {caught}/{len(broken)}, missed {len(broken) - caught}, false alarms {sum(1 for r in good if r[i])}/{len(good)}"

        print(f"{dtype:<8} | {tally(1):<42} | {tally(2)}")
    print()
    print(f"time: derivcheck {times['derivcheck']:.1f} s, finite differences {times['finite differences']:.1f} s, "
          f"ratio {times['derivcheck'] / times['finite differences']:.2f} (derivcheck / finite differences, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
