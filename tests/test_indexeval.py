"""The compiled form of index expressions (engine/indexeval.py, engine/program.py): what it shares and what
it leaves out changes no value, and neither does storing it as JSON and reading it back. Expected values are
NumPy's own, written out here."""
import json

import numpy as np
import pytest
from sympy import Abs, IndexedBase, Not, Piecewise, Sum, exp, symbols

from derivcheck.engine import indexeval, program

N, C = symbols("N C", integer=True, positive=True)
i, j, k = symbols("i j k", integer=True)
x, y = IndexedBase("x", real=True), IndexedBase("y", real=True)
X = np.array([[-1.5, 0.25, 2.0], [0.5, -3.0, 1.0]])  # negative entries: a missing abs shows
Y = np.array([[2.0, -1.0, 0.5], [-0.75, 1.5, -2.5]])
ENV = {"N": 2, "C": 3, "x": X, "y": Y}


def A(e):
    """|e| as an error bound writes it (rounding.py): unevaluated, SymPy's sign analysis left out."""
    return Abs(e, evaluate=False)


class Both:
    """An expression compiled, and the same read back from its JSON (what a warm run evaluates): calling it
    checks that the two agree bit for bit and gives the value."""

    def __init__(self, expr, free=(i, j)):
        self.fresh = indexeval.compiled(expr, free, {i: N, j: C})
        self.stored = program.load(json.loads(json.dumps(program.dump({"e": self.fresh}))))["e"]

    def __call__(self, env):
        got, again = self.fresh(dict(env)), self.stored(dict(env))
        np.testing.assert_array_equal(again, got)
        return got


compiled = Both


def ops(c: Both) -> list:
    """The names of the unary ufuncs its program computes (exp, abs, ...)."""
    return [nd.params for nd in c.fresh.nodes if nd.kind == "ufunc"]


def test_abs_of_an_expression_that_cannot_be_negative_is_not_computed():
    c = compiled(A(exp(x[i, j])) * A(1 / Sum(exp(x[i, k]), (k, 0, C - 1))))
    expected = np.exp(X) / np.exp(X).sum(axis=1, keepdims=True)
    assert np.allclose(c(dict(ENV)), expected, rtol=1e-15, atol=0)
    assert "abs" not in ops(c)


@pytest.mark.parametrize("inner, numpy", [
    (x[i, j], X),
    (exp(x[i, j]) - 2, np.exp(X) - 2),
    (exp(x[i, j]) * y[i, j], np.exp(X) * Y),
    (-exp(x[i, j]), -np.exp(X)),
    (x[i, j] ** 3, X ** 3),
    (Sum(y[i, k], (k, 0, C - 1)) + exp(x[i, j]), Y.sum(axis=1, keepdims=True) + np.exp(X)),
    (1 / x[i, j], 1 / X),
])
def test_abs_of_an_expression_that_may_be_negative_is_computed(inner, numpy):
    c = compiled(A(inner))
    assert np.allclose(c(dict(ENV)), np.abs(numpy), rtol=1e-15, atol=0)
    assert "abs" in ops(c)


def test_one_expression_under_other_index_names_is_computed_once():
    """exp(x[i, j]), exp(x[i, k]) inside a sum over k, and exp(x[j', i']) of a transposed use: one exp."""
    expr = exp(x[i, j]) * Sum(exp(x[i, k]), (k, 0, C - 1)) + Sum(exp(x[i, k]) * y[i, k], (k, 0, C - 1))
    c = compiled(expr)
    e = np.exp(X)
    assert np.allclose(c(dict(ENV)), e * e.sum(axis=1, keepdims=True) + (e * Y).sum(axis=1, keepdims=True),
                       rtol=1e-15, atol=0)
    assert ops(c).count("exp") == 1


def test_the_same_form_over_other_sizes_or_other_arrays_is_not_shared():
    """exp(x[i, k]) summed over the first C - 1 columns is not exp(x[i, j]) over all C; exp(y) is not exp(x)."""
    expr = exp(x[i, j]) + Sum(exp(x[i, k]), (k, 0, C - 2)) + exp(y[i, j])
    c = compiled(expr)
    assert np.allclose(c(dict(ENV)), np.exp(X) + np.exp(X[:, :2]).sum(axis=1, keepdims=True) + np.exp(Y),
                       rtol=1e-15, atol=0)
    assert ops(c).count("exp") == 3


def test_a_shared_node_renamed_on_its_first_axis_keeps_its_axes_in_place():
    """exp(x[k, j]) summed over k (the rows) is exp(x[i, j]) renamed on its first axis: shared, and summed over
    the rows, not the columns."""
    c = compiled(exp(x[i, j]) + Sum(exp(x[k, j]), (k, 0, N - 1)))
    e = np.exp(X)
    assert np.allclose(c(dict(ENV)), e + e.sum(axis=0, keepdims=True), rtol=1e-15, atol=0)
    assert ops(c).count("exp") == 1


def test_a_negated_condition_is_computed_and_stored():
    c = compiled(Piecewise((x[i, j], Not(x[i, j] > 0, evaluate=False)), (y[i, j], True)))  # SymPy would write x <= 0
    np.testing.assert_array_equal(c(dict(ENV)), np.where(~(X > 0), X, Y))
    assert "not" in [nd.kind for nd in c.fresh.nodes]
