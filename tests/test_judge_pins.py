"""What the judge decides, pinned where a mutant of the judging code once survived the whole suite.

Each test names the decision it pins. Expectations come from the construction (a value moved by a
known multiple of its tolerance, a network wired wrong in one known place), not from the code under test.
"""
import textwrap

import numpy as np
import pytest

import derivcheck
from derivcheck.engine import reference
from derivcheck.checks import Check, tolerance
from derivcheck.run.config import Binding
from derivcheck.run.gate import Result
from derivcheck.check.judge import Judge
from derivcheck.results import Report, Warning_

from bindings import EXAMPLES
from test_network import net
from runner import failing, verify_json as verify

CTX = dict(trial=0, step=0, seed=0, dims={"N": 2, "C": 3})


# -- a network's wiring, book 1 -------------------------------------------------------------------------------

def test_a_dout_scaled_between_two_layers_is_a_wiring_mistake(tmp_path):
    # every layer is right for the dout it got; only the connection is wrong (Relu1's dx doubled on its way)
    target = net(tmp_path, backward_step="layer.backward(dout) * (2.0 if isinstance(layer, Relu) else 1.0)")
    result, data = verify(target, "--trials", "2")
    assert result.exit_code == 1, result.output
    assert failing(data) == ["network gradients", "wiring"]
    wiring = next(c for c in data["checks"] if c["name"] == "wiring")
    assert "Affine1's dout is not Relu1's dx" in wiring["message"]


def test_a_wrong_loss_layer_is_judged_against_its_rule(tmp_path):
    target = net(tmp_path, loss_backward="return dx * dout  # BUG: not divided by the batch")
    result, data = verify(target, "--trials", "2")
    assert result.exit_code == 1, result.output
    assert failing(data) == ["lastLayer (SoftmaxWithLoss): grad x", "network gradients"]
    assert any(d["kind"] == "constant-factor" for d in data["diagnosis"])


# -- a CS231n model whose hidden layer feeds two layers ---------------------------------------------------------

FAN_OUT = '''
import sys
sys.path.insert(0, {functional!r})
import numpy as np
from layers import affine_backward, affine_forward, relu_backward, relu_forward, softmax_loss


def add_forward(x, y):
    return x + y, None


def add_backward(dout, cache):
    return dout, dout


class TwoHeadNet:
    def __init__(self, input_dim=4, hidden_dim=5, num_classes=3, reg=0.0):
        self.reg = reg
        self.params = {{"W1": np.random.randn(input_dim, hidden_dim), "b1": np.zeros(hidden_dim),
                       "W2": np.random.randn(hidden_dim, num_classes), "b2": np.zeros(num_classes),
                       "W3": np.random.randn(hidden_dim, num_classes), "b3": np.zeros(num_classes)}}

    def loss(self, X, y):
        p = self.params
        a, c1 = affine_forward(X, p["W1"], p["b1"])
        h, c2 = relu_forward(a)
        s2, c3 = affine_forward(h, p["W2"], p["b2"])  # h feeds two layers: its dout is the sum of their dx
        s3, c4 = affine_forward(h, p["W3"], p["b3"])
        s, c5 = add_forward(s2, s3)
        loss, ds = softmax_loss(s, y)
        loss += 0.5 * self.reg * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2) + np.sum(p["W3"] ** 2))
        grads = {{}}
        ds2, ds3 = add_backward(ds, c5)
        dh2, grads["W2"], grads["b2"] = affine_backward(ds2, c3)
        dh3, grads["W3"], grads["b3"] = affine_backward(ds3, c4)
        da = relu_backward({dh}, c2)
        _, grads["W1"], grads["b1"] = affine_backward(da, c1)
        for k in ("W1", "W2", "W3"):
            grads[k] += self.reg * p[k]
        return loss, grads
'''


@pytest.mark.parametrize("dh,ok", [("dh2 + dh3", True), ("dh2", False)])
def test_a_fan_out_takes_the_sum_of_its_consumers_gradients(tmp_path, dh, ok):
    (tmp_path / "two_head.py").write_text(FAN_OUT.format(functional=str(EXAMPLES / "functional"), dh=dh))
    result, data = verify(tmp_path / "two_head.py:TwoHeadNet", "--trials", "2")
    if ok:  # judged against the first consumer only, the correct model was a false alarm
        assert result.exit_code == 0, result.output[-3000:]
        return
    assert result.exit_code == 1, result.output[-3000:]
    wiring = next(c for c in data["checks"] if c["name"] == "wiring")
    assert "relu_backward#1's dout is not affine_forward#2's dx + affine_forward#3's dx" in wiring["message"]


# -- a DeZero model that uses one Linear twice -----------------------------------------------------------------

SHARED = '''
import sys
sys.path.insert(0, {core!r})
import functions as F
import layers as L
from layers import Model


class SharedNet(Model):
    def __init__(self, hidden_size):
        super().__init__()
        self.l1 = L.Linear(hidden_size)

    def forward(self, x):
        return self.l1(F.sigmoid(self.l1(x)))  # l1.W's gradient is the sum over both uses
'''


def test_a_parameter_used_twice_gets_the_sum_of_both_uses(tmp_path):
    (tmp_path / "shared.py").write_text(SHARED.format(core=str(EXAMPLES / "dezero_style")))
    result, data = verify(tmp_path / "shared.py:SharedNet", "--trials", "2", "--shape", "hidden_size=3,D=3")
    assert result.exit_code == 0, result.output[-3000:]


# -- the tiers' proof ------------------------------------------------------------------------------------------

class Nudged:
    """A generic reference whose gradient of ``name`` is off by ``rel`` (relative), otherwise the real one."""

    def __init__(self, bound, name, rel):
        self.bound, self.name, self.rel = bound, name, rel
        self.output_shape = bound.output_shape

    def evaluate(self, cot, **ref):
        out, grads, scales = self.bound.evaluate(cot, **ref)
        return out, {**grads, self.name: grads[self.name] * (1 + self.rel)}, scales


@pytest.mark.parametrize("rel,holds", [(1e-8, False), (1e-12, False), (1e-17, True)])
def test_the_generic_tier_is_proven_at_the_checks_own_tolerance(rel, holds):
    # an affine dW off by 1e-12 (relative) is hundreds of times float64's rounding there, and far inside a proof
    # 10^6 times more lenient: the proof must refuse it
    rule = derivcheck.load_rule("affine")
    hyper = rule.resolve_hyper()
    dims = {"N": 2, "D": 3, "H": 4}
    bound = Nudged(reference.at(rule, hyper, dims), "W", rel)
    if holds:
        reference._agree(rule, hyper, dims, bound, "shape-generic", np.random.default_rng(0))
        return
    with pytest.raises(derivcheck.DerivcheckError, match="disagrees with the element-by-element one: gradient of W"):
        reference._agree(rule, hyper, dims, bound, "shape-generic", np.random.default_rng(0))


# -- float32 inside verify --------------------------------------------------------------------------------------

SIGMOID = '''
import numpy as np


class Sigmoid:
    def forward(self, x):
        self.out = 1 / (1 + np.exp(-x))
        return self.out

    def backward(self, dout):
        return dout * self.out * (1 - self.out) * {factor}
'''


@pytest.mark.parametrize("factor,ok", [("np.float32(1 + 1e-5)", False), ("1", True)])
def test_a_float32_gradient_off_by_1e_5_fails(tmp_path, factor, ok):
    # float32's tolerance is about 4 * 6e-8 of the values: 1e-5 is ~40 times past it (100 times the tolerance let it pass)
    (tmp_path / "sig.py").write_text(SIGMOID.format(factor=factor))
    result, data = verify(f"{tmp_path / 'sig.py'}:Sigmoid", "--rule", "sigmoid", "--dtype", "float32")
    assert result.exit_code == (0 if ok else 1), result.output
    if not ok:
        assert failing(data) == ["grad x"]


# -- the also = [...] alternatives ------------------------------------------------------------------------------

def test_a_hyperparameter_the_user_set_has_no_alternatives():
    rule = derivcheck.load_rule("softmax_with_loss")
    assert Judge(rule, rule.resolve_hyper(), {}, np.float64).alternatives == [{**rule.resolve_hyper(), "eps": 1e-7}]
    assert Judge(rule, rule.resolve_hyper({"eps": 0.0}), {"eps": 0.0}, np.float64).alternatives == []


def test_the_users_eps_0_catches_the_books_log_y_plus_1e_7():
    target = f"{EXAMPLES / 'networks' / 'book1_loss_net.py'}:SoftmaxWithLoss"
    result, data = verify(target, "--rule", "softmax_with_loss", "--hyper", "eps=0.0")
    assert result.exit_code == 1, result.output
    assert "forward" in failing(data)


@pytest.mark.parametrize("times,passes", [(0.5, True), (5.0, False)])
def test_an_alternative_is_held_to_the_checks_own_tolerance(times, passes):
    rule = derivcheck.load_rule("softmax_with_loss")
    judge = Judge(rule, rule.resolve_hyper(), {}, np.float64)
    alt_out, scale = np.float64(1.25), np.float64(2.0)
    tol = float(tolerance(np.asarray(scale), np.float64))
    got = alt_out + times * tol
    rep = Report("t.py:L", rule.name, "dlfs1", "float64", 0, 1, 1, {})
    failed = Check("forward", False, where="forward output", **CTX)
    alternatives = lambda: [({**judge.hyper, "eps": 1e-7}, alt_out, {}, {"forward": scale})]  # noqa: E731
    c = judge.alternative(rep, failed, "forward", np.float64(1.0), got, alternatives, CTX)
    assert c.passed is passes
    assert bool(rep.notes) is passes


# -- the gate's caught-by ---------------------------------------------------------------------------------------

def _result(caught_by, warned):
    b = Binding(id="x", target="t.py:L", rule="affine", hyper={}, style=None, dtype="float64", seed=0, trials=1, steps=1,
                strict=True, group="broken", expect="fail", where="derivcheck.toml:1", caught_by=caught_by)
    rep = Report("t.py:L", "affine", "dlfs1", "float64", 0, 1, 1, {}, strict=True)
    rep.warnings = [Warning_(k, "said", 0) for k in warned]
    return Result(b, rep)


def test_the_gate_holds_a_broken_example_to_the_warning_kind_it_names():
    assert _result(("warning:stale-state",), ["stale-state"]).mismatch is None
    assert _result(("warning:stale-state",), ["mutates-input"]).mismatch == \
        "caught by warning:mutates-input, where the catalogue says warning:stale-state"


# -- several outputs ---------------------------------------------------------------------------------------------

def test_a_wrong_second_output_fails_the_forward(tmp_path):
    # an LSTM step whose c_next is wrong and h_next right: compared on its first output only, it passed
    src = (EXAMPLES / "functional" / "layers.py").read_text()
    (tmp_path / "layers.py").write_text(src)
    mine = tmp_path / "lstm.py"
    mine.write_text(textwrap.dedent('''
        from layers import lstm_step_backward
        from layers import lstm_step_forward as right


        def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
            next_h, next_c, cache = right(x, prev_h, prev_c, Wx, Wh, b)
            return next_h, next_c * 1.5, cache
    '''))
    result, data = verify(f"{mine}:lstm_step_forward", "--rule", "lstm_step")
    assert result.exit_code == 1, result.output
    fwd = next(c for c in data["checks"] if c["name"] == "forward")
    assert not fwd["passed"] and fwd["where"] == "forward output next_c (out[1])"
