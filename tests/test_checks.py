"""compare(): the tolerance, to the bit, and every field of a check (pinned for mutation testing)."""
import numpy as np
import pytest

from derivcheck.checks import KAPPA, Check, compare, reach, tolerance, unit_roundoff

U64 = 2.0**-53
U32 = 2.0**-24


def test_unit_roundoff_is_half_the_machine_epsilon():
    assert unit_roundoff(np.float64) == U64 and unit_roundoff(np.float32) == U32
    assert KAPPA == 4


def test_tolerance_is_kappa_u_times_scale_plus_its_max():
    scale = np.array([1.0, 3.0, 0.0])
    c = compare("grad x", np.zeros(3), np.zeros(3), scale, np.float64)
    assert c.passed and c.name == "grad x"
    # the worst element of an exact match is the first; its tolerance is 4 u (1 + 3)
    assert c.tol == 4 * U64 * (1.0 + 3.0)
    c32 = compare("grad x", np.zeros(3), np.zeros(3), scale, np.float32)
    assert c32.tol == 4 * U32 * (1.0 + 3.0)


@pytest.mark.parametrize("factor,passes", [(0.99, True), (1.01, False)])
def test_an_error_at_the_tolerance_is_the_boundary(factor, passes):
    """An error of exactly 0.99 and 1.01 tolerances: pins κ, u and the max-floor to 1%."""
    scale = np.array([2.0, 0.5])
    tol0 = 4 * U64 * (2.0 + 2.0)
    small = 2.0**-30  # a reference value whose float spacing is far below the tolerance
    got = np.array([small + factor * tol0, 0.0])
    c = compare("forward", np.array([small, 0.0]), got, scale, np.float64)
    assert c.passed is passes
    assert c.index == [0] and c.expected == small and c.got == got[0]
    assert c.abs_err == pytest.approx(factor * tol0, rel=1e-6) and c.tol == tol0
    assert c.rel_err == pytest.approx(c.abs_err / small)


def test_the_worst_element_is_the_largest_error_over_tolerance_not_the_largest_error():
    expected = np.array([[1.0, 100.0]])
    scale = np.array([[1e-3, 1e3]])
    got = expected + np.array([[4e-13, 5e-13]])  # the second error is larger, its ratio to its tolerance smaller
    c = compare("grad W", expected, got, scale, np.float64, where="W.grad", trial=2, step=1, seed=7, dims={"N": 1})
    assert c.index == [0, 0] and c.where == "W.grad" and (c.trial, c.step, c.seed, c.dims) == (2, 1, 7, {"N": 1})
    assert c.passed


def test_nan_and_inf_fail_and_a_zero_reference_has_no_relative_error():
    c = compare("forward", np.array([0.0, 1.0]), np.array([0.0, np.nan]), np.ones(2), np.float64)
    assert not c.passed and c.index == [1] and c.abs_err == np.inf
    z = compare("forward", np.array([0.0]), np.array([1.0]), np.ones(1), np.float64)
    assert not z.passed and z.rel_err == np.inf
    ok = compare("forward", np.array([0.0]), np.array([0.0]), np.ones(1), np.float64)
    assert ok.passed and ok.rel_err == 0.0


def test_a_zero_scale_keeps_a_positive_tolerance():
    c = compare("forward", np.zeros(2), np.zeros(2), np.zeros(2), np.float64)
    assert c.passed and c.tol == np.finfo(np.float64).tiny


@pytest.mark.parametrize("got,message", [
    (None, "the layer gave no value for grad x"),
    (np.array([1j, 0]), "grad x has complex values"),
    ("text", "grad x is a str, not an array of numbers"),
    (np.zeros(3), "grad x has shape (3,), expected (2,)"),
    (np.zeros((2, 1)), "grad x has shape (2, 1), expected (2,)"),
])
def test_what_is_not_a_comparable_array_fails_with_a_sentence(got, message):
    c = compare("grad x", np.zeros(2), got, np.ones(2), np.float64, seed=3)
    assert isinstance(c, Check) and c.name == "grad x" and c.passed is False and c.seed == 3
    assert c.message.startswith(message), c.message
    if message.endswith("complex values"):
        assert "(dtype complex128)" in c.message


def test_a_scalar_may_come_back_as_one_element_but_a_size_one_array_keeps_its_shape():
    assert compare("forward", np.float64(2.0), np.array([2.0]), 1.0, np.float64).passed
    squeezed = compare("grad x", np.ones((1, 1)), np.ones(1), np.ones((1, 1)), np.float64)
    assert not squeezed.passed and "shape (1,), expected (1, 1)" in squeezed.message


def test_severity_is_error_over_tolerance():
    c = Check("x", False, abs_err=3.0, tol=2.0)
    assert c.severity == 1.5
    assert Check("x", True).severity == 0.0 and Check("x", False).severity == np.inf
    assert Check("x", False, abs_err=1.0, tol=0.0).severity == np.inf


def test_an_error_exactly_at_the_tolerance_passes():
    tol = 4 * U64 * 2.0
    c = compare("forward", np.array([0.0]), np.array([tol]), np.array([1.0]), np.float64)
    assert c.abs_err == c.tol == tol and c.passed


def test_the_scale_takes_the_results_shape():
    c = compare("forward", np.array([0.0, 1.0]), np.array([0.0, 2.0]), np.array([[1.0, 1.0]]), np.float64)
    assert c.index == [1] and c.passed is False


def test_no_elements_is_nothing_to_compare():
    c = compare("forward", np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)), np.float64, seed=5)
    assert c.passed and c.message == "no elements" and c.name == "forward" and c.seed == 5


def test_comparing_infinities_raises_no_floating_point_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare("forward", np.array([np.inf, 1.0]), np.array([np.inf, np.inf]), np.array([np.inf, 1.0]), np.float64)
    assert c.passed is False


def test_a_result_that_is_not_floating_point_is_judged_in_the_runs_dtype():
    """An integer array (a layer returning argmax indices, or ints by mistake) has no float precision of its own."""
    from derivcheck.check.judge import judged_dtype

    assert judged_dtype(np.arange(3), np.float64) is np.float64
    assert judged_dtype(np.arange(3, dtype=np.int8), np.float32) is np.float32
    assert judged_dtype(np.ones(2, dtype=np.float32), np.float64) is np.float32  # book 2's dtype='f' buffers
    assert judged_dtype(np.ones(2, dtype=np.float16), np.float32) is np.float32  # never below float32
    assert judged_dtype(np.ones(2, dtype=np.float16), np.float64) is np.float32
    assert judged_dtype([1.0, 2.0], np.float32) is np.float32  # a list has no dtype


def test_reach_is_the_largest_tolerance_over_the_largest_exact_value_in_the_judged_dtype():
    """checks.reach, which the loose-tolerance note reports: tol = κ·u·(s + max s) at its largest, over max |exact|."""
    expected, scale = np.array([0.5, -2.0, 1.0]), np.array([1.0, 3.0, 2.0])
    for dtype in (np.float64, np.float32):
        assert reach(expected, scale, dtype) == pytest.approx(KAPPA * unit_roundoff(dtype) * (3.0 + 3.0) / 2.0, rel=1e-12)
    assert reach(expected, scale, np.float32) / reach(expected, scale, np.float64) == pytest.approx(2.0 ** 29)
    # no size to be relative to: every exact value 0, or no values at all
    assert reach(np.zeros(3), scale, np.float64) == 0.0
    assert reach(np.zeros((0, 2)), np.zeros((0, 2)), np.float64) == 0.0
    assert tolerance(np.zeros((0, 2)), np.float64).shape == (0, 2)  # nothing to tolerate, and no error
