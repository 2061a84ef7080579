"""Wall and CPU seconds of one command and of every process it starts (the benchmarks' one way to time a run).

A derivcheck command starts a worker server, zygotes, and per check a layer's process and a judge, some of
which outlive the command briefly and some of which are reaped by a zygote that ignores SIGCHLD: their CPU
time never reaches a parent's ``RUSAGE_CHILDREN``. So each run goes into a control group of its own where
the system allows it (Linux, cgroup v1 ``cpuacct`` or v2, writable: root or a delegated group), which counts
every process in it however it ends. Elsewhere this process becomes a subreaper and counts what is reaped
through it, which misses the processes a zygote reaps; :data:`HOW` says which one was used.

Commands run as an installed package runs: with Python's bytecode cache on (in a folder of this benchmark's
own, :func:`_bytecode_folder`), whatever ``PYTHONDONTWRITEBYTECODE`` says here. pip writes bytecode when it
installs; without it every run would compile each of derivcheck's modules again (about 0.1 s of CPU), which
no user pays.
"""
from __future__ import annotations

import ctypes
import os
import resource
import atexit
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

_V1 = Path("/sys/fs/cgroup/cpuacct")
_V2 = Path("/sys/fs/cgroup/unified")


def _group() -> Path | None:
    """A new control group for this benchmark's runs, or None where none can be made."""
    for root, usage in ((_V1, "cpuacct.usage"), (_V2, "cpu.stat")):
        if not (root / usage).exists():
            continue
        group = root / f"derivcheck-bench-{os.getpid()}"
        try:
            group.mkdir(exist_ok=True)
            return group
        except OSError:
            continue
    return None


GROUP = _group()
HOW = ("CPU: every process of the run, counted by a control group of its own" if GROUP is not None else
       "CPU: the processes reaped through this one (a subreaper): misses those a zygote reaps itself; "
       "run as root for a full count")
if GROUP is None and ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    raise SystemExit("cannot count the CPU time of a run's processes (neither a control group nor a subreaper: Linux only)")


def _usage() -> float:
    """CPU seconds so far: of the group, else of the children reaped."""
    if GROUP is None:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    if (GROUP / "cpuacct.usage").exists():
        return int((GROUP / "cpuacct.usage").read_text()) / 1e9
    stat = dict(line.split() for line in (GROUP / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) / 1e6


def _join_group() -> None:  # in the child, before it runs the command
    (GROUP / "cgroup.procs").write_text(str(os.getpid()))


_BYTECODE: list = []


def _bytecode_folder() -> str:
    """This benchmark's bytecode folder (PYTHONPYCACHEPREFIX): made at first use, removed at exit."""
    if not _BYTECODE:
        _BYTECODE.append(tempfile.mkdtemp(prefix="derivcheck-bench-pyc-"))
        atexit.register(shutil.rmtree, _BYTECODE[0], True)
    return _BYTECODE[0]


def timed(cmd: list, **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall, CPU seconds, the finished process) of ``cmd`` (subprocess.run's keywords; output captured), with
    bytecode written and read as an installed package would (the module docstring)."""
    env = {k: v for k, v in kw.pop("env", os.environ).items() if k != "PYTHONDONTWRITEBYTECODE"}
    kw["env"] = {**env, "PYTHONPYCACHEPREFIX": _bytecode_folder()}
    before = _usage()
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_join_group if GROUP is not None else None, **kw)
    wall = time.perf_counter() - t
    while True:  # the worker server and its forks outlive the command briefly: wait for them (as subreaper)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    if GROUP is not None:
        deadline = time.monotonic() + 10
        while (GROUP / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.01)  # processes reparented elsewhere, still ending
    return wall, _usage() - before, p


def close() -> None:
    """Remove the control group (empty once every run has ended)."""
    if GROUP is not None:
        try:
            GROUP.rmdir()
        except OSError:
            pass
