"""Layers with several outputs (an LSTM's h_next, c_next): a formula ending 'y, z', a forward that
returns a tuple, a backward that takes one upstream gradient per output.

A small rule of two outputs keeps these cheap; the LSTM references and broken LSTMs are in the
examples catalogue (tests/test_verify.py, the examples gate).
"""
import textwrap
from pathlib import Path

import numpy as np
import pytest

from derivcheck.engine import reference
from derivcheck.errors import DerivcheckError
from derivcheck.present.explanation import explain
from derivcheck.engine.rules import load_rule_file
from derivcheck.check.verify import verify

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

RULE = '''
name = "two"
summary = "y = x W and z = tanh(y), returned as (y, z)"
formula = """
y = x @ W
z = tanh(y)
y, z
"""
output = ["N", "H"]

[inputs.x]
shape = ["N", "D"]

[inputs.W]
shape = ["D", "H"]

[closed_form]
x = "(dy + dz * (1 - z ** 2)) @ W.T"
'''

LAYERS = '''
import numpy as np


class Two:
    def __init__(self, W):
        self.W = W

    def forward(self, x):
        self.x = x
        self.y = x @ self.W
        self.z = np.tanh(self.y)
        return self.y, self.z

    def backward(self, dy, dz):
        da = dy + dz * (1 - self.z ** 2)
        self.dW = self.x.T @ da
        return da @ self.W.T


class TwoSwapped(Two):
    """Returns (z, y): the rule's order is (y, z)."""
    def forward(self, x):
        y, z = super().forward(x)
        return z, y


class TwoOne(Two):
    """Returns y only."""
    def forward(self, x):
        return super().forward(x)[0]


class TwoMisshapen(Two):
    """z with one column only."""
    def forward(self, x):
        y, z = super().forward(x)
        return y, z[:, :1]


class TwoRagged(Two):
    """A ragged list for z."""
    def forward(self, x):
        y, z = super().forward(x)
        return y, [[1.0, 2.0], [3.0]]


class TwoGradientsSwapped(Two):
    """backward(dz, dy): takes the upstream gradients in the other order."""
    def backward(self, dz, dy):
        return super().backward(dy, dz)


class TwoIgnoresSecond(Two):
    """Forgets that z reaches the loss too: uses dy only."""
    def backward(self, dy, dz):
        return super().backward(dy, np.zeros_like(dz))


def two_forward(x, W):
    y = x @ W
    z = np.tanh(y)
    return y, z, (x, W, z)


def two_backward(dy, dz, cache):
    x, W, z = cache
    da = dy + dz * (1 - z ** 2)
    return da @ W.T, x.T @ da


def pair_forward(x, W):
    """Returns (out, cache), as a function of one output does."""
    return x @ W, (x, W)


def pair_backward(dout, cache):
    x, W = cache
    return dout @ W.T, x.T @ dout
'''


@pytest.fixture(scope="module")
def rule(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "two.toml"
    path.write_text(textwrap.dedent(RULE))
    return load_rule_file(path)


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    path = tmp_path_factory.mktemp("layers") / "two_layers.py"
    path.write_text(LAYERS)
    return path


def checks(rep) -> dict:
    return {c.name: c for c in rep.checks}


def test_the_outputs_are_named_and_derived_shape_generically(rule):
    assert rule.outputs == ("y", "z")
    assert reference.note_for(rule, rule.resolve_hyper()) == ""  # the generic tier serves it, proven at small shapes
    d = reference.at(rule, rule.resolve_hyper(), {"N": 3, "D": 4, "H": 2})
    rng = np.random.default_rng(0)
    x, W, cot = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=(2, 3, 2))
    out, grads, _ = d.evaluate(cot, x=x, W=W)
    y = x @ W
    assert np.allclose(out, np.stack([y, np.tanh(y)]))  # stacked, the output's index first
    da = cot[0] + cot[1] * (1 - np.tanh(y) ** 2)  # each output's own upstream gradient
    assert np.allclose(grads["x"], da @ W.T) and np.allclose(grads["W"], x.T @ da)


def test_a_layer_with_two_outputs_passes(rule, layers):
    rep = verify(f"{layers}:Two", rule, trials=3)
    assert rep.verdict == "pass", rep.checks
    assert checks(rep)["grad x"].where == "Two.backward(dy, dz)"


def test_outputs_in_the_wrong_order_fail_naming_the_output(rule, layers):
    rep = verify(f"{layers}:TwoSwapped", rule, trials=1)
    fwd = checks(rep)["forward"]
    j = fwd.index[0]  # the worst element's output
    assert not fwd.passed and fwd.where == f"forward output {'yz'[j]} (out[{j}])"


def test_a_layer_that_returns_one_of_two_outputs_fails_saying_so(rule, layers):
    rep = verify(f"{layers}:TwoOne", rule, trials=1)
    fwd = checks(rep)["forward"]
    assert not fwd.passed
    assert fwd.message == "TwoOne.forward returned one ndarray; rule 'two' has 2 outputs (y, z), returned in that order"


@pytest.mark.parametrize("name,message", [
    ("TwoMisshapen", "TwoMisshapen.forward returned y of shape (2, 4), z of shape (2, 1): rule 'two' gives each the same shape"),
    ("TwoRagged", "TwoRagged.forward returned outputs that are not arrays"),
])
def test_outputs_that_cannot_be_stacked_fail_saying_why(rule, layers, name, message):
    fwd = checks(verify(f"{layers}:{name}", rule, trials=1))["forward"]
    assert not fwd.passed and fwd.message.startswith(message), fwd.message


@pytest.mark.parametrize("name", ["TwoGradientsSwapped", "TwoIgnoresSecond"])
def test_each_upstream_gradient_goes_to_its_own_output(rule, layers, name):
    rep = verify(f"{layers}:{name}", rule, trials=1)
    assert checks(rep)["forward"].passed
    assert not checks(rep)["grad x"].passed and not checks(rep)["grad W"].passed


def test_functional_style_returns_the_outputs_then_the_cache(rule, layers):
    assert verify(f"{layers}:two_forward", rule, trials=2).verdict == "pass"
    with pytest.raises(DerivcheckError, match=r"pair_forward returned 2 values, not 3: rule 'two' has 2 outputs, so the "
                                              r"functional style is NAME_forward\(...\) -> \(y, z, cache\) with "
                                              r"NAME_backward\(dy, dz, cache\)"):
        verify(f"{layers}:pair_forward", rule, trials=1)


def test_a_dezero_function_with_several_outputs_is_refused(rule, tmp_path):
    (tmp_path / "core.py").write_text((EXAMPLES / "dezero_style" / "core.py").read_text())
    (tmp_path / "two_fn.py").write_text("from core import Function\n\n\nclass Two(Function):\n"
                                        "    def forward(self, x, W):\n        return x @ W\n")
    with pytest.raises(DerivcheckError, match="several outputs .y, z., and a DeZero function with several outputs is not supported"):
        verify(f"{tmp_path / 'two_fn.py'}:Two", rule, trials=1)


def test_explain_starts_the_backward_at_every_output(rule):
    text = explain(rule).text()
    assert "backward, from dy, dz at the outputs to the inputs" in text
    assert "signal dy = dy + dz·(1 - z²)" in text  # y feeds z: its signal is both
    assert "(out stacks the outputs: out[0] = y, out[1] = z)" in text
    assert "dx = (dy + dz·(1 - z²)) Wᵀ" in text  # the closed form, in the outputs' gradients, holds
