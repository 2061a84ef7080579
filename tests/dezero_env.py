"""The real dezero package's virtual environment, built once per test run.

dezero needs numpy<1.24 (and matplotlib at import), so it gets an environment of
its own. Building it is mostly waiting on pip, so the run starts it in the
background as the session begins (``conftest.pytest_sessionstart``) and the
``dezero_env`` fixture waits for it only when a dezero test is reached.
"""
import importlib.util
import os
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
            # --no-compile: pip would byte-compile all of every package (sympy's 80 MB, matplotlib's fonttools:
            # half of the build); one import of what the tests run compiles only that, kept for the rest
            subprocess.run(pip + ["install", "-q", "--no-compile", "--disable-pip-version-check", "numpy<1.24", "dezero",
                                  "matplotlib", "-e", str(ROOT)], check=True)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            imports = "import dezero, derivcheck.run.cli, derivcheck.run.gate, derivcheck.check.network, sympy.tensor.tensor"
            subprocess.run([python, "-W", "ignore::SyntaxWarning", "-c", imports], check=True, env=env)  # dezero's 'is' with a literal
            (folder / "ready").touch()
    return venv


if __name__ == "__main__":
    build(Path(sys.argv[1]))
