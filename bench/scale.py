"""How derivcheck scales: real sizes, cold and warm, against finite differences in the same run.

    python bench/scale.py            # a few minutes
    python bench/scale.py --full     # finite differences over every element (the affine alone takes minutes)

Sections, each measured in this run on this machine:

1. `derivcheck verify` of correct reference layers at the rule's small sizes
   and at the seed notes' sizes, as a user runs it (the command, a new process
   each): cold (empty cache folder) and warm (the same folder again), wall
   seconds, CPU seconds of every process it starts, and peak memory, with the
   targets for a warm run. The interpreter's own start-up with derivcheck's
   imports is printed beside it.
2. The same layers and shapes checked by finite differences as the books
   write them (book 1's `numerical_gradient` loop over the layer's own arrays:
   every input element, two forwards each), by a one-point check (one random
   direction: two forwards and a backward), and, where installed, by
   `torch.autograd.gradcheck` of the NumPy layer wrapped in an
   `autograd.Function`; each beside derivcheck's warm verify (in-process,
   without the interpreter's start-up), the ratios put the larger over the
   smaller. Without --full the finite differences are timed on a random sample
   of elements and scaled to all of them; the line says so.
3. One trial's cost with the derivation in memory (exact reference, error
   bound and comparison) over one forward+backward of the layer itself.
4. How that cost grows with the size, next to the element-by-element
   derivation it replaced (at the sizes where that finishes in seconds).
5. Small-shape `verify` (default trials) of one reference layer per catalog
   rule, warm, in a new process each, without the interpreter's start-up.
6. A recurrence (book 2's TimeLSTM) over more and more steps: one trial of
   the stepped reference against the layer, how loose its worst-case bound
   gets, the unrolled derivation it replaced (where that finishes), and
   verify against finite differences in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cputime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from derivcheck.engine import reference  # noqa: E402
from derivcheck.check.conventions.registry import make_adapter  # noqa: E402
from derivcheck.checks import compare  # noqa: E402
from derivcheck.run.config import load_config  # noqa: E402
from derivcheck.check.loading import model_convention  # noqa: E402
from derivcheck.engine.rules import load_rule  # noqa: E402
from derivcheck.check.verify import Verifier  # noqa: E402

LAYERS = [  # (target, rule, sizes): the seed's MNIST network's layers
    ("examples/dlfs2/layers.py:Affine", "affine", {"N": 100, "D": 784, "H": 50}),
    ("examples/dlfs2/layers.py:SoftmaxWithLoss", "softmax_with_loss", {"N": 100, "C": 10}),
    ("examples/dlfs2/layers.py:Sigmoid", "sigmoid", {"N": 100, "D": 50}),
]
EPS = 1e-6
SAMPLE = 3000  # finite-difference elements timed without --full

PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")


def shape_arg(dims: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in dims.items())


def run_command(args: list[str], cache: str) -> dict:
    """``derivcheck ARGS`` as a user runs it (the command, which forks each check's processes from itself):
    wall and CPU seconds of every process it starts (cputime.py), the largest one's peak memory, the verdict.
    The peak is read by a small wrapper process (``python -I -S``), whose own start is in the CPU figure."""
    env = {**os.environ, "DERIVCHECK_CACHE_DIR": cache}
    wall, cpu, p = cputime.timed([sys.executable, "-I", "-S", "-c", PEAK, sys.executable, "-m", "derivcheck", *args],
                                 env=env, cwd=ROOT)
    if p.returncode not in (0, 1):
        raise SystemExit(f"derivcheck {' '.join(args)}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    peak_mb = int(p.stderr.strip().splitlines()[-1]) / 1024
    return {"wall": wall, "cpu": cpu, "peak_mb": peak_mb, "verdict": "PASS" if p.returncode == 0 else "FAIL"}


def startup() -> tuple[float, float]:
    """(wall, CPU) of an interpreter that imports what the command imports before it checks anything."""
    wall, cpu, _ = cputime.timed([sys.executable, "-c", "import derivcheck.run.cli, derivcheck.check.verify, derivcheck.check.network, numpy"],
                                 cwd=ROOT)
    return wall, cpu


REPS = 3  # section 1 keeps the fastest of this many runs: the machine is shared
SMALL_LAYER = ("examples/dlfs1/layers.py:Affine", "affine", {})  # the rule's own small sizes
TARGET_SMALL_CPU, TARGET_MNIST_CPU = 0.4, 0.6  # issue #38's targets for a warm verify, CPU seconds (set by hand)


def section_cli(reps: int = REPS):
    print(f"1. derivcheck verify as a user runs it: the rule's small sizes, then the seed's MNIST sizes "
          f"(a new command each; fastest of {reps}; {cputime.HOW})")
    wall, cpu = min(startup() for _ in range(reps))
    print(f"   interpreter start-up with derivcheck's imports: {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"   {'layer':<44} {'sizes':<20} {'cold s':>7} {'warm s':>7} {'warm CPU s':>10} {'peak MB':>8}  verdict    target (warm CPU)")
    for target, rule, dims in [SMALL_LAYER, *LAYERS]:
        args = ["verify", target, "--rule", rule] + (["--shape", shape_arg(dims)] if dims else [])
        colds, warms = [], []
        for _ in range(reps):
            with tempfile.TemporaryDirectory() as cache:
                colds.append(run_command(args, cache))
                warms.append(run_command(args, cache))
        cold, warm = min(colds, key=lambda r: r["wall"]), min(warms, key=lambda r: r["cpu"])
        peak = max(r["peak_mb"] for r in colds + warms)
        goal, sizes = TARGET_MNIST_CPU if dims else TARGET_SMALL_CPU, shape_arg(dims) or "(the rule's)"
        print(f"   {target:<44} {sizes:<20} {cold['wall']:7.2f} {warm['wall']:7.2f} "
              f"{warm['cpu']:10.2f} {peak:8.0f}  {cold['verdict']}/{warm['verdict']}  under {goal} s: "
              f"{'met' if warm['cpu'] < goal else 'NOT met'}")


def setup(target, rule, dims):
    """(rule, reference, layer values, reference values, cotangent, built adapter) for one layer at ``dims``."""
    r = load_rule(rule)
    v = Verifier(target, r, shape=dims, trials=1)
    d = reference.at(r, v.hyper, dims)
    rng = np.random.default_rng(0)
    values, ref = v.sample(d, rng)
    cot = v.cotangent(d, rng)
    adapter = make_adapter(target, r, v.hyper, v.layer_hyper(dims), None)
    adapter.build(values)
    return r, d, values, ref, cot, adapter


class BookProblem:
    """A book 2 layer (params/grads lists) built by derivcheck's adapter at one size, then used as the books
    use it: ``loss()`` is ``Σ dout · layer.forward(...)`` on the layer's own arrays (its input and its
    ``params``, which finite differences change in place, as book 1's ``numerical_gradient`` changes
    ``net.params``), and ``gradients(dout)`` one forward and the layer's own backward (of ``dout``, by default
    the trial's cotangent)."""

    def __init__(self, target, rule, dims):
        r, _, values, _, self.cot, adapter = setup(target, rule, dims)
        self.layer = adapter.instance
        held = adapter.held(values)
        self.args = [held[n] for n in r.inputs if n not in adapter.slots] + [held[n] for n in r.labels]
        self.arrays = {n: held[n] for n in r.inputs}  # the params are the layer's own arrays
        self.first = next(n for n in r.inputs if n not in adapter.slots)
        self.slots = adapter.slots

    def loss(self) -> float:
        return float(np.sum(self.cot * self.layer.forward(*self.args)))

    def gradients(self, dout=None) -> dict:
        self.layer.forward(*self.args)
        dx = self.layer.backward(self.cot if dout is None else dout)
        return {self.first: dx, **{n: self.layer.grads[i] for n, i in self.slots.items()}}


H = 1e-4  # book 1's numerical_gradient step


def book_fd_seconds(problem: BookProblem, full: bool, rng) -> tuple[float, str]:
    """Book 1's ``numerical_gradient`` loop (ch04: two forwards per element, the element changed in place and
    put back), over every element of every input, or over a timed random sample of them, scaled."""
    elements = [(n, idx) for n, a in problem.arrays.items() for idx in np.ndindex(*a.shape)]
    chosen = elements if full or len(elements) <= SAMPLE else [elements[i] for i in rng.choice(len(elements), SAMPLE, replace=False)]
    t = time.perf_counter()
    for n, idx in chosen:
        x = problem.arrays[n]
        tmp = x[idx]
        x[idx] = tmp + H
        fxh1 = problem.loss()
        x[idx] = tmp - H
        fxh2 = problem.loss()
        (fxh1 - fxh2) / (2 * H)
        x[idx] = tmp
    seconds = (time.perf_counter() - t) * len(elements) / len(chosen)
    how = "all elements" if len(chosen) == len(elements) else f"scaled from {len(chosen)} of {len(elements)} elements"
    return seconds, how


def one_point_seconds(problem: BookProblem, rng, reps: int = 5) -> float:
    """A one-point check (a random projection, what torch's fast_mode and JAX's check_grads do): the loss's
    central difference along one random direction of all inputs against the backward's gradients dotted with
    it: two forwards and one forward+backward. The fastest of ``reps``."""
    direction = {n: rng.normal(size=a.shape) for n, a in problem.arrays.items()}
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        for n, v in direction.items():
            problem.arrays[n] += EPS * v
        plus = problem.loss()
        for n, v in direction.items():
            problem.arrays[n] -= 2 * EPS * v
        minus = problem.loss()
        for n, v in direction.items():
            problem.arrays[n] += EPS * v
        grads = problem.gradients()
        (plus - minus) / (2 * EPS), sum(float(np.vdot(grads[n], v)) for n, v in direction.items())
        best = min(best, time.perf_counter() - t)
    return best


DENSE_LIMIT = 50_000_000  # Jacobian entries: torch's default (dense) gradcheck past this needs more memory than we have


def torch_gradcheck_seconds(problem: BookProblem) -> tuple[float, str] | None:
    """torch.autograd.gradcheck on the NumPy layer itself, wrapped in a ``torch.autograd.Function`` (forward
    and backward are the layer's); its fast mode (a one-point check) where the dense one cannot fit."""
    try:
        import torch
        import torchnumpy
    except ImportError:
        return None
    layer, args = torchnumpy.function(problem.arrays, lambda: problem.layer.forward(*problem.args), problem.gradients)
    out_size = int(np.size(problem.layer.forward(*problem.args)))
    entries = out_size * sum(a.numel() for a in args)
    fast = entries > DENSE_LIMIT
    t0 = time.perf_counter()
    assert torch.autograd.gradcheck(layer, args, fast_mode=fast)
    return time.perf_counter() - t0, ("fast_mode (dense Jacobian: %.1e entries)" % entries) if fast else "default mode"


def verify_seconds(target, rule, dims) -> float:
    """derivcheck verify in this process, derivation cached (what a warm run costs past start-up)."""
    r = load_rule(rule)
    Verifier(target, r, shape=dims).run()  # warm the derivation
    t = time.perf_counter()
    rep = Verifier(target, r, shape=dims).run()
    assert rep.verdict == "pass", rep.verdict
    return time.perf_counter() - t


def section_fd(full: bool):
    print("\n2. the same layers and sizes by finite differences: book 1's numerical_gradient loop, a one-point check, torch")
    print(f"   {'layer':<44} {'derivcheck s':>12} {'book FD s':>10} {'FD/dc':>7} {'1-point s':>10} {'dc/1-point':>10} "
          f"{'torch s':>8} {'torch/dc':>9}  how")
    for target, rule, dims in LAYERS:
        dc = verify_seconds(target, rule, dims)
        rng = np.random.default_rng(1)
        fd, how = book_fd_seconds(BookProblem(target, rule, dims), full, rng)
        one = one_point_seconds(BookProblem(target, rule, dims), rng)
        tg = torch_gradcheck_seconds(BookProblem(target, rule, dims))
        torch_cols = f"{tg[0]:8.2f} {tg[0] / dc:9.2f}" if tg is not None else f"{'n/a':>8} {'n/a':>9}"
        print(f"   {target:<44} {dc:12.3f} {fd:10.2f} {fd / dc:7.0f} {one:10.5f} {dc / one:10.0f} {torch_cols}  "
              f"book FD {how}; torch {tg[1] if tg else 'not installed'}")
    print("   derivcheck: a whole verify in this process (5 trials x 2 steps, stale-state and extreme-input probes), warm;")
    print("   book FD: a difference quotient of Σ dout·out for every element (the VJP at one cotangent); 1-point: one random")
    print("   direction (catches a wrong gradient with high probability, says nothing of where); torch: gradcheck of the")
    print("   NumPy layer through an autograd.Function")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("   torch is not installed here: its column is n/a (pip install torch, then run again)")


def trial_cost(rule, dims, reps=5) -> tuple[float, float]:
    """(seconds of one trial's reference + bound + comparison, seconds of the layer's forward+backward)."""
    target = {"affine": "examples/dlfs2/layers.py:Affine", "softmax_with_loss": "examples/dlfs2/layers.py:SoftmaxWithLoss",
              "sigmoid": "examples/dlfs2/layers.py:Sigmoid", "time_lstm": RECURRENT}[rule]
    _, d, values, ref, cot, adapter = setup(target, rule, dims)

    def layer():
        return adapter.run(values, cot)

    def check():
        out, grads, scales = d.evaluate(cot, **ref)
        compare("forward", out, out, scales["forward"], np.float64)
        for n in grads:
            compare(n, grads[n], grads[n], scales[n], np.float64)

    result = []
    for fn in (check, layer):
        fn()
        best = np.inf
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        result.append(best)
    return result[0], result[1]


def section_trial():
    print("\n3. one trial with the derivation in memory: exact reference + error bound + comparison, over one forward+backward")
    print(f"   {'rule':<20} {'sizes':<20} {'trial ms':>9} {'layer ms':>9} {'ratio':>6}")
    for _, rule, dims in LAYERS:
        check, layer = trial_cost(rule, dims)
        print(f"   {rule:<20} {shape_arg(dims):<20} {check * 1e3:9.2f} {layer * 1e3:9.3f} {check / layer:6.1f}")


def concrete_seconds(rule, dims) -> float:
    from derivcheck.engine import derive

    r = load_rule(rule)
    derive._MEMORY.clear()
    old = os.environ.get("DERIVCHECK_CACHE")
    os.environ["DERIVCHECK_CACHE"] = "0"
    try:
        t = time.perf_counter()
        r.at(**dims)
        return time.perf_counter() - t
    finally:
        os.environ.pop("DERIVCHECK_CACHE") if old is None else os.environ.__setitem__("DERIVCHECK_CACHE", old)


def section_growth():
    print("\n4. growth: one trial's cost against the layer's own; the element-by-element derivation it replaced")
    print(f"   {'rule':<20} {'sizes':<24} {'trial ms':>9} {'layer ms':>9} {'ratio':>6} {'element-by-element derivation s':>33}")
    plans = [("affine", {"N": n, "D": n, "H": n}) for n in (2, 4, 8, 16, 32, 64, 128)]
    plans += [("softmax_with_loss", {"N": n, "C": 10}) for n in (2, 10, 100, 1000)]
    for rule, dims in plans:
        check, layer = trial_cost(rule, dims)
        small = int(np.prod(list(dims.values()))) <= 512
        conc = f"{concrete_seconds(rule, dims):33.2f}" if small else f"{'(not run: grows as |x|·|out|)':>33}"
        print(f"   {rule:<20} {shape_arg(dims):<24} {check * 1e3:9.2f} {layer * 1e3:9.3f} {check / layer:6.1f} {conc}")


RECURRENT = "examples/dlfs2/layers.py:TimeLSTM"


def stepped_cold_seconds(rule) -> float:
    """A loop rule's stepped reference from nothing: its cells derived and proven, the steps proven."""
    r = load_rule(rule)
    old = os.environ.get("DERIVCHECK_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DERIVCHECK_CACHE_DIR"] = cache
        reference.forget()
        try:
            t = time.perf_counter()
            reference.stepped_for(r, r.resolve_hyper())
            return time.perf_counter() - t
        finally:
            os.environ.pop("DERIVCHECK_CACHE_DIR") if old is None else os.environ.__setitem__("DERIVCHECK_CACHE_DIR", old)


def section_recurrence():
    from derivcheck.checks import reach

    print("\n6. a recurrence (book 2's TimeLSTM): the loop's cells run over the steps, the loop unrolled element by element, "
          "and finite differences")
    print(f"   stepped reference from nothing (cells derived and proven, the steps proven at T=2): "
          f"{stepped_cold_seconds('time_lstm'):.1f} s")
    print(f"   {'sizes':<22} {'trial ms':>9} {'layer ms':>9} {'ratio':>6} {'tol/max grad xs':>16} {'unrolled derivation s':>22} "
          f"{'verify s':>9} {'book FD s':>10} {'FD/verify':>10}")
    plans = [{"N": 2, "T": t, "D": 4, "H": 5} for t in (1, 2, 3)] + [{"N": 8, "T": t, "D": 16, "H": 32} for t in (5, 10, 20)]
    for dims in plans:
        check, layer = trial_cost("time_lstm", dims)
        _, d, _, ref, cot, _ = setup(RECURRENT, "time_lstm", dims)
        _, grads, scales = d.evaluate(cot, **ref)
        loose = reach(grads["xs"], scales["xs"], np.float64)
        unrolled = f"{concrete_seconds('time_lstm', dims):22.2f}" if dims["T"] <= 3 else f"{'(not run)':>22}"
        dc = verify_seconds(RECURRENT, "time_lstm", dims)
        fd, _ = book_fd_seconds(BookProblem(RECURRENT, "time_lstm", dims), False, np.random.default_rng(1))
        print(f"   {shape_arg(dims):<22} {check * 1e3:9.2f} {layer * 1e3:9.3f} {check / layer:6.1f} {loose:16.1e} {unrolled} "
              f"{dc:9.2f} {fd:10.2f} {fd / dc:10.1f}")
    print("   tol/max grad xs: the largest float64 tolerance of dxs over its largest value; above 1e-2 the report notes it "
          "(a worst-case bound, multiplied at every step)")


SMALL = r"""
import json, sys, time
from derivcheck.engine.rules import load_rule
from derivcheck.check.verify import Verifier
rule = load_rule(sys.argv[2])
hyper = json.loads(sys.argv[3])
Verifier(sys.argv[1], rule, hyper=hyper).run() if sys.argv[4] == "cold" else None
t = time.perf_counter()
rep = Verifier(sys.argv[1], rule, hyper=hyper).run()
print(json.dumps({"seconds": time.perf_counter() - t, "verdict": rep.verdict}))
"""


def resolved_rule(binding) -> str:
    """The rule a catalogue binding is checked against: its own, or the one its name implies in its convention."""
    from derivcheck.check.conventions.registry import detect_style
    from derivcheck.check.loading import load_target
    from derivcheck.check.targets import rule_for, variants_for

    rule = rule_for(binding.rule, binding.target)
    variants = variants_for(binding.rule, rule)
    style = binding.style or (detect_style(*load_target(binding.target)) if variants else None)
    return Path(variants[style]).stem if style in variants else rule.name


def section_small():
    print("\n5. small-shape verify (default trials) per catalog rule, warm, new process each, start-up excluded")
    config = load_config(ROOT / "examples" / "derivcheck.toml")
    seen, worst = set(), 0.0
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "DERIVCHECK_CACHE_DIR": cache}
        print(f"   {'rule':<20} {'layer':<48} {'seconds':>8}")
        for b in config.bindings:
            if b.expect != "pass" or b.dtype != "float64" or model_convention(b.target):  # layers, not networks
                continue
            rule = resolved_rule(b)  # a binding without a rule: guessed from its name, as the gate does
            if rule in seen:
                continue
            seen.add(rule)
            path, _, name = b.target.rpartition(":")
            target = f"{(ROOT / 'examples' / path) if not Path(path).is_absolute() else path}:{name}"
            for phase in ("cold", "warm"):
                p = subprocess.run([sys.executable, "-c", SMALL, target, rule, json.dumps(b.hyper), phase],
                                   capture_output=True, text=True, env=env, cwd=ROOT, check=True)
            info = json.loads(p.stdout.strip().splitlines()[-1])
            worst = max(worst, info["seconds"])
            print(f"   {rule:<20} {os.path.relpath(target.rpartition(':')[0], ROOT) + ':' + name:<48} {info['seconds']:8.3f}  {info['verdict']}")
    print(f"   slowest: {worst:.3f} s over {len(seen)} rules")


LARGE = ("examples/dlfs2/layers.py:SoftmaxWithLoss", "softmax_with_loss", {"N": 10000, "C": 1000})
TARGET_LARGE_WALL = 30  # issue #38's target, wall seconds with the default settings (set by hand)


def section_large(dims: dict | None = None):
    target, rule, default = LARGE
    dims = dims or default
    print(f"\n7. a large layer with the default settings (5 trials x 2 steps, stale-state and extreme-input probes), "
          f"as a user runs it: {rule} at {shape_arg(dims)}, warm cache; {cputime.HOW}")
    with tempfile.TemporaryDirectory() as cache:
        run_command(["verify", target, "--rule", rule], cache)  # derives and stores the rule (small sizes)
        r = run_command(["verify", target, "--rule", rule, "--shape", shape_arg(dims), "--timeout", "600"], cache)
    check, layer = trial_cost(rule, dims, reps=1)
    print(f"   {'wall s':>7} {'CPU s':>7} {'peak MB':>8}  verdict  {'trial s':>8} {'layer s':>8} {'trial/layer':>11}")
    print(f"   {r['wall']:7.1f} {r['cpu']:7.1f} {r['peak_mb']:8.0f}  {r['verdict']:<7}  {check:8.3f} {layer:8.4f} "
          f"{check / layer:11.1f}")
    print("   trial: reference + bound + comparison, in this process, over the layer's own forward+backward (as section 3)")
    if dims == default:
        print(f"   target: under {TARGET_LARGE_WALL} s wall: {'met' if r['wall'] < TARGET_LARGE_WALL else 'NOT met'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="finite differences over every element (slow)")
    ap.add_argument("--only", type=int, action="append", help="run only these sections (1-7)")
    ap.add_argument("--reps", type=int, default=REPS, help=f"section 1: runs of each command, the fastest kept (default {REPS})")
    ap.add_argument("--large-shape", default=None, help="section 7: sizes other than N=10000,C=1000 (N=..,C=..)")
    args = ap.parse_args()
    large = dict((k, int(v)) for k, v in (kv.split("=") for kv in args.large_shape.split(","))) if args.large_shape else None
    sections = {1: lambda: section_cli(args.reps), 2: lambda: section_fd(args.full), 3: section_trial, 4: section_growth, 5: section_small,
                6: section_recurrence, 7: lambda: section_large(large)}
    for k, fn in sections.items():
        if not args.only or k in args.only:
            fn()
    return 0


if __name__ == "__main__":
    sys.exit(main())
