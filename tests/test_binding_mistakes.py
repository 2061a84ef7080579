"""Mistakes in what was asked are exit 2 with a sentence, never a wrong layer; and what is reported is true."""
from pathlib import Path

import pytest

from runner import run_in

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

HELPERS = '''
import numpy as np

def sigmoid(x):                       # forward-only, as in rnn_layers.py and book 1's functions.py
    return 1 / (1 + np.exp(-x))

class Plain:                          # no forward at all
    def __call__(self, x):
        return x

class Forward:                        # forward only (book 2's ch01)
    def forward(self, x):
        return np.maximum(x, 0)

class ForwardWrong:
    def forward(self, x):
        return np.maximum(x, 0.1)

class TanhOverflows:
    def forward(self, x):
        e, f = np.exp(x), np.exp(-x)
        self.out = (e - f) / (e + f)
        return self.out
    def backward(self, dout):
        return dout * (1 - self.out ** 2)

class SoftplusOverflows:
    def __call__(self, x):
        return np.log(1 + np.exp(x))
    def gradient(self, x):
        return 1 / (1 + np.exp(-x))

class ReluList:
    def forward(self, x):
        self.mask = x <= 0
        return np.maximum(x, 0).tolist()
    def backward(self, dout):
        dx = dout.copy()
        dx[self.mask] = 0
        return dx

class ReluComplex(ReluList):
    def forward(self, x):
        self.mask = x <= 0
        return np.maximum(x, 0) + 0j

def softmax_loss_wrong(x, y):
    shifted = x - x.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = -np.log(p[np.arange(n), y]).sum() / n
    dx = p.copy()
    dx[np.arange(n), y] -= 1
    return loss, dx            # not divided by n
'''


@pytest.fixture
def helpers(tmp_path):
    (tmp_path / "helpers.py").write_text(HELPERS)
    return tmp_path / "helpers.py"


@pytest.mark.parametrize("target,extra,message", [
    ("Plain", ["--rule", "relu", "--style", "dlfs1"], "needs a class with a forward method (and a backward, to check one), and Plain has none"),
    ("TanhOverflows", ["--rule", "tanh", "--style", "functional"], "style functional needs functions, and 'TanhOverflows' is a class"),
])
def test_binding_mistakes_exit_2_with_a_sentence(helpers, target, extra, message):
    p = run_in("verify", f"{helpers}:{target}", *extra, cwd=helpers.parent)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_time_layer_that_is_no_recurrence_keeps_its_rule():
    from derivcheck.check.targets import guess_rule

    assert [guess_rule(f"f.py:{n}") for n in ("TimeAffine", "TimeAttention", "TimeEmbedding")] == [
        "temporal_affine", "time_attention", "time_embedding"]


def test_a_backward_named_as_the_target_is_checked_with_its_forward(tmp_path):
    p = run_in("verify", f"{EXAMPLES}/functional/layers.py:affine_backward", "--rule", "affine", cwd=tmp_path)
    assert p.returncode == 0 and "verdict: PASS" in p.stdout, p.stdout + p.stderr


def test_a_loss_gradient_is_located_in_the_pairs_second_item(helpers):
    p = run_in("verify", f"{helpers}:softmax_loss_wrong", "--rule", "softmax_with_loss", cwd=helpers.parent)
    assert p.returncode == 1
    line = next(ln for ln in p.stdout.splitlines() if "FAIL grad x" in ln)
    assert line.rstrip().endswith("(softmax_loss_wrong(...)[1])"), line


def test_the_stability_hint_fits_the_operation(helpers):
    p = run_in("verify", f"{helpers}:TanhOverflows", "--rule", "tanh", "--style", "dlfs1", "--strict", cwd=helpers.parent)
    assert p.returncode == 1 and "FAIL stability" in p.stdout
    hint = next(ln for ln in p.stdout.splitlines() if "hint:" in ln and "overflow" in ln)
    assert "softmax" not in hint and "np.tanh" in hint
    # without --strict: the ordinary trials pass, so the probe's finding is a warning carrying the same hint
    lenient = run_in("verify", f"{helpers}:TanhOverflows", "--rule", "tanh", "--style", "dlfs1", cwd=helpers.parent)
    assert lenient.returncode == 0 and "- numerical-stability:" in lenient.stdout and "np.tanh" in lenient.stdout


def test_an_exp_overflowing_inside_a_log_is_told_apart_from_a_log_of_zero(helpers):
    """ML-From-Scratch's SoftPlus, log(1 + exp(x)): inf at x > 709, where the log's argument is far from 0."""
    p = run_in("verify", f"{helpers}:SoftplusOverflows", "--rule", "softplus", "--strict", cwd=helpers.parent)
    assert p.returncode == 1 and "FAIL stability" in p.stdout, p.stdout
    hint = next(ln for ln in p.stdout.splitlines() if "hint:" in ln)
    assert "np.logaddexp(0, x)" in hint and "away from 0" not in hint, hint


def test_a_list_output_is_a_warning_and_complex_values_a_failure(helpers):
    listed = run_in("verify", f"{helpers}:ReluList", "--rule", "relu", "--style", "dlfs1", cwd=helpers.parent)
    assert listed.returncode == 0 and "is a Python list, not a NumPy array" in listed.stdout, listed.stdout
    assert run_in("verify", f"{helpers}:ReluList", "--rule", "relu", "--style", "dlfs1", "--strict", cwd=helpers.parent).returncode == 1
    complex_ = run_in("verify", f"{helpers}:ReluComplex", "--rule", "relu", "--style", "dlfs1", cwd=helpers.parent)
    assert complex_.returncode == 1 and "forward has complex values" in complex_.stdout, complex_.stdout


def test_the_gate_summary_shows_warnings_without_strict(helpers):
    (helpers.parent / "derivcheck.toml").write_text(f'[[layers]]\ntarget = "{helpers}:ReluList"\nrule = "relu"\nstyle = "dlfs1"\n')
    p = run_in("check", cwd=helpers.parent)
    assert p.returncode == 0
    row = next(ln for ln in p.stdout.splitlines() if ln.startswith("ReluList"))
    assert "pass (1 warning)" in row


def test_a_rule_with_a_non_finite_reference_is_a_rule_error(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "logneg.toml").write_text('name = "logneg"\nsummary = "log of values that can be negative"\n'
                                       'formula = "log(x)"\noutput = ["N", "D"]\n[inputs.x]\nshape = ["N", "D"]\n')
    (tmp_path / "layers.py").write_text("import numpy as np\nclass Logneg:\n    def forward(self, x):\n        self.x = x\n"
                                        "        return np.log(x)\n    def backward(self, dout):\n        return dout / self.x\n")
    p = run_in("--rules", rules, "verify", f"{tmp_path}/layers.py:Logneg", cwd=tmp_path)
    assert p.returncode == 2 and "gives a non-finite exact output" in p.stderr and "logneg.toml" in p.stderr, p.stdout + p.stderr
    assert "PASS" not in p.stdout


@pytest.mark.parametrize("target,args", [
    ("dlfs2/layers.py:Repeat", ["--hyper", "N=4"]),
    ("dlfs2/layers.py:Repeat", ["--shape", "N=4"]),
    ("dezero_style/functions.py:BroadcastTo", ["--hyper", "shape=4,3"]),
    ("dlfs2/layers.py:Affine", ["--shape", "N=7"]),
])
def test_sizes_given_as_hyperparameters_or_a_partial_shape_are_pinned(tmp_path, target, args):
    p = run_in("verify", f"{EXAMPLES}/{target}", *args, "--format", "json", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    import json

    dims = [c["dims"] for c in json.loads(p.stdout)["checks"] if "dims" in c]
    key, value = args[1].split("=")[0], args[1].split("=")[1]
    want = {"N": 4, "D": 3} if key == "shape" else {key: int(value)}
    assert dims and all(all(d[k] == v for k, v in want.items()) for d in dims), dims


def test_a_size_set_twice_differently_is_refused(tmp_path):
    p = run_in("verify", f"{EXAMPLES}/dlfs2/layers.py:Repeat", "--hyper", "N=4", "--shape", "N=3", cwd=tmp_path)
    assert p.returncode == 2 and "--shape sets N=3, but a hyperparameter sets N=4" in p.stderr, p.stderr


@pytest.mark.parametrize("target,extra,why", [
    ("sigmoid", ["--rule", "sigmoid"], "sigmoid returns one value and has no sigmoid_backward next to it"),
    ("Forward", ["--rule", "relu", "--style", "dlfs2"], "Forward has a forward method and no backward"),
    ("Forward", ["--rule", "relu"], "Forward has a forward method and no backward"),
])
def test_a_forward_only_layer_has_its_forward_checked_and_says_so(helpers, target, extra, why):
    p = run_in("verify", f"{helpers}:{target}", *extra, "--format", "json", cwd=helpers.parent)
    assert p.returncode == 0, (p.stdout, p.stderr)
    import json

    rep = json.loads(p.stdout)
    assert rep["verdict"] == "pass" and rep["forward_only"] == why
    assert [c["name"] for c in rep["checks"] if not c["name"] == "stability"] == ["forward"]
    text = run_in("verify", f"{helpers}:{target}", *extra, cwd=helpers.parent).stdout
    assert f"verdict: PASS (forward only: {why}, so there is no gradient to check)" in text


def test_a_wrong_forward_only_layer_fails(helpers):
    p = run_in("verify", f"{helpers}:ForwardWrong", "--rule", "relu", cwd=helpers.parent)
    assert p.returncode == 1 and "FAIL forward" in p.stdout, p.stdout


def test_dezero_test_mode_needs_the_frameworks_config_switch(tmp_path):
    """A test-mode rule sets DeZero's Config.train around each call; a DeZero-like framework without that
    switch is always in train mode, so its test mode cannot be asked for: exit 2, not a wrong verdict."""
    core = (EXAMPLES / "dezero_style" / "core.py").read_text()
    assert "class Config:" in core
    (tmp_path / "core.py").write_text(core.replace("class Config:", "class Settings:"))
    (tmp_path / "fns.py").write_text(
        "import numpy as np\nfrom core import Function\n\n\nclass BatchNorm(Function):\n"
        "    def __init__(self, mean, var, decay=0.9, eps=2e-5):\n        self.mean, self.var, self.eps = mean, var, eps\n\n"
        "    def forward(self, x, gamma, beta):\n        return gamma * (x - self.mean) / np.sqrt(self.var + self.eps) + beta\n")
    p = run_in("verify", "fns.py:BatchNorm", "--rule", "batchnorm_dezero_test", cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "has no Config class with a train flag to switch" in p.stderr
    # with the switch, the same function (always test mode) passes, and the switch is what decides:
    # the example's BatchNorm, train mode unless Config.train is off, passes its test-mode rule too
    (tmp_path / "core.py").write_text(core)
    assert run_in("verify", "fns.py:BatchNorm", "--rule", "batchnorm_dezero_test", cwd=tmp_path).returncode == 0
    p = run_in("verify", f"{EXAMPLES}/dezero_style/functions.py:BatchNorm", "--rule", "batchnorm_dezero_test", cwd=tmp_path)
    assert p.returncode == 0 and "forward only" in p.stdout, p.stdout + p.stderr


LEAKY = '''
import numpy as np


def leaky_relu_forward(x, {name}=0.01):
    return np.where(x > 0, x, {name} * x), (x, {name})


def leaky_relu_backward(dout, cache):
    x, a = cache
    return np.where(x > 0, dout, a * dout)
'''


def test_a_hyperparameter_binds_by_another_of_its_names_and_a_missed_one_is_named(tmp_path):
    """leaky_relu's slope is CS231n's alpha (one of the rule's names for it): bound, so the layer gets the rule's
    value. Under a name the rule does not know, the layer keeps its own default: the forward fails, and the
    report says which hyperparameter reached nothing and which parameter stayed at its default."""
    (tmp_path / "alpha.py").write_text(LEAKY.format(name="alpha"))
    p = run_in("verify", "alpha.py:leaky_relu_forward", cwd=tmp_path)
    assert p.returncode == 0 and "reaches no parameter" not in p.stdout, p.stdout + p.stderr
    (tmp_path / "leakiness.py").write_text(LEAKY.format(name="leakiness"))
    p = run_in("verify", "leakiness.py:leaky_relu_forward", cwd=tmp_path)
    assert p.returncode == 1 and "FAIL forward" in p.stdout, p.stdout + p.stderr
    assert ("rule hyperparameter slope = 0.2 reaches no parameter of leaky_relu_forward, and its leakiness is left at its "
            "default 0.01: if leakiness is slope, pass --hyper slope=0.01 or name the parameter slope") in p.stdout
    p = run_in("verify", "leakiness.py:leaky_relu_forward", "--hyper", "slope=0.01", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
