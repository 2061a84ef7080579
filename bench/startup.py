"""A one-layer `derivcheck verify` forking its worker from itself against one that starts a server first.

    python bench/startup.py [--reps 5]

The `derivcheck` command forks each check's worker from its own process
(`isolate.fork_from_here`); a caller that is not the command (a test calling
`cli.main` in its process, the pytest plugin) starts a worker server first,
which imports NumPy and SymPy a second time. Both run here, alternately, on the
same layer with a warm cache (examples/dlfs1/layers.py:Affine, rule affine):
wall time and CPU time (every process the command starts, the server included,
counted as bench/cputime.py says), median of --reps runs each, and their ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import cputime

ROOT = Path(__file__).resolve().parent.parent
TARGET = str(ROOT / "examples" / "dlfs1" / "layers.py:Affine")
WAYS = {
    "the command (forks its worker)": [sys.executable, "-m", "derivcheck"],
    "cli.main in its own process (a server)": [sys.executable, "-c", "import sys; from derivcheck.run.cli import main; sys.argv[0] = 'derivcheck'; main()"],
}


def once(cmd: list, env: dict) -> tuple[float, float]:
    wall, cpu, p = cputime.timed([*cmd, "verify", TARGET, "--rule", "affine"], env=env, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"verify failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DERIVCHECK_CACHE_DIR": str(Path(tmp) / "cache")}
        once(WAYS["the command (forks its worker)"], env)  # derive once: both ways read the cache after
        times = {way: [] for way in WAYS}
        for _ in range(args.reps):
            for way, cmd in WAYS.items():
                times[way].append(once(cmd, env))
    cputime.close()
    print(f"derivcheck verify {Path(TARGET).parent.name}/{Path(TARGET).name} --rule affine, warm cache, median of {args.reps} "
          f"({cputime.HOW}):")
    medians = {way: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for way, t in times.items()}
    for way, (wall, cpu) in medians.items():
        print(f"  {way:<40} wall {wall:5.2f} s   CPU {cpu:5.2f} s")
    (w1, c1), (w0, c0) = medians.values()
    print(f"  ratio (server / forked):                 wall {w0 / w1:5.2f}     CPU {c0 / c1:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
