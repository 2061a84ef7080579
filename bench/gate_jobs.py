"""The gate with worker processes in parallel against one at a time, in the same run.

    python bench/gate_jobs.py [--layers N]

Runs `derivcheck check` on the bundled examples' reference layers (group
"reference", float64 only: 20 and more layer checks, each in its own worker
process) with -j 1 and with -j 4, warm cache, fastest of two runs each, and
prints both times and their ratio. The machine's core count is printed too:
past it, more workers only overlap waiting. ``--layers N`` keeps the first N
reference layers (the test suite runs it so, to see that it runs).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(jobs: int, config: Path, env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "derivcheck", "check", str(config), "-j", str(jobs)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"check failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t, p.stdout.strip().splitlines()[-1]


def reference_config(folder: Path, layers: int | None = None) -> Path:
    """A gate config in ``folder`` with the bundled reference layers only (the first ``layers`` of them), in
    float64: every check passes, so the times compare like with like."""
    source = (ROOT / "examples" / "derivcheck.toml").read_text()
    config = folder / "derivcheck.toml"
    blocks = [b for b in source.split("[[layers]]")[1:] if 'group = "reference"' in b][:layers]
    text = "dtypes = [\"float64\"]\n" + "".join("[[layers]]" + b.replace("examples/", "") for b in blocks)
    config.write_text(text.replace('target = "', f'target = "{ROOT / "examples"}/'))
    return config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="the first N reference layers only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = reference_config(Path(tmp), args.layers)
        env = {**os.environ, "DERIVCHECK_CACHE_DIR": str(Path(tmp) / "cache")}
        run(4, config, env)  # warm the cache
        serial, summary = min(run(1, config, env) for _ in range(2))
        parallel, _ = min(run(4, config, env) for _ in range(2))
    print(f"gate: {summary}")
    print(f"cores: {os.cpu_count()}")
    print(f"-j 1: {serial:.1f} s   -j 4: {parallel:.1f} s   ratio -j 4 / -j 1: {parallel / serial:.2f} (same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
