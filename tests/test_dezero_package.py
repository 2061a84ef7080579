"""The real dezero package (PyPI), verified through the dezero adapter.

dezero needs numpy<1.24 (and matplotlib at import), so it gets a virtual
environment of its own, built once per test session (about 30 s). Set
DERIVCHECK_SKIP_DEZERO=1 to skip it on a machine without PyPI.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(os.environ.get("DERIVCHECK_SKIP_DEZERO") == "1", reason="DERIVCHECK_SKIP_DEZERO=1"),
    pytest.mark.xdist_group("dezero"),  # one worker runs them all: the environment is built once per run
]


@pytest.fixture(scope="session")
def dezero_env(tmp_path_factory):
    venv = tmp_path_factory.mktemp("dezero-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["numpy<1.24", "dezero", "matplotlib"], check=True)
    subprocess.run(pip + ["-e", str(ROOT)], check=True)
    return venv


def derivcheck(venv, *args, cwd=None):
    return subprocess.run([str(venv / "bin" / "derivcheck"), *args], capture_output=True, text=True, cwd=cwd)


TARGETS = [
    ("dezero.functions:Exp", []),
    ("dezero.functions:Log", []),
    ("dezero.functions:Tanh", []),
    ("dezero.functions:Sigmoid", []),
    ("dezero.functions:ReLU", ["--rule", "relu"]),
    ("dezero.functions:Reshape", ["--rule", "reshape"]),
    ("dezero.functions:reshape", ["--rule", "reshape"]),
    ("dezero.functions:Transpose", ["--hyper", "axes=1,2,0"]),
    ("dezero.functions:Sum", ["--hyper", "axis=1", "--hyper", "keepdims=false"]),
    ("dezero.functions:BroadcastTo", []),
    ("dezero.functions:SumTo", []),
    ("dezero.functions:MatMul", []),
    ("dezero.functions:matmul", []),
    ("dezero.functions:Linear", ["--rule", "affine"]),
    ("dezero.functions:Softmax", ["--hyper", "axis=1"]),
    ("dezero.functions:SoftmaxCrossEntropy", ["--rule", "softmax_with_loss"]),
]


def test_dezero_runs_on_old_numpy(dezero_env):
    out = subprocess.run([str(dezero_env / "bin" / "python"), "-c", "import numpy, dezero; print(numpy.__version__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("1.")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_real_dezero_functions_verify(dezero_env, dtype):
    for target, extra in TARGETS:
        result = derivcheck(dezero_env, "verify", target, *extra, "--dtype", dtype, "--trials", "4", "--format", "json")
        data = json.loads(result.stdout)
        assert result.returncode == 0, (target, data["checks"], data["warnings"], result.stderr)
        assert data["style"] == "dezero" and data["verdict"] == "pass"


def test_broken_function_on_real_dezero_fails(dezero_env, tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        import numpy as np
        from dezero import Function

        class Tanh(Function):
            def forward(self, x):
                return np.tanh(x)

            def backward(self, gy):
                y = self.outputs[0]()
                return gy * (1 - y)  # BUG: should be 1 - y * y
    """))
    result = derivcheck(dezero_env, "verify", "mine.py:Tanh", "--format", "json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["style"] == "dezero"
    assert [c["name"] for c in data["checks"] if not c["passed"]] == ["grad x"]
