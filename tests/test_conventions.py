"""The conventions are found, not listed: each is one module of derivcheck/check/conventions/, and a
new module is a new --style everywhere (detection, the CLI, configs) with nothing else edited."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import derivcheck
from runner import failing
from derivcheck.check.conventions.registry import ADAPTERS, STYLES, detect_style

FOLDER = Path(derivcheck.__file__).parent / "check" / "conventions"


def test_every_module_of_the_folder_is_one_style_in_the_books_order():
    modules = {p.stem for p in FOLDER.glob("*.py")} - {"__init__", "base", "registry"}
    assert {a.__module__.rpartition(".")[2] for a in ADAPTERS.values()} == modules
    assert STYLES == ("dlfs1", "dlfs2", "dezero", "functional", "nnfs", "dlai", "mlfs", "micrograd")


def test_the_surest_claim_wins():
    class Function:  # a DeZero Function is also a class with a forward: dezero's claim (1) beats dlfs1's (4)
        def __call__(self):
            pass

    class Square(Function):
        def forward(self, x):
            return x * x

        def backward(self, gy):
            return gy

    class Book2:
        def __init__(self):
            self.params, self.grads = [], []

        def forward(self, x):
            return x

    def affine_forward(x, w, b):
        return x

    assert detect_style(Square, sys.modules[__name__], "Square") == "dezero"
    assert detect_style(Book2, sys.modules[__name__], "Book2") == "dlfs2"
    assert detect_style(affine_forward, sys.modules[__name__], "affine_forward") == "functional"


TOY = '''
"""A convention of this test's own: fprop(x) and bprop(dout), the names of some older frameworks."""
import inspect

from derivcheck.check.binding import bind
from derivcheck.check.conventions.base import Adapter, Outcome, call_user, own


class FpropAdapter(Adapter):
    style = "fprop"
    order = 70

    @classmethod
    def claims(cls, obj, module, name):
        return 0 if inspect.isclass(obj) and hasattr(obj, "fprop") else None

    def prepare(self):
        self.binding = bind(self.rule, self.obj.__init__, self.obj.fprop, self.name, call_takes_all_inputs=False)

    def build(self, values):
        self.instance = call_user(self.obj, list(self._ctor_args(self.binding, values).items()), f"{self.name}()")

    def run(self, values, cotangent):
        out = own(call_user(self.instance.fprop, self._call_args(self.binding, values), f"{self.name}.fprop"))
        return Outcome(out, {"x": own(call_user(self.instance.bprop, [(None, cotangent)], f"{self.name}.bprop"))})

    def grad_location(self, n):
        return f"{self.name}.bprop(dout)"
'''

LAYERS = '''
import numpy as np


class Relu:
    def fprop(self, x):
        self.mask = x <= 0
        return np.where(self.mask, 0.0, x)

    def bprop(self, dout):
        return np.where(self.mask, 0.0, dout)


class LeakyBprop(Relu):
    def bprop(self, dout):
        return dout  # the mask forgotten
'''


def test_a_new_convention_is_one_new_module(tmp_path):
    """A copy of derivcheck with one more module in conventions/ verifies a layer written in it: detected,
    accepted by --style and by a config, and judged (a correct layer passes, a wrong one fails)."""
    root = Path(derivcheck.__file__).parents[1]
    shutil.copytree(root / "derivcheck", tmp_path / "derivcheck", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "rules", tmp_path / "rules")
    (tmp_path / "derivcheck" / "check" / "conventions" / "fprop.py").write_text(textwrap.dedent(TOY))
    (tmp_path / "layers.py").write_text(textwrap.dedent(LAYERS))
    (tmp_path / "derivcheck.toml").write_text('[[layers]]\ntarget = "layers.py:Relu"\nrule = "relu"\nstyle = "fprop"\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "DERIVCHECK_CACHE_DIR": str(tmp_path / "cache")}

    def derivcheck_(*args):
        return subprocess.run([sys.executable, "-m", "derivcheck", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    found = subprocess.run([sys.executable, "-c", "from derivcheck.check.conventions.registry import STYLES; print(STYLES)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.stdout.strip() == "('dlfs1', 'dlfs2', 'dezero', 'functional', 'nnfs', 'dlai', 'mlfs', 'micrograd', 'fprop')", found.stderr
    ok = derivcheck_("verify", "layers.py:Relu")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout
    wrong = derivcheck_("verify", "layers.py:LeakyBprop", "--rule", "relu", "--style", "fprop")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "grad x" in wrong.stdout
    checked = derivcheck_("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the nnfs book's convention -------------------------------------------------------------------------

NNFS = Path(__file__).resolve().parent.parent / "examples" / "nnfs" / "layers.py"


def test_nnfs_layers_are_told_by_their_dinputs():
    from derivcheck.check.loading import load_target

    for name in ("Layer_Dense", "Activation_ReLU", "Loss_MeanSquaredError", "Activation_Softmax_Loss_CategoricalCrossentropy"):
        assert detect_style(*load_target(f"{NNFS}:{name}")) == "nnfs", name
    dlfs1 = Path(__file__).resolve().parent.parent / "examples" / "dlfs1" / "layers.py"
    assert detect_style(*load_target(f"{dlfs1}:Affine")) == "dlfs1"


def test_nnfs_names_and_forms_of_rules():
    """Layer_, Activation_ and Loss_ are read past; a Dense layer is affine in nnfs's form, weights and
    biases (1, H); its mean squared error is the mean, where book 1's is half the sum."""
    from runner import verify_json

    for name, rule in (("Layer_Dense", "affine_nnfs"), ("Loss_MeanSquaredError", "mean_squared_error_nnfs"),
                       ("Loss_CategoricalCrossentropy", "cross_entropy"),
                       ("Activation_Softmax_Loss_CategoricalCrossentropy", "softmax_with_loss")):
        result, data = verify_json(f"{NNFS}:{name}", "--trials", "2")
        assert result.exit_code == 0, result.output
        assert (data["rule"], data["style"]) == (rule, "nnfs")


def test_an_nnfs_layer_without_the_rules_arrays_is_told_what_to_name(tmp_path):
    from runner import run

    result = run("verify", f"{NNFS}:Layer_Dense", "--rule", "affine")
    assert result.exit_code == 2
    assert "holds no array called W, b after construction" in result.output and "affine_nnfs" in result.output


def test_an_nnfs_forward_that_sets_no_output_fails_naming_it(tmp_path):
    from runner import run

    (tmp_path / "mine.py").write_text(
        "import numpy as np\n\nclass Activation_ReLU:\n    def forward(self, inputs):\n        self.inputs = inputs\n"
        "        return np.maximum(inputs, 0)\n\n    def backward(self, dvalues):\n"
        "        self.dinputs = dvalues * (self.inputs > 0)\n")
    result = run("verify", f"{tmp_path / 'mine.py'}:Activation_ReLU")
    assert result.exit_code == 1, result.output
    assert "Activation_ReLU.forward raised AttributeError" in result.output and "set no self.output" in result.output


def test_an_nnfs_loss_whose_forward_takes_the_training_flag_is_averaged_by_calculate_without_it(tmp_path):
    """calculate(output, y) is the book's Loss method: it gets the prediction and the labels, never forward's flag."""
    from runner import run

    (tmp_path / "losses.py").write_text(
        "import numpy as np\n\nclass Loss:\n    def calculate(self, output, y):\n"
        "        return np.mean(self.forward(output, y, True))\n\n"
        "class Loss_MeanSquaredError(Loss):\n    def forward(self, y_pred, y_true, training):\n"
        "        return ((y_true - y_pred) ** 2).mean(axis=-1)\n\n"
        "    def backward(self, dvalues, y_true):\n        samples, outputs = dvalues.shape\n"
        "        self.dinputs = 2 * (dvalues - y_true) / outputs / samples\n")
    result = run("verify", f"{tmp_path / 'losses.py'}:Loss_MeanSquaredError", "--trials", "2")
    assert result.exit_code == 0, result.output


SCRIPT = '''
import numpy as np
import a_plotting_library_not_installed  # only the script below uses it
print("training")


class Activation_ReLU:
    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.maximum(inputs, 0)

    def backward(self, dvalues):
        self.dinputs = dvalues * (self.inputs > 0)


X = np.random.randn(4, 3)
activation = Activation_ReLU()
activation.forward(X)
total = activation.output.sum()  # reads what the skipped call made: raises, and is skipped
while True:
    pass
'''


def test_a_chapter_file_that_trains_at_its_top_level_is_loaded_for_its_definitions(tmp_path):
    """A book's chapter file is a script: its loops, bare calls and what fails without them are skipped, the
    report says which, and its layers are checked as written."""
    from runner import run

    (tmp_path / "chapter.py").write_text(SCRIPT)
    result = run("verify", f"{tmp_path / 'chapter.py'}:Activation_ReLU")
    assert result.exit_code == 0, result.output
    assert "chapter.py is a script: derivcheck ran its imports and definitions only, and skipped 5 top-level" in result.output
    for skipped in ("line 3: import a_plotting_library_not_installed", "line 4: print", "line 18: activation.forward(X)"):
        assert skipped in result.output


def test_a_script_whose_layer_needs_what_failed_to_import_is_refused(tmp_path):
    from runner import run

    (tmp_path / "chapter.py").write_text(SCRIPT.replace("np.maximum(inputs, 0)", "a_plotting_library_not_installed.clip(inputs)"))
    result = run("verify", f"{tmp_path / 'chapter.py'}:Activation_ReLU")
    assert result.exit_code == 2
    assert "No module named 'a_plotting_library_not_installed'" in result.output


# -- the deeplearning.ai course's convention ----------------------------------------------------------

DLAI = Path(__file__).resolve().parent.parent / "examples" / "dlai" / "dnn_utils.py"


def test_a_module_of_the_course_is_dlai_and_a_lone_pair_stays_cs231ns(tmp_path):
    from derivcheck.check.loading import load_target

    assert detect_style(*load_target(f"{DLAI}:linear_forward")) == "dlai"
    assert detect_style(*load_target(f"{DLAI}:relu")) == "dlai"
    functional = Path(__file__).resolve().parent.parent / "examples" / "functional" / "layers.py"
    assert detect_style(*load_target(f"{functional}:affine_forward")) == "functional"


def test_the_courses_per_example_gradients_are_held_to_the_costs_derivative(tmp_path):
    """linear_backward's dW / m and undivided dA_prev pass; the same pair read as CS231n's (gradients of
    the layer's own output, no m) fails on W and b by a factor of m, which is what the convention undoes."""
    from runner import verify_json

    result, data = verify_json(f"{DLAI}:linear_forward", "--trials", "2")
    assert result.exit_code == 0 and (data["rule"], data["style"]) == ("affine_dlai", "dlai"), result.output
    assert "linear_backward(...)[0] / m" in result.output
    result, data = verify_json(f"{DLAI}:linear_forward", "--rule", "affine_dlai", "--style", "functional", "--trials", "2")
    assert result.exit_code == 1 and failing(data) == ["grad W", "grad b"], result.output


def test_an_import_only_the_files_other_code_needs_is_skipped_and_future_imports_reach_every_statement(tmp_path):
    """The course's dnn_app_utils imports h5py and matplotlib for its data and plots: its steps are checked
    without them, and a step that uses one is stopped saying so (exit 2, not the layer's fault). Statements
    run one by one, each compiled with the file's __future__ imports."""
    from runner import run

    (tmp_path / "dnn_utils.py").write_text(
        "from __future__ import annotations\nimport numpy as np\nimport h5py_not_installed\n\n\n"
        "def relu(Z: np.ndarray) -> tuple[Undefined, Undefined]:\n    return np.maximum(Z, 0), Z\n\n\n"
        "def relu_backward(dA, cache):\n    return dA * (cache > 0)\n\n\n"
        "def sigmoid(Z):\n    h5py_not_installed.File('train.h5')\n    return 1 / (1 + np.exp(-Z)), Z\n\n\n"
        "def sigmoid_backward(dA, cache):\n    s = 1 / (1 + np.exp(-cache))\n    return dA * s * (1 - s)\n")
    result = run("verify", f"{tmp_path / 'dnn_utils.py'}:relu")
    assert result.exit_code == 0, result.output
    assert ("derivcheck skipped 1 top-level statement(s) of dnn_utils.py that raised; the layer does not use what they "
            "make (line 3: import h5py_not_installed (it raised ModuleNotFoundError))") in result.output.replace("\n    ", " ")
    result = run("verify", f"{tmp_path / 'dnn_utils.py'}:sigmoid")
    assert result.exit_code == 2, result.output
    assert "sigmoid used h5py_not_installed, which line 3 of dnn_utils.py could not make" in result.output
