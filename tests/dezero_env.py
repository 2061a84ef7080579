"""The real dezero package's virtual environment, built once per test run.

dezero needs numpy<1.24 (and matplotlib at import), so it gets an environment of
its own. Building it is mostly waiting on pip, so the run starts it in the
background as the session begins (``conftest.pytest_sessionstart``) and the
``dezero_env`` fixture waits for it only when a dezero test is reached.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

from conftest import run_lock

ROOT = Path(__file__).resolve().parent.parent


def build(folder: Path) -> Path:
    """The environment in ``folder``: built by the first process to get here, reused by the rest."""
    venv = folder / "venv"
    with run_lock(folder):
        if not (folder / "ready").exists():
            # this interpreter's pip installs into the environment (pip --python): the environment
            # needs no pip of its own (ensurepip: ~5 s), and one resolve installs everything
            own_pip = importlib.util.find_spec("pip") is not None
            subprocess.run([sys.executable, "-m", "venv", "--clear", *(["--without-pip"] if own_pip else []), str(venv)], check=True)
            python = str(venv / "bin" / "python")
            pip = [sys.executable, "-m", "pip", "--python", python] if own_pip else [python, "-m", "pip"]
            subprocess.run(pip + ["install", "-q", "--disable-pip-version-check", "numpy<1.24", "dezero", "matplotlib",
                                  "-e", str(ROOT)], check=True)
            (folder / "ready").touch()
    return venv


if __name__ == "__main__":
    build(Path(sys.argv[1]))
