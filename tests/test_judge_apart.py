"""A layer cannot reach its own verdict: the judge runs in a process that never imports it (isolate.py,
remote.py). Each case is a layer whose gradient is wrong by 50% and which tries, from its own code, to
make derivcheck say PASS; each must FAIL (exit 1) on the gradient it got wrong, through every way a user
runs a check. These attacks all faked a pass while the judge shared the layer's process."""
import json
import textwrap
from pathlib import Path

import pytest
from runner import process

WRONG_RELU = """
import gc, sys
import numpy as np
{prelude}

class Relu:
    def forward(self, x):
        self.mask = x <= 0
        return np.maximum(x, 0)

    def backward(self, dout):
        dx = dout * 1.5  # wrong by 50%
        dx[self.mask] = 0
        {attack}
        return dx
"""

ATTACKS = {
    # derivcheck's own comparison, tolerance and report, changed at import
    "rebinds compare": ("import derivcheck.checks as _c, derivcheck.check.judge as _j, derivcheck.check.verify as _v\n"
                        "_ok = lambda name, *a, **k: _c.Check(name, True)\n"
                        "_ = [setattr(m, 'compare', _ok) for m in (_c, _j, _v)]", ""),
    "sets KAPPA": ("import derivcheck.checks as _c\n_ = setattr(_c, 'KAPPA', 1e100)", ""),
    "fakes the verdict": ("import derivcheck.results as _r\n_ = setattr(_r.Report, 'verdict', property(lambda self: 'pass'))", ""),
    # NumPy made to lie while derivcheck calls it
    "makes np.all lie": ("", "np.all = lambda *a, **k: True\n        np.abs = lambda a, *r, **k: np.zeros(np.shape(a))"),
    # the judge's live objects, found from inside the layer's call
    "patches the live judge": ("", "[setattr(o, 'call', lambda *a, **k: []) for o in gc.get_objects() if type(o).__name__ == 'Judge']"),
    "reads expected from the caller's frames": ("""
class Peek:
    def __init__(self, wrong):
        self.wrong = wrong
    def __array__(self, dtype=None, copy=None):
        frame = sys._getframe(1)
        while frame is not None:
            if 'expected' in frame.f_locals and np.shape(frame.f_locals['expected']) == self.wrong.shape:
                return np.asarray(frame.f_locals['expected'], dtype=np.float64)
            frame = frame.f_back
        return self.wrong""", "dx = Peek(dx)"),
    # float64 values under a float16 label, to be judged at float16's tolerance
    "claims float16": ("""
class Claims16:
    dtype = np.dtype(np.float16)
    def __init__(self, values):
        self.values = values
    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values * (1 / 1.5 + 0.003), dtype=np.float64)  # off by 0.45%: a float16-sized error""",
                      "dx = Claims16(dx)"),
    # a result really cast to float16, to be judged at float16's tolerance (held to float32's at least)
    "casts to float16": ("", "dx = (dx / 1.5 * 1.002).astype(np.float16)  # off by 0.2% only"),
}


def _layer(tmp_path, prelude: str, attack: str):
    path = tmp_path / "layers.py"
    path.write_text(WRONG_RELU.format(prelude=prelude, attack=attack or "pass"))
    return f"{path}:Relu"


@pytest.mark.parametrize("prelude,attack", list(ATTACKS.values()), ids=list(ATTACKS))
def test_a_layer_cannot_make_verify_pass(tmp_path, prelude, attack):
    p = process("verify", _layer(tmp_path, prelude, attack), "--rule", "relu", "--format", "json", cwd=tmp_path)
    assert p.returncode == 1, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    report = json.loads(p.stdout)
    assert report["verdict"] == "fail"
    assert any(c["name"] == "grad x" and not c["passed"] for c in report["checks"]), report["checks"]


def test_a_layer_cannot_make_the_gate_pass_from_a_shared_module(tmp_path):
    """`check` forks each check's layer process from one import of the module (a zygote): the judge is
    still apart, so a module that rebinds derivcheck's comparison fails every wrong layer in it."""
    prelude, _ = ATTACKS["rebinds compare"]
    target = _layer(tmp_path, prelude, "")
    path = target.rpartition(":")[0]
    with open(path, "a") as fh:
        fh.write("\n\nclass Relu2(Relu):\n    pass\n")
    (tmp_path / "derivcheck.toml").write_text(textwrap.dedent(f"""
        dtypes = ["float64"]
        [[layers]]
        target = "{target}"
        rule = "relu"
        [[layers]]
        target = "{path}:Relu2"
        rule = "relu"
    """))
    p = process("check", str(tmp_path / "derivcheck.toml"), "--format", "json", "-j", "2", cwd=tmp_path)
    assert p.returncode == 1, (p.stdout[-2000:], p.stderr[-2000:])
    results = json.loads(p.stdout)["results"]
    assert [r["verdict"] for r in results] == ["fail", "fail"], results


def test_a_layer_cannot_make_assert_backward_pass(tmp_path):
    """The Python API, called from a test process that has itself imported the module."""
    prelude, _ = ATTACKS["rebinds compare"]
    target = _layer(tmp_path, prelude, "")
    (tmp_path / "test_relu.py").write_text(textwrap.dedent("""
        import pytest
        from derivcheck import assert_backward
        from layers import Relu

        def test_relu():
            with pytest.raises(AssertionError, match="grad x"):
                assert_backward(Relu, "relu")
    """))
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_relu.py")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert target


def test_garbage_written_to_derivcheck_s_pipe_is_the_layer_s_failure(tmp_path):
    """A layer that finds the connection to the judge and writes into it is not believed: a FAIL that says
    the layer's process stopped answering as derivcheck asks, never a pass and never derivcheck's crash."""
    attack = ("import multiprocessing.connection as mc\n"
              "        [o.send_bytes(b'not a frame') for o in gc.get_objects() if isinstance(o, mc.Connection)]")
    p = process("verify", _layer(tmp_path, "", attack), "--rule", "relu", cwd=tmp_path)
    assert p.returncode == 1 and "verdict: FAIL" in p.stdout, (p.stdout[-2000:], p.stderr[-2000:])
    # the judge reads the garbage; or the layer's process, which holds the judge's end too, reads it first and ends
    assert ("stopped answering as derivcheck asks during Relu.backward" in p.stdout
            or "ended the process with exit code 1 during Relu.backward" in p.stdout), p.stdout


def test_a_keyboard_interrupt_raised_by_the_layer_is_its_failure(tmp_path):
    """Not the user's Ctrl-C: exit 1 naming the call, with the summary, not 130."""
    p = process("verify", _layer(tmp_path, "", "raise KeyboardInterrupt"), "--rule", "relu", cwd=tmp_path)
    assert p.returncode == 1 and "Relu.backward raised KeyboardInterrupt" in p.stdout, (p.returncode, p.stdout, p.stderr)


def _local_relu(scale: float, attack=None):
    """A Relu defined inside a function, as a hand-written test defines one: no worker can import it by name."""
    import numpy as np

    class Relu:
        def forward(self, x):
            self.mask = x <= 0
            return np.maximum(x, 0)

        def backward(self, dout):
            if attack is not None:
                attack()
            dx = dout * scale
            dx[self.mask] = 0
            return dx

    return Relu


def _rebind_compare():
    import derivcheck.check.judge as judge
    import derivcheck.checks as checks

    ok = lambda name, *a, **k: checks.Check(name, True)  # noqa: E731
    checks.compare = judge.compare = ok


def test_a_layer_defined_inside_a_test_runs_apart_from_its_judge():
    """assert_backward forks the caller for a layer no process can import: the layer's changes to derivcheck stay
    in that fork, the judge is another process, and a right layer passes with no note that it was not isolated."""
    from derivcheck import assert_backward
    import derivcheck.checks as checks

    real = checks.compare
    with pytest.raises(AssertionError, match="FAIL grad x"):
        assert_backward(_local_relu(1.5, _rebind_compare), "relu", trials=2)
    assert checks.compare is real  # the fork's change, not this process's
    report = assert_backward(_local_relu(1.0), "relu", trials=2)
    assert report.verdict == "pass" and not any("not isolated" in n for n in report.notes), report.notes


def test_a_layer_defined_inside_a_test_has_a_time_limit():
    from derivcheck import assert_backward

    def forever():
        while True:
            pass

    with pytest.raises(AssertionError, match="did not finish within 2 s: stopped during Relu.backward"):
        assert_backward(_local_relu(1.0, forever), "relu", trials=1, timeout=2)


NETWORKS = Path(__file__).resolve().parent.parent / "examples" / "networks" / "broken"
ATTACK_ON_AFFINE = """
import gc
{prelude}

_backward = Affine.backward

def backward(self, dout):
    {attack}
    return _backward(self, dout)

Affine.backward = backward
"""


def _network(tmp_path, prelude: str, attack: str) -> str:
    """Book 1's net whose Affine's dW is divided by N (examples/networks/broken/wrong_layer.py), with an attack."""
    source = (NETWORKS / "wrong_layer.py").read_text().replace("os.path.dirname(os.path.abspath(__file__))", repr(str(NETWORKS)))
    path = tmp_path / "net.py"
    attack = (attack or "pass").replace("\n        ", "\n    ")  # ATTACKS' lines are indented for a method's body
    path.write_text(source + ATTACK_ON_AFFINE.format(prelude=prelude, attack=attack))
    return f"{path}:TwoLayerNet"


@pytest.mark.parametrize("name", ["rebinds compare", "sets KAPPA", "fakes the verdict", "makes np.all lie",
                                  "patches the live judge"])
def test_a_layer_cannot_make_its_network_pass(tmp_path, name):
    """A network is judged apart too (netrecord.py records in the layer's process, network.py judges): the
    wrong Affine fails as the link it is, whatever the module does to derivcheck or NumPy."""
    p = process("verify", _network(tmp_path, *ATTACKS[name]), "--format", "json", cwd=tmp_path)
    assert p.returncode == 1, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    report = json.loads(p.stdout)
    assert report["verdict"] == "fail"
    assert any(c["name"] == "Affine1: grad W" and not c["passed"] for c in report["checks"]), report["checks"]


@pytest.mark.parametrize("forged", ["{'bogus': 1}", "{'sizes': {}, 'seed': 0, 'steps': [], 'raised': None, 'writes': []}"])
def test_a_network_that_forges_its_record_s_form_fails(tmp_path, forged):
    """The judge believes of the record only a form it checks (netrecord.check_trial): a model that replaces
    derivcheck's recorder with one that sends something else, or no steps, is the model's FAIL."""
    prelude = ("import derivcheck.check.netrecord as _r\n"
               f"_r.NetworkRecorder.trial = lambda self, k: {forged}")
    p = process("verify", _network(tmp_path, prelude, ""), cwd=tmp_path)
    assert p.returncode == 1, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "sent a record that is not derivcheck's" in p.stdout, p.stdout[-2000:]


def test_a_check_that_cannot_finish_names_the_layer_s_convention(tmp_path):
    """The report the supervisor writes when the layer's process ends mid-check carries the convention the
    judge learnt from it (it said "?"), for a layer and for a network."""
    path = tmp_path / "layers.py"
    path.write_text(WRONG_RELU.format(prelude="import os", attack="os._exit(3)"))
    p = process("verify", f"{path}:Relu", "--rule", "relu", "--format", "json", cwd=tmp_path)
    assert p.returncode == 1 and json.loads(p.stdout)["style"] == "dlfs1", p.stdout + p.stderr
    p = process("verify", _network(tmp_path, "import os", "os._exit(3)"), "--format", "json", cwd=tmp_path)
    report = json.loads(p.stdout)
    assert p.returncode == 1 and report["style"] == "dlfs1", p.stdout[-2000:] + p.stderr[-2000:]
    assert "exit code 3" in report["checks"][0]["message"]


def test_a_convention_derivcheck_does_not_know_is_the_layer_s_failure(tmp_path):
    """The layer's process names the convention it runs the layer in; a name not in derivcheck's list (the
    module changed derivcheck's answer) is not believed: the layer's FAIL."""
    prelude = ("import derivcheck.check.conventions.dlfs1 as _c\n"
               "_ = setattr(_c.Dlfs1Adapter, 'style', 'trusted')")
    path = tmp_path / "layers.py"
    path.write_text(WRONG_RELU.format(prelude=prelude, attack="pass"))
    p = process("verify", f"{path}:Relu", "--rule", "relu", "--format", "json", cwd=tmp_path)
    assert p.returncode == 1, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "named a convention derivcheck does not know ('trusted')" in json.loads(p.stdout)["checks"][0]["message"]
