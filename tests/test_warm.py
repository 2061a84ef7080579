"""A warm run: a shape-generic derivation's NumPy steps read from the cache and evaluated without SymPy
(engine/program.py), giving what the derivation itself gives, bit for bit."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import derivcheck
from derivcheck.engine import cache, program, reference
from derivcheck.engine.reference import GenericBound

ROOT = Path(__file__).resolve().parents[1]
VERIFY = [sys.executable, "-m", "derivcheck", "verify", str(ROOT / "examples/dlfs1/layers.py:Affine"), "--rule", "affine"]


def trapped(tmp_path) -> str:
    """A PYTHONPATH whose ``sympy`` raises on import."""
    trap = tmp_path / "trap"
    (trap / "sympy").mkdir(parents=True, exist_ok=True)
    (trap / "sympy" / "__init__.py").write_text('raise ImportError("SymPy imported")\n')
    return os.pathsep.join([str(trap), *filter(None, [os.environ.get("PYTHONPATH")])])


RECURRENT = [sys.executable, "-m", "derivcheck", "verify", str(ROOT / "examples/dlfs2/layers.py:TimeLSTM"), "--rule", "time_lstm"]


@pytest.mark.parametrize("command", [VERIFY, RECURRENT], ids=["shape-generic", "stepped"])
def test_a_warm_verify_does_not_import_sympy(tmp_path, command):
    env = {**os.environ, "DERIVCHECK_CACHE_DIR": str(tmp_path / "cache")}
    cold = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert cold.returncode == 0, cold.stdout + cold.stderr
    warm = subprocess.run(command, capture_output=True, text=True, env={**env, "PYTHONPATH": trapped(tmp_path)},
                          cwd=tmp_path, timeout=300)
    assert warm.returncode == 0 and "verdict: PASS" in warm.stdout, warm.stdout + warm.stderr
    # the trap holds: with nothing cached, the same command needs SymPy and cannot check
    empty = {**env, "DERIVCHECK_CACHE_DIR": str(tmp_path / "empty"), "PYTHONPATH": trapped(tmp_path)}
    cold = subprocess.run(command, capture_output=True, text=True, env=empty, cwd=tmp_path, timeout=300)
    assert cold.returncode != 0 and "verdict: PASS" not in cold.stdout


# together, every kind of step (program.KINDS) but "not", which no catalogue rule needs (tests/test_indexeval.py
# stores and reads one back)
RULES = ["affine", "softmax_with_loss", "elu", "batchnorm", "clip", "mean_absolute_error", "max"]


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVCHECK_CACHE_DIR", str(tmp_path))
    reference.forget()
    return tmp_path


def steps_of(rule, hyper) -> dict:
    return cache.load_entry(cache.entry_key(reference.cache_key(rule, hyper)))["steps"]


def test_stored_steps_give_the_derivations_values_bit_for_bit(fresh):
    kinds = set()
    for k, name in enumerate(RULES):
        rule = derivcheck.load_rule(name)
        hyper = rule.resolve_hyper()
        g, note = reference.generic_for(rule, hyper)
        assert g is not None, f"{name}: {note}"
        kinds |= {row[0] for row in steps_of(rule, hyper)["table"]}
        reference.forget()  # the next reads the disk entry's steps alone
        stored, note = reference.evaluator_for(rule, hyper)
        assert stored is not None and stored is not g.evaluator, note
        rng = np.random.default_rng(k)
        dims = rule.planned_dims(0, seed=k, hyper=hyper)
        fresh_bound, stored_bound = GenericBound(rule, hyper, dims, g.evaluator), GenericBound(rule, hyper, dims, stored)
        _, values = reference.draw(rule, fresh_bound.shapes, fresh_bound.label_shapes, dims, rng)
        cot = rng.normal(size=fresh_bound.output_shape)
        want, got = fresh_bound.evaluate(cot, **values), stored_bound.evaluate(cot, **values)
        np.testing.assert_array_equal(got[0], want[0])
        for n in want[1]:
            np.testing.assert_array_equal(got[1][n], want[1][n])
        for n in want[2]:
            np.testing.assert_array_equal(got[2][n], want[2][n])  # the rounding scales too
        exact_want, exact_got = fresh_bound.exact(cot, **values), stored_bound.exact(cot, **values)
        assert [str(v) for v in np.ravel(exact_got[0])] == [str(v) for v in np.ravel(exact_want[0])]
    assert kinds == set(program.KINDS) - {"not"}, f"no rule of RULES stores {set(program.KINDS) - {'not'} - kinds}"


def used(steps: dict, row: list) -> None:
    """``row`` added to the table as x's VJP: read as it is, it would give other values than the derivation."""
    steps["table"].append(row)
    steps["parts"]["vjp:x"][0] = len(steps["table"]) - 1


@pytest.mark.parametrize("damage", [
    lambda s: s["table"].append(["eval", None, []]) or s["parts"].update(out=[len(s["table"]) - 1, [], []]),
    lambda s: s["table"].__setitem__(0, [s["table"][0][0], s["table"][0][1], [len(s["table"])]]),  # a later child
    lambda s: s["parts"].pop("vjp:x"),
    lambda s: s["table"].append(["ufunc", "system", [0]]) or s["parts"].update(out=[len(s["table"]) - 1, [], []]),
    lambda s: s["parts"]["out"].__setitem__(2, [["sym", 7]] * len(s["parts"]["out"][1])),
    lambda s: s["parts"]["out"].__setitem__(0, 10 ** 9),
    lambda s: used(s, ["number", ["f", "1.5", "__import__('os')"], []]),
    lambda s: used(s, ["symbol", "__memo__", []]),
    lambda s: used(s, ["indexed", ["x", [["fixed", -1], ["label", s["parts"]["vjp:x"][1][1], 0, ["sym", "D"]]]], []]),
], ids=["unknown-kind", "later-child", "missing-part", "unknown-ufunc", "bad-size", "no-such-row", "number-text",
        "engine-name", "negative-index"])
def test_damaged_steps_are_rebuilt(fresh, damage):
    rule = derivcheck.load_rule("affine")
    hyper = rule.resolve_hyper()
    good, _ = reference.evaluator_for(rule, hyper)
    path = cache._path(cache.entry_key(reference.cache_key(rule, hyper)))
    data = json.loads(path.read_bytes().split(b"\n", 1)[1])
    damage(data["steps"])
    cache.store_entry(path.stem, {k: v for k, v in data.items() if k not in ("format", "key")})  # signed: only the reader's checks stand
    reference.forget()
    again, note = reference.evaluator_for(rule, hyper)
    assert again is not None, note
    dims = {"N": 2, "D": 3, "H": 4}
    rng = np.random.default_rng(0)
    values = {"x": rng.normal(size=(2, 3)), "W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    cot = rng.normal(size=(2, 4))
    for a, b in zip(GenericBound(rule, hyper, dims, again).evaluate(cot, **values)[1].values(),
                    GenericBound(rule, hyper, dims, good).evaluate(cot, **values)[1].values()):
        np.testing.assert_array_equal(a, b)
    assert steps_of(rule, hyper)["parts"].keys() == {"out", "out_M", *(f"{p}:{n}" for n in "xWb" for p in ("vjp", "M", "support"))}
