"""A layer's exit, crash, hang, prints or global state can never turn into a pass: each from the outside."""
import json
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from runner import process

ROOT = Path(__file__).resolve().parent.parent

RELU = """
import numpy as np
{prelude}

class Relu:
    def forward(self, x):
        {forward}
        self.mask = x <= 0
        return np.maximum(x, 0)

    def backward(self, dout):
        {backward}
        dx = dout.copy()
        dx[self.mask] = 0
        return dx
"""


def layer(tmp_path, prelude="", forward="pass", backward="pass", name="layers.py"):
    path = tmp_path / name
    path.write_text(RELU.format(prelude=prelude, forward=forward, backward=backward))
    return f"{path}:Relu"


def test_a_correct_layer_still_passes_in_its_worker(tmp_path):
    p = process("verify", layer(tmp_path), "--rule", "relu", cwd=tmp_path)
    assert p.returncode == 0 and "verdict: PASS" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("where,code,expect", [
    ("forward", "raise SystemExit(0)", "Relu.forward raised SystemExit"),
    ("backward", "import sys; sys.exit(0)", "Relu.backward raised SystemExit"),
    ("backward", "import os; os._exit(0)", "ended the process with exit code 0 during Relu.backward"),
    ("forward", "import os; os._exit(3)", "ended the process with exit code 3 during Relu.forward"),
    ("backward", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "killed by SIGSEGV during Relu.backward"),
])
def test_an_exit_or_crash_in_the_layer_is_a_fail_that_says_where(tmp_path, where, code, expect):
    target = layer(tmp_path, **{where: code})
    p = process("verify", target, "--rule", "relu", cwd=tmp_path)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "verdict: FAIL" in p.stdout and expect in p.stdout, p.stdout


def test_an_exit_at_import_is_a_fail(tmp_path):
    target = layer(tmp_path, prelude="import sys\n_ = sys.exit(0)  # an assignment runs at import (a bare call is skipped)")
    p = process("verify", target, "--rule", "relu", cwd=tmp_path)
    assert p.returncode == 1 and "called sys.exit(0) during importing the target" in p.stdout, p.stdout + p.stderr


def test_a_hanging_layer_fails_at_the_time_limit(tmp_path):
    target = layer(tmp_path, backward="while True: pass")
    t = time.monotonic()
    p = process("verify", target, "--rule", "relu", "--timeout", "3", cwd=tmp_path)
    assert time.monotonic() - t < 60
    assert p.returncode == 1 and "did not finish within 3 s: stopped during Relu.backward" in p.stdout, p.stdout + p.stderr


def test_layer_prints_never_reach_the_json_stream(tmp_path):
    target = layer(tmp_path, prelude="_ = print('chatty at import')", forward="print('chatty forward')")
    p = process("verify", target, "--rule", "relu", "--format", "json", cwd=tmp_path)
    assert p.returncode == 0
    assert json.loads(p.stdout)["verdict"] == "pass"
    assert "chatty" not in p.stdout + p.stderr


def test_the_gate_keeps_its_summary_and_junit_when_a_layer_exits(tmp_path):
    good = layer(tmp_path, name="good.py")
    bad = layer(tmp_path, name="bad.py", backward="import os; os._exit(0)")
    quits = layer(tmp_path, name="quits.py", forward="raise SystemExit(0)")
    (tmp_path / "derivcheck.toml").write_text(
        "".join(f'[[layers]]\ntarget = "{t}"\nrule = "relu"\nname = "{n}"\n\n' for n, t in (("good", good), ("bad", bad), ("quits", quits)))
    )
    junit = tmp_path / "out.xml"
    p = process("check", str(tmp_path), "--junit-xml", str(junit), "-j", "2", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "3 layer checks: 1 passed, 0 failed as expected, 2 not as expected" in p.stdout
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "2"


def test_layers_do_not_share_modules_or_numpy_state(tmp_path):
    """Two folders each with their own helpers.py; one sets np.seterr(all='raise') at import."""
    for name, value, prelude in (("a", "0.0", "np.seterr(all='raise')"), ("b", "1e9", "")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "helpers.py").write_text(f"SHIFT = {value}\n")
        (folder / "layers.py").write_text(textwrap.dedent(f"""
            import numpy as np
            import helpers
            {prelude}

            class Relu:
                def forward(self, x):
                    self.mask = x <= 0
                    return np.maximum(x, 0) + helpers.SHIFT

                def backward(self, dout):
                    dx = dout.copy()
                    dx[self.mask] = 0
                    return dx
        """))
    (tmp_path / "derivcheck.toml").write_text(
        '[[layers]]\ntarget = "a/layers.py:Relu"\nrule = "relu"\nname = "A"\n\n'
        '[[layers]]\ntarget = "b/layers.py:Relu"\nrule = "relu"\nname = "B"\n'
    )
    p = process("check", str(tmp_path), "--format", "json", "-j", "1", cwd=tmp_path)
    results = {r["id"]: r for r in json.loads(p.stdout)["results"]}
    assert results["A-relu-float64"]["verdict"] == "pass", results["A-relu-float64"]
    # B's own helpers (SHIFT = 1e9) are imported, not A's: its forward is wrong
    assert results["B-relu-float64"]["verdict"] == "fail"
    assert any(c["name"] == "forward" and not c["passed"] for c in results["B-relu-float64"]["checks"])


def test_assert_backward_runs_a_module_level_layer_isolated(tmp_path):
    target = layer(tmp_path, backward="import os; os._exit(0)")
    code = (f"import derivcheck\n"
            f"try:\n    derivcheck.assert_backward({target!r}, rule='relu')\n"
            f"except AssertionError as e:\n    print('FAILED', 'ended the process' in str(e))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.stdout.strip() == "FAILED True", p.stdout + p.stderr


def test_interrupt_exits_130(tmp_path):
    import signal

    mark = tmp_path / "in-backward"
    target = layer(tmp_path, backward=f"open({str(mark)!r}, 'w').close(); import time; time.sleep(60)")
    # Ctrl-C's default action in the child, whatever this process inherited: a test run started
    # in the background of a shell ignores SIGINT, and so would every process it starts
    proc = subprocess.Popen([sys.executable, "-m", "derivcheck", "verify", target, "--rule", "relu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:  # the worker is in the layer
        time.sleep(0.05)
    proc.send_signal(__import__("signal").SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "interrupted" in err


def test_the_commands_worker_is_forked_from_the_command_itself(tmp_path, monkeypatch):
    """`derivcheck verify` forks its worker from its own process (which has imported none of the user's
    code: isolate.fork_from_here), not from a server it would start first; the worker takes Ctrl-C as a
    fresh process does, not as the command's handler held while it started the worker. (Unconfined: shut
    in, the layer sees no process outside its own PID namespace, test_sandbox.py.)"""
    monkeypatch.setenv("DERIVCHECK_SANDBOX", "0")
    seen = tmp_path / "seen.txt"
    prelude = ("import os, signal\n"
               f"_ = open({str(seen)!r}, 'w').write(f'{{os.getppid()}} {{signal.getsignal(signal.SIGINT) is signal.default_int_handler}}')")
    proc = subprocess.Popen([sys.executable, "-m", "derivcheck", "verify", layer(tmp_path, prelude), "--rule", "relu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "verdict: PASS" in out, out + err
    assert seen.read_text() == f"{proc.pid} True"


def test_explain_layer_runs_the_layers_code_in_the_worker_only(tmp_path):
    """`explain --layer` reads the target with ast, as verify does: the module is imported in the worker alone."""
    seen = tmp_path / "imported-in.txt"
    prelude = f"import os\n_ = open({str(seen)!r}, 'a').write(f'{{os.getpid()}}\\n')"
    proc = subprocess.Popen([sys.executable, "-m", "derivcheck", "explain", "--layer", layer(tmp_path, prelude), "--rule", "relu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "passes every check" in out, out + err
    assert str(proc.pid) not in seen.read_text().split(), seen.read_text()


def test_broken_toml_meant_for_derivcheck_is_loud_in_the_plugin_and_the_gate(tmp_path):
    """A TOML error in a sub-folder's [tool.derivcheck] is an error, never skipped, never a parent's config."""
    layer(tmp_path)
    (tmp_path / "derivcheck.toml").write_text('[[layers]]\ntarget = "layers.py:Relu"\nrule = "relu"\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[tool.derivcheck]\ntrials = 2\n[[tool.derivcheck.layers]\n')
    (sub / "test_nothing.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # pytest's own configuration is elsewhere
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "pytest.ini", "--rootdir", str(tmp_path), "sub"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode != 0 and "not valid TOML" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    q = process("check", cwd=sub)
    assert q.returncode == 2 and "pyproject.toml: not valid TOML" in q.stderr, q.stdout + q.stderr


def test_check_honours_the_global_config_option(tmp_path):
    layer(tmp_path)
    (tmp_path / "other.toml").write_text('[[layers]]\ntarget = "layers.py:Relu"\nrule = "relu"\nname = "FromOther"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = process("--config", str(tmp_path / "other.toml"), "check", cwd=elsewhere)
    assert p.returncode == 0 and "FromOther-relu-float64" in p.stdout, p.stdout + p.stderr


def test_reproduce_line_names_the_users_rule_folder(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "relu.toml").write_text('name = "relu"\nsummary = "doubled"\nformula = "2 * maximum(x, 0)"\noutput = ["N", "D"]\n'
                                     '[inputs.x]\nshape = ["N", "D"]\ndomain = {kind = "normal", avoid = [0.0], margin = 0.05}\n')
    p = process("--rules", str(rules), "verify", layer(tmp_path), "--rule", "relu", cwd=tmp_path)
    assert p.returncode == 1
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("reproduce: "))
    assert f"--rules {rules}" in line
    again = subprocess.run(line.removeprefix("reproduce: ").replace("derivcheck", f"{sys.executable} -m derivcheck", 1),
                           shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert again.returncode == 1 and "verdict: FAIL" in again.stdout


def test_an_interrupt_while_a_worker_starts_waits_until_its_pid_is_known():
    """Ctrl-C in the forkserver's handshake left a worker nobody could kill, and exit waited for it."""
    import os
    import signal

    from derivcheck.run.isolate import _start

    class Worker:
        started = False

        def start(self):
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of start()
            time.sleep(0.2)
            self.started = True

    w = Worker()
    with pytest.raises(KeyboardInterrupt):
        _start(w)
    assert w.started


MODULE_HEAD = """
import os
import numpy as np

def _log_import():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports.log"), "a") as fh:
        fh.write("imported\\n")


LOGGED = _log_import()  # once per process that imports this module (an assignment: it runs at import)
{prelude}
SEEN = []  # what earlier forward calls in this process left behind
"""
MODULE_CLASS = RELU.split("{prelude}")[1]

# (class name, forward, backward, expected message of the failing check or None for a pass)
IN_ONE_MODULE = [
    ("Good", "SEEN.append(1)", "pass", None),
    ("Leaky", "assert not SEEN, 'another check ran in this process'", "pass", None),
    ("Quits", "pass", "import os; os._exit(0)", "ended the process with exit code 0 during Quits.backward"),
    ("Crashes", "pass", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "killed by SIGSEGV during Crashes.backward"),
    ("Exits", "raise SystemExit(0)", "pass", "Exits.forward raised SystemExit"),
    ("Hangs", "pass", "while True: pass", "did not finish within 3 s: stopped during Hangs.backward"),
]


def _one_module(tmp_path, layers, prelude=""):
    """``layers`` (some of IN_ONE_MODULE) in one file, checked by the gate at -j 2: {class name: its result}."""
    (tmp_path / "layers.py").write_text(MODULE_HEAD.format(prelude=prelude) + "".join(
        MODULE_CLASS.replace("class Relu", f"class {n}").format(forward=f, backward=b) for n, f, b, _ in layers))
    (tmp_path / "derivcheck.toml").write_text("trials = 2\n\n" + "".join(
        f'[[layers]]\ntarget = "layers.py:{n}"\nrule = "relu"\nname = "{n}"\n' + ("timeout = 3\n" if n == "Hangs" else "") + "\n"
        for n, _, _, _ in layers))
    p = process("check", str(tmp_path), "--format", "json", "-j", "2", cwd=tmp_path)
    return p, {r["id"].split("-")[0]: r for r in json.loads(p.stdout)["results"]}


def test_the_checks_of_one_module_fork_from_one_import_and_stay_isolated(tmp_path):
    """The gate imports a module holding several checked layers once (a zygote) and forks each check's worker
    from it: every exit, crash and hang is still its own check's FAIL, and no check sees another's state."""
    p, results = _one_module(tmp_path, IN_ONE_MODULE)
    assert p.returncode == 1, p.stdout + p.stderr
    for name, _, _, expect in IN_ONE_MODULE:
        r = results[name]
        if expect is None:
            assert r["verdict"] == "pass", r
        else:
            assert r["verdict"] == "fail" and any(expect in c.get("message", "") for c in r["checks"]), r
    assert (tmp_path / "imports.log").read_text() == "imported\n"  # one import for six checks


def test_the_checks_of_one_module_fork_with_their_derivation_already_loaded(tmp_path, monkeypatch):
    """The zygote loads the checks' derivations before it imports the module, so each check's worker has them
    in memory: here the module's import deletes the cache folder, so a worker that had to load the derivation
    would derive it again and store it there. (Unconfined: shut in, the import cannot reach the cache.)"""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DERIVCHECK_CACHE_DIR", str(cache))
    monkeypatch.setenv("DERIVCHECK_SANDBOX", "0")
    prelude = "import shutil\n_ = shutil.rmtree(os.environ['DERIVCHECK_CACHE_DIR'], ignore_errors=True)"
    p, results = _one_module(tmp_path, IN_ONE_MODULE[:2], prelude)
    assert p.returncode == 0 and all(r["verdict"] == "pass" for r in results.values()), p.stdout + p.stderr
    assert (tmp_path / "imports.log").read_text() == "imported\n"  # the zygote's import: the checks forked from it
    assert not list(cache.rglob("*.json")), "a check's worker derived again what the zygote had loaded"


@pytest.mark.parametrize("prelude,why", [
    ("raise SystemExit(0)", "called sys.exit(0) during importing the target"),
    ("import threading, time\n_ = threading.Thread(target=time.sleep, args=(30,), daemon=True).start()", None),
    ("_ = os.register_at_fork(before=lambda: os._exit(1))", None),
], ids=["exits at import", "starts a thread at import", "a fork hook ends the importing process"])
def test_a_module_that_cannot_be_imported_once_is_imported_by_each_check(tmp_path, prelude, why):
    """A module whose import fails, or starts a thread (a fork would copy its locks but not the thread),
    is not forked from, nor one whose process dies as it forks: each check imports it itself, as without
    a zygote, and reports what happened."""
    layers = IN_ONE_MODULE[:3]
    p, results = _one_module(tmp_path, layers, prelude)
    imports = (tmp_path / "imports.log").read_text().count("imported")
    assert imports == 1 + len(layers)  # the zygote's try, then each check's own
    if why:
        assert all(r["verdict"] == "fail" and any(why in c.get("message", "") for c in r["checks"]) for r in results.values()), results
    else:
        assert results["Good"]["verdict"] == results["Leaky"]["verdict"] == "pass", results
        assert results["Quits"]["verdict"] == "fail", results


STOP_THE_ZYGOTE = (
    "import signal\n"
    "        marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'stopped')\n"
    "        up = int(open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()[1])  # the watcher's parent\n"
    "        if not os.path.exists(marker) and b'forkserver' in open(f'/proc/{up}/cmdline', 'rb').read():\n"
    "            open(marker, 'w').close()\n"
    "            os.kill(up, signal.SIGSTOP)  # the zygote this process was forked from")


def test_a_zygote_stopped_by_a_layer_is_replaced_not_waited_for(tmp_path, monkeypatch):
    """Where the layer is not shut in (sandbox.py), it can signal the process it was forked from: a zygote that
    no longer forks is given up after a deadline, and the module's remaining checks start from the server,
    instead of the gate hanging."""
    monkeypatch.setenv("DERIVCHECK_SANDBOX", "0")
    layers = [("Stops", "pass", STOP_THE_ZYGOTE, None)] + [(f"Good{i}", "pass", "pass", None) for i in range(4)]
    p, results = _one_module(tmp_path, layers)
    assert (tmp_path / "stopped").exists(), "the layer did not reach its zygote: the test tests nothing"
    assert p.returncode == 0 and all(r["verdict"] == "pass" for r in results.values()), (p.stdout[-3000:], p.stderr[-2000:])


def test_a_limit_too_short_for_derivcheck_to_start_is_not_blamed_on_the_target(tmp_path):
    """A limit reached before the judge asked its first question is derivcheck's own start, not the import."""
    p = process("verify", layer(tmp_path), "--rule", "relu", "--timeout", "0.001", cwd=tmp_path)
    assert p.returncode == 2 and "did not get as far as importing" in p.stderr and "top level" not in p.stderr, p.stderr


def test_what_the_layer_draws_itself_follows_the_printed_seed(tmp_path):
    """NumPy's global generator in the layer's process is seeded from the trial's seed before the layer is
    made, as the trial's values are: a dropout mask (here, the number the forward draws, which it raises
    with) is the same in every run at one seed, and ``--seed`` changes it. It was the process's own state
    (seeded from the OS at import), so a failure that depends on a mask did not reproduce."""
    import numpy as np

    target = layer(tmp_path, forward="raise ValueError(f'drew {np.random.rand()!r}')")

    def drawn(seed):
        p = process("verify", target, "--rule", "relu", "--seed", seed, "--format", "json", cwd=tmp_path)
        assert p.returncode == 1, p.stdout + p.stderr
        return next(c["message"] for c in json.loads(p.stdout)["checks"] if c["name"] == "layer raised")

    first, again, other = drawn(0), drawn(0), drawn(7)
    assert first == again and first != other
    for seed, message in ((0, first), (7, other)):  # trial 0's seed is --seed itself
        np.random.seed(seed)
        assert f"drew {np.random.rand()!r}" in message


def test_the_steps_queued_after_a_call_that_raised_never_run(tmp_path):
    """A trial's steps are sent to the layer's process at once (remote.RemoteLayers.trial); once a call raises,
    the steps queued after it are skipped, not run on a layer that already failed (a hang or an exit there
    would turn "the layer raised" into a timeout or a crash)."""
    log = tmp_path / "calls.log"
    target = layer(tmp_path, prelude="import pathlib", forward=f"pathlib.Path({str(log)!r}).open('a').write('forward\\n')",
                   backward="raise ValueError('no backward')")
    p = process("verify", target, "--rule", "relu", "--trials", "3", "--steps", "4", "--format", "json", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert [c["name"] for c in report["checks"] if not c["passed"]] == ["layer raised"]
    assert log.read_text() == "forward\n" * 3  # one call per trial: its first step's


def test_a_zygote_that_stops_after_forking_a_check_s_process_does_not_share_its_pipe(tmp_path, monkeypatch):
    """A zygote that forked a check's process and then stopped before it said so (where no sandbox keeps a
    layer from signalling it) leaves that process holding the check's pipe: the check starts again from
    the server on pipes of its own, instead of two layer processes answering one judge (a correct layer
    FAILed on its forward output in CI when a layer stopped its zygote at that moment)."""
    monkeypatch.setenv("DERIVCHECK_SANDBOX", "0")
    prelude = ("import signal\n"  # the zygote stops itself right after its first fork (and so does each watcher)
               "_ = os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGSTOP))")
    p, results = _one_module(tmp_path, [("Good", "pass", "pass", None), ("Good2", "pass", "pass", None)], prelude)
    assert p.returncode == 0 and all(r["verdict"] == "pass" for r in results.values()), (p.stdout[-3000:], p.stderr[-2000:])
    assert (tmp_path / "imports.log").read_text().count("imported") >= 2  # the zygote's, then the server's processes'



def test_the_worker_server_preloads_all_that_the_judge_and_the_layer_s_process_import():
    """The server's preload list (isolate.SERVER_PRELOAD) is kept by hand beside what the judge and the layer's
    process import (isolate._checking_modules): a module it misses would be imported
    again in every check."""
    code = ("import importlib, sys\n"
            "import derivcheck.run.isolate as iso\n"
            "for name in iso.SERVER_PRELOAD:\n"
            "    importlib.import_module(name)\n"
            "before = set(sys.modules)\n"
            "iso._checking_modules()\n"
            "print(sorted(m for m in set(sys.modules) - before if m.startswith('derivcheck')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_a_layer_at_the_mnist_sizes_is_judged_without_the_two_processes_waiting_on_each_other(tmp_path):
    """A step's arrays (x: 100x784 float64, 627 KB) fill the pipe between the judge and the layer's process
    both ways: the judge sends a trial's steps at once while the layer's process answers the first. When the
    judge wrote and read on one thread, each waited for the other to read: exit 2 at the time limit."""
    layer = ROOT / "examples" / "dlfs2" / "layers.py"
    p = process("verify", f"{layer}:Affine", "--shape", "N=100,D=784,H=50", "--trials", "2", "--timeout", "30",
                cwd=tmp_path, timeout=120)
    assert p.returncode == 0 and "verdict: PASS" in p.stdout, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])


def test_questions_to_a_layer_s_process_that_has_ended_are_its_failure_never_a_hang():
    """The judge's writer thread finds the pipe closed: the answer reads as the process's end, the next
    question is refused at once, and the judge's last word does not wait."""
    import multiprocessing

    from derivcheck.run import remote

    mine, theirs = multiprocessing.Pipe()
    theirs.close()
    layers = remote.RemoteLayers(mine)
    with pytest.raises(remote.LayerGone) as gone:
        layers.send("detect_style").result()
    assert gone.value.ended and gone.value.why == "its process ended"
    layers.writer.join(timeout=10)
    assert not layers.writer.is_alive() and layers.broken
    with pytest.raises(remote.LayerGone, match="its process no longer takes questions"):
        layers.send("script_note")
    started = time.monotonic()
    layers.done()
    assert time.monotonic() - started < 0.5
