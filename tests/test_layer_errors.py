"""A layer that raises: a failing check that says where, or, at the very first call, "this is another operation".

In process (verify()), so that mutation testing sees these paths; tests/test_isolation.py runs
the same through the CLI and the worker process.
"""
import re

import numpy as np
import pytest

import derivcheck
from derivcheck.check import verify as verify_module
from derivcheck.errors import DerivcheckError
from derivcheck.check.verify import Verifier, verify

LAYERS = '''
import numpy as np


class Divides:
    """Raises on every forward call, with an exception that is not about ranks."""
    def forward(self, x):
        raise ZeroDivisionError("no batch to average over")

    def backward(self, dout):
        return dout


class Sequence:
    """Book 2's Time layers take (N, T, D): on the relu rule's 2-D x this is another operation."""
    def forward(self, x):
        N, T, D = x.shape
        self.mask = x <= 0
        return np.maximum(x, 0)

    def backward(self, dout):
        return dout * ~self.mask


class AffineSequence:
    """Book 2's TimeAffine takes x of shape (N, T, D): on the affine rule's 2-D x this is another operation."""
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        N, T, D = x.shape
        return x.reshape(N * T, D) @ self.W + self.b

    def backward(self, dout):
        return dout


class BackwardUnpacks:
    """The same unpacking, in backward: the forward already fit the rule, so the layer is wrong."""
    def forward(self, x):
        self.mask = x <= 0
        return np.maximum(x, 0)

    def backward(self, dout):
        N, T, D = dout.shape
        return dout * ~self.mask


class SquareOnly:
    """Fits the rule (its first trial passes) and fails only where N == D: a bug, not another operation."""
    def forward(self, x):
        if x.shape[0] == x.shape[1]:
            raise IndexError("tuple index out of range")
        self.mask = x <= 0
        return np.maximum(x, 0)

    def backward(self, dout):
        return dout * ~self.mask


class SecondCall:
    """Fails with a rank-like error on its second forward call only."""
    def __init__(self):
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            N, T, D = x.shape
        self.mask = x <= 0
        return np.maximum(x, 0)

    def backward(self, dout):
        return dout * ~self.mask


class Ragged:
    """Returns a ragged list: no array at all."""
    def forward(self, x):
        return [[1.0, 2.0], [3.0]]

    def backward(self, dout):
        return dout
'''


@pytest.fixture
def layers(tmp_path):
    f = tmp_path / "raising.py"
    f.write_text(LAYERS)
    return str(f)


RELU = derivcheck.load_rule("relu")


def _only_failure(rep):
    (c,) = [c for c in rep.checks if c.passed is not True]
    assert c.passed is False
    return c


def test_a_layer_that_raises_fails_with_the_exception_where_and_when(layers):
    rep = verify(f"{layers}:Divides", RELU, seed=4, trials=3)
    assert rep.verdict == "fail" and [c.name for c in rep.checks] == ["layer raised"]
    c = _only_failure(rep)
    assert (c.trial, c.step, c.seed, c.dims) == (0, 0, 4, {"N": 2, "D": 3})  # trial 0's planned sizes (not the seed's)
    assert re.fullmatch(r"Divides\.forward raised ZeroDivisionError at .*raising\.py:8: no batch to average over",
                        c.message), c.message
    assert "--seed 4 --trials 1 --steps 1 --shape N=2,D=3" in rep.reproduce


def test_a_ragged_list_for_an_output_is_a_failure_of_the_forward(layers):
    fwd = next(c for c in verify(f"{layers}:Ragged", RELU, trials=1).checks if c.name == "forward")
    assert not fwd.passed and fwd.message == "forward is a list, not an array of numbers"


def test_a_layer_of_other_ranks_at_the_first_call_is_another_operation(layers):
    with pytest.raises(DerivcheckError) as err:
        verify(f"{layers}:Sequence", RELU)
    assert str(err.value) == (
        "Sequence does not fit rule 'relu': given the rule's inputs (x (2, 3)), Sequence.forward raised ValueError at "
        f"{layers}:17: not enough values to unpack (expected 3, got 2). It takes arrays of other ranks, so it "
        "implements another operation: pick the rule that fits (--rule NAME; `derivcheck rules` lists them) or write "
        "one (`derivcheck rules relu` prints this one to start from; docs/rules.md)")


def test_another_operation_is_told_every_input_it_was_given(layers):
    with pytest.raises(DerivcheckError, match=re.escape(
            "AffineSequence does not fit rule 'affine': given the rule's inputs (x (2, 3), W (3, 4), b (4,)), "
            "AffineSequence.forward raised ValueError")):
        verify(f"{layers}:AffineSequence", derivcheck.load_rule("affine"))


def test_the_same_error_in_backward_is_the_layers_failure(layers):
    rep = verify(f"{layers}:BackwardUnpacks", RELU, trials=2)
    c = _only_failure(rep)
    assert (c.name, c.trial, c.step) == ("layer raised", 0, 0)
    assert c.message.startswith("BackwardUnpacks.backward raised ValueError"), c.message


def test_the_same_error_at_a_later_trial_is_the_layers_failure(layers):
    rep = verify(f"{layers}:SquareOnly", RELU, trials=3)
    c = _only_failure(rep)
    assert (c.name, c.trial, c.step, c.dims) == ("layer raised", 1, 0, {"N": 3, "D": 3})
    assert [x.name for x in rep.checks if x.passed] == ["forward", "grad x"]  # trial 0 fit the rule


def test_the_same_error_at_a_later_step_is_the_layers_failure(layers):
    rep = verify(f"{layers}:SecondCall", RELU, trials=1, steps=2)
    c = _only_failure(rep)
    assert (c.name, c.trial, c.step) == ("layer raised", 0, 1)
    assert "SecondCall.forward raised ValueError" in c.message


def test_each_trial_is_announced_with_its_number_and_sizes(monkeypatch, layers):
    """The progress line on a terminal (progress.status) says which trial runs, at which sizes."""
    import contextlib

    shown = []

    @contextlib.contextmanager
    def status(message):
        shown.append(message)
        yield

    monkeypatch.setattr(verify_module, "status", status)
    verify(str(_reference("dlfs1/layers.py:Relu")), RELU, trials=3)
    assert shown == ["trial 1 of 3 at N=2, D=3", "trial 2 of 3 at N=3, D=3", "trial 3 of 3 at N=1, D=1"]


def _reference(target):
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "examples" / target


def test_trials_after_the_planned_ones_draw_their_sizes_from_the_seed():
    rule = derivcheck.load_rule("affine")
    target = str(_reference("dlfs1/layers.py:Affine"))
    plans = [Verifier(target, rule, seed=s).trial_dims(3) for s in range(4)]
    # written down, not recomputed by Rule.planned_dims: a change to how the seed draws them must show here
    assert plans == [{"N": 4, "D": 4, "H": 2}, {"N": 2, "D": 3, "H": 2}, {"N": 4, "D": 2, "H": 4}, {"N": 1, "D": 3, "H": 2}]
    assert len({tuple(p.values()) for p in plans}) > 1, plans  # the seed decides them
    assert Verifier(target, rule, seed=2, shape={"N": 7}).trial_dims(3)["N"] == 7  # a pinned size holds


class _Rng:
    """normal() returns all ones first: a dout that would hide a layer which ignores it."""

    def __init__(self):
        self.draws = [np.ones((2, 3)), np.full((2, 3), 0.5)]

    def normal(self, size):
        return self.draws.pop(0)


def test_a_dout_of_all_ones_is_drawn_again():
    v = Verifier(str(_reference("dlfs1/layers.py:Relu")), RELU)
    d = type("Bound", (), {"output_shape": (2, 3)})()
    rng = _Rng()
    assert np.array_equal(v.cotangent(d, rng), np.full((2, 3), 0.5)) and rng.draws == []


def test_kink_notes_are_added_to_the_runs_other_notes(tmp_path):
    """A rule guessed in the layer's convention says so; --kinks adds the layer's convention at the kink."""
    from pathlib import Path

    src = Path(RELU.path).read_text()
    (tmp_path / "relu_dlfs1.toml").write_text(src.replace('name = "relu"', 'name = "relu_dlfs1"'))
    rep = verify(str(_reference("dlfs1/layers.py:Relu")), RELU, trials=2, kinks=True,
                 variants={"dlfs1": str(tmp_path / "relu_dlfs1.toml")})
    assert rep.verdict == "pass" and rep.notes == [
        "rule: relu_dlfs1, the dlfs1 convention's relu (guessed from the layer's name and style; --rule names another)",
        "at the kink x = 0 the layer's derivative is 0 (the usual convention, as PyTorch's relu)"]
