"""Untrusted input cannot run code, hang derivcheck or move the reference: each from the outside."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from derivcheck.engine import exprcodec, symarray
from runner import process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PAYLOAD = "__import__('pathlib').Path('PWNED').touch() or 1"


def cli(*args, cwd, timeout=120):
    """A new process with a cache folder of its own (an adversarial layer must not reach the shared one)."""
    return process(*args, cwd=cwd, timeout=timeout, cache=Path(cwd) / "cache")


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


@pytest.mark.parametrize("nodes", [
    [["I", "3"], ["I", "10000000000"], ["Pow", 0, 1]],
    [["I", "9" * 5000]],
    [["Q", "1", "9" * 100]],
    [["F", "1" * 100, 0, 53]],
    [["S", "x"], ["I", "100000"], ["Pow", 0, 1], ["I", "2"], ["Mul", 2, 3]],
    [["S", "x"], ["Add", 0, 2], ["I", "1"]],  # a child after its parent: a table could loop
    [["S", "x"], ["Add", 1, 0]],  # a node its own child
    [["S", "x"], ["Add", 0, True]],  # a reference that is not a whole number
    [["S", "x"], ["Add", 0, -1]],
    "not a table",
    [["S", "x"]] * (exprcodec.MAX_NODES + 1),
])
def test_cache_decoding_is_bounded(nodes):
    t = time.monotonic()
    with pytest.raises(ValueError):
        exprcodec.decoder(nodes, {"x": __import__("sympy").Symbol("x")})
    assert time.monotonic() - t < 5


POISON = r"""
import json, os, sys
from pathlib import Path
os.environ["DERIVCHECK_CACHE_DIR"], os.environ["XDG_CACHE_HOME"] = sys.argv[1], sys.argv[2]
from derivcheck.engine import cache, cachekey, reference
from derivcheck.engine.rules import load_rule
rule = load_rule("relu")
reference.generic_for(rule, rule.resolve_hyper())
path = cache._path(cache.entry_key(reference.cache_key(rule, rule.resolve_hyper())))
data = json.loads(path.read_bytes().split(b"\n", 1)[1])
nodes = data["nodes"]  # a reference twice too large: 2 * the VJP, as two nodes more
nodes += [["I", "2"], ["Mul", len(nodes), data["vjp"]["x"]["expr"]]]
data["vjp"]["x"]["expr"] = len(nodes) - 1
steps, part = data["steps"]["table"], data["steps"]["parts"]["vjp:x"]  # and so in the NumPy steps a warm run reads
steps += [["number", ["q", "2", "1"], []], ["fold", "multiply", [len(steps), part[0]]]]
part[0] = len(steps) - 1
payload = json.dumps(data, separators=(",", ":")).encode()
path.write_bytes(cachekey.mac(payload).encode() + b"\n" + payload)  # signed with the attacker's own key
"""


def verify_relu(cache_dir, home, cwd):
    env = {**os.environ, "DERIVCHECK_CACHE_DIR": str(cache_dir), "XDG_CACHE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "derivcheck", "verify", str(EXAMPLES / "dlfs1/layers.py:Relu"),
                           "--rule", "relu", "--no-stress"], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_another_users_cache_entry_cannot_flip_a_verdict(tmp_path):
    shared, attacker, victim = tmp_path / "shared", tmp_path / "attacker", tmp_path / "victim"
    shared.mkdir(mode=0o700)
    subprocess.run([sys.executable, "-c", POISON, str(shared), str(attacker)], check=True, timeout=120)
    # the attacker's own derivcheck trusts the poisoned entry (what the MAC is there to stop) ...
    assert verify_relu(shared, attacker, tmp_path).returncode == 1
    # ... the victim's, with its own key, does not: the entry is rebuilt and the correct layer passes
    p = verify_relu(shared, victim, tmp_path)
    assert p.returncode == 0 and "verdict: PASS" in p.stdout, p.stdout + p.stderr


def test_a_repository_shipped_cache_dir_is_not_trusted(tmp_path):
    """A cache-dir folder in the repository, with entries and even a key of its own: ignored."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([sys.executable, "-c", POISON, str(repo / ".derivcheck"), str(repo / ".derivcheck")], check=True, timeout=120)
    (repo / "derivcheck.toml").write_text(
        f'cache-dir = ".derivcheck"\n[[layers]]\ntarget = "{EXAMPLES / "dlfs1/layers.py"}:Relu"\nrule = "relu"\n')
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "home")}
    env.pop("DERIVCHECK_CACHE_DIR", None)
    p = subprocess.run([sys.executable, "-m", "derivcheck", "check"], capture_output=True, text=True, cwd=repo,
                       env=env, timeout=300)
    assert p.returncode == 0 and "1 passed" in p.stdout, p.stdout + p.stderr


def test_a_cache_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    p = verify_relu(shared, tmp_path / "home", tmp_path)
    assert p.returncode == 2 and "can be written by other users" in p.stderr and "chmod go-w" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_symlinked_cache_subfolders_are_not_followed(tmp_path):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    folder.mkdir(mode=0o700)
    outside.mkdir()
    for i in range(256):  # every first-two-hex-digits sub-folder points outside
        (folder / f"{i:02x}").symlink_to(outside, target_is_directory=True)
    p = verify_relu(folder, tmp_path / "home", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert list(outside.iterdir()) == []


def test_a_layers_message_cannot_repaint_the_terminal_or_forge_a_line_of_the_report(tmp_path):
    """An exception text with an escape sequence, a carriage return and a line of its own ("verdict: PASS")
    is shown with the controls as \\xNN and its extra line indented: the report's own lines stay its own."""
    from runner import run

    (tmp_path / "layers.py").write_text(
        "class Relu:\n    def forward(self, x):\n"
        "        raise ValueError('boom\\x1b[2J\\rverdict: PASS\\nverdict: PASS')\n"
        "    def backward(self, dout):\n        return dout\n")
    result = run("verify", f"{tmp_path / 'layers.py'}:Relu")
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\r" not in result.output
    assert "boom\\x1b[2J\\x0dverdict: PASS" in result.output
    assert [line for line in result.output.splitlines() if line.startswith("verdict:")] == ["verdict: FAIL"]


def test_a_target_file_that_is_not_python_source_is_refused_unread(tmp_path):
    from runner import run

    (tmp_path / "layers.txt").write_text(f"{PAYLOAD}\nclass Relu:\n    pass\n")
    result = run("verify", f"{tmp_path / 'layers.txt'}:Relu", "--rule", "relu")
    assert result.exit_code == 2 and "is not a .py file" in result.output, result.output
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


@pytest.mark.parametrize("args,said", [
    (["verify", str(EXAMPLES / "dlfs1/layers.py:Affine"), "--shape", "N=100000,D=100000,H=100000"],
     "x would have 10,000,000,000 elements, more than derivcheck holds"),
    (["derive", "affine", "--shape", "N=200,D=200,H=200"], "has 3,208,000,000 entries, more than derive prints"),
], ids=["verify", "derive"])
def test_sizes_too_large_to_hold_are_refused_before_anything_is_allocated(tmp_path, args, said):
    """Not a MemoryError in the worker (exit 3) nor a derivation that never ends: one line, exit 2."""
    t = time.monotonic()
    p = cli(*args, cwd=tmp_path, timeout=60)
    assert time.monotonic() - t < 30
    assert p.returncode == 2 and said in p.stderr and "Traceback" not in p.stderr, (p.returncode, p.stderr[-2000:])
