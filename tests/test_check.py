"""derivcheck check: the CI gate over a configuration."""
import json
import textwrap
import tomllib
import xml.etree.ElementTree as ET

import pytest

from derivcheck.run.config import load_config
from derivcheck.errors import DerivcheckError
from derivcheck.run.gate import validate

from bindings import EXAMPLES
from runner import run

LAYERS = textwrap.dedent("""
    import numpy as np

    class Affine:
        def __init__(self, W, b):
            self.W, self.b = W, b
        def forward(self, x):
            self.x = x
            return x @ self.W + self.b
        def backward(self, dout):
            self.dW = self.x.T @ dout
            self.db = dout.sum(axis=0)
            return dout @ self.W.T

    class BadAffine(Affine):
        def backward(self, dout):
            dx = super().backward(dout)
            self.db = dout.sum(axis=0) / len(dout)
            return dx
""")


@pytest.fixture
def project(tmp_path):
    (tmp_path / "layers.py").write_text(LAYERS)
    return tmp_path


GATE_SAMPLE = ("dlfs1/layers.py:Relu", "broken/layers.py:AffineMissingTranspose", "networks/broken/wrong_layer.py:TwoLayerNet",
               "dlfs2/layers.py:SoftmaxWithLoss")  # a layer and a network each way, and a rule guessed from a name


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"


def test_examples_gate_passes_with_expected_failures(tmp_path):
    """The gate as `derivcheck check examples` runs it, on a sample of the catalogue's entries as written there:
    its table, failure blocks, summary and JUnit.

    Every broken layer is run through the gate's own run_binding, and held to its caught-by and
    diagnosis by gate.Result.ok, in tests/test_reports.py; each reference layer passes in
    tests/test_verify.py at three seeds in both dtypes; the networks in tests/test_network.py.
    Running all of them here again would only repeat that.
    """
    raw = tomllib.loads((EXAMPLES / "derivcheck.toml").read_text())
    entries = [e | {"target": str(EXAMPLES / e["target"])} for e in raw["layers"] if e["target"] in GATE_SAMPLE]
    assert len(entries) == len(GATE_SAMPLE)
    top = "".join(f"{k} = {_toml(v)}\n" for k, v in raw.items() if k != "layers")
    (tmp_path / "derivcheck.toml").write_text(top + "".join(
        "\n[[layers]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in e.items()) for e in entries))
    junit = tmp_path / "junit.xml"
    result = run("check", str(tmp_path), "--junit-xml", str(junit))
    assert result.exit_code == 0, result.output[-3000:]
    out = result.stdout
    assert out.splitlines()[0].split() == ["BINDING", "DTYPE", "VERDICT", "WORST", "ERR/TOL"]
    bindings = load_config(tmp_path / "derivcheck.toml").bindings
    total, failing = len(bindings), sum(b.expect == "fail" for b in bindings)
    assert failing == 2 and f"{total - failing} passed, {failing} failed as expected, 0 not as expected" in out
    assert "--- AffineMissingTranspose-affine-float64 (derivcheck.toml:" in out and "[expected to fail]" in out
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == str(total) and suite.get("failures") == "0" and suite.get("skipped") == str(failing)


@pytest.mark.slow
def test_the_whole_examples_gate_passes_as_the_readme_runs_it():
    """`derivcheck check examples`, every row: both dtypes, the networks at the gate's own 5 trials, each broken
    example held to its caught-by and diagnosis. CI runs it here, so nothing only the gate would catch escapes it."""
    result = run("check", str(EXAMPLES), "--format", "json", "-j", "2")
    data = json.loads(result.stdout)
    wrong = [(r["id"], r.get("verdict"), r.get("error") or r.get("mismatch")) for r in data["results"] if not r["ok"]]
    assert result.exit_code == 0 and wrong == [], (wrong, result.output[-3000:])
    bindings = load_config(EXAMPLES / "derivcheck.toml").bindings
    assert len(data["results"]) == len(bindings) >= 300
    assert {r["dtype"] for r in data["results"] if "/networks/" in r["target"]} == {"float64", "float32"}


def test_the_whole_catalogue_is_valid_before_anything_runs():
    """Every binding of examples/derivcheck.toml names a file, a rule and hyperparameters that exist."""
    config = load_config(EXAMPLES / "derivcheck.toml")
    validate(config.bindings, config.rules)
    assert {b.group for b in config.bindings} == {"reference", "broken", "networks"}


def test_a_group_runs_alone(project):
    """--group NAME checks that group's layers only: the failing layer of another group is not run."""
    (project / "derivcheck.toml").write_text(
        '[[layers]]\ntarget = "layers.py:Affine"\ngroup = "good"\n\n'
        '[[layers]]\ntarget = "layers.py:BadAffine"\nrule = "affine"\ngroup = "bad"\n')
    result = run("check", str(project / "derivcheck.toml"), "--group", "good", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["summary"] == {"total": 1, "ok": 1, "not_ok": 0, "expected_failures": 0}
    assert [r["verdict"] for r in data["results"]] == ["pass"]
    assert run("check", str(project / "derivcheck.toml"), "--group", "bad").exit_code == 1


def test_failure_exits_1_with_report(project):
    (project / "derivcheck.toml").write_text(
        '[[layers]]\ntarget = "layers.py:Affine"\n\n[[layers]]\ntarget = "layers.py:BadAffine"\nrule = "affine"\n'
    )
    result = run("check", str(project))
    assert result.exit_code == 1
    assert "Affine-affine-float64" in result.output and "BadAffine-affine-float64" in result.output
    assert "FAIL grad b" in result.output and "reproduce: derivcheck verify" in result.output
    assert "1 passed, 0 failed as expected, 1 not as expected" in result.output


def test_pyproject_table_and_defaults(project, monkeypatch):
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.derivcheck]\ndtypes = ["float32"]\ntrials = 2\n\n'
        '[[tool.derivcheck.layers]]\ntarget = "layers.py:Affine"\n'
    )
    monkeypatch.chdir(project)
    result = run("check", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["id"] for r in data["results"]] == ["Affine-affine-float32"]
    assert data["results"][0]["trials"] == 2


def test_expected_failure_that_passes_fails_the_gate(project):
    (project / "derivcheck.toml").write_text('[[layers]]\ntarget = "layers.py:Affine"\nexpect = "fail"\n')
    result = run("check", str(project))
    assert result.exit_code == 1 and "(expected fail!)" in result.output


@pytest.mark.parametrize(
    "text,message",
    [
        ('[[layers]]\ntarget = "layers.py:Affine"\nrul = "affine"\n', "derivcheck.toml:1: layer 1: unknown key 'rul' (allowed: target:"),
        ('trails = 3\n', "derivcheck.toml:1: unknown key 'trails' (allowed:"),
        ('[[layers]]\nrule = "affine"\n', 'derivcheck.toml:1: layer 1: needs target = "path/to/file.py:Name"'),
        ('[[layers]]\ntarget = "layers.py:Affine"\n\n[[layers]]\ntarget = "layers.py:Nope"\nrule = "affine"\n', "derivcheck.toml:4: layer Nope: "),
        ('[[layers]]\ntarget = "missing.py:Affine"\n', "derivcheck.toml:1: layer Affine: target file"),
        ('[[layers]]\ntarget = "layers.py:Affine"\nrule = "afine"\n', "derivcheck.toml:1: layer Affine: no rule named 'afine'"),
        ('[[layers]]\ntarget = "layers.py:Affine"\nhyper = { axis = 1 }\n', "rule 'affine' has no hyperparameter 'axis'"),
        ('dtypes = ["float16"]\n', 'dtypes must be a list of "float64", "float32"'),
        ('[[layers]]\ntarget = "layers.py:Affine"\nexpect = "maybe"\n', 'expect must be "pass" or "fail"'),
        ('layers = 3\n', "layers must be an array of tables: write [[layers]]"),
        ('[[layers]\n', "not valid TOML"),
        ('seed = 0\n', "binds no layers"),
    ],
)
def test_bad_config_exits_2(project, text, message):
    (project / "derivcheck.toml").write_text(text)
    result = run("check", str(project))
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_no_config_exits_2(tmp_path):
    result = run("check", str(tmp_path))
    assert result.exit_code == 2 and "no derivcheck.toml or pyproject.toml with [tool.derivcheck]" in result.stderr


def test_unknown_group_exits_2():
    result = run("check", str(EXAMPLES), "--group", "nope")
    assert result.exit_code == 2 and "no group named nope" in result.stderr


def test_ids_are_unique_and_readable():
    ids = [b.id for b in load_config(EXAMPLES / "derivcheck.toml").bindings]
    assert len(ids) == len(set(ids))
    assert "Relu-relu-float64" in ids and "dlfs2.Affine-affine-float32" in ids
    assert "Transpose[axes=1,2,0]-transpose-float64" in ids


def test_duplicate_names_need_a_name(project):
    (project / "derivcheck.toml").write_text('[[layers]]\ntarget = "layers.py:Affine"\n\n[[layers]]\ntarget = "layers.py:Affine"\n')
    with pytest.raises(DerivcheckError, match='give one of them name = "..."'):
        load_config(project / "derivcheck.toml")


def test_the_broken_examples_readme_is_the_catalogue():
    """examples/broken/README.md has one row per broken binding, naming the checks that catch it."""
    import re

    from bindings import BROKEN

    rows = {m.group(1): line for line in (EXAMPLES / "broken" / "README.md").read_text().splitlines()
            if (m := re.match(r"^\| `(\w+)` \|", line))}
    assert set(rows) == {b[0] for b in BROKEN}
    for target, _, _, _, caught, _, _ in BROKEN:
        for check in caught.split(","):
            assert check.removeprefix("warning:") in rows[target], (target, check, rows[target])


def test_an_expected_failure_caught_elsewhere_than_catalogued_fails_the_gate(project):
    (project / "broken.py").write_text(
        "import numpy as np\nclass Affine:\n    def __init__(self, W, b):\n        self.W, self.b = W, b\n"
        "    def forward(self, x):\n        self.x = x\n        return x @ self.W + self.b\n"
        "    def backward(self, dout):\n        self.dW = dout.T @ self.x\n        self.db = dout.sum(axis=0)\n"
        "        return dout @ self.W.T\n")
    base = '[[layers]]\ntarget = "broken.py:Affine"\nexpect = "fail"\n'
    (project / "derivcheck.toml").write_text(base + 'caught-by = ["grad b"]\n')
    wrong_check = run("check", str(project))
    assert wrong_check.exit_code == 1 and "not where expected" in wrong_check.output
    assert "caught by grad W, where the catalogue says grad b" in wrong_check.output
    (project / "derivcheck.toml").write_text(base + 'caught-by = ["grad W"]\ndiagnosis = "sign-flipped"\n')
    wrong_kind = run("check", str(project))
    assert wrong_kind.exit_code == 1 and "diagnosed as transposed, where the catalogue says sign-flipped" in wrong_kind.output
    (project / "derivcheck.toml").write_text(base + 'caught-by = ["grad W"]\ndiagnosis = "transposed"\n')
    assert run("check", str(project)).exit_code == 0
    (project / "derivcheck.toml").write_text(base + 'caught-by = ["grad W"]\ndiagnosis = ["transposed", "sign-flipped"]\n')
    one_of_two = run("check", str(project))
    assert one_of_two.exit_code == 1 and "diagnosed as transposed, where the catalogue says transposed, sign-flipped" in one_of_two.output
    (project / "derivcheck.toml").write_text(base + 'caught-by = ["grad W"]\ndiagnosis = ["transposed", "upside-down"]\n')
    unknown = run("check", str(project))
    assert unknown.exit_code == 2 and "(or a list of them), not ['transposed', 'upside-down']" in unknown.output, unknown.output


def test_junit_holds_a_layers_control_characters_and_an_unwritable_path_loses_no_summary(project):
    (project / "layers.py").write_text(LAYERS + textwrap.dedent('''
        class Loud(Affine):
            def backward(self, dout):
                raise ValueError("bell \\x07 and escape \\x1b[31m in a message")
    '''))
    (project / "derivcheck.toml").write_text('[[layers]]\ntarget = "layers.py:Loud"\nrule = "affine"\ndtypes = ["float64"]\n')
    junit = project / "junit.xml"
    result = run("check", str(project), "--junit-xml", str(junit))
    assert result.exit_code == 1
    suite = ET.parse(junit).getroot()  # parseable
    assert "\\x07" in ET.tostring(suite, encoding="unicode")
    result = run("check", str(project), "--junit-xml", str(project / "no" / "such" / "dir" / "junit.xml"))
    assert result.exit_code == 2
    assert "1 layer checks: 0 passed, 0 failed as expected, 1 not as expected" in result.output
    assert "could not be written" in result.output
