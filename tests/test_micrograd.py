"""micrograd's convention (style micrograd): each operation of a user's scalar Value class, one element of the
trial's arrays at a time, against its rule."""
import textwrap
from pathlib import Path

import pytest

from derivcheck.check.conventions.registry import detect_style
from derivcheck.check.loading import load_target
from runner import failing, run, verify_json

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENGINE = EXAMPLES / "micrograd" / "engine.py"
BROKEN = EXAMPLES / "broken" / "micrograd_engine.py"


def test_a_value_class_is_told_by_its_data_grad_and_backward_closures():
    assert detect_style(*load_target(f"{ENGINE}:Value")) == "micrograd"
    assert detect_style(*load_target(f"{EXAMPLES / 'dlfs1' / 'layers.py'}:Affine")) == "dlfs1"


@pytest.mark.parametrize("rule", ["add", "sub", "mul", "div", "neg", "pow", "square", "exp", "log", "tanh", "relu", "sigmoid"])
def test_each_operation_of_the_example_value_passes(rule):
    result, data = verify_json(f"{ENGINE}:Value", "--rule", rule, "--trials", "2")
    assert result.exit_code == 0, result.output
    assert data["style"] == "micrograd"


@pytest.mark.parametrize("target,rule,failed", [
    ("ValueMulOverwrites", "square", ["grad x"]),  # x * x: = keeps one of the two terms
    ("ValueMulIgnoresUpstream", "mul", ["grad x", "grad y"]),
    ("ValueTanhFromInput", "tanh", ["grad x"]),
    ("ValuePowExponentKept", "pow", ["grad x"]),
])
def test_the_bugs_people_write_in_a_backward_closure_fail(target, rule, failed):
    result, data = verify_json(f"{BROKEN}:{target}", "--rule", rule, "--trials", "1")
    assert result.exit_code == 1, result.output
    assert failing(data) == failed


def test_overwriting_a_gradient_passes_where_no_node_is_used_twice():
    """The = bug needs a node used twice: x * y with two leaves cannot show it (hence rule square)."""
    result, _ = verify_json(f"{BROKEN}:ValueMulOverwrites", "--rule", "mul", "--trials", "1")
    assert result.exit_code == 0, result.output


def test_a_rule_that_is_no_operation_of_a_value_says_which_are(tmp_path):
    result = run("verify", f"{ENGINE}:Value", "--rule", "affine")
    assert result.exit_code == 2, result.output
    assert "--rule mul for __mul__" in result.output and "rule 'affine' is none of them" in result.output


def test_an_operation_the_value_does_not_define_is_exit_2(tmp_path):
    (tmp_path / "tiny.py").write_text(textwrap.dedent('''
        class Value:
            def __init__(self, data, _children=()):
                self.data, self.grad, self._prev = data, 0.0, set(_children)
                self._backward = lambda: None

            def __mul__(self, other):
                out = Value(self.data * other.data, (self, other))
                def _backward():
                    self.grad += other.data * out.grad
                    other.grad += self.data * out.grad
                out._backward = _backward
                return out
        '''))
    result = run("verify", f"{tmp_path / 'tiny.py'}:Value", "--rule", "tanh")
    assert result.exit_code == 2, result.output
    assert "has no tanh" in result.output
