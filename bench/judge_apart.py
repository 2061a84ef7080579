"""What judging a layer apart from its process costs: this tree against an earlier revision, in one run.

    python bench/judge_apart.py [--base REV] [--reps 5]

Since the judge left the layer's process (isolate.py, remote.py), each check runs as two processes that
exchange the layer's results as data. This script measures that against ``--base`` (default: the last
revision where one worker both ran and judged the layer), extracted with ``git archive`` into a temporary
folder, on the same machine and in the same run, alternately:

1. a warm one-layer ``verify`` (examples/dlfs1/layers.py:Affine);
2. ``check -j 2`` over the bundled reference layers in float64 (the set bench/gate_jobs.py uses);
3. a warm ``verify`` of a whole network (examples/networks/dlfs1_net.py:TwoLayerNet: book 1's net, whose
   model since runs in the layer's process, recorded, and is judged apart, netrecord.py);

each the median wall and CPU seconds of ``--reps`` runs (CPU: every process the command starts, counted as
bench/cputime.py says).

Each revision has a derivation cache of its own, warmed before the timed runs. Prints both and the
ratios this / base.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import cputime
from gate_jobs import reference_config

ROOT = Path(__file__).resolve().parent.parent
BASE = "a083828"  # the last commit before the judge and the layer's process were split
TARGET = str(ROOT / "examples" / "dlfs1" / "layers.py:Affine")
NETWORK = str(ROOT / "examples" / "networks" / "dlfs1_net.py:TwoLayerNet")
WHATS = ("verify", "check", "network")


def extract(rev: str, into: Path) -> Path:
    data = subprocess.run(["git", "archive", rev, "derivcheck", "rules"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def timed(tree: Path, cache: Path, *args) -> tuple[float, float]:
    """(wall, CPU) seconds of ``python -m derivcheck.run.cli ARGS`` with ``tree``'s derivcheck (cputime.py): the
    command's form both revisions have (the newer one's ``python -m derivcheck`` also asks for one BLAS thread)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "DERIVCHECK_CACHE_DIR": str(cache)}
    wall, cpu, p = cputime.timed([sys.executable, "-m", "derivcheck.run.cli", *args], env=env, cwd=tree)
    if p.returncode != 0:
        raise SystemExit(f"{tree.name}: {' '.join(args)} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", choices=WHATS, help="measure one of them")
    opts = ap.parse_args()
    whats = [w for w in WHATS if opts.only in (None, w)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"base": extract(opts.base, tmp / "base"), "this": ROOT}
        config = reference_config(tmp)
        caches = {name: tmp / f"cache-{name}" for name in trees}
        args = {"verify": ("verify", TARGET, "--rule", "affine"), "check": ("check", str(config), "-j", "2"),
                "network": ("verify", NETWORK)}
        for name, tree in trees.items():  # warm each cache
            for what in whats:
                timed(tree, caches[name], *args[what])
        runs = {(name, what): [] for name in trees for what in whats}
        for _ in range(max(opts.reps, 1)):
            for name, tree in trees.items():
                for what in whats:
                    runs[(name, what)].append(timed(tree, caches[name], *args[what]))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    cputime.close()
    print(f"base {opts.base} against this tree, {max(opts.reps, 1)} runs each, alternately, warm caches; {cputime.HOW}")
    labels = {"verify": "verify one layer (Affine)", "check": "check -j 2, reference layers",
              "network": "verify a network (book 1's)"}
    for what in whats:
        label = labels[what]
        (bw, bc), (tw, tc) = med[("base", what)], med[("this", what)]
        print(f"{label:32s} base {bw:6.2f} s wall {bc:6.2f} s CPU | this {tw:6.2f} s wall {tc:6.2f} s CPU | "
              f"ratio this/base: wall {tw / bw:.2f}, CPU {tc / bc:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
