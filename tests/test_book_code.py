"""Correct code as the books write it never fails; each case is a small layer of our own with the books' habit.

The habits: a project folder imported as ``from common.functions import *``; forward-only
helpers; layers for other ranks (book 2's Time layers); float32 buffers (``dtype='f'``);
``log(y + 1e-7)`` in a loss and a ``backward(dout=1)`` that ignores ``dout``; DeZero
functions composing Functions; softmax over one class; a max over all axes.
"""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

import derivcheck
from derivcheck.errors import DerivcheckError
from derivcheck.check.verify import verify
from runner import console_script, run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


FUNCTIONS = "import numpy as np\n\ndef sigmoid(x):\n    return 1 / (1 + np.exp(-x))\n"
LAYERS = '''import numpy as np
from common.functions import *


class Sigmoid:
    def forward(self, x):
        self.out = sigmoid(x)
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out
'''


@pytest.mark.parametrize("package", [True, False], ids=["with __init__", "namespace package"])
def test_a_file_in_a_project_folder_imports_its_siblings_by_package(tmp_path, package):
    book = tmp_path / "book"
    (book / "common").mkdir(parents=True)
    (book / "ch05").mkdir()
    (book / "common" / "functions.py").write_text(FUNCTIONS)
    (book / "common" / "layers.py").write_text(LAYERS)
    if package:
        (book / "common" / "__init__.py").write_text("")
    for cwd, target in ((book, "common/layers.py:Sigmoid"), (book / "ch05", "../common/layers.py:Sigmoid"),
                        (tmp_path, "book/common/layers.py:Sigmoid")):
        p = console_script("verify", target, cwd=cwd)
        assert p.returncode == 0 and "verdict: PASS" in p.stdout, (cwd, p.stdout, p.stderr)


def test_a_module_target_is_found_from_the_current_folder(tmp_path):
    (tmp_path / "mylib").mkdir()
    (tmp_path / "mylib" / "__init__.py").write_text("")
    (tmp_path / "mylib" / "layers.py").write_text(FUNCTIONS + LAYERS.replace("from common.functions import *\n", ""))
    p = console_script("verify", "mylib.layers:Sigmoid", cwd=tmp_path)
    assert p.returncode == 0, (p.stdout, p.stderr)
    missing = console_script("verify", "nolib.layers:Sigmoid", "--rule", "sigmoid", cwd=tmp_path)
    assert missing.returncode == 2 and f"not found in {tmp_path}" in missing.stderr, missing.stderr


def test_an_import_that_cannot_be_found_says_where_it_looked(tmp_path):
    (tmp_path / "layers.py").write_text(LAYERS)  # common/ is nowhere
    p = console_script("verify", "layers.py:Sigmoid", cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "No module named 'common'" in p.stderr and f"importable were {tmp_path}" in p.stderr, p.stderr


def test_no_rule_for_a_name_says_how_to_write_one(tmp_path):
    (tmp_path / "l.py").write_text("class InstanceNorm:\n    def forward(self, x):\n        return x\n")
    p = console_script("verify", "l.py:InstanceNorm", cwd=tmp_path)
    assert p.returncode == 2
    assert "`derivcheck rules affine > myrules/instance_norm.toml`" in p.stderr and "--rules myrules" in p.stderr, p.stderr
    assert "docs/rules.md" in p.stderr and "ignoring case and underscores" in p.stderr
    shown = console_script("rules", "affine", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout == (ROOT / "rules" / "affine.toml").read_text()


TIME = '''import numpy as np


class TimeAffine:                     # book 2: N, T, D = x.shape
    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]

    def forward(self, x):
        N, T, D = x.shape
        W, b = self.params
        self.x = x
        return (x.reshape(N * T, -1) @ W + b).reshape(N, T, -1)

    def backward(self, dout):
        N, T, D = self.x.shape
        W, b = self.params
        dout = dout.reshape(N * T, -1)
        self.grads[0][...] = self.x.reshape(N * T, -1).T @ dout
        self.grads[1][...] = dout.sum(axis=0)
        return (dout @ W.T).reshape(N, T, D)


class TanhF32:                        # book 2's Time layers: float32 buffers whatever the input
    def __init__(self):
        self.params, self.grads = [], []

    def forward(self, x):
        out = np.empty(x.shape, dtype='f')
        out[...] = np.tanh(x)
        self.out = out
        return out

    def backward(self, dout):
        dx = np.empty(dout.shape, dtype='f')
        dx[...] = dout * (1 - self.out ** 2)
        return dx


class TanhF32Wrong(TanhF32):
    def backward(self, dout):
        dx = np.empty(dout.shape, dtype='f')
        dx[...] = dout * (1 - self.out)
        return dx


class BrokenForward:                  # raises for a reason of its own: a failure of the layer
    def forward(self, x):
        return undefined_name * x

    def backward(self, dout):
        return dout
'''


@pytest.fixture
def time_layers(tmp_path):
    (tmp_path / "time_layers.py").write_text(TIME)
    return f"{tmp_path}/time_layers.py"


def test_a_layer_for_other_ranks_does_not_fit_the_rule(time_layers):
    with pytest.raises(DerivcheckError) as err:
        verify(f"{time_layers}:TimeAffine", derivcheck.load_rule("affine"))
    msg = str(err.value)
    assert "TimeAffine does not fit rule 'affine'" in msg and "x (2, 3)" in msg and "not enough values to unpack" in msg
    assert "--rule NAME" in msg
    # a layer that raises for its own reasons is still a failing layer
    rep = verify(f"{time_layers}:BrokenForward", derivcheck.load_rule("tanh"))
    assert rep.verdict == "fail" and "NameError" in rep.checks[0].message


def test_float32_buffers_are_judged_in_float32_and_said(time_layers):
    rep = verify(f"{time_layers}:TanhF32", derivcheck.load_rule("tanh"))
    assert rep.verdict == "pass", [(c.name, c.message, c.abs_err, c.tol) for c in rep.checks]
    assert any(w.kind == "dtype" and "judged with float32's precision" in w.message for w in rep.warnings)
    wrong = verify(f"{time_layers}:TanhF32Wrong", derivcheck.load_rule("tanh"))
    assert [c.name for c in wrong.checks if not c.passed] == ["grad x"]


BOOK_LOSS = '''import numpy as np


def softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


class SoftmaxWithLoss:                # book 1 as published: log(y + 1e-7), and dout ignored
    def forward(self, x, t):
        self.t, self.y = t, softmax(x)
        n = x.shape[0]
        return -np.sum(np.log(self.y[np.arange(n), t] + 1e-7)) / n

    def backward(self, dout=1):
        n = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        return dx / n


class SoftmaxWithLossBig(SoftmaxWithLoss):  # an epsilon far from the books' 1e-7: not an alternative
    def forward(self, x, t):
        self.t, self.y = t, softmax(x)
        n = x.shape[0]
        return -np.sum(np.log(self.y[np.arange(n), t] + 1e-3)) / n
'''


def test_the_books_softmax_with_loss_passes_with_a_note_and_a_warning(tmp_path):
    (tmp_path / "loss.py").write_text(BOOK_LOSS)
    rule = derivcheck.load_rule("softmax_with_loss")
    for dtype in ("float64", "float32"):
        rep = verify(f"{tmp_path}/loss.py:SoftmaxWithLoss", rule, dtype=dtype)
        assert rep.verdict == "pass", [(c.name, c.message) for c in rep.checks if not c.passed]
        assert [w.kind for w in rep.warnings] == ["upstream-ignored"], rep.warnings
        assert any(n.startswith("forward is the rule's with eps = 1e-07 (the default is eps = 0.0)") for n in rep.notes), rep.notes
        assert verify(f"{tmp_path}/loss.py:SoftmaxWithLoss", rule, dtype=dtype, strict=True).verdict == "fail"
    # the epsilon the rule names, and no other
    big = verify(f"{tmp_path}/loss.py:SoftmaxWithLossBig", rule)
    assert [c.name for c in big.checks if not c.passed] == ["forward"]
    # asked for explicitly, eps = 1e-7 is the reference and no alternative is tried
    given = verify(f"{tmp_path}/loss.py:SoftmaxWithLoss", rule, hyper={"eps": "1e-7"})
    assert not any("is the rule's with" in n for n in given.notes)


def test_a_rule_hyperparameter_alternative_must_be_valid(tmp_path):
    (tmp_path / "r.toml").write_text('name = "r"\nsummary = "s"\nformula = "x * eps"\n[inputs.x]\nshape = ["N"]\n'
                                     '[hyper.eps]\ntype = "float"\ndefault = 0.0\nalso = [0.0]\n')
    with pytest.raises(DerivcheckError, match="'also' of hyperparameter 'eps' must be a list"):
        derivcheck.engine.rules.load_rule_file(tmp_path / "r.toml")


SOFTMAX_COMPOSED = '''import numpy as np


class SoftmaxSimple:                  # DeZero's softmax_simple, backward through exp, sum and div
    def forward(self, x):
        self.e = np.exp(x)
        self.s = self.e.sum(axis=1, keepdims=True)
        return self.e / self.s

    def backward(self, dout):
        de = dout / self.s
        ds = -np.sum(dout * self.e / self.s ** 2, axis=1, keepdims=True)
        return (de + ds) * self.e
'''


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_zero_exact_gradient_still_admits_rounding(tmp_path, dtype):
    """Softmax over one class: y = 1 and the exact gradient is 0; the layer's terms cancel with rounding."""
    (tmp_path / "s.py").write_text(SOFTMAX_COMPOSED)
    rep = verify(f"{tmp_path}/s.py:SoftmaxSimple", derivcheck.load_rule("softmax"), hyper={"axis": "1"},
                 shape={"N": 1, "C": 1}, dtype=dtype, trials=3, stress=False)
    grad = next(c for c in rep.checks if c.name == "grad x")
    assert rep.verdict == "pass" and grad.tol > 1e-20, (grad, rep.reproduce)


MAX_ALL = '''import numpy as np


class MaxAll:
    def forward(self, x):
        self.x = x
        return x.max()

    def backward(self, dout):
        return (self.x == self.x.max()) * dout
'''


def test_a_max_over_all_axes_is_derived_and_checked(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "max_all.toml").write_text('name = "max_all"\nsummary = "max over every element"\n'
                                                     'formula = "max(x)"\n[inputs.x]\nshape = ["N", "D"]\n')
    (tmp_path / "m.py").write_text(MAX_ALL)
    rule = derivcheck.load_rule("max_all", [tmp_path / "rules"])
    rep = verify(f"{tmp_path}/m.py:MaxAll", rule, shape={"N": 3, "D": 4})
    assert rep.verdict == "pass", [(c.name, c.message) for c in rep.checks]
    wrong = MAX_ALL.replace("(self.x == self.x.max()) * dout", "(self.x == self.x.min()) * dout")
    (tmp_path / "w.py").write_text(wrong)
    assert verify(f"{tmp_path}/w.py:MaxAll", rule, shape={"N": 3, "D": 4}).verdict == "fail"


UNDERSCORES = '''name = "blend"
summary = "prev_h plus x_in times a scale"
formula = "prev_h + x_in * x_scale"

[inputs.prev_h]
shape = ["N", "H"]

[inputs.x_in]
shape = ["N", "H"]

[hyper.x_scale]
type = "float"
default = 2.0
'''


def test_names_with_underscores_bind_as_written(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "blend.toml").write_text(UNDERSCORES)
    (tmp_path / "b.py").write_text("class Blend:\n    def __init__(self, x_scale=2.0):\n        self.s = x_scale\n"
                                   "    def forward(self, prev_h, x_in):\n        return prev_h + x_in * self.s\n"
                                   "    def backward(self, dout):\n        return dout, dout * self.s\n")
    rule = derivcheck.load_rule("blend", [tmp_path / "rules"])
    rep = verify(f"{tmp_path}/b.py:Blend", rule, hyper={"x_scale": "3.0"})
    assert rep.verdict == "pass" and {c.name for c in rep.checks} == {"forward", "grad prev_h", "grad x_in"}
    # an underscore before a digit would name an element's symbol (x_1 is x[1]): refused, with the rule
    (tmp_path / "rules" / "blend.toml").write_text(UNDERSCORES.replace("x_in", "x_1"))
    with pytest.raises(DerivcheckError, match="an underscore must be followed by a letter"):
        derivcheck.engine.rules.load_rule_file(tmp_path / "rules" / "blend.toml")


def test_a_function_of_a_dezero_module_is_dezero_style(tmp_path):
    """linear_simple: a plain function composing DeZero functions, calling no Function class by name."""
    folder = tmp_path / "dz"
    folder.mkdir()
    (folder / "core.py").write_text((EXAMPLES / "dezero_style" / "core.py").read_text())
    (folder / "functions.py").write_text((EXAMPLES / "dezero_style" / "functions.py").read_text()
                                         + "\n\ndef matmul_simple(x, W):\n    return matmul(x, W)\n")
    from derivcheck.check.conventions.registry import detect_style
    from derivcheck.check.loading import load_target

    obj, module, name = load_target(f"{folder}/functions.py:matmul_simple")
    assert detect_style(obj, module, name) == "dezero"
    rep = verify(f"{folder}/functions.py:matmul_simple", derivcheck.load_rule("matmul"))
    assert rep.verdict == "pass" and rep.style == "dezero"


def test_time_in_derivchecks_own_work_is_not_blamed_on_the_layer():
    from derivcheck.check.conventions import base as adapters

    seen = []
    adapters.on_stage = seen.append
    try:
        adapters.call_user(lambda: 1, [], "Layer.forward")
    finally:
        adapters.on_stage = None
    assert seen == ["Layer.forward", adapters.OWN_WORK]


def test_sin_and_cos_are_rules():
    for name, layer in (("sin", np.sin), ("cos", np.cos)):
        rule = derivcheck.load_rule(name)
        d = rule.at(N=2, D=3)
        x = np.linspace(-2, 2, 6).reshape(2, 3)
        assert np.allclose(d.forward(x=x), layer(x))


IDENTITY = '''from core import Function, as_variable
from functions import BroadcastTo


def broadcast_to(x, shape):           # DeZero's: the input itself when nothing is to be broadcast
    if x.shape == shape:
        return as_variable(x)
    return BroadcastTo(shape)(x)
'''


def test_a_dezero_function_that_hands_back_its_input_is_checked(tmp_path):
    """DeZero's backward() on a leaf fails on its missing creator; the gradient of the identity is dout."""
    for name in ("core.py", "functions.py"):
        (tmp_path / name).write_text((EXAMPLES / "dezero_style" / name).read_text())
    (tmp_path / "ops.py").write_text(IDENTITY)
    rule = derivcheck.load_rule("broadcast_to")
    rep = verify(f"{tmp_path}/ops.py:broadcast_to", rule, shape={"N": 1, "D": 3}, trials=2)
    assert rep.verdict == "pass", [(c.name, c.message) for c in rep.checks]


def test_a_guessed_rule_takes_the_conventions_own_form(tmp_path):
    """mean_squared_error is book 1's half sum; a DeZero MeanSquaredError gets sum / N without --rule."""
    p = console_script("verify", f"{EXAMPLES}/dezero_style/functions.py:MeanSquaredError", "--format", "json", cwd=tmp_path)
    rep = json.loads(p.stdout)
    assert p.returncode == 0 and rep["rule"] == "mean_squared_error_dezero", (p.stdout, p.stderr)
    assert any("the dezero convention's mean_squared_error" in n for n in rep["notes"])
    book1 = console_script("verify", f"{EXAMPLES}/functional/layers.py:mean_squared_error", "--format", "json", cwd=tmp_path)
    assert json.loads(book1.stdout)["rule"] == "mean_squared_error"
    # named, the rule is the one named
    named = console_script("verify", f"{EXAMPLES}/dezero_style/functions.py:MeanSquaredError", "--rule", "mean_squared_error",
                "--format", "json", cwd=tmp_path)
    assert named.returncode == 1 and json.loads(named.stdout)["rule"] == "mean_squared_error"  # half sum vs sum / N


def test_a_cs231n_param_dict_is_built_from_the_rules_hyperparameters(tmp_path):
    """batchnorm_forward(x, gamma, beta, bn_param): bn_param gets every hyperparameter (mode, eps) by name."""
    (tmp_path / "layers.py").write_text(textwrap.dedent('''
        import numpy as np

        seen = []

        def batchnorm_forward(x, gamma, beta, bn_param):
            seen.append(dict(bn_param))
            if bn_param["mode"] != "train":
                raise ValueError(bn_param["mode"])
            mu, var = x.mean(axis=0), x.var(axis=0)
            xhat = (x - mu) / np.sqrt(var + bn_param["eps"])
            return gamma * xhat + beta, (xhat, gamma, np.sqrt(var + bn_param["eps"]))

        def batchnorm_backward(dout, cache):
            xhat, gamma, std = cache
            dxhat = dout * gamma
            dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) / std
            return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)
    '''))
    result = run("verify", tmp_path / "layers.py:batchnorm_forward", "--hyper", "eps=1e-6", "--format", "json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["rule"] == "batchnorm" and data["style"] == "functional", result.output


@pytest.mark.parametrize("name,rule", [
    ("sum_squared_error", "mean_squared_error"),  # book 1's common/functions.py
    ("cross_entropy_error", "cross_entropy"),  # books 1 and 2
    ("Simple_TimeAffine", "temporal_affine"),  # book 2's loop-of-layers versions
    ("Simple_TimeSoftmaxWithLoss", "time_softmax_with_loss"),
    ("TimeEmbedding", "time_embedding"),
    ("TimeDropout", "time_dropout"),
    ("Dropout", "dropout"),
    ("Convolution", "convolution"),  # book 1's chapter 7
    ("Pooling", "pooling"),
    ("conv2d", "convolution"),  # DeZero
    ("Deconv2d", "deconvolution"),
    ("deconv2d", "deconvolution"),
    ("GetItem", "get_item"),
    ("get_item", "get_item"),
    ("conv_forward_naive", "convolution"),  # CS231n: the suffix after _forward
    ("conv_backward_naive", "convolution"),
    ("max_pool_forward_naive", "max_pool"),
    ("max_pool_forward_fast", "max_pool"),
    ("batchnorm_backward_alt", "batchnorm"),
])
def test_the_books_own_names_guess_their_rule(name, rule):
    from derivcheck.check.targets import guess_rule

    assert guess_rule(f"layers.py:{name}") == rule


def test_a_subclass_that_overrides_backward_keeps_its_bases_style(tmp_path):
    """A book-2 layer's subclass that only overrides backward has its base's params and grads: dlfs2, not dlfs1."""
    (tmp_path / "sub.py").write_text(textwrap.dedent('''
        import numpy as np


        class Base:
            def __init__(self, W):
                self.params, self.grads = [W], [np.zeros_like(W)]

            def forward(self, x):
                self.x = x
                return x @ self.params[0]

            def backward(self, dout):
                self.grads[0][...] = self.x.T @ dout
                return dout @ self.params[0].T


        class Sub(Base):
            def backward(self, dout):
                return super().backward(dout)
    '''))
    r = console_script("verify", "sub.py:Sub", "--rule", "matmul", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["style"] == "dlfs2"
