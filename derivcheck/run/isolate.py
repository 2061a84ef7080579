"""Each check in processes of its own, with a time limit: the layer's process and the judge.

A layer is untrusted code. It may call ``sys.exit(0)`` or ``os._exit(0)``,
loop forever, crash the interpreter, print into our JSON, change NumPy's
error state, patch derivcheck, or shadow a module another layer imports. So
every check that ``verify``, ``check``, the pytest plugin and
``assert_backward`` make (a layer's or a whole network's) runs as two fresh
processes (forked from a server that has imported derivcheck, NumPy and SymPy
but no user code, so starting one costs milliseconds; the ``derivcheck``
command, which has imported no user code either, forks them from itself:
:func:`fork_from_here`):

- the layer's process (:func:`_host`), which shuts itself in where Linux
  allows (sandbox.py), imports the target and answers the judge's questions
  with data only (remote.py; a network's model is run and recorded there,
  netrecord.py); its standard output and error go to a file, whose tail is
  quoted when it dies;
- the judge (:func:`_judge`), which never imports the target and computes
  the reference, the tolerance, the comparison and the report, telling this
  process (the supervisor) what it waits for as it goes: the import, the
  layer's code, or its own work.

The supervisor keeps a time limit (``timeout`` seconds, default
:data:`DEFAULT_TIMEOUT`), kills both at the end, and blames a stall on the
right one. In a gate run, the layer processes of a module that holds several
checked layers are forked from one process that has imported it, and the
judges from its twin that loaded the derivations (:class:`Zygote`).

The outcome is always a report: the judge's, or a FAIL with one check named
``process`` that says what happened (exited with code N, killed by a signal,
over time, sent what is not an answer). Bad input (a target that does not
import, a binding mistake) comes back as a :class:`DerivcheckError`, exit 2.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from derivcheck.errors import DerivcheckError
from derivcheck.vocab import DEFAULT_TIMEOUT
from derivcheck.check import loading
from derivcheck.run import remote, sandbox
from derivcheck.run.remote import IMPORTING

_SERVER = None  # the worker server's context (see _server)
_FORK_HERE = False  # see fork_from_here
_LIVE: set = set()  # workers running now, so that an interrupt can stop them all


def kill_all() -> None:
    for worker in list(_LIVE):
        try:
            worker.kill()
        except (OSError, ValueError, AttributeError):
            pass


def _start(worker) -> None:
    """Start ``worker`` with Ctrl-C held back until it has started.

    An interrupt in the middle of the forkserver's handshake left a running worker
    whose pid was never learnt: it could not be killed, and the interpreter's exit
    waited for it (a layer sleeping 60 s kept `derivcheck` from exiting for 60 s).
    Held back, the interrupt is raised as soon as the pid is known, and kills it.
    (A handler, not a signal mask: NumPy's BLAS threads would take a masked signal.)
    """
    if threading.current_thread() is not threading.main_thread():
        worker.start()  # the gate's threads: Ctrl-C reaches the main thread, which kills every started worker
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        worker.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


class WorkerCrashed(Exception):
    """Internal: derivcheck itself failed in the worker (a bug of ours, with its traceback)."""


# what the worker server imports before it forks: all that _checking_modules imports
# (derivcheck.check.network with verify; tests/test_isolation.py checks it), and sympy.tensor.tensor, which SymPy
# imports at its first sum (Add.flatten), else in every worker
SERVER_PRELOAD = ("derivcheck.run.isolate", "derivcheck.check.verify", "derivcheck.check.network",
                  "derivcheck.engine.reference", "sympy", "sympy.tensor.tensor")


def _server():
    """The worker server's context: forkserver, or spawn where there is none (Windows)."""
    global _SERVER
    if _SERVER is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _SERVER = multiprocessing.get_context("forkserver")
            _SERVER.set_forkserver_preload(list(SERVER_PRELOAD))
        else:  # Windows: a fresh interpreter each time
            _SERVER = multiprocessing.get_context("spawn")
    return _SERVER


def _context():
    """Where a check's worker comes from: a fork of this process (:func:`fork_from_here`), else the server."""
    if _FORK_HERE and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return _server()


def fork_from_here() -> None:
    """Fork workers from this process instead of from the server: for the ``derivcheck`` command's own
    process (``cli.run``), which has imported none of the user's code (targets are read with ``ast``
    until the worker imports them). While it runs one Python thread (``check -j N`` runs several: the
    server), a fork of it is, for the layer, what a fork of the server would be, without the server's
    start, a second import of NumPy and SymPy (a one-layer ``verify`` with the server takes 1.5 to 1.8
    times the time and CPU: ``bench/startup.py``). Linux only (on macOS a fork of a process that has
    loaded the system's frameworks is unsafe)."""
    global _FORK_HERE
    _FORK_HERE = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


_ENV = ("DERIVCHECK_CACHE_DIR", "DERIVCHECK_CACHE", "DERIVCHECK_RULES", "XDG_CACHE_HOME", "HOME")


def start_server() -> None:
    """Start the worker server now, rather than at the first check: the server keeps the environment it
    started in (a check's request carries the caller's folder, sys.path and derivcheck's own variables)."""
    if _server().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


def _callers_state() -> dict:
    """What a worker takes from its caller (:func:`_take_callers_state`): derivcheck's variables, the folder, sys.path."""
    return {"env": {name: os.environ.get(name) for name in _ENV}, "cwd": os.getcwd(), "sys_path": list(sys.path)}


def _take_callers_state(request: dict) -> None:
    """The server was forked earlier: take the caller's state as it is now."""
    for name, value in request["env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    os.chdir(request["cwd"])
    sys.path[:] = request["sys_path"]


def _report_stage(conn):
    """A stage callback (remote.RemoteLayers' ``on_stage``) that tells the supervisor what is being waited for."""
    return lambda kind, text: conn.send(("stage", kind, text))


def _judging_modules() -> tuple:
    """What :func:`_judge` uses, imported: called before the judges are forked (warm_up, verify_isolated), so
    that each has it in memory instead of importing it again (tens of milliseconds a check)."""
    from derivcheck.engine.rules import load_rule
    from derivcheck.check.netrecord import Unreadable
    from derivcheck.check.network import verify_network
    from derivcheck.check.verify import verify

    return load_rule, Unreadable, verify_network, verify


def _checking_modules() -> None:
    """Import what a check's two processes use (the judge's and the layer's process's), before they are forked."""
    _judging_modules()
    remote.serving_modules()


def _judge(conn, peer, request: dict) -> None:
    """The judge (no user code imported): verify with the layer run by the layer's process on ``peer``;
    send the supervisor ("stage", kind, text) as it goes, then ("report" | "error" | "gone" | "unreadable" | "exited" |
    "internal" | "interrupted", payload)."""
    _take_callers_state(request)
    _keep_freed_memory()
    _one_blas_thread()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # forked from the caller: not its handler (see _start)
    sandbox.not_traceable()  # by the layer's process: a process of the same user, shut in or not
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    load_rule, Unreadable, verify_network, verify = _judging_modules()
    layers = remote.RemoteLayers(peer, _report_stage(conn), lambda style: conn.send(("style", style)))
    try:
        if request["rule"] is None:  # a network: the model runs in the layer's process, recorded (netrecord.py)
            report = verify_network(request["target"], layers.network(request["options"]), **request["options"])
        else:
            rule = load_rule(request["rule"])
            if rule.digest != request["digest"]:
                raise DerivcheckError(f"rule file {request['rule']} changed while derivcheck was running: run again")
            report = verify(request["target"], rule, layers=layers, **request["options"])
        conn.send(("report", report.to_json()))
    except remote.LayerGone as exc:
        conn.send(("gone", (exc.why, exc.stage, exc.ended)))
    except Unreadable as exc:
        conn.send(("unreadable", (f"sent a record that is not derivcheck's ({exc})", layers.stage)))
    except remote.LayerExited as exc:
        conn.send(("exited", (exc.code, exc.stage)))
    except DerivcheckError as exc:
        conn.send(("error", str(exc)))
    except remote.InternalInLayer as exc:
        conn.send(("internal", f"in the layer's process: {exc}"))
    except KeyboardInterrupt:
        conn.send(("interrupted", None))
    except BaseException as exc:  # noqa: BLE001 - everything else is reported, never lost
        conn.send(("internal", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        layers.done()
        peer.close()
        conn.close()


def _host(peer, request: dict) -> None:
    """The layer's process: shut in (sandbox.py), its output into a file, then answer the judge (remote.serve)."""
    if "object" not in request:  # forked from the caller itself (forks_here): its state is its own
        _take_callers_state(request)
    remote.redirect_output(request["output"])
    _keep_freed_memory()
    _one_blas_thread()
    refused = _shut_in()
    remote.serve(peer, request.get("object", request["target"]), refused=refused)


def _one_blas_thread() -> None:
    """Run this process's BLAS on one thread (threadpoolctl), as the ``derivcheck`` command asks before NumPy
    loads (derivcheck/__main__.py says why); a check forked from a worker server (the pytest plugin, the
    Python API) inherits its caller's threads, so the judge and the layer's process set it here too. In the
    judge alone: a warm MNIST affine check took 0.62 CPU s with two threads, 0.35 s with one (same run)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _keep_freed_memory() -> None:
    """Let this process's allocator keep the memory of large arrays it frees, for the next ones (glibc only:
    no mmap for a block, no heap trimming; elsewhere nothing changes). A check at large sizes makes and drops
    many arrays of one size; given back to the system each time, every new one costs a page fault per 4 KB:
    softmax-with-loss at N=10000, C=1000, checked in one process, spent 20 of its 38 s in the kernel. The
    process ends with its check, so what it keeps is held only that long."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-4, 0)  # M_MMAP_MAX: no block of its own mapping
    mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: free memory at the heap's top is kept, up to 2 GiB (set by hand)


def _shut_in(pids: bool = True) -> str | None:
    """Shut this process in where the system allows (sandbox.py; ``pids``: in a PID namespace too, in a
    child); what to refuse every question with when it cannot and DERIVCHECK_SANDBOX=require, else None."""
    import derivcheck
    from derivcheck.engine import cache, cachekey
    from derivcheck.engine.rules import builtin_rules_dir

    cachekey.forget()  # a key a caller's process had read, copied into this fork's memory
    wanted = sandbox.wanted()
    if wanted == "off":
        return None
    try:
        sandbox.shut_in(hidden=[d for d in (cache.cache_dir(), cachekey.user_home()) if d is not None],
                        readonly=[Path(derivcheck.__file__).parent, builtin_rules_dir()], pids=pids)
    except sandbox.Unavailable as exc:
        if wanted == "require":
            return (f"DERIVCHECK_SANDBOX=require, and this system would not shut the layer's process in ({exc}): "
                    f"allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or "
                    f"user.max_user_namespaces), or run the check inside a container")
    return None


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4000))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)


def _failed(target, rule, options, message: str, style: str | None = None):
    """The report of a check that could not finish (the layer's FAIL), written by the supervisor; ``style``: the
    layer's convention, if the judge learnt it (else the one asked for, or "?")."""
    from derivcheck.checks import Check
    from derivcheck.results import Report
    from derivcheck.check.verify import reproduce_line

    rep = Report(target, rule.name if rule else "network", options.get("style") or style or "?", options.get("dtype", "float64"), options.get("seed", 0),
                 options.get("trials", 5), options.get("steps", 2), dict(options.get("hyper") or {}),
                 strict=options.get("strict", False))
    rep.checks = [Check("process", False, message=message)]
    try:
        rep.reproduce = reproduce_line(target, rule, options) if rule else shlex.join(["derivcheck", "verify", target])
    except Exception:  # noqa: BLE001 - the line is a help, the verdict stands without it
        rep.reproduce = ""
    return rep


def _ended(process) -> str:
    """How ``process`` ended, for a message: "was killed by SIGKILL", "ended with exit code 3"."""
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"ended with exit code {code} (os._exit or a crash)"


def verify_isolated(target: str, rule, timeout: float | None = None, zygote: "Zygote | None" = None, **options):
    """:func:`derivcheck.check.verify.verify`, judged in a process that never imports the target, with the
    layer run in another (remote.py); see the module doc.

    ``rule`` None: ``target`` is a network, judged by :func:`derivcheck.check.network.verify_network` from
    what the layer's process records (netrecord.py). ``zygote``: the layer's process is forked from that
    one, which has imported the target's module, and the judge from its twin, which has the checks'
    derivations loaded, if they could (:class:`Zygote`); else both from the server, as without one.
    """
    from derivcheck.results import Report

    obj = None if isinstance(target, str) else target  # a layer no process can import: see forks_here
    target = loading.target_spec(target)
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if not (0 < timeout < float("inf")):  # nan and inf too: a limit that never ends is none
        raise DerivcheckError(f"the time limit must be a finite positive number of seconds, not {timeout:g}")
    fd, output = tempfile.mkstemp(prefix="derivcheck-layer-", suffix=".txt")
    os.close(fd)
    ctx = _context()
    if ctx.get_start_method() == "fork":  # what both processes import, imported once, before they are forked
        _checking_modules()
    request = {"target": target, "rule": rule.path if rule else None, "digest": rule.digest if rule else None,
               "options": options, "output": output, **_callers_state()}
    processes = []
    kind, stage, outcome = "start", IMPORTING, None
    style = None  # the layer's convention, once the judge has learnt it

    def failed(message: str):  # the layer's FAIL, written here: the check could not finish
        return _failed(target, rule, options, message, style)

    started = False  # the layer's process has started the import (its first word to the judge)
    # the judges' zygote first: it loads the derivations before the layers' one runs any user code
    judge_zygote = zygote is not None and zygote.judges.ready(timeout)
    layer_zygote = zygote is not None and zygote.layers.ready(timeout)

    def start_both(layer_zygote: bool, judge_zygote: bool):
        """The layer's process and the judge, started; the supervisor's end of the judge's pipe."""
        # the layer's process first, before the supervisor's pipe from the judge exists: forked from here,
        # it inherits every open descriptor, and it must hold none that reaches the supervisor
        mine, theirs = ctx.Pipe(duplex=True)  # the judge's end, the layer's end
        receive = send = None
        try:
            if obj is not None:  # a fork of this process has it in memory
                layer = multiprocessing.get_context("fork").Process(target=_host, args=(theirs, {**request, "object": obj}),
                                                                    daemon=True)
            else:
                layer = (_Forked(zygote.layers, "host", [theirs], request) if layer_zygote
                         else ctx.Process(target=_host, args=(theirs, request), daemon=True))
            processes.append(layer)
            _LIVE.add(layer)
            _start(layer)
            theirs.close()  # else the judge, forked from here, would hold it and never see the layer's process end
            receive, send = ctx.Pipe(duplex=False)
            reporter = (_Forked(zygote.judges, "judge", [send, mine], request) if judge_zygote
                        else ctx.Process(target=_judge, args=(send, mine, request), daemon=True))
            processes.append(reporter)
            _LIVE.add(reporter)
            _start(reporter)
            return layer, reporter, receive
        except BaseException:
            if receive is not None:
                receive.close()
            raise
        finally:
            for end in (theirs, send, mine):
                if end is not None:
                    end.close()

    try:
        try:
            layer, reporter, receive = start_both(layer_zygote, judge_zygote)
        except _Tainted:
            # a zygote took this check's pipe and did not say what it forked (stopped by a layer forked from it,
            # where no sandbox keeps the layer from signalling it): a process of it may hold the pipe and answer
            # too. Its forks are given up, and both processes start again from here, on pipes of their own.
            for p in processes:
                p.kill()
                _LIVE.discard(p)
            processes.clear()
            layer, reporter, receive = start_both(False, False)
        deadline = time.monotonic() + timeout
        while outcome is None:
            left = deadline - time.monotonic()
            if left <= 0:
                outcome = ("timeout", None)
                break
            if receive.poll(min(left, 0.25)):
                try:
                    tag, *payload = receive.recv()
                except (EOFError, OSError):
                    break  # the reporting process is gone without a word
                if tag == "stage":
                    kind, stage = payload
                    started = started or kind != "start"
                elif tag == "style":
                    style = payload[0]
                else:
                    outcome = (tag, payload[0])
        reported = outcome is not None and outcome[0] == "report"  # how the two end says nothing then: not waited for
        if not reported and (outcome is None or outcome[0] != "timeout"):
            reporter.join(10)
            layer.join(2 if outcome is None or outcome[0] == "gone" else 0.2)  # how it ended, if it did
        layer_ended = layer.exitcode is not None  # before any kill below
        for p in processes:
            if p.exitcode is None:
                p.kill()  # with its process group, and the layer's PID namespace with its first process
                if not reported:
                    p.join(10)
    except KeyboardInterrupt:
        for p in processes:
            if p.pid is not None:
                p.kill()
        raise
    finally:
        for p in processes:
            _LIVE.discard(p)
        if "receive" in locals():
            receive.close()
        printed = _tail(output)
        try:
            os.unlink(output)
        except OSError:
            pass
    said = f" (the layer printed: {printed})" if printed else ""
    if outcome is None:  # the judge ended without a word: killed (by the layer's code?) or derivcheck's crash
        also = f", and the layer's process {_ended(layer)}" if layer_ended else ""
        return failed(f"derivcheck's judging process {_ended(reporter)} during {stage}{also}: "
                      f"no verdict could be reached{said}")
    tag, payload = outcome
    if tag == "timeout" and kind == "own":  # not the layer's doing: no verdict on it
        raise DerivcheckError(f"derivcheck's own computation (the exact reference) did not finish within {timeout:g} s: "
                              f"check at smaller sizes (--shape) or raise the limit with --timeout")
    if tag == "timeout" and not started:  # derivcheck's own start took the whole limit
        raise DerivcheckError(f"derivcheck did not get as far as importing {target.rpartition(':')[0]} within {timeout:g} s "
                              f"(starting its processes, reading the rule): the limit is too short; raise it with --timeout")
    if tag == "timeout" and kind == "import":  # no layer was called: evidence of nothing about it
        raise DerivcheckError(f"importing {target.rpartition(':')[0]} did not finish within {timeout:g} s, so no layer of it "
                              f"was called: its top level runs code (a training loop, a data download?). Put that under "
                              f"`if __name__ == \"__main__\":`, or raise the limit with --timeout{said}")
    if tag == "timeout":
        return failed(f"did not finish within {timeout:g} s: stopped during {stage} "
                      f"(an endless loop? raise the limit with --timeout){said}")
    if tag == "gone":
        why, where, ended = payload
        if ended and layer_ended and layer.exitcode < 0:  # how it ended says why it stopped
            return failed(f"the layer's process {_ended(layer)} during {where}{said}")
        if ended and layer_ended:
            return failed(f"the layer ended the process with exit code {layer.exitcode} during {where} "
                          f"(os._exit or a crash), before the check could finish{said}")
        # else it sent what is not an answer (and then ended, told to by the judge): that is why
        return failed(f"the layer's process stopped answering as derivcheck asks during {where}: {why}{said}")
    if tag == "unreadable":  # it answered, with what the judge cannot believe: how it ended after says nothing
        why, where = payload
        return failed(f"the layer's process {why} during {where}{said}")
    if tag == "error":
        raise DerivcheckError(payload)
    if tag == "interrupted":
        raise KeyboardInterrupt
    if tag == "exited":
        code, stage = payload
        return failed(f"the layer's code called sys.exit({code}) during {stage}: "
                      f"a check cannot pass without finishing{said}")
    if tag == "internal":
        raise WorkerCrashed(payload)
    return Report.from_json(payload)


class Zygote:
    """For a gate run that checks several layers of one module of the user's: a process that has imported
    the module (``layers``), from which each check's layer process is forked (a fresh copy of the module
    as imported, as a process importing it itself would have), and its twin that has loaded the checks'
    derivations and imported no user code (``judges``), from which each check's judge is forked. The
    import and the loading are paid once, not once per check (dezero imports matplotlib: half a second a
    check).

    Each is started at the first check that asks, within its time limit. If the import fails in any way
    (raises, exits, hangs) or starts a thread (a fork copies no threads but their locks), the layers' one
    is not ready and each check imports for itself, and reports the failure, as without a zygote.
    """

    def __init__(self, where: str, warm: dict | None = None):
        # a network's layers are looked up in the catalogue in both: by the recorder, and again by the judge
        self.layers = _Spawner({"where": where, "warm": {"catalogue": (warm or {}).get("catalogue")}})
        self.judges = _Spawner({"where": None, "warm": warm or {}})  # what the checks will use: see warm_up

    def close(self) -> None:
        """Stop both (the processes forked from them run on); no check forks from them after."""
        self.layers.close()
        self.judges.close()


FORK_DEADLINE = 10.0  # set by hand: seconds a zygote has to fork; one that does not is replaced by the server


class _Spawner:
    """One process of a :class:`Zygote`: loads ``work["warm"]`` and imports ``work["where"]``, then forks."""

    def __init__(self, work: dict):
        self.work = work
        self._lock = threading.RLock()  # held while starting, which closes it if the import fails
        self._state = None  # None: not started; True: serving; False: not usable
        self._control = self._process = None

    def ready(self, timeout: float) -> bool:
        with self._lock:
            if self._state is None:
                self._state = self._start(timeout)
            return self._state

    def _start(self, timeout: float) -> bool:
        ctx = _server()
        if ctx.get_start_method() != "forkserver":
            return False
        self._control, theirs = ctx.Pipe(duplex=True)
        self._process = ctx.Process(target=_zygote, args=(theirs, {**self.work, **_callers_state()}), daemon=True)
        _start(self._process)
        theirs.close()
        try:
            if self._control.poll(timeout) and self._control.recv() == "ready":
                return True
        except (EOFError, OSError):
            pass
        self.close()
        return False

    def fork(self, role: str, conns: list, request: dict) -> int:
        """Fork a process that runs ``role`` (_ROLES) on ``conns`` and ``request``, its watcher reporting on
        the last of ``conns`` how it ended: its process group's id (the process and its watcher), or None
        if this spawner cannot."""
        from multiprocessing.reduction import send_handle

        with self._lock:
            if not self._state:
                return None
            try:
                self._control.send((role, len(conns), request))
                for conn in conns:
                    send_handle(self._control, conn.fileno(), self._process.pid)
                if self._control.poll(FORK_DEADLINE):
                    return self._control.recv()
            except (EOFError, OSError):  # the zygote is gone (a fork hook of the module's?): no more forks
                pass
            # gone, or no answer in time (stopped: a layer forked from it can signal it): no more forks from it
            self._state = False
            if self._process is not None:
                self._process.kill()
            raise _Tainted  # it has the descriptors: a process it forked before it stopped may hold them

    def close(self) -> None:
        with self._lock:
            self._state = False
            if self._control is not None:
                self._control.close()  # the zygote reads the end and exits
            if self._process is not None:
                self._process.kill()
                self._process.join(10)
            self._control = self._process = None


class _Tainted(Exception):
    """A zygote took a check's descriptors and then did not answer: a process it forked may hold them."""


class _Forked:
    """A process forked by a :class:`_Spawner`, with what :func:`verify_isolated` uses of a Process.

    The spawner forks a watcher, which forks the process and sends ("ended", exit code) when it is gone:
    the caller is not its parent, so it learns how it ended from the watcher, on a pipe of its own.
    """

    def __init__(self, spawner: _Spawner, role: str, conns: list, request: dict):
        self._spawner, self._role, self._conns, self._request = spawner, role, conns, request
        self.pid = self.exitcode = None
        self._own = None  # the server's process, if the spawner could not fork one
        self._ended = None

    def start(self) -> None:
        ctx = _server()
        self._ended, ended = ctx.Pipe(duplex=False)
        try:
            self.pid = self._spawner.fork(self._role, [*self._conns, ended], self._request)
        except _Tainted:
            self._ended.close()
            raise
        finally:
            ended.close()
        if self.pid is None:
            self._ended.close()
            self._own = _context().Process(target=_ROLES[self._role], args=(*self._conns, self._request), daemon=True)
            self._own.start()
            self.pid = self._own.pid

    def kill(self) -> None:
        if self._own is not None:
            self._own.kill()
        elif self.pid is not None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def join(self, timeout: float) -> None:
        """Wait for the watcher's word on how the process ended (none comes once both are gone)."""
        if self._own is not None:
            self._own.join(timeout)
            self.exitcode = self._own.exitcode
            return
        try:
            if self.exitcode is None and self._ended.poll(timeout):
                kind, payload = self._ended.recv()
                if kind == "ended":
                    self.exitcode = payload
        except (EOFError, OSError, ValueError, TypeError):
            return


_ROLES = {"host": _host, "judge": _judge}


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))  # the process's threads, Python's and native ones
    except OSError:
        return threading.active_count()


def warm_up(warm: dict) -> None:
    """Bring into memory what the checks will use, so that each check's worker, a fork, has it instead of
    loading (or deriving) and compiling it again: ``warm["derivations"]``, (rule file, hyperparameters as
    given) pairs; ``warm["catalogue"]``, the rule folders a network's layers are looked up in (None: no
    network). A failure is left for the check that meets it, in its own worker, to report."""
    from derivcheck.engine.reference import note_for
    from derivcheck.engine.rules import list_rules, load_rule

    _checking_modules()  # the judges' zygote forks judges; the layers' one, hosts: each has what its forks use
    for path, hyper in warm.get("derivations", ()):
        try:
            rule = load_rule(path)
            note_for(rule, rule.resolve_hyper(hyper))
        except Exception:  # noqa: BLE001 - the check meets it again and reports it
            pass
    if warm.get("catalogue") is not None:
        try:
            list_rules(warm["catalogue"], errors=[])
        except Exception:  # noqa: BLE001 - as above
            pass


def _zygote(control, request: dict) -> None:
    """In a worker of the server: load the checks' derivations, import the module (if any), say "ready",
    then fork a process per request."""
    _take_callers_state(request)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    warm_up(request["warm"])  # before the user's module is imported: derivcheck's own work, in its own state
    before = _threads()
    if request["where"] is not None:
        if _shut_in(pids=False) is not None:  # required and impossible: each check finds it so and says so
            return
        try:
            loading.load_module(request["where"])
        except BaseException:  # noqa: BLE001 - each check imports it again and reports what happens
            return
        if _threads() != before:
            return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the watchers are reaped as they end
    control.send("ready")
    from multiprocessing.reduction import recv_handle

    while True:
        try:
            role, count, work = control.recv()
            fds = [recv_handle(control) for _ in range(count)]
        except (EOFError, OSError):
            return  # the gate is done (or gone)
        pid = os.fork()
        if pid == 0:
            try:
                control.close()
                _watch(role, fds, work)
            finally:
                os._exit(0)
        try:
            os.setpgid(pid, pid)  # here too: the caller may kill the group before the watcher has made it
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        control.send(pid)


def _watch(role: str, fds: list, request: dict) -> None:
    """In a fork of the zygote, in a process group of its own: fork the process, report how it ended on the
    last of ``fds`` (which the process itself does not hold)."""
    from multiprocessing.connection import Connection

    os.setpgid(0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    *mine, ended = fds
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ended)
            _ROLES[role](*(Connection(fd) for fd in mine), request)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    for fd in mine:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    Connection(ended, readable=False).send(("ended", os.waitstatus_to_exitcode(status)))


def forks_here() -> bool:
    """A layer no worker can import by name (a class defined inside a function) can still run apart from its
    judge: in a fork of the caller, which holds it (Linux only: see fork_from_here)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def importable(target) -> bool:
    """A target a worker can import by name: a string, or a class/function defined at a module's top level."""
    if isinstance(target, str):
        return True
    qual = getattr(target, "__qualname__", "")
    module = sys.modules.get(getattr(target, "__module__", ""), None)
    return "<locals>" not in qual and getattr(module, "__file__", None) is not None
