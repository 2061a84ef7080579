"""explain: the derivation shown node by node, with closed forms checked before they are printed."""
import subprocess
import sys
from pathlib import Path

import pytest

import derivcheck
from derivcheck.present.explanation import explain, prove
from derivcheck.engine.rules import load_rule_file

from bindings import EXAMPLES
from runner import run

RULES = sorted(derivcheck.list_rules())


@pytest.mark.parametrize("name", RULES)
def test_every_rule_in_every_format(name):
    """One derivation per rule, rendered in each format (the command line's --format is test_key_lines')."""
    exp = explain(derivcheck.load_rule(name))
    text, markdown, latex = (exp.render(fmt) for fmt in ("text", "markdown", "latex"))
    graph = "computational graph: a loop over the T steps" if derivcheck.load_rule(name).formula.loop else "computational graph, node by node"
    assert graph in text and "Jacobian at" in text and "closed forms" in text
    assert markdown.startswith(f"## {name}") and "**Closed forms**" in markdown and "$$" in markdown
    assert r"\begin{align*}" in latex and r"\end{align*}" in latex


def test_key_lines():
    sigmoid = run("explain", "sigmoid").stdout
    assert "dx = dout·y(1 - y)    (proven: equal for every x)" in sigmoid
    assert "local ∂y/∂v3 = -y²" in sigmoid and "local ∂v2/∂v1 = v2" in sigmoid
    affine = run("explain", "affine").stdout
    assert all(line in affine for line in ("dx = dout Wᵀ", "dW = xᵀ dout", "db = Σₙ dout"))
    assert "(y - t) / N" in run("explain", "softmax_with_loss").stdout
    assert run("explain", "affine", "--format", "markdown").stdout.startswith("## affine")
    latex = run("explain", "affine", "--format", "latex").stdout
    assert r"\frac{\partial L}{\partial W} &= x^\top \mathrm{dout}" in latex
    assert r"\frac{\partial L}{\partial b} &= \sum_{N} \mathrm{dout}" in latex


def test_a_closed_form_that_does_not_hold_is_not_shown(tmp_path):
    text = (Path(derivcheck.load_rule("affine").path).read_text()
            .replace('W = "x.T @ dout"', 'W = "dout.T @ x"'))  # transposed: wrong
    (tmp_path / "affine.toml").write_text(text)
    rule = load_rule_file(tmp_path / "affine.toml")
    proofs = prove(rule, rule.resolve_hyper())
    assert proofs["W"][0] is False and proofs["x"][0] is True
    out = explain(rule).text()
    assert "dx = dout Wᵀ" in out and "dW =" not in out.split("closed forms")[1]


def test_closed_forms_are_checked_for_the_hyperparameters_given():
    assert "dx = broadcast_to(dout, (N, D))" in explain("sum").text()
    other = explain("sum", hyper={"axis": "1", "keepdims": "false"}).text()
    assert "broadcast_to(dout" not in other.split("closed forms")[1]
    assert "(none that holds for these hyperparameters)" in other


def test_jupyter_reprs_and_python_api():
    e = derivcheck.explain("affine", shape={"N": 1, "D": 2, "H": 1})
    assert e._repr_markdown_().startswith("## affine")
    assert e._repr_latex_().startswith("$$") and e._repr_latex_().endswith("$$")
    assert e.dims == {"N": 1, "D": 2, "H": 1}


def test_layer_mode_puts_formula_next_to_the_layer():
    result = run("explain", "--layer", str(EXAMPLES / "broken" / "layers.py") + ":AffineMissingTranspose", "--rule", "affine",
                 "--shape", "N=2,D=2,H=2")
    assert result.exit_code == 0
    out = result.stdout.split("your layer against the formula:")[1]
    assert "expected dW[" in out and "at the trial's values" in out and "the layer returned" in out
    assert "diagnosis: grad W: equals the right gradient transposed" in out
    ok = run("explain", "--layer", str(EXAMPLES / "dlfs1" / "layers.py") + ":Affine")
    assert ok.exit_code == 0 and "passes every check" in ok.stdout


def test_explain_errors_exit_2():
    assert run("explain").exit_code == 2
    assert "no rule named 'sigmod'" in run("explain", "sigmod").stderr


def test_walkthrough_runs_from_an_install():
    out = subprocess.run([sys.executable, str(EXAMPLES / "walkthrough.py")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("all of the seed notes' results re-derived and checked")
    assert "dx = dout·y(1 - y)    (proven: equal for every x)" in out.stdout


def test_layer_mode_at_a_real_size_prints_the_element_in_index_notation():
    """At N=100, D=H=50 the element is one sum in index notation; the Jacobian is shown at a tiny size."""
    result = run("explain", "--layer", str(EXAMPLES / "broken" / "layers.py") + ":AffineMissingTranspose", "--rule", "affine",
                 "--shape", "N=100,D=50,H=50")
    assert result.exit_code == 0, result.stderr
    assert "Jacobian at N=2, D=2, H=2:" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if "expected dW[" in ln)
    k, l = line.split("dW[")[1].split("]")[0].split(",")
    assert line.endswith(f"= Sum(dout[j, {l}]*x[j, {k}], (j, 0, 99))")


def test_a_slice_is_a_node_whose_gradient_goes_back_into_its_positions():
    """GRU's gates are slices of one weight matrix: the graph shows each slice, and backward says where g goes."""
    r = run("explain", "gru")
    assert r.exit_code == 0, r.output
    assert "v1   = Wx[:, :H]    [3, 4]" in r.output
    assert "at v1 = Wx[:, :H]:\n      rule: puts dv1 at the sliced positions of Wx's shape, 0 elsewhere\n" in r.output


def test_an_array_rule_is_written_in_the_nodes_own_names():
    """Affine's matmul node: 'dx = dv1 Wᵀ, dW = xᵀ dv1', not 'da = g bᵀ, db = aᵀ g', whose db reads as the bias's."""
    r = run("explain", "affine")
    assert r.exit_code == 0, r.output
    assert "at v1 = x W:\n      rule: dx = dv1 Wᵀ, dW = xᵀ dv1 (dv1 = dout)\n" in r.output


def test_every_function_of_the_formula_language_has_its_backward_said():
    """Element-wise functions get their derivative symbolically, array operations their rule in words;
    none is left to a catch-all (sin's backward once read 'passes dy on')."""
    from derivcheck.present.explanation import _ARRAY_RULES, _ELEMENTWISE
    from derivcheck.engine.formula import FUNCTIONS

    assert set(FUNCTIONS) <= set(_ELEMENTWISE) | set(_ARRAY_RULES)
    sin = run("explain", "sin").stdout
    assert "at y = sin(x):\n      local ∂y/∂x = cos(x),  signal dx = dout·cos(x)\n" in sin, sin
    conv = run("explain", "deconvolution").stdout
    assert "rule: dx = the convolution of dv1 with the filters W (conv2d), dW = Σ over images and positions of x times dv1's windows" in conv, conv
    # each the other's adjoint: x's gradient as a closed form, shown where it holds (stride 1 here)
    assert "dx = conv2d(dout, W, stride, pad)" in conv
    assert "dx = deconv2d(dout, W, stride, pad)" in run("explain", "convolution").stdout
