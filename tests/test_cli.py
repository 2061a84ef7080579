"""The command line: listing, deriving, exit codes, user rule folders."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner import run


def test_rules_lists_catalog():
    result = run("rules")
    assert result.exit_code == 0
    assert "affine: Fully connected layer" in result.output
    assert "inputs: x[N,D], W[D,H], b[H]" in result.output
    assert "hyper: axis: axis = 0, keepdims: bool = True" in result.output


def test_derive_json_is_output_index_major():
    result = run("derive", "affine", "--shape", "N=2,D=3,H=2", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rule"] == "affine" and data["shape"] == {"N": 2, "D": 3, "H": 2} and data["hyper"] == {}
    W = data["jacobians"]["W"]  # [n][h][d][h']
    assert W[1][0][2][0] == "x_1_2" and W[1][0][2][1] == "0"
    assert data["jacobians"]["b"][0][1] == ["0", "1"]


def test_derive_text_latex_and_wrt():
    text = run("derive", "sigmoid", "--shape", "N=1,D=1")
    assert text.exit_code == 0 and "∂out/∂x" in text.output
    latex = run("derive", "matmul", "--shape", "N=1,D=2,H=1", "--format", "latex", "--wrt", "W")
    assert latex.exit_code == 0
    assert r"\left[\begin{array}{cc}x_{0 0} & x_{0 1}\end{array}\right]" in latex.output
    simple = run("derive", "softmax_with_loss", "--shape", "N=1,C=2", "--simplify")
    assert simple.exit_code == 0 and "∂out/∂x[0,0] = (-t_0_0*exp(x_0_1) + t_0_1*exp(x_0_0))/(exp(x_0_0) + exp(x_0_1))" in simple.output


def test_derive_default_shape_and_hyper():
    result = run("derive", "transpose", "--hyper", "axes=1,0,2", "--format", "json")
    data = json.loads(result.output)
    assert data["shape"] == {"A": 2, "B": 3, "C": 4} and data["output_shape"] == [3, 2, 4]


@pytest.mark.parametrize(
    "args,message",
    [
        (["derive", "afine"], "no rule named 'afine'"),
        (["derive", "affine", "--shape", "N=2,Q=3"], "has no dimension Q"),
        (["derive", "affine", "--shape", "N=2;D=3"], "dimension N must be a positive integer, not '2;D=3'"),
        (["derive", "affine", "--shape", "N=2,D"], "--shape must look like N=2,D=3"),
        (["derive", "affine", "--shape", "N=2,D=3,H=2", "--wrt", "z"], "'z' is not a differentiable input"),
        (["derive", "sum", "--hyper", "axis=x"], "hyperparameter 'axis' takes an axis"),
        (["derive", "sum", "--hyper", "axis"], "--hyper takes NAME=VALUE"),
        (["--rules", "/no/such/folder", "rules"], "rule folder '/no/such/folder' does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback():
    result = run("--debug", "derive", "afine")
    assert result.exit_code == 2 and "Traceback" in result.stderr


USER_RULE = """\
name = "square"
summary = "x squared, a user's own rule"
formula = "x ** 2"
[inputs.x]
shape = ["N"]
"""


def test_user_rules_by_option_env_and_config(tmp_path, monkeypatch):
    folder = tmp_path / "my_rules"
    folder.mkdir()
    (folder / "square.toml").write_text(USER_RULE)
    assert "square: x squared" in run("--rules", str(folder), "rules").output
    monkeypatch.setenv("DERIVCHECK_RULES", str(folder))
    assert run("derive", "square", "--shape", "N=2").exit_code == 0
    monkeypatch.delenv("DERIVCHECK_RULES")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.derivcheck]\nrules = ["../my_rules"]\n')
    monkeypatch.chdir(project)
    result = run("derive", "square", "--shape", "N=2", "--format", "json")
    assert json.loads(result.output)["jacobians"]["x"][1][1] == "2*x_1"


def test_user_rule_shadows_builtin(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "exp.toml").write_text(USER_RULE.replace('"square"', '"exp"'))
    out = run("--rules", str(folder), "rules").output
    assert "exp: x squared" in out and f"from: {folder / 'exp.toml'}" in out


def test_bad_config_key_is_refused(tmp_path, monkeypatch):
    (tmp_path / "derivcheck.toml").write_text("rule = ['x']\n")
    monkeypatch.chdir(tmp_path)
    result = run("rules")
    assert result.exit_code == 2 and "unknown key 'rule'" in result.stderr and "rules:" in result.stderr


def test_malformed_user_rule_names_file_and_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "oops.toml").write_text(USER_RULE.replace('"square"', '"oops"').replace("x ** 2", "x ** q"))
    result = run("--rules", str(folder), "derive", "oops")
    assert result.exit_code == 2
    assert f"{folder / 'oops.toml'}:3: undefined name 'q'" in result.stderr


def _console_script():
    beside = Path(sys.executable).parent / "derivcheck"
    return str(beside) if beside.exists() else shutil.which("derivcheck")


@pytest.mark.skipif(_console_script() is None, reason="derivcheck is not installed (pip install -e .)")
def test_console_script_from_install():
    out = subprocess.run(
        [_console_script(), "derive", "affine", "--shape", "N=2,D=3,H=2", "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(out.stdout)["jacobians"]["x"][0][0][0][0] == "W_0_0"


def test_derive_takes_a_size_given_as_a_hyperparameter():
    """repeat's N is a size: --hyper N=5 derives at N=5 (it printed N=None and used 3), and a --shape that says
    otherwise is refused."""
    result = run("derive", "repeat", "--hyper", "N=5")
    assert result.exit_code == 0 and result.output.startswith("rule repeat at D=2, N=5: out has shape (5, 2)"), result.output
    assert "None" not in result.output
    clash = run("derive", "repeat", "--hyper", "N=5", "--shape", "N=3,D=2")
    assert clash.exit_code == 2 and "--shape sets N=3, but a hyperparameter sets N=5" in clash.output, clash.output
