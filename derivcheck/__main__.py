"""The ``derivcheck`` command: the console script, and ``python -m derivcheck``.

Before NumPy loads, it asks for one BLAS thread (``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS``, unless
set already), for itself and the processes it forks: the layer's process and the judge. derivcheck checks
what a layer computes, not how fast; one thread makes a layer's products sum in the same order on any
machine, so a failure reproduces where the core count differs; and on a shared machine the threads'
start and spin-waits cost more CPU than the check itself (a warm one-layer ``verify`` at the seed's MNIST
sizes: 0.97 CPU s with the default threads, 0.64 with one; ``bench/scale.py`` prints it).
"""
from __future__ import annotations

import os


def main() -> None:
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from derivcheck.run.cli import run

    run()


if __name__ == "__main__":
    main()
