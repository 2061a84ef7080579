"""Every kind of malformed rule is refused with the file, the line and the problem."""
import textwrap

import numpy as np

import pytest

import derivcheck
from derivcheck import RuleError
from derivcheck.engine.rules import load_rule_file
from runner import process, run

GOOD_HEAD = """\
name = "r"
summary = "a test rule"
"""


def write(tmp_path, body, name="r"):
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(body))
    return path


def refused(tmp_path, body, name="r"):
    path = write(tmp_path, body, name)
    with pytest.raises(RuleError) as info:
        load_rule_file(path)
    return info.value


def test_good_rule_loads(tmp_path):
    rule = load_rule_file(write(tmp_path, GOOD_HEAD + 'formula = "x * 2"\n[inputs.x]\nshape = ["N"]\n'))
    assert rule.at(N=3).output_shape == (3,)


def test_an_input_may_share_a_functions_name(tmp_path):
    """DeZero's BatchNorm(mean, var, ...): a label named mean is a value where it is a name, and mean(...) is still the function."""
    body = GOOD_HEAD + 'formula = "(x - mean) * mean(x)"\n[inputs.x]\nshape = ["N"]\n[inputs.mean]\nshape = ["N"]\n'
    d = load_rule_file(write(tmp_path, body)).at(N=3)
    x, m = np.array([1.0, 2.0, 6.0]), np.array([0.5, 0.0, 1.0])
    np.testing.assert_allclose(d.forward(x=x, mean=m), (x - m) * 3.0)
    np.testing.assert_allclose(d.vjp(np.ones(3), x=x, mean=m)["mean"], -3.0 * np.ones(3))

KEPT = GOOD_HEAD + 'formula = "x * m"\noutput = ["N"]\n[inputs.x]\nshape = ["N"]\n[labels.m]\nkind = "kept"\nshape = ["N"]\n{extra}[hyper.r]\ntype = "{type}"\ndefault = {default}\n'

PAIR = (GOOD_HEAD + 'formula = "x * a * b"\n[inputs.x]\nshape = ["N"]\n[hyper.a]\ntype = "int"\ndefault = 2\n'
        '[hyper.b]\ntype = "int"\ndefault = 2\n[hyper.f]\ntype = "float"\ndefault = 1.0\n[pairs]\n')

WINDOWS = GOOD_HEAD + """formula = "max(windows(x, 2, 2, s, 0), axis=[4, 5])"
[inputs.x]
shape = ["N", "C", "H", "W"]
[hyper.s]
type = "int"
default = 2
[[windows]]
size = "W"
window = 2
stride = "s"
[[windows]]
size = "H"
window = 2
stride = "s"
"""

CASES = [
    # (what, body, line, text in the message)
    ("bad TOML", GOOD_HEAD + 'formula = "x"\n[inputs.x\nshape = ["N"]\n', 4, "not valid TOML"),
    ("unknown function", GOOD_HEAD + 'formula = "expp(x)"\n[inputs.x]\nshape = ["N"]\n', 3, "unknown function 'expp'"),
    ("undefined name", GOOD_HEAD + 'formula = "x * z"\n[inputs.x]\nshape = ["N"]\n', 3, "undefined name 'z'"),
    ("hyper names not a list", GOOD_HEAD + 'formula = "x * a"\n[inputs.x]\nshape = ["N"]\n[hyper.a]\ntype = "float"\ndefault = 1.0\n'
     'names = "alpha"\n', 9, "'names' of hyperparameter 'a' must be a list of parameter names"),
    ("hyper names not identifiers", GOOD_HEAD + 'formula = "x * a"\n[inputs.x]\nshape = ["N"]\n[hyper.a]\ntype = "float"\n'
     'default = 1.0\nnames = ["al pha"]\n', 9, "'names' of hyperparameter 'a' must be a list of parameter names"),
    ("function as a value", GOOD_HEAD + 'formula = "x * mean"\n[inputs.x]\nshape = ["N"]\n', 3,
     "'mean' is a function: call it, as in 'mean(x)'"),
    (
        "shape that cannot work",
        GOOD_HEAD + 'formula = "x @ W"\n[inputs.x]\nshape = ["N", "D"]\n[inputs.W]\nshape = ["H", "D"]\n',
        3,
        "cannot evaluate 'x @ W'",
    ),
    (
        "declared output disagrees",
        GOOD_HEAD + 'formula = "x.T"\noutput = ["N", "D"]\n[inputs.x]\nshape = ["N", "D"]\n',
        4,
        "formula gives shape (3, 2) but output declares",
    ),
    ("no eval of Python", GOOD_HEAD + 'formula = "__import__(\'os\').system(\'true\')"\n[inputs.x]\nshape = ["N"]\n', 3, "only the formula functions can be called"),
    ("dunder call", GOOD_HEAD + 'formula = "__import__(x)"\n[inputs.x]\nshape = ["N"]\n', 3, "unknown function '__import__'"),
    ("subscript", GOOD_HEAD + 'formula = "x[0]"\n[inputs.x]\nshape = ["N"]\n', 3, "only slices 'start:stop' can index an array"),
    # slices (a GRU's gates side by side): from 0, within the axis, no step; sizes may be multiples of a dimension
    ("slice with a step", GOOD_HEAD + 'formula = "x[0:N:2]"\n[inputs.x]\nshape = ["N"]\n', 3, "a slice cannot have a step"),
    ("slice past the end", GOOD_HEAD + 'formula = "x[1:N + 1]"\n[inputs.x]\nshape = ["N"]\n', 3, "lie within the axis"),
    ("slice from the end", GOOD_HEAD + 'formula = "x[-1:N]"\n[inputs.x]\nshape = ["N"]\n', 3, "bounds count from 0"),
    ("empty slice", GOOD_HEAD + 'formula = "x[N:N]"\n[inputs.x]\nshape = ["N"]\n', 3, "start before stop"),
    ("slice bound not whole", GOOD_HEAD + 'formula = "x[0:N / 2]"\n[inputs.x]\nshape = ["N"]\n', 3, "a slice bound must be a whole number"),
    ("too many slices", GOOD_HEAD + 'formula = "x[:, :]"\n[inputs.x]\nshape = ["N"]\n', 3, "2 slices for an array of 1 axes"),
    # pairs: a layer parameter that takes two int hyperparameters as one (DeZero's kernel_size)
    ("a pair of one", PAIR + 'kernel_size = ["a"]\n', 16, "pair 'kernel_size' must name two int hyperparameters"),
    ("a pair of a float", PAIR + 'kernel_size = ["a", "f"]\n', 16, "pair 'kernel_size' must name two int hyperparameters"),
    ("a pair of the same twice", PAIR + 'kernel_size = ["a", "a"]\n', 16, "pair 'kernel_size' must name two int hyperparameters"),
    ("a pair named as a hyperparameter", PAIR + 'a = ["a", "b"]\n', 16, "'a' is used both as a hyperparameter and as a pair of hyperparameters"),
    # several outputs (an LSTM's h_next, c_next): named, assigned above, one shape
    ("an output that is no name", GOOD_HEAD + 'formula = """\ny = x * 2\ny, x + 1\n"""\n[inputs.x]\nshape = ["N"]\n', 5,
     "written as names assigned above"),
    ("an output that is an input", GOOD_HEAD + 'formula = """\ny = x * 2\ny, x\n"""\n[inputs.x]\nshape = ["N"]\n', 5,
     "output 'x' is not assigned in the formula"),
    ("an output named twice", GOOD_HEAD + 'formula = """\ny = x * 2\ny, y\n"""\n[inputs.x]\nshape = ["N"]\n', 5,
     "output 'y' is named twice"),
    ("outputs of two shapes", GOOD_HEAD + 'formula = """\ny = x * 2\nz = sum(x)\ny, z\n"""\n[inputs.x]\nshape = ["N"]\n', 6,
     "the outputs y (2,) and z () have different shapes"),
    ("outputs against the declared shape", GOOD_HEAD + 'formula = """\ny = x * 2\nz = x + 1\ny, z\n"""\noutput = ["N", "N"]\n'
     '[inputs.x]\nshape = ["N"]\n', 8, "formula's 2 outputs each have shape (2,) but output declares ['N', 'N'] = (2, 2)"),
    ("dout in a closed form of several outputs", GOOD_HEAD + 'formula = """\ny = x * 2\nz = x + 1\ny, z\n"""\n[inputs.x]\n'
     'shape = ["N"]\n[closed_form]\nx = "2 * dout"\n', 11, "undefined name 'dout'"),
    ("forward_only not a reason", GOOD_HEAD + 'forward_only = true\nformula = "x"\n[inputs.x]\nshape = ["N"]\n', 3,
     "forward_only must be a one-line reason that only the forward is checked"),
    ("updated class labels", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\n[labels.t]\nkind = "classes"\n'
     'shape = ["N"]\nclasses = "C"\nupdated = true\n', 10, "updated = true marks a real label the layer updates in place"),
    ("zero multiple", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N", "0*H"]\n', 5, "a positive whole number or a dimension times a dimension"),
    ("multiple by a bad name", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["G_*K"]\n', 5, "times a dimension name, as in \"3*H\" or \"G*K\""),
    ("multiple of a bad name", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["3*H_"]\n', 5, "times a dimension name"),
    ("attribute", GOOD_HEAD + 'formula = "x.__class__"\n[inputs.x]\nshape = ["N"]\n', 3, "attribute '.__class__' is not allowed"),
    ("lambda", GOOD_HEAD + 'formula = "(lambda: x)()"\n[inputs.x]\nshape = ["N"]\n', 3, "only the formula functions can be called"),
    ("syntax", GOOD_HEAD + 'formula = "x +"\n[inputs.x]\nshape = ["N"]\n', 3, "not valid syntax"),
    ("bad keyword", GOOD_HEAD + 'formula = "sum(x, axes=0)"\n[inputs.x]\nshape = ["N"]\n', 3, "unexpected keyword argument 'axes'"),
    ("missing key", 'name = "r"\nsummary = "s"\n[inputs.x]\nshape = ["N"]\n', None, "missing required key 'formula'"),
    ("unknown top key", GOOD_HEAD + 'formula = "x"\nformulae = "x"\n[inputs.x]\nshape = ["N"]\n', 4, "unknown key 'formulae'"),
    ("unknown input key", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\nshap = 1\n', 6, "unknown key 'shap' in [inputs.x]"),
    ("input without shape", GOOD_HEAD + 'formula = "x"\n[inputs.x]\ndomain = "normal"\n', 4, "needs a shape"),
    ("bad shape", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = "N"\n', 5, "shape must be a list"),
    ("bad domain", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\ndomain = "lognormal"\n', 6, "unknown domain kind 'lognormal'"),
    ("bad uniform", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\ndomain = {kind = "uniform", low = 2, high = 1}\n', 6, "low < high"),
    ("name mismatch", 'name = "other"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = ["N"]\n', 1, "must match the file name"),
    ("hyper type", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\n[hyper.k]\ntype = "complex"\ndefault = 1\n', 7, "needs type = one of"),
    ("hyper default", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\n[hyper.k]\ntype = "bool"\ndefault = 3\n', 8, "default 3 of hyperparameter 'k' is not true or false"),
    ("name clash", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["x"]\n', 5, "'x' is used both as"),
    ("label kind", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\n[labels.t]\nkind = "text"\n', 7, "unknown label kind 'text'"),
    ("classes missing", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\n[labels.t]\nshape = ["N"]\n', 6, "need classes"),
    ("bad dims", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\n[dims.N]\nmin = 3\nmax = 2\n', 6, "1 <= min <= max"),
    ("last line not an expression", GOOD_HEAD + 'formula = """\ny = x\n"""\n[inputs.x]\nshape = ["N"]\n', 4, "last line must be the output expression"),
    # a mask the layer draws (dropout): read back from the output, its rate a float hyperparameter
    ("kept without a rate", KEPT.format(extra="", type="float", default=0.5), 8, "needs one of drop = \"NAME\" or keep"),
    ("kept with both rates", KEPT.format(extra='drop = "r"\nkeep = "r"\n', type="float", default=0.5), 10, "needs one of drop"),
    ("kept rate not a float", KEPT.format(extra='drop = "r"\n', type="int", default=1), 10, 'drop = "r" names no float hyperparameter'),
    ("kept rate unknown", KEPT.format(extra='keep = "q"\n', type="float", default=0.5), 10, 'keep = "q" names no float hyperparameter'),
    ("kept shape", KEPT.format(extra='drop = "r"\n', type="float", default=0.5).replace('shape = ["N"]\n{', '{').replace(
        'kind = "kept"\nshape = ["N"]', 'kind = "kept"\nshape = ["N", "N"]'), 9, "its shape is the output's"),
    # sliding windows: an (N, C, H, W) input, filters that fit it
    ("windows of a matrix", GOOD_HEAD + 'formula = "max(windows(x, 2, 2, 1, 0), axis=[4, 5])"\n[inputs.x]\nshape = ["N", "D"]\n', 3,
     "windows are taken of an (N, C, H, W) array, not of shape"),
    ("filters of other channels", GOOD_HEAD + 'formula = "conv2d(x, W, 1, 0)"\n[inputs.x]\nshape = ["N", "C", "H", "H"]\n'
     '[inputs.W]\nshape = ["F", "D", "K", "K"]\n[dims.H]\nmin = 3\n', 3, "image channels"),
    # preconditions on the sizes: [[windows]] names a dimension, and window/stride/pad fit
    ("windows of no dimension", WINDOWS.replace('size = "H"', 'size = "Q"'), 14, "windows size must name a dimension"),
    ("windows stride unknown", WINDOWS.replace('stride = "s"', 'stride = "z"'), 12, "windows stride must be a dimension, an int"),
    ("windows of no width", WINDOWS.replace("window = 2", "window = 0"), 11, "windows window must be"),
    ("windows key unknown", WINDOWS + "step = 1\n", 17, "unknown key 'step' in [windows[1]]"),
    ("rate on another label", GOOD_HEAD + 'formula = "x"\n[inputs.x]\nshape = ["N"]\n[labels.t]\nkind = "real"\nshape = ["N"]\ndrop = "r"\n',
     9, "only a kept mask"),
]


@pytest.mark.parametrize("what,body,line,message", CASES, ids=[c[0] for c in CASES])
def test_malformed_rule(tmp_path, what, body, line, message):
    err = refused(tmp_path, body)
    assert message in str(err)
    assert err.line == line
    expected_where = f"{tmp_path / 'r.toml'}:{line}:" if line else f"{tmp_path / 'r.toml'}:"
    assert str(err).startswith(expected_where)


def test_multiline_formula_errors_point_at_their_own_line(tmp_path):
    body = GOOD_HEAD + 'formula = """\ny = exp(x)\nz = y + q\nz\n"""\n[inputs.x]\nshape = ["N"]\n'
    err = refused(tmp_path, body)
    assert err.line == 5 and "undefined name 'q'" in str(err)


def test_sin_and_cos_are_in_the_formula_language(tmp_path):
    """DeZero's first functions: derived shape-generically, checked against the concrete tier, and a layer verifies against them."""
    from derivcheck.engine import reference
    from derivcheck.check.verify import verify

    (tmp_path / "sin.toml").write_text('name = "sin"\nsummary = "sine"\nformula = "sin(x) * cos(x)"\noutput = ["N", "D"]\n'
                                       '[inputs.x]\nshape = ["N", "D"]\n')
    rule = derivcheck.load_rule(str(tmp_path / "sin.toml"))
    g, note = reference.generic_for(rule, rule.resolve_hyper())
    assert g is not None and note == ""
    (tmp_path / "layers.py").write_text(
        "import numpy as np\nclass Sin:\n    def forward(self, x):\n        self.x = x\n        return np.sin(x) * np.cos(x)\n"
        "    def backward(self, dout):\n        return dout * np.cos(2 * self.x)\n")
    assert verify(f"{tmp_path}/layers.py:Sin", rule, style="dlfs1").verdict == "pass"


def test_one_broken_rule_file_does_not_stop_the_others(tmp_path):
    (tmp_path / "broken.toml").write_text("name = \n")
    (tmp_path / "square.toml").write_text('name = "square"\nsummary = "x squared"\nformula = "x ** 2"\noutput = ["N"]\n'
                                          '[inputs.x]\nshape = ["N"]\n')
    listed = run("--rules", str(tmp_path), "rules")
    assert listed.exit_code == 2 and "square: x squared" in listed.stdout and "affine:" in listed.stdout
    assert listed.stderr.count("broken.toml") == 1
    # a check against a built-in rule, guessed from the layer's name, is not stopped by it
    examples = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"
    ok = run("--rules", str(tmp_path), "verify", str(examples / "dlfs1/layers.py") + ":Affine")
    assert ok.exit_code == 0, ok.output


def test_trials_draw_only_sizes_that_meet_the_windows_precondition(tmp_path):
    rule = load_rule_file(write(tmp_path, WINDOWS))
    for k in range(12):
        dims = rule.planned_dims(k, 5, {"s": 2})
        assert (dims["H"] - 2) % 2 == 0 and (dims["W"] - 2) % 2 == 0, dims
        dims = rule.planned_dims(k, 5, {"s": 3})
        assert (dims["H"] - 2) % 3 == 0 and (dims["W"] - 2) % 3 == 0, dims
    assert rule.unmet({"N": 1, "C": 1, "H": 5, "W": 4}, {"s": 2}) == [
        "(H + 2*0 - 2) is a multiple of s, at least 0 (here (5 + 2*0 - 2) and 2)"]


@pytest.mark.parametrize("rule,name,value,ok", [("dropout", "dropout_ratio", 1.5, False), ("dropout", "dropout_ratio", 1.0, False),
                                                ("dropout", "dropout_ratio", 0.0, True), ("dropout_functional", "p", 0.0, False),
                                                ("dropout_functional", "p", 1.0, True), ("dropout_functional", "p", -0.2, False)])
def test_a_masks_rate_is_a_probability(rule, name, value, ok):
    r = derivcheck.load_rule(rule)
    if ok:
        assert r.resolve_hyper({name: value})[name] == value
        return
    with pytest.raises(derivcheck.DerivcheckError, match=f"hyperparameter '{name}' of rule '{rule}' is the chance of"):
        r.resolve_hyper({name: value})


@pytest.mark.parametrize("formula,said", [
    ("x * 1e309", "a constant beyond float64's range (it reads as inf)"),
    ("x / 0", "division by the constant 0"),
], ids=["beyond-float64", "divided-by-zero"])
def test_a_constant_that_makes_every_value_infinite_is_refused_where_it_is_written(tmp_path, formula, said):
    """Not a Jacobian of oo or zoo printed with exit 0: the rule is wrong, which file and line say."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.toml").write_text(f'name = "bad"\nsummary = "s"\nformula = "{formula}"\noutput = ["N"]\n[inputs.x]\nshape = ["N"]\n')
    p = process("--rules", str(rules), "derive", "bad", cwd=tmp_path)
    assert p.returncode == 2 and f"bad.toml:3: {said}" in p.stderr, (p.returncode, p.stdout, p.stderr)
