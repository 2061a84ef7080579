"""verify: reference layers pass, broken ones fail where they are broken, mistakes exit 2."""
import json
import shlex
import sys

import pytest

import derivcheck
from derivcheck.engine import stepped
from derivcheck.engine.derive import has_any
from derivcheck.errors import DerivcheckError
from derivcheck.check.verify import verify

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from bindings import EXAMPLES, REFERENCE  # noqa: E402
from runner import run

RULES = sorted(derivcheck.list_rules())


def test_every_rule_has_a_reference_layer():
    assert {rule for _, rule, _, _ in REFERENCE} == set(RULES)


@pytest.mark.parametrize("seed", [0, 17, 123], ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("target,rule,hyper,dtype", REFERENCE,
                         ids=[f"{t}-{r}-{'-'.join(map(str, h.values()))}-{d}" for t, r, h, d in REFERENCE])
def test_reference_layer_passes_across_seeds(target, rule, hyper, dtype, seed):
    """One seed per test, so that mutation testing (bench/mutation.py) can run seed 0 alone."""
    rep = verify(str(EXAMPLES / target), derivcheck.load_rule(rule), hyper=hyper, dtype=dtype, seed=seed, trials=6)
    failing = [(c.name, c.message, c.index, c.expected, c.got, c.tol) for c in rep.checks if not c.passed]
    assert rep.verdict == "pass" and not rep.warnings, (seed, failing, rep.warnings, rep.reproduce)
    r = derivcheck.load_rule(rule)
    stress = {"stability"} if any(i.stress for i in r.inputs.values()) else set()
    kept = {f"{n} kept" for n, lab in r.labels.items() if lab.kind == "kept"}  # dropout's mask
    grads = set() if r.forward_only else {f"grad {n}" for n in r.inputs}  # a test mode: the forward alone
    assert {c.name for c in rep.checks} == {"forward"} | grads | stress | kept
    assert rep.forward_only == (f"rule '{r.name}': {r.forward_only}" if r.forward_only else "")


def test_report_names_worst_element_and_reproduces():
    target = str(EXAMPLES / "broken" / "layers.py") + ":AffineStaleInput"
    result = run("verify", target, "--rule", "affine", "--seed", "5")
    assert result.exit_code == 1
    out = result.output
    assert "FAIL grad W" in out and "(AffineStaleInput.dW)" in out
    assert "worst element W[" in out and "expected" in out and "got" in out and "rel err" in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("reproduce: ")]
    argv = shlex.split(line[len("reproduce: "):])
    assert argv[:2] == ["derivcheck", "verify"] and "--seed" in argv and "--shape" in argv
    again = run(*argv[1:], "--format", "json")
    assert again.exit_code == 1
    data = json.loads(again.output)
    first = next(c for c in data["checks"] if c["name"] == "grad W")
    shown = next(ln for ln in out.splitlines() if "worst element W[" in ln)
    assert f"W[{','.join(map(str, first['index']))}]" in shown and f"{first['expected']:.6g}" in shown


def test_json_schema():
    result = run("verify", str(EXAMPLES / "dlfs2" / "layers.py") + ":Affine", "--format", "json", "--trials", "2")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert set(data) >= {"target", "rule", "verdict", "checks", "warnings", "diagnosis", "reproduce"}
    assert data["verdict"] == "pass" and data["rule"] == "affine" and data["style"] == "dlfs2"
    check = data["checks"][0]
    assert set(check) >= {"name", "passed", "index", "expected", "got", "abs_err", "rel_err", "tol"}


def test_rule_guessed_from_the_name_and_style_detected():
    for target, style in [("dlfs1/layers.py:Affine", "dlfs1"), ("dlfs2/layers.py:Affine", "dlfs2"),
                          ("dezero_style/functions.py:Exp", "dezero"), ("dezero_style/functions.py:matmul", "dezero"),
                          ("functional/layers.py:affine", "functional"), ("functional/layers.py:affine_forward", "functional")]:
        result = run("verify", str(EXAMPLES / target), "--format", "json", "--trials", "1")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["style"] == style


def test_style_can_be_forced():
    result = run("verify", str(EXAMPLES / "dlfs2" / "layers.py") + ":MatMul", "--style", "dlfs1", "--trials", "1", "--format", "json")
    data = json.loads(result.output)
    assert data["style"] == "dlfs1" and data["verdict"] == "fail"  # book 1 looks for dW, which book 2 does not set
    assert any("no gradient for 'W'" in c.get("message", "") for c in data["checks"])


def test_module_target_and_script_folder_importable(tmp_path, monkeypatch):
    pkg = tmp_path / "mylayers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("import numpy as np\ndef sig(x):\n    return 1 / (1 + np.exp(-x))\n")
    (pkg / "act.py").write_text(
        "from helpers import sig\n"  # a sibling import, as when Python runs the file as a script
        "class Sigmoid:\n    def forward(self, x):\n        self.y = sig(x)\n        return self.y\n"
        "    def backward(self, dout):\n        return dout * self.y * (1 - self.y)\n"
    )
    assert run("verify", str(pkg / "act.py") + ":Sigmoid", "--trials", "2").exit_code == 0
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(pkg))
    assert run("verify", "mylayers.act:Sigmoid", "--trials", "2").exit_code == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["verify", "examples/dlfs1/layer.py:Affine"], "target file 'examples/dlfs1/layer.py' not found"),
        (["verify", "{ex}/dlfs1/layers.py:Afine"], "has no 'Afine' (did you mean Affine?)"),
        (["verify", "{ex}/dlfs1/layers.py"], "must look like path/to/layers.py:Affine"),
        (["verify", "{ex}/dlfs1/layers.py:Relu", "--rule", "relux"], "no rule named 'relux'"),
        (["verify", "{ex}/broken/layers.py:SigmoidUpcasts"], "cannot tell which rule SigmoidUpcasts implements (a rule is matched by name"),
        (["verify", "{ex}/dlfs1/layers.py:Affine", "--rule", "sigmoid"], "cannot bind Affine's parameter(s) W, b to rule 'sigmoid'"),
        (["verify", "no_such_pkg.layers:Affine", "--rule", "affine"], "module 'no_such_pkg.layers' not found"),
        (["verify", "{ex}/dlfs1/layers.py:Affine", "--hyper", "axis=0"], "rule 'affine' has no hyperparameter 'axis'"),
        (["verify", "{ex}/dlfs1/layers.py:Affine", "--shape", "Q=2"], "has no dimension Q"),
    ],
)
def test_user_mistakes_exit_2_with_a_sentence(args, message):
    result = run(*[a.format(ex=EXAMPLES) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr


def test_import_error_in_target_exits_2(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np\nraise RuntimeError('boom')\nclass Exp: pass\n")
    result = run("verify", f"{bad}:Exp")
    assert result.exit_code == 2
    assert f"importing '{bad}' failed: RuntimeError: boom ({bad}:2)" in result.stderr


def test_layer_that_raises_is_a_failure_with_location(tmp_path):
    f = tmp_path / "l.py"
    f.write_text("import numpy as np\nclass MatMul:\n    def __init__(self, W):\n        self.W = W\n"
                 "    def forward(self, x):\n        self.x = x\n        return x @ self.W\n"
                 "    def backward(self, dout):\n        self.dW = self.x @ dout\n        return dout @ self.W.T\n")
    result = run("verify", f"{f}:MatMul")
    assert result.exit_code == 1
    assert "FAIL layer raised" in result.output and f"MatMul.backward raised ValueError at {f}:9" in result.output


def test_cotangent_is_never_one_and_values_follow_the_seed():
    rule = derivcheck.load_rule("softmax_with_loss")
    from derivcheck.check.verify import Verifier
    import numpy as np

    v = Verifier(str(EXAMPLES / "dlfs1" / "layers.py") + ":SoftmaxWithLoss", rule)
    d = rule.at(N=2, C=3)
    cots = [float(v.cotangent(d, np.random.default_rng(s))) for s in range(50)]
    assert all(abs(c) != 1 for c in cots)
    a = v.sample(d, np.random.default_rng(9))[0]["x"]
    b = v.sample(d, np.random.default_rng(9))[0]["x"]
    assert np.array_equal(a, b)


def test_trial_shapes_include_distinct_equal_and_size_one():
    from derivcheck.check.verify import Verifier

    v = Verifier(str(EXAMPLES / "dlfs1" / "layers.py") + ":Affine", derivcheck.load_rule("affine"))
    assert v.trial_dims(0) == {"N": 2, "D": 3, "H": 4}
    assert v.trial_dims(1) == {"N": 3, "D": 3, "H": 3}
    assert v.trial_dims(2) == {"N": 1, "D": 1, "H": 1}


def test_stability_probe_separates_formula_from_numerics():
    rule = derivcheck.load_rule("softmax_with_loss")
    for dtype in ("float64", "float32"):
        good = verify(str(EXAMPLES / "dlfs2" / "layers.py") + ":SoftmaxWithLoss", rule, dtype=dtype)
        assert good.verdict == "pass" and any(c.name == "stability" and c.passed for c in good.checks)
        bad = verify(str(EXAMPLES / "broken" / "layers.py") + ":SoftmaxWithLossNoShift", rule, dtype=dtype, strict=True)
        assert [c.name for c in bad.checks if not c.passed] == ["stability"]
        assert "where the exact value is finite" in next(c.message for c in bad.checks if c.name == "stability")
        # without --strict the ordinary trials decide: a warning that says what the probe found
        lenient = verify(str(EXAMPLES / "broken" / "layers.py") + ":SoftmaxWithLossNoShift", rule, dtype=dtype)
        assert lenient.verdict == "pass" and all(c.passed for c in lenient.checks)
        assert [w.kind for w in lenient.warnings] == ["numerical-stability"]
        assert "where the exact value is finite" in lenient.warnings[0].message and "--strict" in lenient.warnings[0].message
    skipped = verify(str(EXAMPLES / "broken" / "layers.py") + ":SoftmaxWithLossNoShift", rule, stress=False, strict=True)
    assert skipped.verdict == "pass"


def test_exact_reference_at_extreme_logits():
    import numpy as np

    d = derivcheck.load_rule("softmax_with_loss").at(N=1, C=2)
    x, t = np.array([[1000.0, 0.0]]), np.array([1])
    assert np.isnan(d.forward(x=x, t=t))  # float64 evaluation of the reference overflows...
    out, grads = d.exact(np.array(1.0), x=x, t=t)
    assert abs(float(out) - 1000.0) < 1e-12  # ...the 50-digit one does not
    assert abs(float(grads["x"][0, 0]) - 1.0) < 1e-12 and abs(float(grads["x"][0, 1]) + 1.0) < 1e-12


def test_kink_convention_is_reported_on_request():
    rule = derivcheck.load_rule("relu")
    rep = verify(str(EXAMPLES / "dlfs1" / "layers.py") + ":Relu", rule, kinks=True, trials=2)
    assert rep.verdict == "pass"
    assert rep.notes == ["at the kink x = 0 the layer's derivative is 0 (the usual convention, as PyTorch's relu)"]
    assert verify(str(EXAMPLES / "dlfs1" / "layers.py") + ":Relu", rule, trials=2).notes == []


def test_non_smooth_rules_declare_their_kinks():
    """A rule whose Jacobian has Heaviside/Max/Piecewise keeps random values away from the kink.

    max and min (and max pooling, a max per window) are not smooth where two elements tie, and the hinge losses where a margin is
    exactly 0 (x_j - x_y + 1 = 0), the mean absolute error where a prediction equals its label, and a ReLU after a
    product (W·A + b = 0): sets of measure zero,
    not a point a domain could avoid;
    random values drawn from a continuous distribution never land on them.
    """
    import sympy

    not_pointwise = {"max", "min", "svm_loss", "linear_svm_loss", "pooling", "max_pool", "mean_absolute_error",
                     "linear_relu_dlai"}
    kinds = (sympy.Heaviside, sympy.Max, sympy.Min, sympy.Piecewise, sympy.sign, sympy.Abs)
    for name in sorted(set(RULES) - not_pointwise):
        rule = derivcheck.load_rule(name)
        # a recurrence is rough where a step is: its cells (what the stepped reference derives), not the loop unrolled
        parts = [c.rule for c in stepped.plan(rule).cells] if rule.formula.loop is not None else [rule]
        rough = False
        for part in parts:
            d, seen = part.at(**part.example_dims()), set()
            rough |= any(has_any(e, kinds, seen) for n in part.inputs for e in d.jacobian_array(n).ravel())
        declared = any(i.domain.avoid and i.domain.margin > 0 for i in rule.inputs.values())
        assert rough == declared, name


def test_derivative_from_output_matches_the_jacobian():
    import numpy as np

    for name in RULES:
        rule = derivcheck.load_rule(name)
        if rule.from_output is None:
            continue
        d = rule.at(N=2, D=3)
        x = rule.inputs["x"].domain.sample(np.random.default_rng(0), (2, 3))
        out = d.forward(x=x)
        env = rule.environment(d.dims, d.hyper, {"x": x, "out": out})
        diag = np.diagonal(d.jacobians(x=x)["x"])
        np.testing.assert_allclose(np.asarray(rule.from_output.evaluate(env, "numeric")).ravel(), diag, rtol=1e-12)


def test_stress_values_stay_in_the_domain_in_float32():
    """Peaked probabilities underflow to 0 in float32; the probe keeps them positive (log's domain)."""
    rule = derivcheck.load_rule("cross_entropy")
    for seed in range(0, 40):
        rep = verify(str(EXAMPLES / "functional" / "layers.py") + ":cross_entropy_loss", rule, dtype="float32",
                     seed=seed, trials=1, steps=1)
        assert rep.verdict == "pass", (seed, [(c.name, c.message) for c in rep.checks if not c.passed])


def test_book2_layer_that_copies_its_parameters(tmp_path):
    """From step 2 on the reference uses the arrays the layer holds, not the ones it was given."""
    f = tmp_path / "copying.py"
    f.write_text(
        "import numpy as np\n"
        "class MatMul:\n"
        "    def __init__(self, W):\n"
        "        self.params = [W.copy()]\n"
        "        self.grads = [np.zeros_like(W)]\n"
        "    def forward(self, x):\n"
        "        self.x = x\n"
        "        return x @ self.params[0]\n"
        "    def backward(self, dout):\n"
        "        self.grads[0][...] = self.x.T @ dout\n"
        "        return dout @ self.params[0].T\n"
    )
    rep = verify(f"{f}:MatMul", derivcheck.load_rule("matmul"), trials=2, steps=3)
    assert rep.verdict == "pass" and rep.style == "dlfs2", [(c.name, c.message, c.step) for c in rep.checks if not c.passed]


def test_book2_copied_parameters_are_found_by_value_whatever_their_order(tmp_path):
    """A layer that copies its parameters and lists them [b, W] has W found at params[1], b at params[0]."""
    f = tmp_path / "swapped.py"
    f.write_text(
        "import numpy as np\n"
        "class Affine:\n"
        "    def __init__(self, W, b):\n"
        "        self.params = [np.array(b), np.array(W)]\n"
        "        self.grads = [np.zeros_like(b), np.zeros_like(W)]\n"
        "    def forward(self, x):\n"
        "        self.x = x\n"
        "        return x @ self.params[1] + self.params[0]\n"
        "    def backward(self, dout):\n"
        "        self.grads[0][...] = dout.sum(axis=0)\n"
        "        self.grads[1][...] = self.x.T @ dout\n"
        "        return dout @ self.params[1].T\n"
    )
    rep = verify(f"{f}:Affine", derivcheck.load_rule("affine"), trials=3)
    assert rep.verdict == "pass", [(c.name, c.message) for c in rep.checks if not c.passed]
    assert {c.name: c.where for c in rep.checks}["grad W"] == "Affine.grads[1]"


def test_book2_parameters_kept_as_lists_are_not_found(tmp_path):
    f = tmp_path / "lists.py"
    f.write_text(
        "import numpy as np\n"
        "class MatMul:\n"
        "    def __init__(self, W):\n"
        "        self.params = [W.tolist()]\n"
        "        self.grads = [np.zeros_like(W)]\n"
        "    def forward(self, x):\n"
        "        return x @ np.array(self.params[0])\n"
    )
    with pytest.raises(DerivcheckError, match="MatMul.params holds no array equal to the 'W' it was constructed with"):
        verify(f"{f}:MatMul", derivcheck.load_rule("matmul"), trials=1)


def test_book2_forward_only_layer_in_process(tmp_path):
    """Book 2's ch01 layers: params, a forward and no backward."""
    f = tmp_path / "forward_net.py"
    f.write_text(
        "import numpy as np\n"
        "class Affine:\n"
        "    def __init__(self, W, b):\n"
        "        self.params = [W, b]\n"
        "        self.grads = [np.zeros_like(W), np.zeros_like(b)]  # made, never filled\n"
        "    def forward(self, x):\n"
        "        W, b = self.params\n"
        "        return np.dot(x, W) + b\n"
    )
    rep = verify(f"{f}:Affine", derivcheck.load_rule("affine"), trials=3)
    assert rep.verdict == "pass" and rep.style == "dlfs2" and rep.forward_only == "Affine has a forward method and no backward"
    assert [c.name for c in rep.checks] == ["forward"]


def test_a_float32_run_is_diagnosed_in_float32():
    rep = verify(str(EXAMPLES / "broken" / "layers.py") + ":AffineMissingTranspose", derivcheck.load_rule("affine"),
                 dtype="float32")
    assert [d["kind"] for d in rep.diagnosis] == ["transposed"], rep.diagnosis


def test_every_rebound_slot_is_named():
    from derivcheck.check.conventions.base import Outcome
    from derivcheck.check.verify import Verifier

    (check,) = Verifier.rebound_slots(Outcome(None, {}, rebound=["slot 0", "slot 1"]), dict(trial=0, step=1, seed=0, dims={}))
    assert (check.name, check.passed, check.message, check.step) == ("grads slots", False, "slot 0; slot 1", 1)
    assert [d["kind"] for d in check.diagnosis] == ["rebinds-grads"]
