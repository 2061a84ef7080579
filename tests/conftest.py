import contextlib
import fcntl
import os
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


pytest_plugins = ["pytester"]
