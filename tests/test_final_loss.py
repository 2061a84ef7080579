"""A loss whose backward ignores dout (book 1's SoftmaxWithLoss.backward(dout=1)): held to the gradient at dout = 1.

Judge.final_loss decides it from one failing check; these pin its tolerance, what it
returns and the warning it leaves. Fast: no layer runs.
"""
import numpy as np

import derivcheck
from derivcheck.checks import KAPPA, Check, unit_roundoff
from derivcheck.check.judge import Judge
from derivcheck.results import Report, Warning_

TARGET = "layers.py:SoftmaxWithLoss"
RNG = np.random.default_rng(3)
E = RNG.normal(size=(2, 3))  # the gradient at dout = 1
SCALE = np.abs(E) + 0.5  # the rounding scale at dout = 1
COT = 2.5
CTX = dict(trial=1, step=0, seed=1, dims={"N": 2, "C": 3})
MESSAGE = ("SoftmaxWithLoss.backward(dout) is the gradient for dout = 1 whatever dout is: right for a loss that ends "
           "the graph (backward(dout=1)), wrong if anything scales the loss (multiply by dout)")


def setup(got_ratio, dtype=np.float64, got_dtype=np.float64, diagnosed=True):
    rule = derivcheck.load_rule("softmax_with_loss")
    v = Judge(rule, rule.resolve_hyper({}), {}, dtype)
    rep = Report(TARGET, "softmax_with_loss", "dlfs1", "float64", 0, 5, 2, {})
    check = Check("grad x", False, where="SoftmaxWithLoss.backward(dout)", **CTX,
                  diagnosis=[{"kind": "upstream-ignored" if diagnosed else "sign-flipped"}])
    tol = KAPPA * unit_roundoff(got_dtype) * (SCALE + SCALE.max())
    got = (E + got_ratio * tol).astype(got_dtype)
    out = v.final_loss(rep, check, E * COT, got, SCALE * COT, np.asarray(COT), CTX)
    return v, rep, check, out


def test_a_gradient_right_at_dout_1_passes_with_a_warning():
    v, rep, check, out = setup(0.5)
    assert out is not check and out.passed
    assert (out.name, out.where, out.trial, out.step, out.seed, out.dims) == ("grad x", "SoftmaxWithLoss.backward(dout)", 1, 0, 1, CTX["dims"])
    assert v.ignores_dout is True
    assert rep.warnings == [Warning_("upstream-ignored", MESSAGE, 1)]


def test_past_the_tolerance_at_dout_1_the_failure_stands():
    v, rep, check, out = setup(1.5)
    assert out is check and not v.ignores_dout and rep.warnings == []


def test_a_layer_computing_in_float32_is_held_to_float32_there_too():
    v, rep, check, out = setup(0.5, got_dtype=np.float32)  # float32 digits in a float64 run
    assert out.passed and v.ignores_dout


def test_only_an_upstream_ignored_diagnosis_is_reconsidered():
    v, rep, check, out = setup(0.0, diagnosed=False)
    assert out is check and rep.warnings == []
