"""ML-From-Scratch's convention (style mlfs): layers that update their own parameters through optimizer
copies, activation functions with gradient(x), element-wise losses with the labels first."""
import textwrap
from pathlib import Path

import numpy as np
import pytest

from derivcheck.check.conventions.mlfs import ProbeOptimizer
from derivcheck.check.conventions.registry import detect_style
from derivcheck.check.loading import load_target
from runner import failing, run, verify_json

MLFS = Path(__file__).resolve().parent.parent / "examples" / "mlfs" / "layers.py"


def test_its_three_kinds_of_class_are_told_apart_from_the_books():
    for name in ("Dense", "Dropout", "Sigmoid", "SoftPlus", "SquareLoss", "CrossEntropy"):
        assert detect_style(*load_target(f"{MLFS}:{name}")) == "mlfs", name
    examples = MLFS.parents[1]
    assert detect_style(*load_target(f"{examples / 'nnfs' / 'layers.py'}:Layer_Dense")) == "nnfs"
    assert detect_style(*load_target(f"{examples / 'dlfs1' / 'layers.py'}:Affine")) == "dlfs1"


@pytest.mark.parametrize("name,rule", [("Dense", "affine_nnfs"), ("Dropout", "dropout"), ("SquareLoss", "square_loss"),
                                       ("CrossEntropy", "cross_entropy_mlfs"), ("ELU", "elu"), ("LeakyReLU", "leaky_relu")])
def test_names_give_the_rule_in_this_convention_s_form(name, rule):
    """Dense's bias w0 is (1, H), as nnfs's; CrossEntropy is every output's own yes/no question."""
    result, data = verify_json(f"{MLFS}:{name}", "--trials", "2")
    assert result.exit_code == 0, result.output
    assert (data["rule"], data["style"]) == (rule, "mlfs")


def test_the_probe_optimizer_records_each_gradient_and_takes_a_step():
    probe = ProbeOptimizer()
    w, g = np.array([[1.0, 2.0]]), np.array([[0.25, -0.5]])
    assert np.array_equal(probe.update(w, g), [[0.75, 2.5]])
    (seen, grad), = probe.updates
    assert seen is w and np.array_equal(grad, g)
    g[0, 0] = 9.0  # a buffer the layer reuses later does not change what was recorded
    assert grad[0, 0] == 0.25
    assert probe.update(w, np.ones((3, 2))) is w  # a gradient of another shape is recorded, the parameter kept
    import copy

    assert copy.copy(probe).updates == [] and copy.deepcopy(probe).updates == []


LAYERS = '''
import copy
import numpy as np


class Layer:
    def set_input_shape(self, shape):
        self.input_shape = shape


class DenseOneOptimizer(Layer):
    """One optimizer for both parameters, no copies."""
    def __init__(self, n_units):
        self.n_units = n_units

    def initialize(self, optimizer):
        self.W = np.zeros((self.input_shape[0], self.n_units))
        self.w0 = np.zeros((1, self.n_units))
        self.opt = optimizer

    def forward_pass(self, X, training=True):
        self.X = X
        return X @ self.W + self.w0

    def backward_pass(self, accum_grad):
        W = self.W
        self.W = self.opt.update(self.W, self.X.T @ accum_grad)
        self.w0 = self.opt.update(self.w0, accum_grad.sum(axis=0, keepdims=True))
        return accum_grad @ W.T


class DenseDeepCopies(DenseOneOptimizer):
    def initialize(self, optimizer):
        super().initialize(optimizer)
        self.W_opt, self.w0_opt = copy.deepcopy(optimizer), copy.deepcopy(optimizer)

    def backward_pass(self, accum_grad):
        W = self.W
        self.W = self.W_opt.update(self.W, self.X.T @ accum_grad)
        self.w0 = self.w0_opt.update(self.w0, accum_grad.sum(axis=0, keepdims=True))
        return accum_grad @ W.T


class DenseNeverUpdatesBias(DenseDeepCopies):
    def backward_pass(self, accum_grad):
        W = self.W
        self.W = self.W_opt.update(self.W, self.X.T @ accum_grad)
        return accum_grad @ W.T


class DenseBiasAsVector(DenseDeepCopies):
    def initialize(self, optimizer):
        super().initialize(optimizer)
        self.w0 = np.zeros(self.n_units)


class Stateless:
    def forward_pass(self, X, training=True):
        return X

    def backward_pass(self, accum_grad):
        return accum_grad


class ELUPointOne:
    def __init__(self):
        self.alpha = 0.1

    def __call__(self, x):
        return np.where(x > 0, x, self.alpha * (np.exp(np.minimum(x, 0)) - 1))

    def gradient(self, x):
        return np.where(x > 0, 1.0, self.alpha * np.exp(np.minimum(x, 0)))


class Flatten:
    def forward_pass(self, X, training=True):
        self.prev_shape = X.shape
        return X.reshape((X.shape[0], -1))

    def backward_pass(self, accum_grad):
        return accum_grad.reshape(self.prev_shape)


class DenseOfPairs(DenseDeepCopies):
    """A constructor derivcheck cannot fill from sizes: its pair is given one number."""
    def __init__(self, pair):
        super().__init__(4)
        self.pair = pair

    def initialize(self, optimizer):
        height, width = self.pair
        super().initialize(optimizer)


class DenseOfTwoSizes(DenseDeepCopies):
    def __init__(self, n_units, n_heads):
        super().__init__(n_units)


class NotAnyKind:
    def apply(self, x):
        return x
'''


@pytest.fixture
def layers(tmp_path):
    path = tmp_path / "mlfs_own.py"
    path.write_text(textwrap.dedent(LAYERS))
    return path


@pytest.mark.parametrize("name", ["DenseOneOptimizer", "DenseDeepCopies"])
def test_a_layer_passes_however_it_holds_its_optimizers(layers, name):
    result, data = verify_json(f"{layers}:{name}", "--rule", "affine_nnfs", "--trials", "2")
    assert result.exit_code == 0, result.output
    assert data["style"] == "mlfs"


def test_a_parameter_whose_optimizer_is_never_called_has_no_gradient(layers):
    result, data = verify_json(f"{layers}:DenseNeverUpdatesBias", "--rule", "affine_nnfs", "--trials", "1")
    assert result.exit_code == 1, result.output
    assert failing(data) == ["grad biases"]


def test_the_updated_weights_used_for_dx_are_caught():
    broken = MLFS.parents[1] / "broken" / "mlfs_layers.py"
    result, data = verify_json(f"{broken}:DenseDxFromUpdatedWeights", "--rule", "affine_nnfs", "--trials", "1")
    assert result.exit_code == 1, result.output
    assert failing(data) == ["grad inputs"]


def test_parameters_of_another_shape_than_the_rule_s_are_exit_2_with_what_to_do(layers):
    result = run("verify", f"{layers}:DenseBiasAsVector", "--rule", "affine_nnfs")
    assert result.exit_code == 2, result.output
    assert "initialize made w0 of shape (4,)" in result.output and "pick the rule it implements" in result.output


def test_a_layer_without_parameters_checks_its_input_gradient(layers):
    result, data = verify_json(f"{layers}:Stateless", "--rule", "identity", "--trials", "1")
    assert result.exit_code == 0, result.output


def test_a_class_of_none_of_its_kinds_is_refused_under_its_style(layers):
    result = run("verify", f"{layers}:NotAnyKind", "--rule", "relu", "--style", "mlfs")
    assert result.exit_code == 2, result.output
    assert "style mlfs needs a class with forward_pass and backward_pass" in result.output


def test_an_activation_s_own_constant_is_checked_at_the_value_passed(layers):
    """ML-From-Scratch's ELU defaults to alpha = 0.1 where the rule's is 1.0: --hyper alpha=0.1 checks it there."""
    assert verify_json(f"{layers}:ELUPointOne", "--rule", "elu", "--trials", "1")[0].exit_code == 1
    result, data = verify_json(f"{layers}:ELUPointOne", "--rule", "elu", "--hyper", "alpha=0.1", "--trials", "2")
    assert result.exit_code == 0, result.output


def test_a_loss_s_labels_come_first_and_only_y_pred_has_a_gradient():
    result, data = verify_json(f"{MLFS}:SquareLoss", "--trials", "1")
    assert result.exit_code == 0, result.output
    assert sorted(c["name"] for c in data["checks"]) == ["forward", "grad y_pred"]


def test_a_batchnorm_with_its_own_epsilon_is_told_which_to_pass():
    """The example's BatchNormalization adds 0.01, as ML-From-Scratch's does: the rule's 1e-5 fails it, naming 0.01."""
    result, data = verify_json(f"{MLFS}:BatchNormalization", "--trials", "1")
    assert result.exit_code == 1, result.output
    assert {d["kind"] for d in data["diagnosis"]} == {"epsilon"}
    assert "--hyper eps=0.01" in data["diagnosis"][0]["hint"]
    assert verify_json(f"{MLFS}:BatchNormalization", "--hyper", "eps=0.01", "--trials", "1")[0].exit_code == 0


def test_a_layer_whose_rule_declares_no_output_shape_is_not_taken_for_a_loss(layers):
    """flatten's output shape is its formula's (not declared): a layer all the same."""
    result, data = verify_json(f"{layers}:Flatten", "--rule", "flatten", "--trials", "1")
    assert result.exit_code == 0, result.output


def test_a_layer_that_cannot_be_built_from_the_rule_s_sizes_is_exit_2_not_a_failure(layers):
    result = run("verify", f"{layers}:DenseOfPairs", "--rule", "affine_nnfs")
    assert result.exit_code == 2, result.output
    assert "derivcheck built DenseOfPairs(pair=4)" in result.output
    assert "DenseOfPairs.initialize raised TypeError" in result.output and "pick the rule it implements" in result.output


def test_a_reshape_of_each_example_is_its_own_rule(tmp_path):
    (tmp_path / "shapes.py").write_text(textwrap.dedent('''
        class Reshape:
            def __init__(self, shape):
                self.shape = shape

            def forward_pass(self, X, training=True):
                self.prev_shape = X.shape
                return X.reshape((X.shape[0],) + self.shape)

            def backward_pass(self, accum_grad):
                return accum_grad.reshape(self.prev_shape)
        '''))
    result, data = verify_json(f"{tmp_path / 'shapes.py'}:Reshape", "--trials", "2")
    assert result.exit_code == 0, result.output
    assert data["rule"] == "reshape_mlfs"


def test_a_constructor_needing_more_sizes_than_the_rule_has_is_told_which(layers):
    result = run("verify", f"{layers}:DenseOfTwoSizes", "--rule", "affine_nnfs")
    assert result.exit_code == 2, result.output
    assert ("DenseOfTwoSizes(n_units, n_heads): derivcheck gives a constructor's required parameters the rule's "
            "hyperparameters by name, then the sizes of the layer's parameters that its input does not have, and has "
            "nothing for n_heads") in result.output
