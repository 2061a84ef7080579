"""Failures are reported, never swallowed: the stale-state, stability and kink probes, a broken dezero."""
import os
import re
import subprocess
import sys

import derivcheck
from derivcheck.check.verify import verify

LAYERS = '''
import numpy as np

class OneForwardOnly:                 # right, but refuses a second forward before backward
    def forward(self, x):
        if getattr(self, "pending", False):
            raise RuntimeError("forward twice")
        self.pending = True
        self.out = np.exp(x)
        return self.out
    def backward(self, dout):
        self.pending = False
        return dout * self.out

class QueuedInput:                   # right when forward and backward alternate; after two forwards, uses the first
    def __init__(self):
        self.queue = []
    def forward(self, x):
        self.queue.append(x)
        return np.exp(x)
    def backward(self, dout):
        x = self.queue[0]
        self.queue.clear()
        return dout * np.exp(x)

class RepeatsLost:                    # wrong only where an id repeats: the probe's values, not the trials' own
    def __init__(self, W):
        self.params, self.grads = [W], [np.zeros_like(W)]
    def forward(self, idx):
        self.idx = idx
        return self.params[0][idx]
    def backward(self, dout):
        self.grads[0][...] = 0
        self.grads[0][self.idx] = dout
        return None

class ShapeAtExtremes:                # right at ordinary inputs, flattens its result at extreme ones
    def forward(self, x):
        self.out = 1 / (1 + np.exp(-x))
        return self.out.ravel() if np.abs(x).max() > 100 else self.out
    def backward(self, dout):
        return dout * self.out * (1 - self.out)

class ReluNoneAtKink:                 # gives no gradient when an input sits on the kink
    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)
    def backward(self, dout):
        if np.any(self.x == 0):
            return None
        return np.where(self.x > 0, dout, 0.0)
'''


def test_a_layer_that_cannot_take_two_forwards_in_a_row_is_reported(tmp_path):
    (tmp_path / "l.py").write_text(LAYERS)
    rep = verify(f"{tmp_path}/l.py:OneForwardOnly", derivcheck.load_rule("exp"), style="dlfs1", trials=3)
    assert rep.verdict == "pass"
    assert [(w.kind, w.trial) for w in rep.warnings] == [("stale-state", 0)], rep.warnings
    assert rep.warnings[0].message.startswith("forward called twice in a row, then backward: OneForwardOnly.forward "
                                              "raised RuntimeError at ") and rep.warnings[0].message.endswith("forward twice")


def test_a_misshapen_result_at_extreme_inputs_fails_stability(tmp_path):
    (tmp_path / "l.py").write_text(LAYERS)
    rep = verify(f"{tmp_path}/l.py:ShapeAtExtremes", derivcheck.load_rule("sigmoid"), style="dlfs1", trials=3, strict=True)
    stability = next(c for c in rep.checks if c.name == "stability")
    assert not stability.passed and "at extreme inputs is shape" in stability.message, stability
    lenient = verify(f"{tmp_path}/l.py:ShapeAtExtremes", derivcheck.load_rule("sigmoid"), style="dlfs1", trials=3)
    assert lenient.verdict == "pass" and any(
        w.kind == "numerical-stability" and "at extreme inputs is shape" in w.message for w in lenient.warnings)


def test_a_missing_gradient_at_a_kink_is_noted(tmp_path):
    (tmp_path / "l.py").write_text(LAYERS)
    rep = verify(f"{tmp_path}/l.py:ReluNoneAtKink", derivcheck.load_rule("relu"), style="dlfs1", trials=3, kinks=True)
    assert any("the layer gave no gradient" in n for n in rep.notes), rep.notes


def test_a_broken_dezero_install_is_named(tmp_path):
    (tmp_path / "dezero").mkdir()
    (tmp_path / "dezero" / "__init__.py").write_text("raise ImportError('this dezero is broken')\n")
    (tmp_path / "funcs.py").write_text(
        "import numpy as np\nclass Function:\n    def __call__(self, *xs):\n        return self.forward(*xs)\n"
        "class Exp(Function):\n    def forward(self, x):\n        return np.exp(x)\n    def backward(self, gy):\n        return gy\n")
    p = subprocess.run([sys.executable, "-m", "derivcheck", "verify", f"{tmp_path}/funcs.py:Exp", "--rule", "exp",
                        "--style", "dezero"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert p.returncode == 2 and "importing the dezero package failed" in p.stderr and "this dezero is broken" in p.stderr, p.stderr


def test_the_stale_state_probe_names_a_layer_that_keeps_an_earlier_call(tmp_path):
    (tmp_path / "l.py").write_text(LAYERS)
    rep = verify(f"{tmp_path}/l.py:QueuedInput", derivcheck.load_rule("exp"), style="dlfs1", trials=2)
    assert rep.verdict == "pass" and [w.kind for w in rep.warnings] == ["stale-state"], rep.warnings


def test_a_gradient_wrong_at_the_probes_values_is_not_called_stale(tmp_path):
    (tmp_path / "l.py").write_text(LAYERS)
    rep = verify(f"{tmp_path}/l.py:RepeatsLost", derivcheck.load_rule("embedding"), style="dlfs2")
    assert rep.verdict == "fail" and not any(w.kind == "stale-state" for w in rep.warnings), rep.warnings


LOSSES = '''
import numpy as np


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class QueuedSoftmaxWithLoss:          # a loss that, after two forwards, backpropagates the first
    def __init__(self):
        self.queue = []

    def forward(self, x, t):
        self.queue.append((softmax(x), t))
        y = self.queue[-1][0]
        return -np.log(y[np.arange(len(t)), t]).mean()

    def backward(self, dout=1):
        y, t = self.queue[0]
        self.queue.clear()
        dx = y.copy()
        dx[np.arange(len(t)), t] -= 1
        return dx * dout / len(t)


class QueuedFinalLoss(QueuedSoftmaxWithLoss):   # the same, and book 1's backward(dout=1) that ignores dout
    def backward(self, dout=1):
        return super().backward(1)


class CrossEntropyEps:                # log(y + 1e-7), and a backward that is its exact gradient
    def forward(self, y, t):
        self.y, self.t = y, t
        return -np.log(y[np.arange(len(t)), t] + 1e-7).mean()

    def backward(self, dout=1):
        dy = np.zeros_like(self.y)
        n = np.arange(len(self.t))
        dy[n, self.t] = -1 / ((self.y[n, self.t] + 1e-7) * len(self.t))
        return dy * dout


class Sigmoid32:                      # computes in float32 whatever it is given (book 2's dtype='f' buffers)
    def forward(self, x):
        self.out = (1 / (1 + np.exp(-x))).astype(np.float32)
        return self.out

    def backward(self, dout):
        return (dout * self.out * (1 - self.out)).astype(np.float32)


class AffineNoDb:                     # never sets db
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        return dout @ self.W.T


class SoftmaxWithLossEps:             # the books' log(y + 1e-7); a right backward
    def forward(self, x, t):
        self.y, self.t = softmax(x), t
        return -np.log(self.y[np.arange(len(t)), t] + 1e-7).mean()

    def backward(self, dout=1):
        dx = self.y.copy()
        dx[np.arange(len(self.t)), self.t] -= 1
        return dx * dout / len(self.t)
'''

STALE = ("after two forward calls, backward's gradient of 'x' does not belong to the latest call "
         "(state kept from an earlier call)")


def test_the_stale_state_probe_holds_a_loss_to_the_dout_it_was_given(tmp_path):
    (tmp_path / "losses.py").write_text(LOSSES)
    rule = derivcheck.load_rule("softmax_with_loss")
    rep = verify(f"{tmp_path}/losses.py:QueuedSoftmaxWithLoss", rule, style="dlfs1", trials=2, steps=1)
    assert rep.verdict == "pass" and [(w.kind, w.message, w.trial) for w in rep.warnings] == [("stale-state", STALE, 0)]


def test_the_stale_state_probe_holds_a_final_loss_to_dout_1(tmp_path):
    (tmp_path / "losses.py").write_text(LOSSES)
    rule = derivcheck.load_rule("softmax_with_loss")
    rep = verify(f"{tmp_path}/losses.py:QueuedFinalLoss", rule, style="dlfs1", trials=2, steps=1)
    assert rep.verdict == "pass" and [w.kind for w in rep.warnings] == ["upstream-ignored", "stale-state"], rep.warnings


def test_the_stale_state_probe_accepts_the_rules_also_values(tmp_path):
    """log(y + 1e-7) matches the rule's eps = 1e-7: neither a failure nor stale state."""
    (tmp_path / "losses.py").write_text(LOSSES)
    rep = verify(f"{tmp_path}/losses.py:SoftmaxWithLossEps", derivcheck.load_rule("softmax_with_loss"), style="dlfs1")
    assert rep.verdict == "pass" and rep.warnings == [], rep.warnings
    (note,) = [n for n in rep.notes if "eps = 1e-07" in n]
    assert re.fullmatch(r"forward is the rule's with eps = 1e-07 \(the default is eps = 0\.0\); the two differ by "
                        r"up to \d(\.\d)?e-0[78] here", note), note


def test_a_gradient_that_is_the_rules_at_an_also_value_passes_with_a_note(tmp_path):
    (tmp_path / "losses.py").write_text(LOSSES)
    rep = verify(f"{tmp_path}/losses.py:CrossEntropyEps", derivcheck.load_rule("cross_entropy"), style="dlfs1")
    assert rep.verdict == "pass" and rep.warnings == [], ([(c.name, c.message) for c in rep.checks], rep.warnings)
    notes = [n for n in rep.notes if "eps = 1e-07" in n]
    assert [n.split(" is the rule's")[0] for n in notes] == ["forward", "grad y"]
    assert all(re.search(r"the two differ by up to \d(\.\d)?e-\d\d here$", n) for n in notes), notes


def test_a_layer_computing_in_float32_in_a_float64_run_is_judged_in_float32(tmp_path):
    (tmp_path / "losses.py").write_text(LOSSES)
    rep = verify(f"{tmp_path}/losses.py:Sigmoid32", derivcheck.load_rule("sigmoid"), style="dlfs1")
    assert rep.verdict == "pass", [(c.name, c.message) for c in rep.checks if not c.passed]
    assert {w.kind for w in rep.warnings} == {"dtype"}


def test_a_missing_gradient_says_where_it_was_looked_for(tmp_path):
    (tmp_path / "losses.py").write_text(LOSSES)
    rep = verify(f"{tmp_path}/losses.py:AffineNoDb", derivcheck.load_rule("affine"), style="dlfs1", trials=1)
    (c,) = [c for c in rep.checks if not c.passed]
    assert (c.name, c.message) == ("grad b", "no gradient for 'b' where dlfs1 keeps it (AffineNoDb.db)")
