"""Each diagnosis, exactly: kind, message, hint and residual, from synthetic gradients (no layer runs).

These pin what a user reads. They are fast, so mutation testing (bench/mutation.py)
runs them first and a changed word or a changed branch fails here at once.
"""
import numpy as np
import pytest

import derivcheck
from derivcheck.engine import reference
from derivcheck.checks import Check
from derivcheck.check.diagnose import Context, diagnose_epsilon, diagnose_forward, diagnose_gradient, diagnose_raised, settle_factor


def ctx(rule_name, dims, cot, ref=None, earlier=None, earlier_passed=False, dtype=np.float64, hyper=None, others=None):
    rule = derivcheck.load_rule(rule_name)
    h = rule.resolve_hyper(hyper or {})
    d = reference.at(rule, h, dims)
    return Context(rule, d, dims, ref or {}, np.asarray(cot, dtype=np.float64), dtype, earlier or {}, earlier_passed,
                   others or {})


class Explains:
    """A residual of a corrected candidate that explains every element: in [0, 1]."""

    def __eq__(self, other):
        return isinstance(other, float) and 0.0 <= other <= 1.0

    def __repr__(self):
        return "<residual in [0, 1]>"


def found(kind, check, message, hint, residual=0.0, **evidence):
    return {"check": check, "kind": kind, "message": f"{check}: {message}", "hint": hint,
            "evidence": {"residual_over_tol": residual, **evidence}}


RNG = np.random.default_rng(5)
E23 = RNG.normal(size=(2, 3))
S23 = np.abs(E23) + 1.0
DIMS = {"N": 2, "D": 3, "H": 4}


def test_a_transposed_gradient_of_the_other_shape():
    got = diagnose_gradient("W", E23, E23.T.copy(), S23, ctx("affine", DIMS, RNG.normal(size=(2, 4))))
    assert got == [found("transposed", "grad W", "has shape (3, 2), the transpose of W's (2, 3), and equals the right gradient transposed",
                         "swap the operands' order or transpose (x.T @ dout, not dout.T @ x)")]


def test_a_gradient_not_summed_over_the_batch():
    E = RNG.normal(size=4)
    G = np.stack([E * 0.25, E * 0.75])  # sums to E
    got = diagnose_gradient("b", E, G, np.abs(E) + 1, ctx("affine", DIMS, RNG.normal(size=(2, 4))))
    assert got == [found("missing-reduction", "grad b", "has an extra leading axis of size 2: one gradient per position that shares b, not their sum",
                         "sum over every axis that shares b: db = dout.sum(axis=0) for a batch, dout.sum(axis=(0, 1)) for "
                         "a batch of sequences")]


def test_a_row_gradient_not_summed_over_the_batch():
    """nnfs's and ML-From-Scratch's biases are (1, H): a gradient of one row per example has the same rank."""
    rows = RNG.normal(size=(3, 4))
    E = rows.sum(axis=0, keepdims=True)  # (1, 4)
    got = diagnose_gradient("biases", E, rows, np.abs(E) + 1, ctx("affine_nnfs", DIMS, rows))
    assert got == [found("missing-reduction", "grad biases", "has shape (3, 4) where biases has (1, 4): one gradient per "
                         "position that shares biases, not their sum",
                         "sum over axis 0, keeping it as biases does: dbiases = dout.sum(axis=0, keepdims=True)")]


def test_rows_that_are_not_the_sum_are_only_a_shape():
    rows = RNG.normal(size=(3, 4))
    E = rows.sum(axis=0, keepdims=True)
    got = diagnose_gradient("biases", E, rows * 1.5, np.abs(E) + 1, ctx("affine_nnfs", DIMS, rows))
    assert [f["kind"] for f in got] == ["shape"]


DIAGONAL_HINT = ("the gradient is the full vector-Jacobian product (for a softmax: dx = out * (dout - sum(dout * out, "
                 "axis=-1, keepdims=True))); an element-wise derivative cannot express it")


def _softmax_case():
    x, c = RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    right = p * (c - (c * p).sum(axis=1, keepdims=True))  # by hand: J = diag(p) - p pᵀ per row
    return x, c, p, right


def test_a_softmax_gradient_of_the_jacobian_s_diagonal_alone():
    """ML-From-Scratch's Softmax.gradient: p (1 - p), multiplied by dout as its Activation layer does."""
    x, c, p, right = _softmax_case()
    got = diagnose_gradient("x", right, c * p * (1 - p), np.abs(right) + 1, ctx("softmax", {"N": 2, "C": 3}, c, ref={"x": x}))
    assert got == [found("diagonal-only", "grad x", "is dout times the Jacobian's diagonal, d out[i] / d x[i], alone: each "
                         "output depends on the other elements of x too, and their terms are missing", DIAGONAL_HINT,
                         Explains())]


@pytest.mark.parametrize("n,c,claimed", [(1, 2, True), (8, 8, True), (5, 13, False)])
def test_the_diagonal_is_tried_from_two_elements_up_to_its_size_limit(n, c, claimed):
    """DIAGONAL_SIZE = 64 elements: one VJP each."""
    x, cot = RNG.normal(size=(n, c)), RNG.normal(size=(n, c))
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    right = p * (cot - (cot * p).sum(axis=1, keepdims=True))
    got = diagnose_gradient("x", right, cot * p * (1 - p), np.abs(right) + 1, ctx("softmax", {"N": n, "C": c}, cot, ref={"x": x}))
    assert ("diagonal-only" in [f["kind"] for f in got]) == claimed


def test_another_wrong_softmax_gradient_is_not_the_diagonal():
    x, c, p, right = _softmax_case()
    got = diagnose_gradient("x", right, c * p * (1 - p) + 1e-3, np.abs(right) + 1, ctx("softmax", {"N": 2, "C": 3}, c, ref={"x": x}))
    assert "diagonal-only" not in [f["kind"] for f in got]


def _batchnorm_at(eps):
    """Batch normalization by hand, and the gradient of gamma: sum(dout * xhat) over the batch."""
    x, gamma, beta, dout = RNG.normal(size=(4, 3)), RNG.normal(size=3), RNG.normal(size=3), RNG.normal(size=(4, 3))
    xhat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
    return {"x": x, "gamma": gamma, "beta": beta}, dout, gamma * xhat + beta, (dout * xhat).sum(axis=0)


EPS_HINT = "if eps = 0.01 is meant, check it there: --hyper eps=0.01 (in a config, hyper = { eps = 0.01 })"


def test_a_forward_and_a_gradient_at_another_epsilon_name_the_value_that_fits():
    """ML-From-Scratch's BatchNormalization adds 0.01 where the rule adds 1e-5."""
    ref, dout, out, dgamma = _batchnorm_at(0.01)
    rule = derivcheck.load_rule("batchnorm")
    dims = {"N": 4, "D": 3}
    got = diagnose_epsilon(rule, rule.resolve_hyper({}), dims, ref, out, np.abs(out) + 1, np.float64)
    assert got == found("epsilon", "forward", "is the rule's at eps = 0.01, where the rule's is 1e-05: the layer adds "
                        "another epsilon", EPS_HINT, Explains())
    c = ctx("batchnorm", dims, dout, ref=ref)
    E = np.asarray(c.derivation.vjp(dout, **ref)["gamma"])
    got = diagnose_gradient("gamma", E, dgamma, np.abs(E) + 1, c)
    assert got == [found("epsilon", "grad gamma", "is the rule's at eps = 0.01, where the rule's is 1e-05: the layer "
                         "adds another epsilon", EPS_HINT, Explains())]


@pytest.mark.parametrize("eps", [1e-8, 1e-12])
def test_an_epsilon_past_the_rule_s_own_in_the_list_is_found(eps):
    """The search steps over the rule's own 1e-5 and goes on."""
    ref, dout, out, dgamma = _batchnorm_at(eps)
    rule = derivcheck.load_rule("batchnorm")
    got = diagnose_epsilon(rule, rule.resolve_hyper({}), {"N": 4, "D": 3}, ref, out, np.abs(out) + 1, np.float64)
    assert got is not None and f"eps = {eps:g}," in got["message"]


def test_an_epsilon_computed_in_float32_is_judged_with_float32_s_tolerance():
    ref, dout, out, dgamma = _batchnorm_at(0.01)
    ref32 = {k: v.astype(np.float32) for k, v in ref.items()}
    x = ref32["x"]
    out32 = ref32["gamma"] * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + np.float32(0.01)) + ref32["beta"]
    rule = derivcheck.load_rule("batchnorm")
    ref64 = {k: v.astype(np.float64) for k, v in ref32.items()}
    got = diagnose_epsilon(rule, rule.resolve_hyper({}), {"N": 4, "D": 3}, ref64, out32, np.abs(out32) + 1, np.float32)
    assert got is not None and "eps = 0.01," in got["message"]
    assert diagnose_epsilon(rule, rule.resolve_hyper({}), {"N": 4, "D": 3}, ref64, out32, np.abs(out32) + 1, np.float64) is None
    c = ctx("batchnorm", {"N": 4, "D": 3}, dout, ref=ref64, dtype=np.float32)
    E = np.asarray(c.derivation.vjp(dout, **ref64)["gamma"])
    xhat32 = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + np.float32(0.01))
    G = (dout.astype(np.float32) * xhat32).sum(axis=0)
    assert [f["kind"] for f in diagnose_gradient("gamma", E, G, np.abs(E) + 1, c)] == ["epsilon"]


def test_an_epsilon_none_of_the_usual_values_fits_is_not_claimed():
    ref, dout, out, dgamma = _batchnorm_at(0.05)
    rule = derivcheck.load_rule("batchnorm")
    assert diagnose_epsilon(rule, rule.resolve_hyper({}), {"N": 4, "D": 3}, ref, out, np.abs(out) + 1, np.float64) is None
    relu = derivcheck.load_rule("relu")  # no eps to vary
    assert diagnose_epsilon(relu, relu.resolve_hyper({}), {"N": 4, "D": 3}, {"x": ref["x"]}, ref["x"], 1.0, np.float64) is None


def test_an_inverted_mask_passes_what_the_right_one_blocks():
    x, c = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    right = c * (x > 0)  # a ReLU's gradient, by hand
    got = diagnose_gradient("x", right, c * (x <= 0), np.abs(right) + 1, ctx("relu", {"N": 3, "D": 4}, c, ref={"x": x}))
    assert got == [found("mask-inverted", "grad x", "passes dout where the right gradient blocks it and blocks it where "
                         "it passes: the mask is inverted", "use the mask the forward used (x > 0 for a ReLU, the kept "
                         "elements for dropout), not its complement", Explains())]


def test_a_gradient_that_is_not_dout_masked_is_no_inverted_mask():
    x, c = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    right = c * (1 - np.tanh(x) ** 2)  # every element between 0 and dout's: scaled, not masked
    got = diagnose_gradient("x", right, c - right, np.abs(right) + 1, ctx("tanh", {"N": 3, "D": 4}, c, ref={"x": x}))
    assert "mask-inverted" not in [f["kind"] for f in got]
    leaky = c * np.where(x > 0, 1.0, 0.2)  # some elements dout's, the others neither dout's nor 0
    got = diagnose_gradient("x", leaky, c - leaky, np.abs(leaky) + 1, ctx("leaky_relu", {"N": 3, "D": 4}, c, ref={"x": x}))
    assert "mask-inverted" not in [f["kind"] for f in got]


@pytest.mark.parametrize("case", ["all blocked", "all passed", "blocked only where dout is 0"])
def test_a_mask_that_does_not_both_pass_and_block_says_nothing_of_inversion(case):
    x, c = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    if case == "all blocked":  # the right gradient is 0: dout itself is the 'inverted' one, and mask-ignored's to name
        x = -np.abs(x)
    elif case == "all passed":
        x = np.abs(x) + 0.1
    else:
        c = np.where(x > 0, c, 0.0)
    right = c * (x > 0)
    got = diagnose_gradient("x", right, c - right, np.abs(right) + 1, ctx("relu", {"N": 3, "D": 4}, c, ref={"x": x}))
    assert "mask-inverted" not in [f["kind"] for f in got]


def test_an_inverted_mask_of_two_elements():
    x, c = np.array([[0.5, -0.5]]), np.array([[1.5, -2.0]])
    right = c * (x > 0)
    got = diagnose_gradient("x", right, c * (x <= 0), np.abs(right) + 1, ctx("relu", {"N": 1, "D": 2}, c, ref={"x": x}))
    assert [f["kind"] for f in got] == ["mask-inverted"]


def _affine_values():
    ref = {"x": RNG.normal(size=(3, 2)), "W": RNG.normal(size=(2, 4)), "b": RNG.normal(size=4)}
    return ref, RNG.normal(size=(3, 4))


def test_a_bias_gradient_from_the_first_example_alone():
    ref, c = _affine_values()
    right = c.sum(axis=0)  # db, by hand
    got = diagnose_gradient("b", right, c[0].copy(), np.abs(c).sum(axis=0) + 1, ctx("affine", {"N": 3, "D": 2, "H": 4}, c, ref=ref))
    assert got == [found("first-example-only", "grad b", "is the gradient of the first example's upstream gradient alone "
                         "(dout[0]): the other examples' terms are missing", "sum over the examples: db adds up every "
                         "example's term (dout.sum(axis=0) for a bias)", Explains())]


def test_a_weight_gradient_from_the_first_example_alone():
    ref, c = _affine_values()
    right = ref["x"].T @ c
    first = np.outer(ref["x"][0], c[0])  # dW of the first example, by hand
    got = diagnose_gradient("W", right, first, np.abs(right) + 1, ctx("affine", {"N": 3, "D": 2, "H": 4}, c, ref=ref))
    assert [f["kind"] for f in got] == ["first-example-only"]


def test_the_first_example_of_a_one_dimensional_output():
    """Book 2's EmbeddingDot: out[n] = W[idx[n]] · h[n], one number per example."""
    h, W, idx, c = RNG.normal(size=(3, 2)), RNG.normal(size=(4, 2)), np.array([2, 0, 2]), RNG.normal(size=3)
    right, first = np.zeros((4, 2)), np.zeros((4, 2))
    for n in range(3):  # by hand: each example's row of W gets dout[n] h[n]
        right[idx[n]] += c[n] * h[n]
    first[idx[0]] = c[0] * h[0]
    got = diagnose_gradient("W", right, first, np.abs(right) + 1,
                            ctx("embedding_dot", {"N": 3, "D": 2, "V": 4}, c, ref={"h": h, "W": W, "idx": idx}))
    assert [f["kind"] for f in got] == ["first-example-only"]


def test_an_input_of_zeros_has_no_weight_decay_to_fit():
    ref, c = _affine_values()
    ref["W"] = np.zeros((2, 4))
    right = ref["x"].T @ c
    with np.errstate(all="raise"):  # no 0 / 0
        got = diagnose_gradient("W", right, right + 1.0, np.abs(right) + 1, ctx("affine", {"N": 3, "D": 2, "H": 4}, c, ref=ref))
    assert "weight-decay" not in [f["kind"] for f in got]


def test_weight_decay_in_backward_is_named_with_its_coefficient():
    ref, c = _affine_values()
    right = ref["x"].T @ c  # dW, by hand
    got = diagnose_gradient("W", right, right + 0.01 * ref["W"], np.abs(right) + 1, ctx("affine", {"N": 3, "D": 2, "H": 4}, c, ref=ref))
    assert got == [found("weight-decay", "grad W", "is the right gradient plus 0.01 * W: a weight-decay term the rule does "
                         "not have", "leave weight decay to the optimizer (or to the loss, whose rule then has the "
                         "penalty): dW without 0.01 * W", Explains())]


def test_a_sum_over_the_wrong_axis():
    c = RNG.normal(size=(2, 4))
    got = diagnose_gradient("b", c.sum(axis=0), c.sum(axis=1), np.abs(c).sum(axis=0), ctx("affine", DIMS, c))
    assert got == [found("wrong-axis", "grad b", "sums dout over axis 1 where the forward repeated along axis 0",
                         "sum over axis 0: np.sum(dout, axis=0)")]


def test_a_sum_over_the_wrong_axis_kept_as_a_row():
    c = RNG.normal(size=(3, 2))
    E = c.sum(axis=1, keepdims=True)  # (3, 1)
    G = c.sum(axis=0, keepdims=True)  # (1, 2)
    got = diagnose_gradient("x", E, G, np.abs(E) + 1, ctx("affine", DIMS, c))
    assert got == [found("wrong-axis", "grad x", "sums dout over axis 0 where the forward repeated along axis 1",
                         "sum over axis 1: np.sum(dout, axis=1, keepdims=True)")]


@pytest.mark.parametrize("axis", [0, 1])
def test_a_reduction_too_many(axis):
    got = diagnose_gradient("x", E23, E23.sum(axis=axis), S23, ctx("affine", DIMS, np.asarray(1.7)))
    assert got == [found("extra-reduction", "grad x", f"is the right gradient summed over axis {axis}: a reduction too many",
                         f"do not sum dx over axis {axis}")]


def test_axes_permuted_in_three_dimensions():
    E = RNG.normal(size=(2, 3, 4))
    G = E.transpose(1, 2, 0).copy()
    got = diagnose_gradient("x", E, G, np.abs(E) + 1, ctx("affine", DIMS, np.asarray(2.0)))
    assert got == [found("transposed", "grad x", "equals the right gradient with its axes permuted by [1, 2, 0]",
                         "apply the inverse permutation: np.transpose(gy, [2, 0, 1])")]


def test_a_shape_nothing_explains():
    got = diagnose_gradient("W", E23, np.ones(5), S23, ctx("affine", DIMS, np.asarray(2.0)))
    assert got == [found("shape", "grad W", "has shape (5,), but W has shape (2, 3)", "a gradient has its parameter's shape: (2, 3)",
                         float("inf"))]


def test_a_square_gradient_transposed():
    E = RNG.normal(size=(3, 3))
    got = diagnose_gradient("W", E, E.T.copy(), np.abs(E) + 1, ctx("affine", DIMS, np.asarray(2.0)))
    assert got == [found("transposed", "grad W", "equals the right gradient transposed", "swap the operands or transpose the result")]


def test_a_symmetric_gradient_is_not_called_transposed():
    E = RNG.normal(size=(3, 3))
    E = E + E.T
    got = diagnose_gradient("W", E, 3 * E, np.abs(E) + 1, ctx("affine", {"N": 5, "D": 3, "H": 4}, np.asarray(2.0)))
    assert [g["kind"] for g in got] == ["constant-factor"]


def test_a_flipped_sign():
    got = diagnose_gradient("x", E23, -E23, S23, ctx("affine", DIMS, np.asarray(2.0)))
    assert got == [found("sign-flipped", "grad x", "equals the right gradient with its sign flipped", "check the sign of each term")]


SWAP_HINT = ("return each input's own gradient, in the inputs' order (d{0} goes with {0}); "
             "a product's gradient takes the other factor (dx = dout * y, dy = dout * x)")


def test_another_inputs_gradient_is_swapped():
    """Book 1's MulLayer without its swap: dx = dout * x is y's right gradient."""
    Ey = RNG.normal(size=(2, 3))
    c = ctx("mul", {"N": 2, "D": 3}, np.asarray(2.0), others={"y": (Ey, np.abs(Ey) + 1)})
    got = diagnose_gradient("x", E23, Ey.copy(), S23, c)
    assert got == [found("swapped", "grad x", "equals the right gradient of y: the two are swapped", SWAP_HINT.format("x"))]
    # judged with the other gradient's scale, and not claimed past it
    assert diagnose_gradient("x", E23, Ey + 1e-6, S23, c) == []


def test_a_gradient_of_another_inputs_shape_and_value_is_swapped_not_misshapen():
    """Affine's backward returning (dW, dx) where (dx, dW) belongs: a swap, not merely a wrong shape."""
    EW = RNG.normal(size=(3, 4))
    c = ctx("affine", DIMS, RNG.normal(size=(2, 4)), others={"W": (EW, np.abs(EW)), "b": (E23[0], S23[0])})
    got = diagnose_gradient("x", E23, EW.copy(), S23, c)
    assert got == [found("swapped", "grad x", "equals the right gradient of W: the two are swapped", SWAP_HINT.format("x"))]
    assert [g["kind"] for g in diagnose_gradient("x", E23, EW + 1.0, S23, c)] == ["shape"]


HINT = "look for a missing or extra division by the batch size (mean vs sum), or a stray 2 or 0.5"


@pytest.mark.parametrize("k,dims,named", [
    (2.0, {"N": 2, "D": 3}, "a factor of 2, which is also N (N=2) here"),
    (0.5, {"N": 2, "D": 5}, "a factor of 1/2, which is also 1/N (N=2) here"),
    (0.5, {"N": 3, "D": 5}, "a factor of 1/2"),
    (2.0, {"N": 1, "D": 3}, "a factor of 2"),  # a size of 1 names nothing
    (1 / 3, {"N": 3, "D": 3}, "a factor of 1/N (N=3) or 1/D (D=3)"),
    (5.0, {"N": 2, "D": 5}, "a factor of D (D=5)"),
    (1.7, {"N": 2, "D": 3}, "a constant factor 1.7"),
    (-3.0, {"N": 2, "D": 3}, "a constant factor -3"),
    (-0.5, {"N": 3, "D": 3}, "a constant factor -0.5"),
])
def test_a_constant_factor_named_by_the_sizes(k, dims, named):
    got = diagnose_gradient("W", E23, k * E23, S23,  # dout 3.7: no factor here is 1/dout (that would be upstream-ignored)
                            Context(derivcheck.load_rule("affine"), None, dims, {}, np.asarray(3.7), np.float64, {}, False))
    assert got == [found("constant-factor", "grad W", f"is off by {named}", HINT, Explains(), factor=pytest.approx(k))]


def test_a_factor_within_a_millionth_of_one_names_nothing():
    got = diagnose_gradient("W", E23, (1 + 1e-7) * E23, S23 * 1e-12,
                            Context(derivcheck.load_rule("affine"), None, DIMS, {}, np.asarray(3.7), np.float64, {}, False))
    assert got == []


def test_a_loss_that_ignores_a_scalar_dout():
    got = diagnose_gradient("x", E23 * 2.5, E23, S23, ctx("softmax_with_loss", {"N": 2, "C": 3}, np.asarray(2.5)))
    assert got == [found("upstream-ignored", "grad x", "is the gradient for dout = 1, but dout was 2.5: it is not multiplied by dout",
                         "multiply by the upstream gradient: dx = dx * dout", Explains())]


def test_a_loss_that_ignores_dout_is_judged_at_the_checks_rounding_scale_not_its_own_size():
    # book 1's SoftmaxWithLoss at N=1, C=2 (seed 35): y - t is small by cancellation, so its rounding scale
    # (about |y| + |t|) is far above its size; the hypothesis is held to that scale, as the check is
    c = 2.5
    at_one = np.array([[1e-12, -1e-12]])
    scale_at_one = np.array([[1.0, 1.0]])
    got = at_one + 1e-17  # within KAPPA * u * 2 of the gradient at dout = 1, far past 1e-12's own rounding
    found_ = diagnose_gradient("x", at_one * c, got, scale_at_one * c, ctx("softmax_with_loss", {"N": 1, "C": 2}, np.asarray(c)))
    assert [f["kind"] for f in found_] == ["upstream-ignored"]


def test_a_layer_that_ignores_dout():
    dims = {"N": 2, "D": 3}
    x = RNG.normal(size=(2, 3))
    c = ctx("sigmoid", dims, RNG.normal(size=(2, 3)), ref={"x": x})
    y = 1 / (1 + np.exp(-x))
    ones_grad = y * (1 - y)
    right = c.cot * ones_grad
    got = diagnose_gradient("x", right, ones_grad, np.abs(right) + 1e-3, c)
    assert got == [found("upstream-ignored", "grad x", "is the gradient for dout = all ones: the upstream gradient is ignored",
                         "multiply by dout", Explains())]


def test_the_input_used_where_the_output_belongs():
    dims = {"N": 2, "D": 3}
    x = RNG.uniform(0.1, 0.9, size=(2, 3))
    c = ctx("sigmoid", dims, RNG.normal(size=(2, 3)), ref={"x": x})
    y = 1 / (1 + np.exp(-x))
    right = c.cot * y * (1 - y)
    wrong = c.cot * x * (1 - x)
    got = diagnose_gradient("x", right, wrong, np.abs(right) + 1e-3, c)
    assert got == [found("input-instead-of-output", "grad x", "is dout * (out * (1 - out)) with the input x where the output belongs",
                         "save the forward output and use it: dout * (out * (1 - out)) with out = the forward's result",
                         Explains())]


def test_a_gradient_that_accumulates_over_calls():
    earlier = [RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))]
    acc = E23 + earlier[0] + earlier[1]
    got = diagnose_gradient("W", E23, acc, S23, ctx("affine", DIMS, np.asarray(2.0), earlier={"W": earlier}))
    assert got == [found("accumulates", "grad W", "equals the sum of this and the earlier calls' gradients: it accumulates",
                         "overwrite the gradient (grads[0][...] = dW), do not add to it (+=)", Explains())]


STALE_HINT = "store what backward needs (x, y, masks) on every forward call"


def _affine_steps():
    """Two calls' values of an affine layer and this call's right dW."""
    old = {"x": RNG.normal(size=(2, 3)), "W": RNG.normal(size=(3, 4)), "b": RNG.normal(size=4)}
    now = {"x": RNG.normal(size=(2, 3)), "W": RNG.normal(size=(3, 4)), "b": RNG.normal(size=4)}
    return old, now, RNG.normal(size=(2, 4))


def _stale_ctx(now, cot, old, earlier_passed=True):
    c = ctx("affine", {"N": 2, "D": 3, "H": 4}, cot, ref=now, earlier={"W": [old["x"].T @ cot]}, earlier_passed=earlier_passed)
    c.earlier_ref = [old]
    return c


def test_stale_state_names_the_value_kept_from_an_earlier_call():
    """AffineStaleInput: x cached on the first call only, so dW = x_old.T @ dout."""
    old, now, cot = _affine_steps()
    right, stale = now["x"].T @ cot, old["x"].T @ cot
    got = diagnose_gradient("W", right, stale, np.abs(right) + 1, _stale_ctx(now, cot, old))
    assert got == [found("stale-state", "grad W", "was right in the first 1 call(s) and is now the gradient with x from "
                         "call 1: state from an earlier call is reused", STALE_HINT, Explains())]


def test_stale_state_with_every_value_from_an_earlier_call():
    """Div's dy = -dout x / y^2 reads x and y: a layer that kept both from call 2 of 3 (the latest before this one)."""
    calls = [{"x": RNG.normal(size=(2, 3)), "y": RNG.uniform(0.5, 2.0, size=(2, 3))} for _ in range(3)]
    cot = RNG.normal(size=(2, 3))
    right, stale = -cot * calls[2]["x"] / calls[2]["y"] ** 2, -cot * calls[1]["x"] / calls[1]["y"] ** 2
    c = ctx("div", {"N": 2, "D": 3}, cot, ref=calls[2], earlier={"y": [right, right]}, earlier_passed=True)
    c.earlier_ref = calls[:2]
    got = diagnose_gradient("y", right, stale, np.abs(right) + 1, c)
    assert got == [found("stale-state", "grad y", "was right in the first 2 call(s) and is now the gradient with every "
                         "value from call 2: state from an earlier call is reused", STALE_HINT, Explains())]


def test_stale_state_needs_the_earlier_calls_to_have_passed_and_a_value_that_explains_it():
    old, now, cot = _affine_steps()
    right, stale = now["x"].T @ cot, old["x"].T @ cot
    assert diagnose_gradient("W", right, stale, np.abs(right) + 1, _stale_ctx(now, cot, old, earlier_passed=False)) == []
    other = RNG.normal(size=(3, 4))  # wrong now, right before, and no earlier value explains it: nothing is claimed
    assert diagnose_gradient("W", right, other, np.abs(right) + 1, _stale_ctx(now, cot, old)) == []


def test_a_mask_applied_to_the_loss_only():
    x = RNG.normal(size=(2, 3, 4))
    y, mask = RNG.integers(0, 4, size=(2, 3)), np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    c = ctx("temporal_softmax_loss", {"N": 2, "T": 3, "V": 4}, np.asarray(1.5), ref={"x": x, "y": y, "mask": mask})
    right = c.derivation.vjp(c.cot, **c.ref)["x"]
    unmasked = c.derivation.vjp(c.cot, x=x, y=y, mask=np.ones_like(mask))["x"]
    got = diagnose_gradient("x", right, unmasked, np.abs(right) + 1e-3, c)
    assert got == [found("mask-ignored", "grad x", "is the gradient with every mask True: the positions mask leaves out "
                         "still get a gradient", "multiply dx by the mask too, as the forward does", Explains())]
    c.ref["mask"] = np.ones_like(mask)  # a mask that leaves nothing out: no such hypothesis to test
    assert "mask-ignored" not in [g["kind"] for g in diagnose_gradient("x", right, unmasked * 0.5, np.abs(right), c)]


def test_a_residual_is_the_candidates_error_over_the_tolerance():
    noisy = -E23 + 1e-15 * np.sign(E23)
    (got,) = diagnose_gradient("x", E23, noisy, S23, ctx("affine", DIMS, np.asarray(2.0)))
    assert got["kind"] == "sign-flipped" and 0 < got["evidence"]["residual_over_tol"] <= 1


def test_values_that_are_not_numbers_get_no_diagnosis():
    assert diagnose_gradient("x", E23, "nonsense", S23, ctx("affine", DIMS, np.asarray(2.0))) == []


def test_a_factor_is_settled_by_every_failing_trial():
    f = found("constant-factor", "grad W", "is off by a factor of 2, which is also N (N=2) here", HINT, factor=2.0)
    settle_factor(f, [(2.0, {"N": 2, "D": 3}), (2.0, {"N": 3, "D": 2})])
    assert f["message"] == "grad W: is off by a factor of 2 (in each of 2 failing trials)"
    g = dict(f, message="unchanged")
    settle_factor(g, [(3.0, {"N": 3, "D": 2}), (5.0, {"N": 5, "D": 2})])
    assert g["message"] == "grad W: is off by a factor of N (in each of 2 failing trials)"
    h = dict(f, message="unchanged")
    settle_factor(h, [(0.25, {"N": 4, "D": 2}), (1 / 3, {"N": 3, "D": 2})])
    assert h["message"] == "grad W: is off by a factor of 1/N (in each of 2 failing trials)"
    one = dict(f, message="unchanged")
    settle_factor(one, [(2.0, {"N": 2})])  # one trial cannot tell 2 from N
    assert one["message"] == "unchanged"
    none = dict(f, message="unchanged")
    settle_factor(none, [(2.0, {"N": 2}), (7.0, {"N": 3})])
    assert none["message"] == "unchanged"
    # one number at every size, named after a size in the first trial only (a 2x2 window's 4 when IH = 4)
    same = dict(f, message="grad W: is off by a factor of IH (IH=4)")
    settle_factor(same, [(4.0, {"IH": 4, "IW": 5}), (4.0, {"IH": 3, "IW": 3}), (4.0, {"IH": 2, "IW": 2})])
    assert same["message"] == "grad W: is off by a constant factor 4 (in each of 3 failing trials)"


def test_a_wrong_forward():
    c = Check("forward", False, index=[1, 2], expected=0.5, got=0.25, abs_err=0.25, tol=1e-15)
    assert diagnose_forward(c) == {"check": "forward", "kind": "forward-wrong",
                                   "message": "forward: the output itself is wrong (out[1,2]: expected 0.5, got 0.25); "
                                              "gradients built on it are suspect too",
                                   "hint": "fix the forward pass first", "evidence": {"residual_over_tol": c.severity}}
    shape = Check("forward", False, message="forward output has shape (3,), expected (2,)")
    assert diagnose_forward(shape)["message"] == "forward: forward output has shape (3,), expected (2,)"


# -- where "explains every element" ends: each hypothesis at 0.5 and 1.5 of its tolerance ----------------
# A candidate explains the layer when its worst error is within the check's tolerance in the run's dtype
# (residual <= 1). float32 is used so that a residual of 0.5 there is far past float64's tolerance.

from derivcheck.checks import KAPPA, unit_roundoff  # noqa: E402


def _tol(candidate, scale, dtype):
    s = np.broadcast_to(np.abs(np.asarray(scale, dtype=np.float64)), np.shape(candidate)) + np.abs(candidate)
    return KAPPA * unit_roundoff(dtype) * (s + s.max())


def _nudge(candidate, scale, dtype, ratio, at=0):
    """``candidate`` with element ``at`` moved by ``ratio`` times its tolerance there (the worst element)."""
    out = np.array(candidate, dtype=np.float64, copy=True)
    out.flat[at] += ratio * _tol(candidate, scale, dtype).flat[at]
    return out


def _case_transposed_shape(ratio, dt):
    G = _nudge(E23.T, S23.T, dt, ratio, at=1)
    return "W", E23, G, S23, ctx("affine", DIMS, np.asarray(2.0), dtype=dt), "transposed"


def _case_missing_reduction(ratio, dt):
    E, S = RNG.normal(size=4), np.abs(RNG.normal(size=4)) + 1
    bump = _nudge(E, S, dt, ratio) - E  # the error lands on the summed result
    G = np.stack([E * 0.25, E * 0.75 + bump])
    return "b", E, G, S, ctx("affine", DIMS, np.asarray(2.0), dtype=dt), "missing-reduction"


def _case_wrong_axis(ratio, dt):
    c = RNG.normal(size=(2, 4))
    R = c.sum(axis=1)
    G = _nudge(R, np.abs(c).sum(axis=1), dt, ratio)
    return "b", c.sum(axis=0), G, np.abs(c).sum(axis=0), ctx("affine", DIMS, c, dtype=dt), "wrong-axis"


def _case_extra_reduction(ratio, dt):
    G = _nudge(E23.sum(axis=0), S23.sum(axis=0), dt, ratio)
    return "x", E23, G, S23, ctx("affine", DIMS, np.asarray(1.7), dtype=dt), "extra-reduction"


def _case_permuted(ratio, dt):
    E = RNG.normal(size=(2, 3, 4))
    S = np.abs(E) + 1
    G = _nudge(E.transpose(1, 2, 0), S.transpose(1, 2, 0), dt, ratio)
    return "x", E, G, S, ctx("affine", DIMS, np.asarray(2.0), dtype=dt), "transposed"


def _case_square_transposed(ratio, dt):
    E = RNG.normal(size=(3, 3))
    S = np.array([[1.0, 50.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])  # the scale transposes with the gradient
    G = _nudge(E.T, S.T, dt, ratio, at=3)
    return "W", E, G, S, ctx("affine", DIMS, np.asarray(2.0), dtype=dt), "transposed"


def _case_sign(ratio, dt):
    return "x", E23, _nudge(-E23, S23, dt, ratio), S23, ctx("affine", DIMS, np.asarray(2.0), dtype=dt), "sign-flipped"


def _case_factor(ratio, dt):
    k = 5.0  # the candidate's scale is |k| times the check's
    # the factor is fitted to G (least squares), which absorbs part of a nudge: nudge the smallest element, which moves it least
    G = _nudge(k * E23, k * S23, dt, ratio, at=int(np.argmin(np.abs(E23))))
    c = Context(derivcheck.load_rule("affine"), None, {"N": 2, "D": 5}, {}, np.asarray(3.7), dt, {}, False)
    return "W", E23, G, S23, c, "constant-factor"


def _case_upstream_scalar(ratio, dt):
    c = 2.5
    G = _nudge(E23 / c, S23 / c, dt, ratio)  # held to the check's own scale at dout = 1
    return "x", E23, G, S23, ctx("softmax_with_loss", {"N": 2, "C": 3}, np.asarray(c), dtype=dt), "upstream-ignored"


def _case_upstream_ones(ratio, dt):
    x = RNG.normal(size=(2, 3))
    c = ctx("sigmoid", {"N": 2, "D": 3}, RNG.normal(size=(2, 3)), ref={"x": x}, dtype=dt)
    y = 1 / (1 + np.exp(-x))
    ones = y * (1 - y)  # the gradient at dout = all ones
    scale = c.derivation.evaluate(np.ones((2, 3)), x=x)[2]["x"]  # the rounding scale the check would have at dout = all ones
    return "x", c.cot * ones, _nudge(ones, scale, dt, ratio), np.abs(c.cot * ones) + 1e-3, c, "upstream-ignored"


def _case_input_for_output(ratio, dt):
    x = RNG.uniform(0.1, 0.9, size=(2, 3))
    c = ctx("sigmoid", {"N": 2, "D": 3}, RNG.normal(size=(2, 3)), ref={"x": x}, dtype=dt)
    y = 1 / (1 + np.exp(-x))
    right, wrong = c.cot * y * (1 - y), c.cot * x * (1 - x)
    S = np.abs(right) + 1e-3
    return "x", right, _nudge(wrong, S, dt, ratio), S, c, "input-instead-of-output"


def _case_accumulates(ratio, dt):
    earlier = [RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))]
    acc = E23 + earlier[0] + earlier[1]
    G = _nudge(acc, S23 * 3, dt, ratio)
    return "W", E23, G, S23, ctx("affine", DIMS, np.asarray(2.0), earlier={"W": earlier}, dtype=dt), "accumulates"


def _case_swapped(ratio, dt):
    Ey, Sy = RNG.normal(size=(2, 3)), np.abs(RNG.normal(size=(2, 3))) + 1  # the other input's gradient and scale
    G = _nudge(Ey, Sy, dt, ratio)
    return "x", E23, G, S23, ctx("mul", {"N": 2, "D": 3}, np.asarray(2.0), dtype=dt, others={"y": (Ey, Sy)}), "swapped"


def _case_stale(ratio, dt):
    old, now, cot = _affine_steps()
    right, S = now["x"].T @ cot, np.abs(now["x"].T @ cot) + 1
    c = _stale_ctx(now, cot, old)
    c.dtype = dt
    stale = old["x"].T @ cot  # dW = xᵀ·dout with the earlier call's x: by hand, not by the derivation under test
    return "W", right, _nudge(stale, S, dt, ratio), S, c, "stale-state"


def _case_mask(ratio, dt):
    x, y, mask = RNG.normal(size=(2, 3, 4)), RNG.integers(0, 4, size=(2, 3)), np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    c = ctx("temporal_softmax_loss", {"N": 2, "T": 3, "V": 4}, np.asarray(1.5), ref={"x": x, "y": y, "mask": mask}, dtype=dt)
    right = c.derivation.vjp(c.cot, **c.ref)["x"]
    S = np.abs(right) + 1e-3
    return "x", right, _nudge(c.derivation.vjp(c.cot, x=x, y=y, mask=np.ones_like(mask))["x"], S, dt, ratio), S, c, "mask-ignored"


def _case_kept_rows(ratio, dt):
    rows = RNG.normal(size=(3, 4))
    E = rows.sum(axis=0, keepdims=True)
    G = rows.copy()
    G[0] += (_nudge(E, np.abs(E) + 1, dt, ratio) - E)[0]  # the error lands on the summed row
    return "biases", E, G, np.abs(E) + 1, ctx("affine_nnfs", DIMS, rows, dtype=dt), "missing-reduction"


def _case_diagonal(ratio, dt):
    x, c, p, right = _softmax_case()
    diagonal = c * p * (1 - p)
    S = np.abs(right) + 1
    G = _nudge(diagonal, S + np.abs(diagonal), dt, ratio)  # judged with the candidate's own size added to the scale
    return "x", right, G, S, ctx("softmax", {"N": 2, "C": 3}, c, ref={"x": x}, dtype=dt), "diagonal-only"


def _case_mask_inverted(ratio, dt):
    x, c = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    right = c * (x > 0)
    inverted = c - right
    G = _nudge(inverted, np.abs(right) + 1 + np.abs(c), dt, ratio)  # judged with dout's size added to the scale
    return "x", right, G, np.abs(right) + 1, ctx("relu", {"N": 3, "D": 4}, c, ref={"x": x}, dtype=dt), "mask-inverted"


def _case_first_example(ratio, dt):
    ref, c = _affine_values()
    S = np.abs(c).sum(axis=0) + 1
    G = _nudge(c[0], S, dt, ratio)
    return "b", c.sum(axis=0), G, S, ctx("affine", {"N": 3, "D": 2, "H": 4}, c, ref=ref, dtype=dt), "first-example-only"


def _case_weight_decay(ratio, dt):
    ref, c = _affine_values()
    ref["W"] = 1000 * ref["W"]  # large: the term's own size counts in the tolerance (_ratio adds the candidate's)
    ref["W"].flat[0] = 0.0  # the fitted coefficient then cannot absorb the nudge of element 0
    right = ref["x"].T @ c
    S = np.abs(right) + 1
    decayed = right + 0.01 * ref["W"]
    G = _nudge(decayed, S, dt, ratio)
    return "W", right, G, S, ctx("affine", {"N": 3, "D": 2, "H": 4}, c, ref=ref, dtype=dt), "weight-decay"


def _case_epsilon(ratio, dt):
    ref, dout, out, dgamma = _batchnorm_at(0.01)
    c = ctx("batchnorm", {"N": 4, "D": 3}, dout, ref=ref, dtype=dt)
    E = np.asarray(c.derivation.vjp(dout, **ref)["gamma"])
    S = np.abs(E) + 1
    G = _nudge(dgamma, S + np.abs(dgamma), dt, ratio)
    return "gamma", E, G, S, c, "epsilon"


CASES = [_case_transposed_shape, _case_missing_reduction, _case_wrong_axis, _case_extra_reduction, _case_permuted,
         _case_square_transposed, _case_sign, _case_factor, _case_upstream_scalar, _case_upstream_ones,
         _case_input_for_output, _case_accumulates, _case_swapped, _case_stale, _case_mask, _case_kept_rows,
         _case_diagonal, _case_mask_inverted, _case_first_example, _case_weight_decay, _case_epsilon]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[6:] for c in CASES])
def test_a_hypothesis_holds_within_its_tolerance_in_the_runs_dtype(case):
    name, E, G, S, c, kind = case(0.7, np.float32)
    got = diagnose_gradient(name, E, G, S, c)
    assert kind in [g["kind"] for g in got], got
    (residual,) = [g["evidence"]["residual_over_tol"] for g in got if g["kind"] == kind]
    assert 0.2 < residual <= 1.0


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[6:] for c in CASES])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_a_hypothesis_past_its_tolerance_is_not_claimed(case, dt):
    name, E, G, S, c, kind = case(1.2, dt)
    assert kind not in [g["kind"] for g in diagnose_gradient(name, E, G, S, c)]


def test_a_wrong_axis_needs_the_right_gradient_to_be_the_sum_over_the_other_axis():
    c = RNG.normal(size=(2, 4))
    E = _nudge(c.sum(axis=0), np.abs(c).sum(axis=0), np.float64, 1.5)  # not quite dout summed over axis 0
    got = diagnose_gradient("b", E, c.sum(axis=1), np.abs(c).sum(axis=0), ctx("affine", DIMS, c))
    assert "wrong-axis" not in [g["kind"] for g in got]


def test_a_gradient_of_the_wrong_shape_that_no_sum_of_dout_gives_is_a_shape_mistake():
    c = RNG.normal(size=(2, 4))
    got = diagnose_gradient("b", c.sum(axis=0), RNG.normal(size=2), np.abs(c).sum(axis=0), ctx("affine", DIMS, c))
    assert [g["kind"] for g in got] == ["shape"]


@pytest.mark.parametrize("k,dims,named", [
    (2 * (1 + 7e-7), {"N": 5}, "a factor of 2"),  # within a millionth of 2: named
    (3 * (1 + 7e-7), {"N": 3}, "a factor of N (N=3)"),
    ((1 / 3) * (1 + 5e-6), {"N": 3}, "a constant factor 0.333335"),  # five millionths off 1/3: not named
    (2.0, {"N": 2, "D": 2}, "a factor of 2, which is also N (N=2) or D (D=2) here"),
])
def test_a_factor_is_named_within_a_millionth(k, dims, named):
    got = diagnose_gradient("W", E23, k * E23, S23,
                            Context(derivcheck.load_rule("affine"), None, dims, {}, np.asarray(3.7), np.float64, {}, False))
    assert [g["message"] for g in got] == [f"grad W: is off by {named}"]


def test_settling_a_factor_takes_halves_and_tolerates_a_millionth():
    half = found("constant-factor", "grad W", "m", HINT, factor=0.5)
    settle_factor(half, [(0.5, {"N": 2}), (0.5, {"N": 3})])
    assert half["message"] == "grad W: is off by a factor of 1/2 (in each of 2 failing trials)"
    near = found("constant-factor", "grad W", "m", HINT, factor=2.0)
    settle_factor(near, [(2 * (1 + 7e-7), {"N": 2}), (2 * (1 + 7e-7), {"N": 3})])
    assert near["message"] == "grad W: is off by a factor of 2 (in each of 2 failing trials)"


SCALED_TANH = """
name = "scaled_tanh"
summary = "tanh(a x)"
formula = "tanh(a * x)"
output = ["N", "D"]
derivative_from_output = "a * (1 - out ** 2)"

[inputs.x]
shape = ["N", "D"]

[hyper.a]
type = "float"
default = 0.5
"""


def test_the_input_for_the_output_under_a_rule_with_a_hyperparameter(tmp_path):
    from derivcheck.engine.rules import load_rule_file

    (tmp_path / "scaled_tanh.toml").write_text(SCALED_TANH)
    rule = load_rule_file(tmp_path / "scaled_tanh.toml")
    dims = {"N": 2, "D": 3}
    x = RNG.uniform(-0.9, 0.9, size=(2, 3))
    d = reference.at(rule, rule.resolve_hyper({"a": 0.5}), dims)
    c = Context(rule, d, dims, {"x": x}, RNG.normal(size=(2, 3)), np.float64, {}, False)
    y = np.tanh(0.5 * x)
    right, wrong = c.cot * 0.5 * (1 - y ** 2), c.cot * 0.5 * (1 - x ** 2)
    got = diagnose_gradient("x", right, wrong, np.abs(right) + 1e-3, c)
    assert [g["kind"] for g in got] == ["input-instead-of-output"]


def test_a_gradient_of_zeros_is_not_a_factor_of_0():
    got = diagnose_gradient("W", E23, np.zeros_like(E23), S23,
                            Context(derivcheck.load_rule("affine"), None, DIMS, {}, np.asarray(3.7), np.float64, {}, False))
    assert got == []


def test_the_right_axis_is_found_in_the_runs_dtype():
    c = RNG.normal(size=(2, 4))
    E = _nudge(c.sum(axis=0), np.abs(c).sum(axis=0), np.float32, 0.5)  # dout summed over axis 0, to float32's digits
    got = diagnose_gradient("b", E, c.sum(axis=1), np.abs(c).sum(axis=0), ctx("affine", DIMS, c, dtype=np.float32))
    assert [g["kind"] for g in got] == ["wrong-axis"]


def test_every_reading_that_fits_every_trial_is_named():
    f = found("constant-factor", "grad W", "m", HINT, factor=2.0)
    settle_factor(f, [(2.0, {"N": 2}), (2.0, {"N": 2})])
    assert f["message"] == "grad W: is off by a factor of 2 or N (in each of 2 failing trials)"


def test_a_sum_kept_as_a_row_is_not_a_missing_sum():
    # np.sum(dout, axis=0, keepdims=True): the right values in shape (1, D); "sum it" would contradict the code
    E = RNG.normal(size=4)
    got = diagnose_gradient("b", E, E[None, :], np.abs(E) + 1, ctx("affine", DIMS, RNG.normal(size=(2, 4))))
    assert [f["kind"] for f in got] == ["kept-axis"]
    assert got[0]["message"] == "grad b: has shape (1, 4): the right values, with the summed axis kept (keepdims=True)"


def test_a_missing_transpose_of_the_weight_is_named_at_equal_sizes():
    # dx = dout @ W instead of dout @ W.T: the first bug the README promises; at N = D = H it is wrong values
    x, W, b = RNG.normal(size=(3, 3)), RNG.normal(size=(3, 3)), RNG.normal(size=3)
    cot = RNG.normal(size=(3, 3))
    c = ctx("affine", {"N": 3, "D": 3, "H": 3}, cot, ref={"x": x, "W": W, "b": b})
    right = cot @ W.T
    got = diagnose_gradient("x", right, cot @ W, np.abs(cot) @ np.abs(W.T) + 1, c)
    assert [f["kind"] for f in got] == ["operand-transposed"]
    assert got[0]["message"].startswith("grad x: is the gradient with W transposed")


def test_every_kind_the_code_can_name_is_one_a_catalogue_may_name():
    # the kinds live in vocab.DIAGNOSIS_KINDS (what a catalogue row may name); a kind added in the code but not
    # there could never be pinned by a broken example
    import re
    from pathlib import Path

    from derivcheck.vocab import DIAGNOSIS_KINDS

    code = "".join(p.read_text() for p in Path(derivcheck.__file__).parent.rglob("*.py") if p.name != "report.py")  # (its doc)
    named = set(re.findall(r'_found\(\s*"([a-z-]+)"', code)) | set(re.findall(r'"kind": "([a-z-]+)"', code)) \
        | set(re.findall(r'kind="([a-z-]+)"', code))
    assert named and named <= set(DIAGNOSIS_KINDS), named - set(DIAGNOSIS_KINDS)


@pytest.mark.parametrize("k,said", [(0.5, "0.5 times the rule's"), (0.0, "left out")])
def test_a_regularization_term_at_another_multiple_is_named(k, said):
    # assignment 1's commonest bug: dW += reg * W for a loss with reg * sum(W ** 2) (whose gradient is 2 * reg * W)
    dims = {"N": 3, "D": 4, "C": 3}
    rule = derivcheck.load_rule("linear_svm_loss")
    X, W = RNG.normal(size=(3, 4)), RNG.normal(size=(4, 3))
    y = np.eye(3)[[0, 2, 1]]
    c = ctx("linear_svm_loss", dims, 1.0, ref={"W": W, "X": X, "y": y}, hyper={"reg": 0.3})
    right = c.derivation.vjp(c.cot, **c.ref)["W"]
    data = right - 2 * 0.3 * W  # the data loss's gradient alone
    got = diagnose_gradient("W", right, data + k * 2 * 0.3 * W, np.abs(right) + 1, c)
    assert [f["kind"] for f in got] == ["regularization"], got
    assert said in got[0]["message"] and rule.name


def test_a_sign_flip_with_an_ignored_dout_is_named_as_both():
    # it was "off by a constant factor -0.3589" (that is -1/dout): neither mistake named
    got = diagnose_gradient("x", E23 * 2.5, -E23, S23, ctx("softmax_with_loss", {"N": 2, "C": 3}, np.asarray(2.5)))
    assert [f["kind"] for f in got] == ["sign-flipped"]
    assert got[0]["message"] == ("grad x: is the gradient for dout = 1 with its sign flipped, and dout was 2.5: the sign "
                                 "is wrong and dout is not multiplied")


AFFINE_SIZES = {"N": 2, "D": 3, "H": 4}
AFFINE_SHAPES = "with x (N, D), W (D, H), b (H,), dout (N, H), an operand is transposed where it should not be, or not where it should"
AFFINE_GRADIENTS = "the rule's gradients are dx = dout @ W.T, dW = x.T @ dout, db = sum(dout, axis=0)"


@pytest.mark.parametrize("numpy_says, a, da, b, db", [
    ("matmul: Input operand 1 has a mismatch in its core dimension 0, with gufunc signature (n?,k),(k,m?)->(n?,m?) "
     "(size 3 is different from 4)", 3, "D", 4, "H"),
    ("shapes (2,4) and (3,4) not aligned: 4 (dim 1) != 3 (dim 0)", 4, "H", 3, "D"),
])
def test_a_raise_that_pairs_two_of_the_rule_s_sizes_names_them(numpy_says, a, da, b, db):
    got = diagnose_raised(f"Affine.backward raised ValueError at layers.py:9: {numpy_says}", "Affine.backward",
                          derivcheck.load_rule("affine"), AFFINE_SIZES)
    assert got == [found("mismatched-sizes", "layer raised", f"Affine.backward multiplied an axis of size {a} ({da}) with "
                         f"one of size {b} ({db}): {AFFINE_SHAPES}",
                         f"in the line the error names, find the product whose operands hold {da} and {db}; {AFFINE_GRADIENTS}",
                         float("inf"))]


def test_a_raise_in_forward_names_the_sizes_without_the_gradients():
    got = diagnose_raised("shapes (2,3) and (4,4) not aligned: 3 (dim 1) != 4 (dim 0)", "Affine.forward",
                          derivcheck.load_rule("affine"), AFFINE_SIZES)
    assert got[0]["hint"] == "in the line the error names, find the product whose operands hold D and H"


@pytest.mark.parametrize("message, dims", [
    ("matmul: ... (size 3 is different from 4)", {"N": 2, "D": 3, "H": 3}),  # 3 is D and H: which one is not known
    ("matmul: ... (size 3 is different from 5)", AFFINE_SIZES),  # 5 is no size of the trial
    ("matmul: ... (size 3 is different from 3)", AFFINE_SIZES),
    ("operands could not be broadcast together with shapes (2,3) (4,)", AFFINE_SIZES),  # not a product's axes
    ("division by zero", AFFINE_SIZES),
])
def test_a_raise_whose_sizes_do_not_name_two_dimensions_has_no_diagnosis(message, dims):
    assert diagnose_raised(message, "Affine.backward", derivcheck.load_rule("affine"), dims) is None


def test_verify_names_the_sizes_a_missing_transpose_paired():
    from pathlib import Path

    from runner import verify_json

    layer = Path(__file__).resolve().parent.parent / "examples" / "broken" / "layers.py"
    result, data = verify_json(f"{layer}:AffineDxWithoutTranspose", "--rule", "affine", "--shape", "N=2,D=3,H=4")
    assert result.exit_code == 1
    assert [(d["kind"], d["check"]) for d in data["diagnosis"]] == [("mismatched-sizes", "layer raised")]
    assert "an axis of size 3 (D) with one of size 4 (H)" in data["diagnosis"][0]["message"]


@pytest.mark.parametrize("rule, dims, sizes, shapes", [
    # a size written as a multiple (TimeLSTM's Wx is (D, 4*H)); LSTM's two outputs: no one dout to show
    ("time_lstm", {"N": 2, "T": 3, "D": 4, "H": 5}, "size 3 is different from 5",
     "xs (N, T, D), Wx (D, 4*H), Wh (H, 4*H), b (4*H,), dout (N, T, H)"),
    ("lstm", {"N": 2, "D": 3, "H": 4}, "size 3 is different from 4",
     "x (N, D), h_prev (N, H), c_prev (N, H), Wx (D, 4*H), Wh (H, 4*H), b (4*H,)"),
    ("softmax_with_loss", {"N": 2, "C": 3}, "size 2 is different from 3", "x (N, C)"),  # a scalar loss: its dout is 1 number
])
def test_the_sizes_of_a_raise_are_named_for_every_kind_of_rule(rule, dims, sizes, shapes):
    got = diagnose_raised(f"matmul: ... ({sizes})", "Layer.forward", derivcheck.load_rule(rule), dims)
    assert got[0]["message"].partition(": with ")[2] == f"{shapes}, an operand is transposed where it should not be, or not where it should"
