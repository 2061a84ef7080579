"""Whole-network check at the seed's MNIST sizes: derivcheck beside finite differences of the whole network.

    python bench/network.py [--full]

Book 1's TwoLayerNet(784, 50, 10) (examples/networks/dlfs1_net.py) at batch 100:
- derivcheck verify, one trial (a worker process; warm: the derivations cached);
- the book's own check: numerical_gradient(x, t), a central difference with
  h = 1e-4 for each of the 39,760 parameters (two forwards each), written here
  as the book writes it (an element-by-element loop); timed on the first
  --sample parameters of each array and scaled, or all of them with --full;
- torch.autograd.gradcheck of the same NumPy network in float64, if torch is
  installed: its loss and its hand-written backward (``net.gradient``) wrapped
  in an ``autograd.Function``, in fast_mode (one random direction: a one-point
  check; the default mode would difference all 39,760 parameters, as the book does).
All three in one run, with the ratios to derivcheck printed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "examples" / "networks" / "dlfs1_net.py"
SIZES = dict(input_size=784, hidden_size=50, output_size=10, N=100)


def derivcheck_seconds(env) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "derivcheck", "verify", f"{TARGET}:TwoLayerNet", "--trials", "1",
           "--shape", ",".join(f"{k}={v}" for k, v in SIZES.items())]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    verdict = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()[-200:]
    return seconds, verdict


def _startup_seconds() -> float:
    """Wall seconds of an interpreter importing what the command imports before it checks (one BLAS thread, as
    derivcheck/__main__.py asks)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import derivcheck.run.cli, derivcheck.check.verify, derivcheck.check.network, numpy"],
                   check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return time.perf_counter() - t


def book_numerical_gradient(f, x, limit=None):
    """Book 1's numerical_gradient: a central difference per element, h = 1e-4 (its common/gradient.py)."""
    h = 1e-4
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    done = 0
    while not it.finished and (limit is None or done < limit):
        idx = it.multi_index
        keep = x[idx]
        x[idx] = keep + h
        fxh1 = f(x)
        x[idx] = keep - h
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = keep
        it.iternext()
        done += 1
    return grad, done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="time the book's check on every parameter (minutes)")
    ap.add_argument("--sample", type=int, default=2000, help="parameters per array timed by the book's check (default 2000)")
    ap.add_argument("--warm", type=int, default=3, help="warm derivcheck runs, the fastest reported (default 3)")
    args = ap.parse_args()
    sys.path.insert(0, str(TARGET.parent))
    from dlfs1_net import TwoLayerNet

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DERIVCHECK_CACHE_DIR": str(Path(tmp) / "cache")}
        cold, verdict = derivcheck_seconds(env)
        warm = min(derivcheck_seconds(env)[0] for _ in range(max(args.warm, 1)))
    startup = min(_startup_seconds() for _ in range(3))

    np.random.seed(0)
    net = TwoLayerNet(784, 50, 10)
    x = np.random.randn(100, 784)
    t_labels = np.eye(10)[np.random.randint(0, 10, 100)]
    total_params = sum(p.size for p in net.params.values())
    t = time.perf_counter()
    done = 0
    for key in ("W1", "b1", "W2", "b2"):
        _, n = book_numerical_gradient(lambda W: net.loss(x, t_labels), net.params[key], None if args.full else args.sample)
        done += n
    fd = (time.perf_counter() - t) * total_params / done
    how = "all parameters" if done == total_params else f"scaled from {done} of {total_params} parameters"

    torch_s, torch_how = None, "torch not installed"
    try:
        import torch
        import torchnumpy

        torch_how = "torch.autograd.gradcheck of the NumPy network, float64, fast_mode"
        params = {k: net.params[k] for k in ("W1", "b1", "W2", "b2")}  # forward its loss, backward its own net.gradient
        loss, ps = torchnumpy.function(params, lambda: net.loss(x, t_labels),
                                       lambda gout: {k: g * gout for k, g in net.gradient(x, t_labels).items()})
        t = time.perf_counter()
        ok = torch.autograd.gradcheck(loss, ps, fast_mode=True)
        torch_s = time.perf_counter() - t
        torch_how += "" if ok else " (reported a mismatch)"
    except ImportError:
        pass

    print(f"book 1 TwoLayerNet(784, 50, 10), batch 100: {total_params} parameters")
    print(f"  derivcheck verify, 1 trial x 2 steps:  cold {cold:.2f} s, warm {warm:.2f} s (of which {startup:.2f} s "
          f"is the interpreter starting with derivcheck's imports)   {verdict}")
    print(f"  the book's numerical_gradient:          {fd:.1f} s ({how})   ratio to derivcheck warm: {fd / warm:.0f}x")
    if torch_s is not None:
        print(f"  {torch_how}: {torch_s:.2f} s   ratio to derivcheck warm: {torch_s / warm:.1f}x "
              f"(a one-point check: one random direction)")
    else:
        print(f"  {torch_how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
