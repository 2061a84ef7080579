"""A small seed sweep (bench/seeds.py at 20 trials): correct layers of the kinds that have FAILed at some seeds.

Losses (a gradient small by cancellation, a backward(dout=1) that ignores dout, log(y + 1e-7)),
layers with exact-zero gradients (ReLU's mask), size-1 batches (every third trial), and the
books' two-layer nets with their loss as published. The whole sweep (every correct example, 200
trials, both dtypes) is `python bench/seeds.py`.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import seeds  # noqa: E402

PRONE = re.compile(r"Loss|loss|[Rr]elu|networks/")


def prone(dtype):
    bindings, cfg = seeds.correct_examples(dtypes=(dtype,))
    return [b for b in bindings if PRONE.search(b.target.rpartition("examples/")[2])], cfg


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_no_false_alarm_at_20_seeds(dtype):
    bindings, cfg = prone(dtype)
    names = {b.target.rpartition(":")[2] for b in bindings}
    assert {"SoftmaxWithLoss", "Relu", "relu", "softmax_loss", "TwoLayerNet"} <= names, names
    results, _ = seeds.sweep(bindings, cfg, trials=20, seed=1000, jobs=1)
    alarms = [(r.binding.target, r.error or seeds.gate.first_failure(r.report), r.report and r.report.reproduce)
              for r in results if r.report is None or r.report.verdict != "pass"]
    assert alarms == []


def test_the_bench_prints_its_count():
    out = subprocess.run([sys.executable, str(BENCH / "seeds.py"), "--trials", "2", "--only", "dlfs1/layers.py:Affine",
                          "--dtype", "float64"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^seeds: 1 dtype\(s\) x 1 examples x 2 trials from seed 1000: false alarms 0/1 in [\d.]+ s$",
                     out.stdout, re.M), out.stdout
