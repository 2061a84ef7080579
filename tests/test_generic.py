"""The shape-generic tier: derived once per rule, checked against the concrete tier, exact at any size."""
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sympy

import derivcheck
from derivcheck.engine import generic, reference
from derivcheck import progress
from derivcheck.errors import DerivcheckError
from derivcheck.engine.reference import ConcreteBound, GenericBound, draw
from derivcheck.engine.rules import DimRange, list_rules
from derivcheck.check.verify import verify

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted(list_rules())
FLATTENING = {"reshape", "reshape_mlfs", "spatial_groupnorm", "flatten"}  # a flattening or splitting reshape (default [-1]; C into G, K): no index-notation form
WINDOWED = {"convolution": "convolution", "pooling": "sliding windows", "max_pool": "sliding windows",
            "average_pooling": "sliding windows", "im2col": "sliding windows",
            "deconvolution": "transposed convolution"}  # strided indices: none yet
RECURRENT = {n for n in RULES if derivcheck.load_rule(n).formula.loop is not None}  # a loop over steps: stepped (test_stepped.py)
NOT_GENERIC = FLATTENING | set(WINDOWED) | RECURRENT


@pytest.mark.parametrize("name", RULES)
def test_every_rule_but_flattening_reshape_is_generic_and_checked(name):
    rule = derivcheck.load_rule(name)
    g, note = reference.generic_for(rule, rule.resolve_hyper())
    if name in FLATTENING:
        assert g is None and "no shape-generic form" in note and "reshape" in note
    elif name in WINDOWED:
        assert g is None and f"no shape-generic form: {WINDOWED[name]} (strided, padded indices)" in note
    elif name in RECURRENT:
        assert g is None and "no shape-generic form: a loop over the T steps (a recurrence)" in note
    else:
        assert g is not None and note == ""


@pytest.mark.parametrize("name", sorted(set(RULES) - NOT_GENERIC))
def test_generic_equals_concrete_at_random_larger_sizes(name):
    """Beyond the proof shapes: sizes up to 6 (up to its own maximum where a rule sets one below the default 4:
    spatial batchnorm's H and W, whose element-by-element Jacobian grows as (N·H·W)² per channel), values and
    cotangent from another seed."""
    rule = derivcheck.load_rule(name)
    hyper = rule.resolve_hyper()
    rng = np.random.default_rng(11)
    default_max = DimRange().max
    dims = {d: r.min if r.min == r.max else int(rng.integers(max(r.min, 1), (max(r.max, 6) if r.max >= default_max else r.max) + 1))
            for d, r in rule.dims.items()}
    dims = rule.resolve_dims(dims)
    conc, gen = ConcreteBound(rule, hyper, dims), reference.at(rule, hyper, dims)
    assert isinstance(gen, GenericBound) and gen.output_shape == conc.output_shape
    _, ref = draw(rule, conc.shapes, conc.label_shapes, dims, rng)
    cot = rng.normal(size=conc.output_shape)
    np.testing.assert_allclose(gen.forward(**ref), conc.forward(**ref), rtol=1e-12, atol=1e-12)
    want = conc.vjp(cot, **ref)
    for n, got in gen.vjp(cot, **ref).items():
        np.testing.assert_allclose(got, want[n], rtol=1e-11, atol=1e-12, err_msg=f"{name} d{n} at {dims}")
    # the tolerance scales agree in size with the concrete tier's (same analysis, other algebra). The bound of
    # 100 is set by hand: the generic tier bounds each operation's rounding, the concrete one the simplified
    # expression, so where x - mean(x) cancels (layernorm here draws D=2, N=1 with near-equal values; batchnorm
    # at N=2 alike) the generic scale of d gamma is 55x the concrete one, still a ~1e-12 relative tolerance.
    # Smaller than the concrete scale would mean false alarms; that side stays at 0.2.
    _, _, s_gen = gen.evaluate(cot, **ref)
    _, _, s_conc = conc.evaluate(cot, **ref)
    for n in s_gen:
        if s_conc[n].max() == 0:  # the concrete tier simplified the entry to 0 (softmax at C=1)
            continue
        ratio = s_gen[n].max() / s_conc[n].max()
        assert 0.2 < ratio < 100, f"{name} {n}: generic scale {s_gen[n].max():.3g} vs concrete {s_conc[n].max():.3g}"


def test_affine_vjp_is_the_seed_contraction():
    rule = derivcheck.load_rule("affine")
    g, _ = reference.generic_for(rule, rule.resolve_hyper())
    dW = g.exprs["vjp"]["W"]["expr"]
    k, l = g.exprs["vjp"]["W"]["indices"]
    n = sympy.Symbol("n", integer=True)
    x, dout = sympy.IndexedBase("x", real=True), sympy.IndexedBase(generic.DOUT, real=True)
    N = generic.size_symbol("N")
    assert isinstance(dW, sympy.Sum) and len(dW.limits) == 1
    assert dW.xreplace({dW.limits[0][0]: n}) == sympy.Sum(dout[n, l] * x[n, k], (n, 0, N - 1))


def test_proof_refuses_a_wrong_generic_derivation():
    rule = derivcheck.load_rule("affine")
    hyper = rule.resolve_hyper()
    g = generic.GenericDerivation(rule, hyper)
    v = g.exprs["vjp"]["W"]
    v["expr"] = 2 * v["expr"]  # a factor the proof must see
    g._compile()
    with pytest.raises(DerivcheckError, match=r"rule 'affine' at N=2, D=3, H=4 disagrees"):
        reference.prove(rule, hyper, g)


def test_proof_refuses_a_transposed_generic_derivation():
    rule = derivcheck.load_rule("matmul")
    hyper = rule.resolve_hyper()
    g = generic.GenericDerivation(rule, hyper)
    v = g.exprs["vjp"]["x"]
    i, j = v["indices"]
    v["expr"] = v["expr"].xreplace({i: j, j: i})
    g._compile()
    with pytest.raises(DerivcheckError, match="rule 'matmul'"):
        reference.prove(rule, hyper, g)


def test_seed_mnist_layer_at_full_size():
    """x 100x784, W 784x50: exact reference in compiled NumPy, within float64 rounding of x @ W + b."""
    rule = derivcheck.load_rule("affine")
    dims = {"N": 100, "D": 784, "H": 50}
    b = reference.at(rule, rule.resolve_hyper(), dims)
    rng = np.random.default_rng(0)
    x, W, bias, g = rng.normal(size=(100, 784)), rng.normal(size=(784, 50)), rng.normal(size=50), rng.normal(size=(100, 50))
    out, grads, scales = b.evaluate(g, x=x, W=W, b=bias)
    np.testing.assert_allclose(out, x @ W + bias, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(grads["W"], x.T @ g, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(grads["x"], g @ W.T, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(grads["b"], g.sum(axis=0), rtol=1e-12, atol=1e-11)
    # the forward bound: D Σ_d |x||W| for the products and their sum, |x W| + |b| for adding the bias
    bound = 784 * np.abs(x) @ np.abs(W) + np.abs(x @ W) + np.abs(bias)
    np.testing.assert_allclose(scales["forward"], bound + np.abs(out), rtol=1e-9)


def test_verify_at_mnist_size_catches_a_tiny_error_and_passes_the_right_layer(tmp_path):
    layer = tmp_path / "layer.py"
    layer.write_text(
        "import numpy as np\n"
        "class Affine:\n"
        "    def __init__(self, W, b):\n"
        "        self.params = [W, b]\n"
        "        self.grads = [np.zeros_like(W), np.zeros_like(b)]\n"
        "    def forward(self, x):\n"
        "        W, b = self.params\n"
        "        self.x = x\n"
        "        return x @ W + b\n"
        "    def backward(self, dout):\n"
        "        W, b = self.params\n"
        "        self.grads[0][...] = self.x.T @ dout * self.FACTOR\n"
        "        self.grads[1][...] = dout.sum(axis=0)\n"
        "        return dout @ W.T\n"
        "    FACTOR = 1.0\n"
        "class Off(Affine):\n"
        "    FACTOR = 1 + 1e-9  # an error far below what finite differences can see\n"
    )
    shape = {"N": 100, "D": 784, "H": 50}
    good = verify(f"{layer}:Affine", derivcheck.load_rule("affine"), shape=shape, trials=1, steps=1, style="dlfs2")
    assert good.verdict == "pass"
    bad = verify(f"{layer}:Off", derivcheck.load_rule("affine"), shape=shape, trials=1, steps=1, style="dlfs2")
    assert bad.verdict == "fail"
    assert [c.name for c in bad.checks if not c.passed] == ["grad W"]


def test_reshape_falls_back_to_the_concrete_tier_with_a_note():
    rep = verify(f"{ROOT}/examples/dezero_style/functions.py:reshape", derivcheck.load_rule("reshape"), trials=2)
    assert rep.verdict == "pass"
    assert any("element-by-element" in n and "reshape" in n for n in rep.notes)


def test_generic_derivation_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVCHECK_CACHE_DIR", str(tmp_path))
    rule = derivcheck.load_rule("softmax_with_loss")
    hyper = rule.resolve_hyper()
    reference.forget()
    first, _ = reference.generic_for(rule, hyper)
    assert list(tmp_path.rglob("*.json"))
    reference.forget()

    def refuse(self):
        raise AssertionError("derived again instead of loading the cache")

    monkeypatch.setattr(generic.GenericDerivation, "_derive", refuse)
    again, _ = reference.generic_for(rule, hyper)
    assert again is not first and sympy.srepr(again.exprs["vjp"]["x"]["expr"]) == sympy.srepr(first.exprs["vjp"]["x"]["expr"])
    reference.forget()


@pytest.mark.parametrize("name", sorted(set(RULES) - NOT_GENERIC))
def test_a_cached_derivation_loads_exactly_as_it_was_stored(name):
    """Read back node for node, not re-simplified: what the proof checked is what later runs evaluate."""
    from derivcheck.engine import cache

    rule = derivcheck.load_rule(name)
    hyper = rule.resolve_hyper()
    reference.generic_for(rule, hyper)  # derived and stored, if no earlier test did
    reference.forget()
    g, _ = reference.generic_for(rule, hyper)  # so this one is read from disk
    data = cache.load_entry(cache.entry_key(reference.cache_key(rule, hyper)))
    assert g is not None and data is not None
    assert reference.entry_data(rule, g) == {k: v for k, v in data.items() if k not in ("format", "key")}


def test_corrupt_generic_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVCHECK_CACHE_DIR", str(tmp_path))
    rule = derivcheck.load_rule("sigmoid")
    hyper = rule.resolve_hyper()
    reference.forget()
    reference.generic_for(rule, hyper)
    (entry,) = [p for p in tmp_path.rglob("*.json") if '"out_M"' in p.read_text()]  # the proof's concrete entries aside
    data = entry.read_bytes().split(b"\n", 1)[1].replace(b'"Ix","x"', b'"Ix","evil"')
    entry.write_bytes(__import__("derivcheck.engine.cachekey").engine.cachekey.mac(data).encode() + b"\n" + data)  # signed, still refused
    reference.forget()
    g, note = reference.generic_for(rule, hyper)
    assert g is not None and note == "" and '"Ix","x"' in entry.read_text()
    reference.forget()


def test_concrete_tier_is_sparse():
    """Each output differentiated only by its own symbols: an element-wise rule has |x| entries, not |x|^2."""
    d = derivcheck.load_rule("sigmoid").at(N=12, D=10)
    assert len(d._jac["x"]) == 120
    assert d.jacobian_array("x").shape == (12, 10, 12, 10)


def test_exact_reference_from_the_generic_tier_matches_the_concrete_one():
    rule = derivcheck.load_rule("softmax_with_loss")
    hyper, dims = rule.resolve_hyper(), {"N": 2, "C": 3}
    x = np.array([[720.0, 750.0, 710.0], [740.0, 741.0, 760.0]])
    t = np.array([1, 2])
    out_g, grads_g = reference.at(rule, hyper, dims).exact(np.array(2.0), x=x, t=t)
    out_c, grads_c = ConcreteBound(rule, hyper, dims).exact(np.array(2.0), x=x, t=t)
    assert abs(float(out_g) - float(out_c)) < 1e-12
    np.testing.assert_allclose(np.asarray(grads_g["x"], dtype=float), np.asarray(grads_c["x"], dtype=float), rtol=1e-14, atol=1e-300)


def test_status_is_shown_on_a_terminal_only_after_the_delay(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(progress, "DELAY", 0.05)
    out = Tty()
    with progress.status("deriving affine", out):
        time.sleep(0.3)
    assert "deriving affine..." in out.getvalue() and out.getvalue().endswith("\r\x1b[K")
    quiet = Tty()
    with progress.status("quick", quiet):
        pass
    assert quiet.getvalue() == ""
    plain = io.StringIO()
    with progress.status("deriving", plain):
        time.sleep(0.1)
    assert plain.getvalue() == ""


def test_warm_verify_in_a_fresh_process_does_not_derive(tmp_path):
    """The disk entry serves a new process: no SymPy differentiation on the warm path."""
    env = {"DERIVCHECK_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = (
        "import sys, derivcheck\n"
        "from derivcheck.engine import generic\n"
        "if sys.argv[1] == 'warm':\n"
        "    generic.GenericDerivation._derive = lambda self: (_ for _ in ()).throw(SystemExit('derived'))\n"
        "from derivcheck.check.verify import verify\n"
            "r = verify(sys.argv[2] + ':SoftmaxWithLoss', derivcheck.load_rule('softmax_with_loss'), trials=2)\n"
        "print(r.verdict)\n"
    )
    target = str(ROOT / "examples/dlfs2/layers.py")
    for phase in ("cold", "warm"):
        p = subprocess.run([sys.executable, "-c", code, phase, target], capture_output=True, text=True, env=env, timeout=300)
        assert p.stdout.strip() == "pass", (phase, p.stdout, p.stderr)


@pytest.mark.parametrize("formula,generic", [
    ("reshape(x, [1, N, 1, D]) * 2", True),  # unit axes inserted: each other axis keeps its index
    ("sum(reshape(reshape(x, [N, 1, D]), [N, D]) * x, axis=1)", True),  # and dropped
    ("reshape(x, [N * D])", False),  # flattening needs flat indices
])
def test_a_reshape_that_only_inserts_or_drops_unit_axes_is_generic(tmp_path, formula, generic):
    (tmp_path / "r.toml").write_text(f'name = "r"\nsummary = "a test rule"\nformula = "{formula}"\n[inputs.x]\nshape = ["N", "D"]\n')
    rule = derivcheck.engine.rules.load_rule_file(tmp_path / "r.toml")
    g, note = reference.generic_for(rule, {})
    assert (g is not None) == generic, note
    if generic:  # proven at the proof shapes; and at another
        dims = {"N": 3, "D": 5}
        x = np.random.default_rng(2).normal(size=(3, 5))
        conc, gen = ConcreteBound(rule, {}, dims), reference.at(rule, {}, dims)
        cot = np.random.default_rng(3).normal(size=conc.output_shape)
        np.testing.assert_allclose(gen.forward(x=x), conc.forward(x=x), rtol=1e-14)
        np.testing.assert_allclose(gen.vjp(cot, x=x)["x"], conc.vjp(cot, x=x)["x"], rtol=1e-14)


def test_a_concrete_derivation_is_walked_until_called_often_then_compiled(monkeypatch):
    """A derivation at one size is walked (no compile: a verify calls it a few times), lambdified at the
    call after WALKS_BEFORE_COMPILING (central differences call it hundreds of times); the values agree."""
    from derivcheck.engine import derive

    monkeypatch.setattr(derive, "_MEMORY", {})  # a derivation no earlier test has called
    made = []
    lambdify = derive._lambdify
    monkeypatch.setattr(derive, "_lambdify", lambda *a: made.append(1) or lambdify(*a))
    d = derivcheck.load_rule("convolution").at(N=1, C=2, IH=3, IW=3, F=2, KH=2, KW=2)
    rng = np.random.default_rng(0)
    values = {n: rng.normal(size=s) for n, s in d.shapes.items()}
    walked = [d.forward(**values) for _ in range(derive.WALKS_BEFORE_COMPILING)]
    assert made == []
    compiled = d.forward(**values)
    assert made == [1]
    np.testing.assert_allclose(compiled, walked[0], rtol=1e-13, atol=1e-15)
    d.forward(**values)
    assert made == [1]  # compiled once
