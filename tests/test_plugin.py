"""The pytest plugin, run on a sample project with pytester.

Every run is a subprocess: in-process runs restore sys.modules afterwards,
which NumPy's C core and SymPy's lazily imported printers do not survive.
"""
import subprocess
import sys
import textwrap

import pytest

LAYERS = textwrap.dedent("""
    import numpy as np

    class Sigmoid:
        def forward(self, x):
            self.out = 1 / (1 + np.exp(-x))
            return self.out
        def backward(self, dout):
            return dout * self.out * (1 - self.out)

    class SigmoidFromInput(Sigmoid):
        def forward(self, x):
            self.x = x
            return super().forward(x)
        def backward(self, dout):
            return dout * self.x * (1 - self.x)

    class Relu:
        def forward(self, x):
            self.mask = x <= 0
            return np.where(self.mask, 0.0, x)
        def backward(self, dout):
            return np.where(self.mask, 0.0, dout)
""")

CONFIG = textwrap.dedent("""
    trials = 3
    [[layers]]
    target = "layers.py:Sigmoid"
    dtypes = ["float64", "float32"]
    [[layers]]
    target = "layers.py:SigmoidFromInput"
    rule = "sigmoid"
    [[layers]]
    target = "layers.py:Relu"
    group = "known-bad"
    expect = "fail"
""")


@pytest.fixture
def sample(pytester):
    pytester.makefile(".py", layers=LAYERS)
    pytester.makefile(".toml", derivcheck=CONFIG)
    return pytester


def test_bindings_become_items_with_readable_ids(sample):
    result = sample.runpytest_subprocess("--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "derivcheck.toml::Sigmoid-sigmoid-float64",
        "derivcheck.toml::Sigmoid-sigmoid-float32",
        "derivcheck.toml::SigmoidFromInput-sigmoid-float64",
        "derivcheck.toml::Relu-relu-float64",
    ])


def test_good_pass_bad_fails_with_report(sample):
    result = sample.runpytest_subprocess("-rA")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 2 and outcomes["failed"] == 2  # SigmoidFromInput, and Relu that passes though expected to fail
    result.stdout.fnmatch_lines([
        "*FAIL grad x*(SigmoidFromInput.backward(dout))*",
        "*worst element x[[]*expected*got*",
        "*reproduce: derivcheck verify*layers.py:SigmoidFromInput --rule sigmoid*",
    ])
    result.stdout.fnmatch_lines(["*derivcheck Relu-relu-float64*", '[[]XPASS(strict)[]] expect = "fail"'])


def test_marker_group_and_seed_options(sample):
    result = sample.runpytest_subprocess("-m", "derivcheck", "--derivcheck-group", "known-bad", "--derivcheck-seed", "3", "-q")
    outcomes = result.parseoutcomes()
    assert outcomes == {"failed": 1}  # the one Relu binding, an unexpected pass
    result = sample.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.derivcheck:*"])
    result = sample.runpytest_subprocess("--no-derivcheck", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_works_under_xdist(sample):
    result = sample.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 2 and outcomes["failed"] == 2


def test_bad_config_is_a_collection_error(pytester):
    pytester.makefile(".toml", derivcheck='[[layers]]\ntarget = "layers.py:X"\nrul = "x"\n')
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*layer 1: unknown key 'rul'*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_assert_backward_in_a_hand_written_test(pytester):
    pytester.makefile(".py", layers=LAYERS)
    pytester.makepyfile(test_mine=textwrap.dedent("""
        import pytest
        import derivcheck
        from layers import Sigmoid, SigmoidFromInput

        def test_sigmoid():
            report = derivcheck.assert_backward(Sigmoid, rule="sigmoid", dtype="float32", trials=2)
            assert report.verdict == "pass"

        def test_guessed_rule():
            derivcheck.assert_backward(Sigmoid, trials=2)

        def test_bad():
            with pytest.raises(AssertionError, match="FAIL grad x"):
                derivcheck.assert_backward(SigmoidFromInput, rule="sigmoid", trials=2)
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_plugin_is_cheap_to_load():
    code = "import sys, derivcheck.run.plugin; print('sympy' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
