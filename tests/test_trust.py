"""Untrusted input cannot run code, hang derivcheck or move the reference: each from the outside."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from derivcheck import cache, symarray

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PAYLOAD = "__import__('pathlib').Path('PWNED').touch() or 1"


def cli(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "derivcheck.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "DERIVCHECK_CACHE_DIR": str(Path(cwd) / "cache")})


def test_a_choice_value_with_python_source_is_never_run(tmp_path):
    """The shadowing sigmoid reads a choice hyperparameter's text as an array: refused, not eval'ed."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "sigmoid.toml").write_text(
        'name = "sigmoid"\nsummary = "a rule whose hyperparameter is code"\n'
        'formula = "where(x > 0, 1 / (1 + exp(-x)), onehot(p))"\noutput = ["N", "D"]\n'
        '[inputs.x]\nshape = ["N", "D"]\n'
        f'[hyper.p]\ntype = "choice"\nchoices = ["{PAYLOAD}"]\ndefault = "{PAYLOAD}"\nlayer = false\n'
    )
    for args in (["verify", str(EXAMPLES / "dlfs1/layers.py:Sigmoid")], ["derive", "sigmoid"], ["explain", "sigmoid"]):
        p = cli("--rules", str(rules), *args, cwd=tmp_path)
        assert not (tmp_path / "PWNED").exists(), args
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert "is text, not a number" in p.stderr and "sigmoid.toml:3" in p.stderr, p.stderr


def test_exact_refuses_text():
    for bad in ("1", PAYLOAD, b"1", None, [1]):
        with pytest.raises(ValueError):
            symarray.exact(bad)
    with pytest.raises(ValueError):
        symarray.asarray(PAYLOAD)
    assert symarray.exact(2) == 2 and symarray.exact(0.5) == 0.5


def test_a_huge_constant_power_in_a_formula_is_refused_at_once(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "boom.toml").write_text(
        'name = "boom"\nsummary = "2 ** 10 ** 10"\nformula = "x * 2 ** 10 ** 10"\noutput = ["N"]\n[inputs.x]\nshape = ["N"]\n'
    )
    t = time.monotonic()
    p = cli("--rules", str(rules), "rules", cwd=tmp_path, timeout=60)
    assert time.monotonic() - t < 30
    assert p.returncode == 2 and "boom.toml:3" in p.stderr and "exponent above 1024" in p.stderr, p.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_like_a_rule_is_refused_not_read(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    os.mkfifo(rules / "fifo.toml")
    p = cli("--rules", str(rules), "rules", cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and "fifo.toml" in p.stderr and "not a regular file" in p.stderr, p.stderr


@pytest.mark.parametrize("tree", [
    ["Pow", ["I", "3"], ["I", "10000000000"]],
    ["I", "9" * 5000],
    ["Q", "1", "9" * 100],
    ["F", "1" * 100, 0, 53],
    ["Mul", ["Pow", ["S", "x"], ["I", "100000"]], ["I", "2"]],
])
def test_cache_decoding_is_bounded(tree):
    t = time.monotonic()
    with pytest.raises(ValueError):
        cache.decode(tree, {"x": __import__("sympy").Symbol("x")})
    assert time.monotonic() - t < 5
