import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder shared by every xdist worker of this run (in the run's base temp), made on first use.

    Each worker has a base temp of its own (…/popen-gw0); their parent is the run's.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / name
    path.mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold ``folder``'s lock: one worker at a time builds what the others then reuse."""
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pytest_configure(config):
    """Compile derivcheck once for the whole run, into its own ``__pycache__`` (git ignores it).

    The run starts ~150 interpreters that import derivcheck (test workers, commands, worker
    servers, bench scripts). Where PYTHONDONTWRITEBYTECODE is set (as on the development
    machine), none of them writes the bytecode it compiles, so each compiled derivcheck's
    sources again (0.2 s). An installed package has its bytecode from pip; compileall
    writes it whatever the variable says. Done by the run's first process, before any
    test worker starts (a worker has PYTEST_XDIST_WORKER set)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        import compileall

        compileall.compile_dir(Path(__file__).resolve().parent.parent / "derivcheck", quiet=1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the tests' derivation cache out of the user's ~/.cache, and share it between workers.

    One cache for the whole run: a rule derived by one worker is read by the others
    (entries are written atomically and the MAC key is made once, see cache.py),
    so the suite derives each rule once, not once per worker.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("DERIVCHECK_CACHE_DIR", str(shared_dir(tmp_path_factory, "derivcheck-cache")))
    mp.setenv("XDG_CACHE_HOME", str(shared_dir(tmp_path_factory, "cache-home")))  # the MAC key, too
    mp.delenv("DERIVCHECK_RULES", raising=False)
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _worker_server_outside_mutmuts_stats():
    """Under mutmut's stats run (bench/mutation.py), start derivcheck's worker server without mutmut's
    MUTANT_UNDER_TEST: a worker runs in the test's own folder, where mutmut's trampolines cannot find
    its configuration, and what they would record there is lost anyway (the in-process tests record it)."""
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        yield
        return
    from derivcheck.run import isolate

    os.environ.pop("MUTANT_UNDER_TEST")
    try:
        isolate.start_server()
    finally:
        os.environ["MUTANT_UNDER_TEST"] = "stats"
    yield


DEZERO_ENV = "dezero-env"  # the shared folder of the real dezero package's environment


@pytest.fixture(autouse=True, scope="session")
def _dezero_env_in_background(request, tmp_path_factory):
    """Start building the dezero environment as the run begins, if a dezero test was collected.

    Building is mostly pip waiting on downloads; started here, it overlaps the tests
    before the first dezero test instead of stalling the worker that reaches it.
    Every worker starts one; all but the first find it built (dezero_env.py holds the lock).
    """
    wanted = any(item.path.name == "test_dezero_package.py" for item in request.session.items)
    if not wanted or os.environ.get("DERIVCHECK_SKIP_DEZERO") == "1":
        yield
        return
    folder = shared_dir(tmp_path_factory, DEZERO_ENV)
    log = open(folder / f"build-{os.getpid()}.log", "w")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dezero_env.py")), str(folder)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield
    if proc.poll() is None:  # the run ended first (interrupted, or -x): leave no pip behind
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    log.close()


pytest_plugins = ["pytester"]
