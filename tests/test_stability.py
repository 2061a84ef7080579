"""The extreme-input probe's judgement of one result, exactly (Verifier._stability_of), and the probe's inputs.

Fast: no layer runs in the unit cases, so mutation testing runs them first.
"""
import re
import textwrap
from dataclasses import asdict

import numpy as np
import pytest

import derivcheck
from derivcheck.check.verify import Verifier, verify

from bindings import EXAMPLES

SIGMOID = str(EXAMPLES / "dlfs1" / "layers.py") + ":Sigmoid"
REF = {"x": np.array([[-800.0, 3.0, 800.0], [-2.0, 0.0, 1.0]])}
DIMS = {"N": 2, "D": 3}
EXACT = np.array([[0.0, 0.95, 1.0], [0.12, 0.5, 0.73]], dtype=object)
RANGE = "x in [-800, 800]"


def judge(got, exact=EXACT, dtype="float64", name="forward"):
    v = Verifier(SIGMOID, derivcheck.load_rule("sigmoid"), dtype=dtype)
    c = v._stability_of(name, exact, got, REF, DIMS, 7)
    return None if c is None else {k: val for k, val in asdict(c).items() if val is not None}


def test_right_to_half_the_digits_passes():
    ex = np.array(EXACT, dtype=np.float64)
    assert judge(ex * (1 + 1e-9)) is None
    assert judge(ex) is None


def test_a_misshapen_result_fails():
    assert judge(np.zeros(3)) == {"name": "stability", "passed": False, "seed": 7, "dims": DIMS, "where": "forward",
                                  "message": "forward at extreme inputs is shape (3,), where the exact value has shape (2, 3)"}
    assert judge(None, name="grad x")["message"] == "grad x at extreme inputs is no value, where the exact value has shape (2, 3)"


def test_a_scalar_may_come_back_as_one_element():
    assert judge(np.array([0.25]), exact=np.array(0.25, dtype=object)) is None
    assert judge(np.array([0.25, 0.25]), exact=np.array(0.25, dtype=object))["message"] == (
        "forward at extreme inputs is shape (2,), where the exact value has shape ()")


def test_something_that_is_not_numbers_fails():
    got = np.array([["a", "b", "c"], ["d", "e", "f"]])
    assert judge(got) == {"name": "stability", "passed": False, "seed": 7, "dims": DIMS, "where": "forward",
                          "message": "forward at extreme inputs is a ndarray, not an array of numbers"}


def test_no_value_for_a_scalar_fails():
    assert judge(None, exact=np.array(0.25, dtype=object), name="grad x") == {
        "name": "stability", "passed": False, "seed": 7, "dims": DIMS, "where": "grad x",
        "message": "grad x at extreme inputs is no value, where the exact value has shape ()"}


def test_inf_where_the_exact_value_is_finite_names_the_element():
    got = np.array(EXACT, dtype=np.float64)
    got[0, 2] = np.inf
    assert judge(got) == {"name": "stability", "passed": False, "seed": 7, "dims": DIMS, "where": "forward",
                          "index": [0, 2], "expected": 1.0, "got": float("inf"),
                          "message": f"forward is inf where the exact value is finite (1), at extreme inputs ({RANGE})"}


def test_nan_is_not_finite_either():
    got = np.array(EXACT, dtype=np.float64)
    got[1, 0] = np.nan
    c = judge(got)
    assert c["index"] == [1, 0] and c["message"].startswith("forward is nan where the exact value is finite (0.12)")


def test_an_exact_value_beyond_the_dtype_may_be_inf():
    import mpmath

    exact = np.array([[mpmath.mpf("1e400"), 0.5, 0.5], [0.5, 0.5, 0.5]], dtype=object)
    got = np.array([[np.inf, 0.5, 0.5], [0.5, 0.5, 0.5]])
    assert judge(got, exact=exact) is None  # the dtype cannot hold it: inf is all a layer can give
    got[0, 0] = np.finfo(np.float64).max  # nor is a finite value there judged
    assert judge(got, exact=exact) is None
    got[1, 2] = np.inf
    assert judge(got, exact=exact)["index"] == [1, 2]


def test_beyond_float32_inf_is_all_a_float32_layer_can_give():
    exact = np.array([[1e39, 0.5, 0.5], [0.5, 0.5, 0.5]], dtype=object)  # finite in float64, past float32's max
    got = np.array([[np.inf, 0.5, 0.5], [0.5, 0.5, 0.5]], dtype=np.float32)
    assert judge(got, exact=exact, dtype="float32") is None
    got[0, 0] = np.finfo(np.float32).max  # nor is a finite value there judged
    assert judge(got, exact=exact, dtype="float32") is None
    assert judge(got.astype(np.float64), exact=exact) is not None  # in a float64 run, 1e39 is a value to give


def test_losing_more_than_half_the_digits_fails_with_the_numbers():
    ex = np.array(EXACT, dtype=np.float64)
    got = ex.copy()
    got[1, 1] = 0.5 + 1e-6
    root_u = np.sqrt(np.finfo(np.float64).eps / 2)
    tol = root_u * (0.5 + 1.0)  # |exact| + max(max |exact|, 1)
    assert judge(got) == {"name": "stability", "passed": False, "seed": 7, "dims": DIMS, "where": "forward",
                          "index": [1, 1], "expected": 0.5, "got": 0.5 + 1e-6, "abs_err": pytest.approx(1e-6),
                          "tol": pytest.approx(tol), "rel_err": pytest.approx(2e-6),
                          "message": f"forward loses more than half its digits at extreme inputs ({RANGE})"}
    got[1, 1] = 0.5 + 0.9 * tol
    assert judge(got) is None
    got[1, 1] = 0.5 + 1.5 * tol  # just past it
    assert judge(got)["message"].startswith("forward loses more than half its digits")


def test_an_error_on_an_exact_zero_has_an_infinite_relative_error():
    ex = np.array(EXACT, dtype=np.float64)
    got = ex.copy()
    got[0, 0] = 1e-3
    c = judge(got)
    assert c["index"] == [0, 0] and c["rel_err"] == float("inf")


def test_the_tolerance_is_relative_to_one_for_small_results():
    tiny = np.array([[1e-12, 2e-12, 3e-12], [1e-12, 1e-12, 1e-12]], dtype=object)
    got = np.array(tiny, dtype=np.float64) + 5e-9  # under sqrt(u) * 1
    assert judge(got, exact=tiny) is None
    assert judge(got + 1e-7, exact=tiny)["message"].startswith("forward loses more than half its digits")


def test_an_exact_value_the_dtype_cannot_hold_does_not_hide_a_loss_elsewhere():
    """1e40 is beyond float32: that element is not judged, and does not set the others' tolerance."""
    big = np.array([[1e40, 0.95, 1.0], [0.12, 0.5, 0.73]], dtype=object)
    got = np.array([[3e38, 0.95, 1.0], [0.12, 0.5 + 1e-2, 0.73]], dtype=np.float32)
    c = judge(got, exact=big, dtype="float32")
    assert c["index"] == [1, 1] and c["message"].startswith("forward loses more than half its digits"), c
    got[1, 1] = 0.5
    assert judge(got, exact=big, dtype="float32") is None


def test_float32_is_judged_with_float32s_digits():
    ex = np.array(EXACT, dtype=np.float64)
    got = (ex * (1 + 1e-5)).astype(np.float32)  # half of float32's digits are about 3.5
    assert judge(got, dtype="float32") is None
    assert judge(ex * (1 + 1e-5)) is not None
    # an exact value too small for float32 is 0 there, so a layer returning 0 is right
    small = np.array([[2e-139, 0.5, 0.5], [0.5, 0.5, 0.5]], dtype=object)
    assert judge(np.array([[0.0, 0.5, 0.5], [0.5, 0.5, 0.5]], dtype=np.float32), exact=small, dtype="float32") is None


def test_the_probe_feeds_the_rules_extreme_values_in_the_runs_dtype():
    """sigmoid's stress is uniform in [-800, 800]: the failure message quotes the range the layer got."""
    rule = derivcheck.load_rule("softmax_with_loss")
    for dtype in ("float64", "float32"):
        rep = verify(str(EXAMPLES / "broken" / "layers.py") + ":SoftmaxWithLossNoShift", rule, dtype=dtype, strict=True)
        (c,) = [c for c in rep.checks if not c.passed]
        assert c.seed == 5 and "at extreme inputs (x in [71" in c.message and "76" in c.message, c.message


LAYERS = '''
import numpy as np


class Log:
    def forward(self, x):
        assert x.dtype == np.float32, x.dtype  # its test runs in float32: the probe's values too
        self.x = x
        return np.log(x)

    def backward(self, dout):
        return dout / self.x


class Sigmoid:
    """The backward as the seed's stages give it: dout * exp(-x) / (1 + exp(-x))^2, inf / inf for large negative x."""

    def forward(self, x):
        assert x.dtype == np.float64, x.dtype  # the run's dtype, in the probe too
        self.x = x
        return 1 / (1 + np.exp(-x))

    def backward(self, dout):
        e = np.exp(-self.x)
        return dout * e / (1 + e) ** 2


class Exp32:
    """Takes float32 only, as a layer with float32 buffers might."""

    def forward(self, x):
        assert x.dtype == np.float32, x.dtype  # the run's dtype, in the probe too
        self.out = np.exp(x)
        return self.out

    def backward(self, dout):
        return dout * self.out


class Tanh:
    """Refuses inputs past 100, as some layers check their range."""

    def forward(self, x):
        if np.abs(x).max() > 100:
            raise ValueError("input out of range")
        self.out = np.tanh(x)
        return self.out

    def backward(self, dout):
        return dout * (1 - self.out ** 2)
'''

TINY_LOG = """
name = "log"
summary = "log of values down to float32's smallest"
formula = "log(x)"
output = ["N", "D"]

[inputs.x]
shape = ["N", "D"]
domain = {kind = "uniform", low = 0.2, high = 3.0}
stress = {kind = "uniform", low = 1e-50, high = 1e-46}  # below the smallest float32 (0 there without the lift)
"""


def _layers(tmp_path):
    (tmp_path / "layers.py").write_text(LAYERS)
    return str(tmp_path / "layers.py")


def test_a_positive_stress_domain_stays_positive_in_float32(tmp_path):
    """Values under float32's smallest normal are lifted to it: a correct log is not blamed for log(0)."""
    from derivcheck.engine.rules import load_rule_file

    (tmp_path / "log.toml").write_text(TINY_LOG)
    rep = verify(_layers(tmp_path) + ":Log", load_rule_file(tmp_path / "log.toml"), dtype="float32", trials=1, steps=1,
                 strict=True)
    assert rep.verdict == "pass", [(c.name, c.message) for c in rep.checks if not c.passed]


def test_the_probe_reaches_both_ends_of_the_stress_range_in_the_runs_dtype(tmp_path):
    rep = verify(_layers(tmp_path) + ":Sigmoid", derivcheck.load_rule("sigmoid"), trials=1, steps=1, strict=True)
    (c,) = [c for c in rep.checks if not c.passed]
    assert c.name == "stability" and c.message.startswith("grad x is nan where the exact value is finite")  # x = -800
    assert "x in [-" in c.message


def test_a_layer_that_raises_at_extreme_inputs_fails_stability_and_says_so(tmp_path):
    rep = verify(_layers(tmp_path) + ":Tanh", derivcheck.load_rule("tanh"), trials=1, steps=1, strict=True)
    (c,) = [c for c in rep.checks if not c.passed]
    assert (c.name, c.passed, c.seed) == ("stability", False, 1)
    assert c.message.startswith("at extreme inputs, Tanh.forward raised ValueError at ") and c.message.endswith("input out of range")


def test_the_probe_gives_a_float32_run_float32_values(tmp_path):
    rep = verify(_layers(tmp_path) + ":Exp32", derivcheck.load_rule("exp"), dtype="float32", trials=1, steps=1, strict=True)
    assert rep.verdict == "pass", [(c.name, c.message) for c in rep.checks if not c.passed]


MUL = """
name = "mul"
summary = "x * y"
formula = "x * y"
output = ["N", "D"]

[inputs.x]
shape = ["N", "D"]
stress = {kind = "uniform", low = 100.0, high = 200.0}

[inputs.y]
shape = ["N", "D"]
stress = {kind = "uniform", low = 300.0, high = 400.0}
"""

MUL_LAYER = '''
import numpy as np


class Mul:
    def forward(self, x, y):
        self.x, self.y = x, y
        return np.where(x > 50, np.inf, x * y)  # gives up on large inputs

    def backward(self, dout):
        return dout * self.y, dout * self.x
'''


def test_the_failure_names_the_range_of_every_stressed_input(tmp_path):
    from derivcheck.engine.rules import load_rule_file

    (tmp_path / "mul.toml").write_text(MUL)
    (tmp_path / "mul.py").write_text(MUL_LAYER)
    rep = verify(str(tmp_path / "mul.py") + ":Mul", load_rule_file(tmp_path / "mul.toml"), trials=1, steps=1, strict=True)
    (c,) = [c for c in rep.checks if not c.passed]
    assert re.search(r"at extreme inputs \(x in \[1\d\d, 1\d\d\], y in \[3\d\d, 3\d\d\]\)$", c.message), c.message


RNN_STEP_EXP = '''
import numpy as np


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    a = x @ Wx + prev_h @ Wh + b
    h = (np.exp(a) - np.exp(-a)) / (np.exp(a) + np.exp(-a))  # tanh from exponentials: inf / inf at |a| > 710
    return h, (x, prev_h, Wx, Wh, h)


def rnn_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, h = cache
    da = dnext_h * (1 - h ** 2)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)
'''


@pytest.mark.parametrize("rule", ["rnn", "lstm_step", "rnn_sequence", "time_lstm"])
def test_the_recurrent_cells_are_probed_at_extreme_inputs(rule):
    assert any(i.stress for i in derivcheck.load_rule(rule).inputs.values())


def test_a_tanh_from_exponentials_in_an_rnn_step_fails_under_strict(tmp_path):
    (tmp_path / "rnn.py").write_text(RNN_STEP_EXP)
    target = f"{tmp_path / 'rnn.py'}:rnn_step_forward"
    rep = verify(target, derivcheck.load_rule("rnn"))
    assert rep.verdict == "pass" and [w.kind for w in rep.warnings] == ["numerical-stability"]
    strict = verify(target, derivcheck.load_rule("rnn"), strict=True)
    assert strict.verdict == "fail"
    assert any(c.name == "stability" and not c.passed for c in strict.checks)


def test_the_probe_runs_at_the_example_sizes_whatever_shape_pins():
    # its 50-digit reference costs per element: at --shape N=10000, C=1000 it ran out of time and memory
    rule = derivcheck.load_rule("softmax_with_loss")
    rep = verify(str(EXAMPLES / "dlfs1" / "layers.py") + ":SoftmaxWithLoss", rule, shape={"N": 40, "C": 30}, trials=1)
    stability = next(c for c in rep.checks if c.name == "stability")
    assert stability.passed and stability.dims == rule.example_dims()


def test_a_layer_made_for_its_pinned_sizes_is_probed_at_them(tmp_path):
    (tmp_path / "fixed.py").write_text(textwrap.dedent('''
        import numpy as np


        class Sigmoid:
            def forward(self, x):
                assert x.shape[1] == 7, "this layer is made for 7 features"
                self.out = 1 / (1 + np.exp(-np.clip(x, -500, 500)))
                return self.out

            def backward(self, dout):
                return dout * self.out * (1 - self.out)
    '''))
    rep = verify(f"{tmp_path / 'fixed.py'}:Sigmoid", derivcheck.load_rule("sigmoid"), shape={"D": 7}, trials=1)
    stability = next(c for c in rep.checks if c.name == "stability")
    assert rep.verdict == "pass" and stability.passed and stability.dims["D"] == 7
