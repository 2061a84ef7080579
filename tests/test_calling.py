"""Exit 1 only on evidence: a layer derivcheck could not call as its convention says is exit 2, with what to do.

And a result whose dtype hides a lower precision (float32 inside float64) is a dtype finding, not a wrong layer.
"""
import json
import textwrap


from runner import run

AFFINE = '''
import numpy as np


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = self.dW = self.db = None

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b
'''


def verify_affine(tmp_path, body, *args, name="Affine"):
    path = tmp_path / "layer.py"
    path.write_text(AFFINE + textwrap.indent(textwrap.dedent(body), "    "))
    result = run("verify", f"{path}:{name}", "--rule", "affine", *args)
    return result


def test_a_backward_by_another_name_is_never_forward_only(tmp_path):
    # a wrong backward named backprop: checking the forward alone would call it verified (exit 0)
    result = verify_affine(tmp_path, """
        def backprop(self, dout):
            self.dW = self.x.T @ dout * 2  # wrong, and never called by a check of the forward alone
            self.db = dout.sum(axis=0)
            return dout @ self.W.T
    """)
    assert result.exit_code == 2, result.output
    assert "has no backward method, but it has backprop()" in result.output
    assert "def backward(self, dout): return self.backprop(dout)" in result.output


def test_a_backward_with_a_required_parameter_more_is_not_called_a_wrong_layer(tmp_path):
    result = verify_affine(tmp_path, """
        def backward(self, dvalues, y_true):
            self.dW = self.x.T @ dvalues
            self.db = dvalues.sum(axis=0)
            return dvalues @ self.W.T
    """)
    assert result.exit_code == 2, result.output
    assert "Affine.backward takes (dvalues, y_true): y_true is required besides the upstream gradient" in result.output


def test_a_backward_that_takes_no_upstream_gradient_is_exit_2(tmp_path):
    result = verify_affine(tmp_path, """
        def backward(self):
            return None
    """)
    assert result.exit_code == 2, result.output
    assert "Affine.backward takes (): no upstream gradient" in result.output


def test_a_backward_whose_extra_parameters_have_defaults_is_called(tmp_path):
    result = verify_affine(tmp_path, """
        def backward(self, dout, scale=1.0):
            self.dW = self.x.T @ dout * scale
            self.db = dout.sum(axis=0)
            return dout @ self.W.T
    """)
    assert result.exit_code == 0, result.output


def test_a_forward_that_returns_nothing_is_exit_2_and_names_where_it_kept_the_output(tmp_path):
    path = tmp_path / "layer.py"
    path.write_text(textwrap.dedent('''
        class Dense:
            def __init__(self, W, b):
                self.W, self.b = W, b

            def forward(self, x):
                self.x = x
                self.output = x @ self.W + self.b

            def backward(self, dout):
                self.dW = self.x.T @ dout
                self.db = dout.sum(axis=0)
                return dout @ self.W.T
    '''))
    result = run("verify", f"{path}:Dense", "--rule", "affine")
    assert result.exit_code == 2, result.output
    assert "Dense's forward returned None" in result.output and "self.output" in result.output


FLOAT32_DOT = """
def backward(self, dout):
    dot = lambda a, b: (a.astype(np.float32) @ b.astype(np.float32))  # what nnfs.init()'s np.dot returns
    self.dW = dot(self.x.T, dout)
    self.db = dout.sum(axis=0)
    return dot(dout, self.W.T)
"""


def float32_forward(tmp_path, *args):
    path = tmp_path / "layer.py"
    path.write_text(AFFINE.replace("return x @ self.W + self.b",
                                   "return (x.astype(np.float32) @ self.W.astype(np.float32)) + self.b  # float64 bias")
                    + textwrap.indent(textwrap.dedent(FLOAT32_DOT), "    "))
    return run("verify", f"{path}:Affine", "--rule", "affine", "--format", "json", *args)


def test_float32_inside_a_float64_output_is_a_dtype_finding(tmp_path):
    result = float32_forward(tmp_path)
    data = json.loads(result.output)
    assert result.exit_code == 0, result.output
    said = [w["message"] for w in data["warnings"] if w["kind"] == "dtype"]
    assert any(m.startswith("forward output is float64, but its values carry only float32's precision") for m in said), said
    assert any("gradient of W" in m and "float32" in m for m in said), said
    assert not any(c["name"] == "forward" and not c["passed"] for c in data["checks"])


def test_float32_inside_float64_fails_under_strict(tmp_path):
    result = float32_forward(tmp_path, "--strict")
    assert result.exit_code == 1, result.output


def test_an_error_of_float32s_size_in_an_all_float64_layer_still_fails(tmp_path):
    # no result of the call is float32, so nothing says the layer computes in float32: the error is the layer's
    result = verify_affine(tmp_path, """
        def backward(self, dout):
            self.dW = self.x.T @ dout
            self.db = dout.sum(axis=0)
            return dout @ self.W.T
    """, "--format", "json")
    assert result.exit_code == 0
    path = tmp_path / "layer.py"
    path.write_text(path.read_text().replace("return x @ self.W + self.b", "return (x @ self.W + self.b) * (1 + 1e-7)"))
    result = run("verify", f"{path}:Affine", "--rule", "affine", "--format", "json")
    data = json.loads(result.output)
    assert result.exit_code == 1
    assert any(c["name"] == "forward" and not c["passed"] for c in data["checks"])


def test_a_file_of_a_package_that_imports_relatively_is_imported_as_its_module(tmp_path):
    # CS231n's fast_layers.py and classifiers/cnn.py: `from .layers import *`, `from ..layer_utils import *`
    pkg = tmp_path / "course"
    (pkg / "classifiers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text("def double(x):\n    return 2 * x\n")
    (pkg / "classifiers" / "mine.py").write_text(textwrap.dedent('''
        from ..layers import double


        def relu_forward(x):
            return double(x) / 2 * (x > 0), x


        def relu_backward(dout, cache):
            return dout * (cache > 0)
    '''))
    result = run("verify", f"{pkg / 'classifiers' / 'mine.py'}:relu_forward", "--rule", "relu")
    assert result.exit_code == 0, result.output
    mine = pkg / "classifiers" / "mine.py"
    mine.write_text("from .missing import nothing\n" + mine.read_text())
    result = run("verify", f"{pkg / 'classifiers' / 'mine.py'}:relu_forward", "--rule", "relu")
    assert result.exit_code == 2
    assert "as course.classifiers.mine (it imports relatively, so as a module of its package" in result.output


TILING_POOL = '''
import numpy as np


def max_pool_forward_fast(x, pool_param):
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    assert (H - ph) % s == 0, "Invalid height"  # the course's documented precondition
    assert (W - pw) % s == 0, "Invalid width"
    oh, ow = (H - ph) // s + 1, (W - pw) // s + 1
    out = np.zeros((N, C, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * s:i * s + ph, j * s:j * s + pw].max(axis=(2, 3))
    return out, (x, pool_param)


def max_pool_backward_fast(dout, cache):
    x, pool_param = cache
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    dx = np.zeros_like(x)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            win = x[:, :, i * s:i * s + ph, j * s:j * s + pw]
            mask = win == win.max(axis=(2, 3), keepdims=True)
            dx[:, :, i * s:i * s + ph, j * s:j * s + pw] += mask * dout[:, :, i, j][:, :, None, None]
    return dx
'''


def test_trials_respect_a_layers_documented_precondition(tmp_path):
    # the example sizes (IW=5 with a 2x2 pool, stride 2) broke the course's assert, and its AssertionError was a FAIL
    (tmp_path / "fast.py").write_text(TILING_POOL)
    result = run("verify", f"{tmp_path / 'fast.py'}:max_pool_forward_fast", "--trials", "8")
    assert result.exit_code == 0, result.output
    result = run("verify", f"{tmp_path / 'fast.py'}:max_pool_forward_fast", "--shape", "IW=5")
    assert result.exit_code == 2, result.output
    assert "needs sizes where (IW + 2*0 - pool_width) is a multiple of stride" in result.output


def test_a_stem_that_names_a_forward_backward_pair_takes_the_sequence_rule():
    # CS231n's rnn_layers.py:lstm means lstm_forward/lstm_backward (a sequence), not the single-step rule lstm
    from derivcheck.check.targets import guess_rule

    from bindings import EXAMPLES

    layers = EXAMPLES / "functional" / "layers.py"
    assert guess_rule(f"{layers}:lstm") == "lstm_sequence"
    assert guess_rule(f"{layers}:rnn") == "rnn_sequence"
    assert guess_rule(f"{layers}:rnn_step") == "rnn"  # the cell, by its own name
    assert guess_rule(f"{EXAMPLES / 'dlfs2' / 'layers.py'}:LSTM") == "lstm"  # book 2's class: the cell


def test_a_call_derivcheck_builds_that_does_not_fit_the_signature_is_exit_2():
    from bindings import EXAMPLES

    result = run("verify", f"{EXAMPLES / 'functional' / 'layers.py'}:lstm", "--rule", "lstm")
    assert result.exit_code == 2, result.output
    assert "derivcheck could not call lstm_forward as its convention says" in result.output


def test_a_function_beside_its_backward_is_a_forward_not_a_loss(tmp_path):
    # the deeplearning.ai course: relu(Z) -> (A, cache) beside relu_backward(dA, cache); it was read as a loss
    # (loss, dx), its cache compared with a gradient, and a correct relu FAILed
    (tmp_path / "dnn_utils.py").write_text(textwrap.dedent('''
        import numpy as np


        def relu(Z):
            return np.maximum(0, Z), Z


        def relu_backward(dA, cache):
            dZ = np.array(dA, copy=True)
            dZ[cache <= 0] = 0
            return dZ
    '''))
    result = run("verify", f"{tmp_path / 'dnn_utils.py'}:relu")
    assert result.exit_code == 0, result.output
    assert "(relu_backward(...)[0])" in result.output


def test_an_import_that_does_not_finish_is_exit_2_not_the_layers_fail(tmp_path):
    (tmp_path / "script.py").write_text("import time\ndata = time.sleep(60)  # reads a large dataset at the top level\n\n"
                                        "def relu_forward(x):\n    return x * (x > 0), x\n\n"
                                        "def relu_backward(dout, cache):\n    return dout * (cache > 0)\n")
    result = run("verify", f"{tmp_path / 'script.py'}:relu_forward", "--timeout", "2")
    assert result.exit_code == 2, result.output
    assert "did not finish within 2 s, so no layer of it was called" in result.output


def test_a_forward_output_the_backward_fills_in_later_is_judged_as_it_was_returned(tmp_path):
    # the output buffer is copied as forward returns: a backward that then writes the right values into it
    # cannot make a wrong forward pass
    result = verify_affine(tmp_path, """
        def forward(self, x):
            self.x = x
            self.buf = np.zeros((x.shape[0], self.W.shape[1]))  # BUG: forward returns an empty buffer
            return self.buf

        def backward(self, dout):
            self.buf[...] = self.x @ self.W + self.b  # ... and backward fills it in
            self.dW = self.x.T @ dout
            self.db = dout.sum(axis=0)
            return dout @ self.W.T
    """)
    assert result.exit_code == 1, result.output
    assert "FAIL forward" in result.output


def test_a_layer_raising_a_base_exception_of_its_own_is_its_failure(tmp_path):
    result = verify_affine(tmp_path, """
        def backward(self, dout):
            class Stop(BaseException):
                def __str__(self):
                    raise RuntimeError("no message either")
            raise Stop()
    """)
    assert result.exit_code == 1, result.output
    assert "Affine.backward raised Stop" in result.output and "its __str__ raised" in result.output


def test_a_time_limit_that_never_ends_is_refused(tmp_path):
    for bad in ("inf", "nan", "0", "-1"):
        result = verify_affine(tmp_path, """
            def backward(self, dout):
                return dout
        """, "--timeout", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "finite positive number of seconds" in result.output or "--timeout" in result.output, (bad, result.output)
