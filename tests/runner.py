"""The one way the tests run the derivcheck command: in this process (click's runner; each layer
still runs in derivcheck's own worker), or as a new process, as a user's shell runs it."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner

from derivcheck.run.cli import main


def run(*args, **kw):
    """``derivcheck ARGS`` in this process; click's Result (exit_code, output, stdout, stderr)."""
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def verify_json(*args):
    """``derivcheck verify ARGS --format json``: the Result and the report (None if there is none)."""
    result = run("verify", *args, "--format", "json")
    return result, json.loads(result.stdout) if result.stdout.strip().startswith("{") else None


def failing(data) -> list:
    """The names of a JSON report's failing checks, sorted."""
    return sorted(c["name"] for c in data["checks"] if not c["passed"])


def run_in(*args, cwd):
    """``derivcheck ARGS`` in this process, from the folder ``cwd``, as a finished process reads."""
    with contextlib.chdir(cwd):
        r = run(*args)
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def process(*args, cwd, timeout=120, cache=None):
    """``python -m derivcheck ARGS`` as a new process from ``cwd``. Its derivation cache is ``cache``,
    else $DERIVCHECK_CACHE_DIR if set, else ``cwd/cache``."""
    cache = cache or os.environ.get("DERIVCHECK_CACHE_DIR") or str(Path(cwd) / "cache")
    return subprocess.run([sys.executable, "-m", "derivcheck", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "DERIVCHECK_CACHE_DIR": str(cache)},
                          stdin=subprocess.DEVNULL)


def console_script(*args, cwd, timeout=300):
    """The ``derivcheck`` console script as a reader runs it: no PYTHONPATH, and not ``python -m`` (which
    would put the current folder on sys.path by itself)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = Path(sys.executable).parent / "derivcheck"
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
