"""The real dezero package (PyPI), verified through the dezero adapter.

dezero needs numpy<1.24 (and matplotlib at import), so it gets a virtual
environment of its own, built once per test run in the background and shared
by the xdist workers (tests/dezero_env.py). Set
DERIVCHECK_SKIP_DEZERO=1 to skip it on a machine without PyPI.
"""
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import DEZERO_ENV, shared_dir
from dezero_env import build as dezero_env_build

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(os.environ.get("DERIVCHECK_SKIP_DEZERO") == "1", reason="DERIVCHECK_SKIP_DEZERO=1"),
    pytest.mark.xdist_group("dezero"),  # kept together where xdist groups; dezero_env is built once either way
]


@pytest.fixture(scope="session")
def dezero_env(tmp_path_factory):
    """Built once per run (see dezero_env.py): usually already under way in the background.

    (The xdist_group mark alone no longer keeps these tests on one worker: with pytest 9.2,
    xdist's loadgroup does not group, pytest-dev/pytest-xdist#1386.)
    """
    return dezero_env_build(shared_dir(tmp_path_factory, DEZERO_ENV))


def derivcheck(venv, *args, cwd=None):
    return subprocess.run([str(venv / "bin" / "derivcheck"), *args], capture_output=True, text=True, cwd=cwd)


# (target, rule or None to guess it, hyperparameters): the book's functions, run from the installed package
TARGETS = [
    ("dezero.functions:Exp", None, {}),
    ("dezero.functions:Log", None, {}),
    ("dezero.functions:Tanh", None, {}),
    ("dezero.functions:Sigmoid", None, {}),
    ("dezero.functions:sigmoid_simple", None, {}),
    ("dezero.functions:Sin", None, {}),
    ("dezero.functions:cos", None, {}),
    ("dezero.functions:ReLU", "relu", {}),
    ("dezero.functions:LeakyReLU", None, {}),
    ("dezero.functions:Clip", None, {}),
    ("dezero.functions:Reshape", "reshape", {}),
    ("dezero.functions:reshape", "reshape", {}),
    ("dezero.functions:Transpose", None, {"axes": [1, 2, 0]}),
    ("dezero.functions:Sum", None, {"axis": 1, "keepdims": False}),
    ("dezero.functions:BroadcastTo", None, {}),
    ("dezero.functions:broadcast_to", None, {}),  # hands its input back at equal shapes
    ("dezero.functions:SumTo", None, {}),
    ("dezero.functions:sum_to", None, {}),
    ("dezero.functions:MatMul", None, {}),
    ("dezero.functions:matmul", None, {}),
    ("dezero.functions:Linear", None, {}),  # an alias of affine
    ("dezero.functions:linear_simple", None, {}),  # a plain function composing functions
    ("dezero.functions:Softmax", None, {"axis": 1}),
    ("dezero.functions:softmax_simple", None, {"axis": 1}),
    ("dezero.functions:LogSoftmax", None, {}),
    ("dezero.functions:Max", None, {"axis": 1}),
    ("dezero.functions:min", None, {}),
    ("dezero.functions:SoftmaxCrossEntropy", None, {}),
    ("dezero.functions:sigmoid_cross_entropy", None, {}),  # an alias of sigmoid_with_loss; DeZero clips, the book adds 1e-7
    ("dezero.functions:binary_cross_entropy", None, {}),  # probabilities drawn inside DeZero's clip
    ("dezero.functions:flatten", None, {}),
    ("dezero.functions:expand_dims", None, {"axis": 2}),  # (a negative axis lands where NumPy's would not: see the rule)
    ("dezero.functions:MeanSquaredError", None, {}),  # the dezero form of the guessed rule
    ("dezero.functions:dropout", None, {}),  # inverted dropout (dropout_dezero): its mask read back from the output
    ("dezero.functions_conv:pooling", None, {}),  # kernel_size binds to (pool_h, pool_w): the rule's [pairs]
    ("dezero.functions_conv:AveragePooling", None, {}),
    ("dezero.functions_conv:conv2d_simple", None, {"stride": 1, "pad": 1}),  # im2col and linear: a composition
    ("dezero.functions_conv:Im2col", None, {"kh": 3, "stride": 2, "pad": 1}),  # kernel_size = (kh, kw): the rule's [pairs]
    ("dezero.functions_conv:im2col", None, {}),
    ("dezero.functions_conv:Deconv2d", None, {"stride": 2, "pad": 1}),  # the adjoint of conv2d: W is (C, F, kh, kw)
    ("dezero.functions_conv:deconv2d", None, {}),
    ("dezero.functions:BatchNorm", None, {}),  # batchnorm_dezero: its running mean and var updated in place, by design
    ("dezero.functions:batch_nrom", None, {}),  # (so spelled in functions.py)
    ("dezero.functions:BatchNorm", "batchnorm_dezero_test", {}),  # test mode: the rule's train sets dezero.Config.train
    ("dezero.functions:batch_nrom", "batchnorm_dezero_test", {}),
    ("dezero.functions:dropout", "dropout_dezero_test", {}),  # test mode: x itself
    ("dezero.functions:embed_id", None, {}),  # W[x]: Variable's operator, among dezero.functions' Function classes
    ("dezero.functions:GetItem", None, {}),  # slices: integer row positions, a label bound to the constructor by name
    ("dezero.functions:get_item", None, {}),
    ("dezero.core:Add", None, {}),
    ("dezero.core:Sub", None, {}),
    ("dezero.core:Mul", None, {}),
    ("dezero.core:Div", None, {}),
    ("dezero.core:Neg", None, {}),
    ("dezero.core:Pow", None, {}),
]


def test_dezero_runs_on_old_numpy(dezero_env):
    out = subprocess.run([str(dezero_env / "bin" / "python"), "-c", "import numpy, dezero; print(numpy.__version__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("1.")


def test_real_dezero_functions_verify(dezero_env, tmp_path):
    """Every function above, both dtypes, through the gate: the books' code as published passes."""
    import tomllib

    lines = ['trials = 3', 'dtypes = ["float64", "float32"]']  # distinct, equal, size-1 sizes: each kind once
    for k, (target, rule, hyper) in enumerate(TARGETS):
        lines += ["", "[[layers]]", f'target = "{target}"', f'name = "f{k}"']
        if rule:
            lines.append(f'rule = "{rule}"')
        if hyper:
            items = ", ".join(f"{n} = {str(v).lower() if isinstance(v, bool) else v}" for n, v in hyper.items())
            lines.append(f"hyper = {{ {items} }}")
    (tmp_path / "derivcheck.toml").write_text("\n".join(lines) + "\n")
    tomllib.loads((tmp_path / "derivcheck.toml").read_text())  # the test's own config is valid
    result = derivcheck(dezero_env, "check", "--format", "json", cwd=tmp_path)
    data = json.loads(result.stdout)
    assert len(data["results"]) == 2 * len(TARGETS), result.stderr
    bad = [(r["target"], r["dtype"], r["verdict"], r["style"], [c for c in r["checks"] if not c["passed"]], r["warnings"])
           for r in data["results"] if r["verdict"] != "pass" or r["style"] != "dezero"]
    assert result.returncode == 0 and not bad, (bad, result.stderr[-2000:])
    # the rule each target was checked with (a target listed twice, once with its test-mode rule named, has both)
    checked = {(r["target"], r["rule"]) for r in data["results"]}
    named = {(target, rule) for target, rule, _ in TARGETS if rule}
    guessed = {target: rule for target, rule in checked - named}
    assert len(guessed) == len(checked - named)  # one guess per target
    assert guessed["dezero.functions:MeanSquaredError"] == "mean_squared_error_dezero"
    assert guessed["dezero.functions:Linear"] == "affine"
    assert guessed["dezero.functions:dropout"] == "dropout_dezero"
    assert guessed["dezero.functions:BatchNorm"] == guessed["dezero.functions:batch_nrom"] == "batchnorm_dezero"
    assert guessed["dezero.functions:embed_id"] == "embedding"
    assert guessed["dezero.functions:GetItem"] == guessed["dezero.functions:get_item"] == "get_item"


def test_broken_function_on_real_dezero_fails(dezero_env, tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        import numpy as np
        from dezero import Function

        class Tanh(Function):
            def forward(self, x):
                return np.tanh(x)

            def backward(self, gy):
                y = self.outputs[0]()
                return gy * (1 - y)  # BUG: should be 1 - y * y
    """))
    result = derivcheck(dezero_env, "verify", "mine.py:Tanh", "--format", "json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["style"] == "dezero"
    assert [c["name"] for c in data["checks"] if not c["passed"]] == ["grad x"]


_NET = """
import numpy as np
import dezero.functions as F
import dezero.layers as L
from dezero import Function, Model


class Sigmoid(Function):
    def forward(self, x):
        return 1 / (1 + np.exp(-x))

    def backward(self, gy):
        x = self.inputs[0]
        return gy * x * (1 - x)  # BUG: y * (1 - y), with y the output


class TwoLayerNet(Model):
    def __init__(self, hidden_size, out_size):
        super().__init__()
        self.l1 = L.Linear(hidden_size)
        self.l2 = L.Linear(out_size)

    def forward(self, x):
        return self.l2(F.sigmoid(self.l1(x)))


class BadNet(TwoLayerNet):
    def forward(self, x):
        return self.l2(Sigmoid()(self.l1(x)))
"""


def test_a_real_dezero_model_is_checked_node_by_node(dezero_env, tmp_path):
    (tmp_path / "net.py").write_text(_NET)
    good = derivcheck(dezero_env, "verify", "net.py:TwoLayerNet", "--trials", "3", "--format", "json", cwd=tmp_path)
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    data = json.loads(good.stdout)
    assert [(layer["name"], layer["rule"]) for layer in data["layers"]] == [("l1", "affine"), ("Sigmoid#1", "sigmoid"), ("l2", "affine")]
    bad = derivcheck(dezero_env, "verify", "net.py:BadNet", "--trials", "3", "--format", "json", cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr[-2000:]
    data = json.loads(bad.stdout)
    assert sorted(c["name"] for c in data["checks"] if not c["passed"]) == ["Sigmoid#1: grad x", "network gradients"]
    assert [d["kind"] for d in data["diagnosis"]] == ["input-instead-of-output"]


@pytest.mark.parametrize("target,message", [
    ("dezero.layers:Linear", "'Linear' is a DeZero Layer"),  # parameters made at the first call: verify linear, or a Model
    ("dezero.models:MLP", "cannot build MLP: its constructor needs fc_output_sizes"),  # found in site-packages, read, not imported
    ("dezero.models:VGG16", "VGG16 does not fit derivcheck's network check"),  # images, not (N, D) vectors
])
def test_real_dezero_layers_and_models_the_checks_do_not_fit_are_refused(dezero_env, tmp_path, target, message):
    result = derivcheck(dezero_env, "verify", target, "--trials", "1", cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, (result.returncode, result.stdout[-1500:], result.stderr[-1500:])
