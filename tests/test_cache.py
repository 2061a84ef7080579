"""The disk cache: reused, rebuilt when corrupt or foreign, never trusted blindly."""
import json
import multiprocessing
import os

import numpy as np
import pytest

import derivcheck
from derivcheck.engine import cache, cachekey, derive, exprcodec, reference
from derivcheck.run import isolate
from derivcheck.engine.rules import load_rule_file


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVCHECK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(derive, "_MEMORY", {})
    return tmp_path


def entries(root):
    return sorted(p for p in root.rglob("*.json"))


def payload(path) -> str:
    """An entry's JSON (an entry is this user's MAC, a newline, then the JSON)."""
    return path.read_bytes().split(b"\n", 1)[1].decode()


def write_signed(path, text: str) -> None:
    """Damage that still carries a good MAC: what only the decoder's own checks can catch."""
    data = text.encode()
    path.write_bytes(cachekey.mac(data).encode() + b"\n" + data)


def test_entry_is_written_and_reused(fresh, monkeypatch):
    d1 = derivcheck.load_rule("affine").at(N=2, D=3, H=2)
    (path,) = entries(fresh)
    assert json.loads(payload(path))["rule"] == "affine"
    monkeypatch.setattr(derive, "_MEMORY", {})
    calls = []
    monkeypatch.setattr(derive.Derivation, "_derive", lambda self: calls.append(1) or pytest.fail("re-derived"))
    d2 = derivcheck.load_rule("affine").at(N=2, D=3, H=2)
    assert not calls
    assert [str(e) for e in d2.jacobian_array("W").ravel()] == [str(e) for e in d1.jacobian_array("W").ravel()]


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "not json",
        lambda text: text.replace('"S","x_0_0"', '"S","__import__"'),  # foreign symbol
        lambda text: text.replace('"Add"', '"eval"', 1),  # unknown node
        lambda text: json.dumps({**json.loads(text), "key": "0" * 64}),  # another entry's content
    ],
    ids=["truncated", "garbage", "foreign-symbol", "unknown-node", "wrong-key"],
)
def test_corrupt_entry_is_rebuilt(fresh, monkeypatch, damage):
    rule = derivcheck.load_rule("affine")
    rng = np.random.default_rng(0)
    x, W, b = rng.normal(size=(2, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
    good = rule.at(N=2, D=3, H=2).forward(x=x, W=W, b=b)
    (path,) = entries(fresh)
    write_signed(path, damage(payload(path)))
    monkeypatch.setattr(derive, "_MEMORY", {})
    again = rule.at(N=2, D=3, H=2)
    np.testing.assert_array_equal(again.forward(x=x, W=W, b=b), good)
    assert json.loads(payload(path))["key"] == path.stem  # rewritten whole


def test_key_covers_rule_text_sizes_and_hyper(fresh, tmp_path_factory):
    rule = derivcheck.load_rule("sum")
    rule.at(N=2, D=2)
    rule.at(N=2, D=3)
    rule.at(N=2, D=3, axis=1)
    folder = tmp_path_factory.mktemp("rules")
    (folder / "sum.toml").write_text(open(rule.path).read().replace("keepdims)", "keepdims) * 2"))
    load_rule_file(folder / "sum.toml").at(N=2, D=3, axis=1)
    assert len(entries(fresh)) == 4


def test_unwritable_cache_still_works(fresh, monkeypatch):
    target = fresh / "file-not-folder"
    target.write_text("")
    monkeypatch.setenv("DERIVCHECK_CACHE_DIR", str(target))
    assert derivcheck.load_rule("exp").at(N=1, D=2).output_shape == (1, 2)


def test_cache_can_be_turned_off(fresh, monkeypatch):
    monkeypatch.setenv("DERIVCHECK_CACHE", "0")
    derivcheck.load_rule("exp").at(N=1, D=2)
    assert entries(fresh) == []


def _derive_in_child(folder):
    os.environ["DERIVCHECK_CACHE_DIR"] = folder
    d = derivcheck.load_rule("softmax").at(N=2, C=3)
    return d.forward(x=np.arange(6.0).reshape(2, 3)).tolist()


def _processes():
    """Processes as the gate's -j workers are: forks of derivcheck's worker server (one import for all)."""
    isolate.start_server()
    return multiprocessing.get_context("forkserver")


def test_parallel_writers_leave_whole_entries(fresh):
    ctx = _processes()
    with ctx.Pool(4) as pool:
        results = pool.map(_derive_in_child, [str(fresh)] * 8)
    assert all(r == results[0] for r in results)
    files = entries(fresh)
    assert len(files) == 1 and not list(fresh.rglob(".tmp-*"))
    json.loads(payload(files[0]))


def _child_exit(fn, *args):
    """In a child: exit 0 if ``fn(*args)`` is true."""
    raise SystemExit(0 if fn(*args) else 1)


def _derive_together(folder, log, barrier):
    """In a child: count the derivations made here, with every child starting each one at once."""
    os.environ["DERIVCHECK_CACHE_DIR"] = folder
    from derivcheck.engine import generic, reference

    real = generic.GenericDerivation

    def counted(rule, hyper, exprs=None, inexact=(), evaluator=None):
        if exprs is None:  # derived, not read back
            with open(log, "a") as fh:
                fh.write("generic\n")
            return real(rule, hyper, inexact=inexact)
        return real(rule, hyper, exprs, inexact, evaluator)

    generic.GenericDerivation = counted
    real_derive = derive.Derivation._derive

    def counted_derive(self):
        with open(log, "a") as fh:
            fh.write("concrete\n")
        return real_derive(self)

    derive.Derivation._derive = counted_derive
    rule = derivcheck.load_rule("layernorm")
    hyper = rule.resolve_hyper({})
    barrier.wait()
    g, note = reference.generic_for(rule, hyper)
    barrier.wait()
    d = rule.at(N=5, D=2)  # not a proof shape: an element-by-element derivation of its own
    return g is not None and not note and d.output_shape == (5, 2)


def test_processes_needing_one_derivation_at_once_make_it_once(fresh):
    """check -j and the test workers: the first derives, the others wait for its entry and read it."""
    ctx = _processes()
    log = fresh / "derivations.log"
    barrier = ctx.Barrier(3)
    children = [ctx.Process(target=_child_exit, args=(_derive_together, str(fresh), str(log), barrier)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(300)
    assert [child.exitcode for child in children] == [0, 0, 0]
    made = log.read_text().split()
    n_proof = len(reference.proof_dims(derivcheck.load_rule("layernorm"), {}))
    assert made.count("generic") == 1, made
    assert made.count("concrete") == n_proof + 1, made  # each proof shape once, then N=5, D=2 once
    assert not list(fresh.rglob(".tmp-*"))


def test_encoding_round_trips_floats_and_piecewise():
    import sympy

    x = sympy.Symbol("x_0", real=True)
    expr = sympy.Piecewise((sympy.Float("0.1") * x, x > 0), (sympy.Rational(1, 3), True)) + sympy.Heaviside(x)
    enc = exprcodec.Encoder()
    ref = enc(expr)
    assert exprcodec.decoder(enc.nodes, {"x_0": x})(ref) == expr


def test_an_entry_holds_each_sub_expression_once():
    import sympy

    x = sympy.Symbol("x_0", real=True)
    shared = sympy.tanh(x) * sympy.exp(x)
    enc = exprcodec.Encoder()
    refs = [enc(shared + 1), enc(shared * 2), enc(shared)]
    assert len(enc.nodes) == 8  # x, tanh, exp, their product, 1, a sum, 2, a product: the product once
    node = exprcodec.decoder(enc.nodes, {"x_0": x})
    assert [node(r) for r in refs] == [shared + 1, shared * 2, shared]
    assert node(refs[0]).args[1] is node(refs[2])  # one object, so compiling and evaluating it is shared too


_KEY_SCRIPT = """
import sys, time
from derivcheck.engine import cachekey  # no SymPy: the race is over the key file alone
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # all start at once
sys.stdout.write(cachekey.secret().hex())
"""


def test_processes_starting_together_on_a_fresh_machine_agree_on_one_whole_key(tmp_path):
    """The gate's -j workers on a fresh machine: none may read a key another is still writing."""
    import subprocess
    import sys
    import time

    for attempt in range(3):
        home = tmp_path / f"home{attempt}"
        env = {**os.environ, "XDG_CACHE_HOME": str(home)}
        start = time.time() + 0.5  # each process imports cachekey alone (tens of milliseconds), then waits
        procs = [subprocess.Popen([sys.executable, "-c", _KEY_SCRIPT, str(start)], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
        keys = {out for out, _ in outs}
        assert len(keys) == 1 and len(bytes.fromhex(keys.pop())) == 32
        assert sorted(p.name for p in (home / "derivcheck").iterdir()) == ["secret.key"]  # no temporary file left


def test_every_module_of_the_package_is_in_the_key(tmp_path):
    # the key once listed its engine modules by hand and left out stepped.py and reference.py: an edit there
    # reused cached proofs and a correct TimeRNN FAILed. Now an edit to any file of the package, or a new
    # module, is a new key
    import shutil
    from pathlib import Path

    package = Path(derivcheck.__file__).parent
    copy = tmp_path / "derivcheck"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = cache.code_digest(copy)
    assert before == cache.code_digest(package) == cache.code_digest()  # the default: the whole package, subpackages too
    modules = sorted(copy.rglob("*.py"))
    assert {"stepped.py", "reference.py", "judge.py", "derive.py"} <= {p.name for p in modules}
    for path in modules:
        text = path.read_bytes()
        path.write_bytes(text + b"\n# edited\n")
        assert cache.code_digest(copy) != before, f"an edit to {path.name} keeps the derivation cache's key"
        path.write_bytes(text)
    assert cache.code_digest(copy) == before
    (copy / "newmodule.py").write_text("X = 1\n")
    assert cache.code_digest(copy) != before


def test_an_entry_is_made_only_when_it_is_still_missing_under_its_lock(tmp_path, monkeypatch):
    # the one load -> lock -> load again -> make -> store protocol of every derivation (derive, generic, stepped)
    monkeypatch.setenv("DERIVCHECK_CACHE_DIR", str(tmp_path))
    cache.forget()
    calls = []
    found = iter([None, "stored meanwhile"])  # another process stored it while this one waited for the lock
    got = cache.load_or_make("k1", lambda: next(found), lambda: calls.append("make"), lambda v: calls.append(("store", v)))
    assert got == "stored meanwhile" and calls == []
    got = cache.load_or_make("k2", lambda: None, lambda: "made", lambda v: calls.append(("store", v)))
    assert got == "made" and calls == [("store", "made")]
    assert cache.load_or_make("k3", lambda: "on disk", lambda: calls.append("make"), calls.append) == "on disk"
    assert calls == [("store", "made")]
