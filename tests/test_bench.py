"""The finite-difference comparison runs in one command and derivcheck makes no mistake in it."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each bench at small size: CI runs them

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fd_vs_derivcheck.py"


def test_bench_runs_and_derivcheck_catches_all_without_false_alarms():
    """On every 8th layer in float64 (a sixteenth of the bench's time).

    That every broken example is caught and no correct one flagged, in both dtypes, is for
    test_reports.py (held to the gate's judgement) and test_verify.py; this test is about the bench's own output.
    """
    out = subprocess.run([sys.executable, str(BENCH), "--dtype", "float64", "--every", "8"], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    summary = [line.split(" | ") for line in out.splitlines() if line.startswith(("float64 ", "float32 "))]
    assert [s[0].strip() for s in summary] == ["float64"]
    for dtype, derivcheck_column, fd_column in summary:
        m = re.search(r"caught (\d+)/(\d+), missed 0, false alarms 0/(\d+)", derivcheck_column)
        assert m and m.group(1) == m.group(2) and int(m.group(3)) > 0, (dtype, derivcheck_column)
        assert "caught" in fd_column
    rows = [line.split() for line in out.splitlines() if line.endswith((" ok", " caught", " MISSED", " ALARM"))]
    assert 10 <= len(rows) <= 50 and {r[2] for r in rows} == {"yes", "no"}, rows  # an eighth of ~250, broken and correct
    assert "ratio" in out.splitlines()[-1]


SCALE = BENCH.parent / "scale.py"


def test_scale_bench_prints_the_trial_cost_table():
    out = subprocess.run([sys.executable, str(SCALE), "--only", "3"], capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("affine ", "softmax_with_loss ", "sigmoid "))]
    assert [r[0] for r in rows] == ["affine", "softmax_with_loss", "sigmoid"]
    for r in rows:
        trial_ms, layer_ms, ratio = map(float, r[2:5])
        assert trial_ms > 0 and layer_ms > 0 and abs(ratio - trial_ms / layer_ms) <= 0.1 * ratio + 0.1


def test_scale_bench_times_the_books_finite_differences_and_a_one_point_check():
    out = subprocess.run([sys.executable, str(SCALE), "--only", "2"], capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("examples/")]
    assert [r[0] for r in rows] == ["examples/dlfs2/layers.py:Affine", "examples/dlfs2/layers.py:SoftmaxWithLoss",
                                    "examples/dlfs2/layers.py:Sigmoid"], out
    for r in rows:  # layer, derivcheck s, book FD s, FD/dc, 1-point s, dc/1-point
        dc, fd, one = float(r[1]), float(r[2]), float(r[4])
        assert dc > 0 and fd > 0 and one > 0, out
        # the columns are printed rounded (a 1-point time of 0.00014 s to within 4%): the ratios agree within 10%
        assert abs(float(r[3]) - fd / dc) <= 0.1 * fd / dc + 1 and abs(float(r[5]) - dc / one) <= 0.1 * dc / one + 1, out


def test_scale_bench_runs_the_command_at_the_mnist_sizes_and_a_large_layer():
    """Sections 1 and 7 as a reader runs them, 7 at a small size: every row a PASS (a check that hung at the MNIST
    sizes would be an exit 2 here), each with its CPU, and the targets said met or not."""
    out = subprocess.run([sys.executable, str(SCALE), "--only", "1", "--only", "7", "--reps", "1", "--large-shape", "N=50,C=10"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("examples/")]
    assert [r[0] for r in rows] == ["examples/dlfs1/layers.py:Affine", "examples/dlfs2/layers.py:Affine",
                                    "examples/dlfs2/layers.py:SoftmaxWithLoss", "examples/dlfs2/layers.py:Sigmoid"], out
    assert all("PASS/PASS" in r for r in rows) and all(re.search(r"under 0\.[46] s: (met|NOT met)$", " ".join(r)) for r in rows), out
    large = out.splitlines()[out.splitlines().index(next(x for x in out.splitlines() if x.strip().startswith("wall s"))) + 1].split()
    assert large[3] == "PASS" and float(large[1]) > 0, out  # wall, CPU, peak, verdict, trial, layer, ratio
    assert "target: under 30 s" not in out  # said only at the target's own sizes


NETWORK = BENCH.parent / "network.py"


def test_network_bench_verifies_the_mnist_network_and_prints_the_ratio_to_the_books_check():
    out = subprocess.run([sys.executable, str(NETWORK), "--sample", "20", "--warm", "1"], capture_output=True, text=True, check=True,
                         timeout=600).stdout
    lines = out.splitlines()
    assert lines[0] == "book 1 TwoLayerNet(784, 50, 10), batch 100: 39760 parameters"
    assert "derivcheck verify" in lines[1] and lines[1].endswith("verdict: PASS")
    m = re.search(r"numerical_gradient: +([\d.]+) s \(scaled from \d+ of 39760 parameters\) +ratio to derivcheck warm: (\d+)x", lines[2])
    assert m and float(m.group(1)) > 0


def test_jacobian_bench_prints_both_ways_and_that_they_agree():
    out = subprocess.run([sys.executable, str(BENCH.parent / "jacobian.py"), "--only", "softmax_with_loss", "--only", "layernorm"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["layernorm", "softmax_with_loss"]
    assert all(r[-4] == "yes" and float(r[-5]) > 0 for r in rows), out


def test_judge_apart_bench_measures_this_tree_against_its_base():
    """Against HEAD, which any clone has (the default base may be beyond a shallow one)."""
    out = subprocess.run([sys.executable, str(BENCH.parent / "judge_apart.py"), "--only", "verify", "--reps", "1", "--base", "HEAD"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("verify one layer")]
    m = re.search(r"base +([\d.]+) s wall +([\d.]+) s CPU \| this +([\d.]+) s wall +([\d.]+) s CPU \| ratio this/base: "
                  r"wall ([\d.]+), CPU ([\d.]+)", line[0] if line else "")
    assert m, out
    base_wall, _, this_wall, _, ratio, _ = map(float, m.groups())
    assert base_wall > 0 and this_wall > 0 and abs(ratio - this_wall / base_wall) < 0.01 + 0.01 * ratio


def test_startup_bench_prints_both_ways_and_their_ratio():
    out = subprocess.run([sys.executable, str(BENCH.parent / "startup.py"), "--reps", "1"], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    m = re.search(r"ratio \(server / forked\): +wall +([\d.]+) +CPU +([\d.]+)", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, out


def test_seeds_bench_runs_one_example_without_false_alarms():
    out = subprocess.run([sys.executable, str(BENCH.parent / "seeds.py"), "--trials", "1", "--only", "dlfs1/layers.py:Affine",
                          "--dtype", "float64"], capture_output=True, text=True, check=True, timeout=600).stdout
    assert "1 dtype(s) x 1 examples x 1 trials" in out and "false alarms 0/1" in out, out


def test_cache_bench_times_a_rule_cold_from_disk_and_from_memory():
    out = subprocess.run([sys.executable, str(BENCH.parent / "cache.py"), "--only", "affine"], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    row = [line.split() for line in out.splitlines() if line.startswith("affine ")]
    assert len(row) == 1 and all(float(v) > 0 for v in row[0][1:]), out
    assert re.search(r"ratios: disk/cold [\d.]+, memory/cold [\d.]+ \(same run\)", out), out


def test_gate_jobs_bench_runs_the_gate_both_ways_and_prints_their_ratio():
    out = subprocess.run([sys.executable, str(BENCH.parent / "gate_jobs.py"), "--layers", "2"], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    assert "2 layer checks: 2 passed" in out, out
    m = re.search(r"-j 1: ([\d.]+) s +-j 4: ([\d.]+) s +ratio -j 4 / -j 1: ([\d.]+)", out)
    assert m, out
    serial, parallel, ratio = map(float, m.groups())
    # the times are printed to 0.1 s, the ratio from the unrounded ones
    assert serial > 0.05 and (parallel - 0.05) / (serial + 0.05) - 0.005 <= ratio <= (parallel + 0.05) / (serial - 0.05) + 0.005, out


def test_cputime_counts_a_process_that_its_parent_reaps_itself():
    """bench/cputime.py counts every process of a run: here a child that burns 0.5 s of CPU under a parent
    that ignores SIGCHLD (as a zygote does), whose time never reaches RUSAGE_CHILDREN. Where no control
    group can be made (not root), the script says it counts through a subreaper, and this is skipped."""
    burner = ("import os, signal, time\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\nif os.fork() == 0:\n"
              "    t = time.process_time()\n    while time.process_time() - t < 0.5:\n        pass\n    os._exit(0)\n"
              "time.sleep(1.5)\n")
    script = ("import sys, cputime\nwall, cpu, p = cputime.timed([sys.executable, '-c', sys.argv[1]])\ncputime.close()\n"
              "print(cputime.GROUP is not None, cpu)\n")
    out = subprocess.run([sys.executable, "-c", script, burner], capture_output=True, text=True, timeout=60,
                         cwd=BENCH.parent, env={**os.environ, "PYTHONPATH": str(BENCH.parent)})
    assert out.returncode == 0, out.stderr
    grouped, cpu = out.stdout.split()
    if grouped != "True":
        pytest.skip("no control group can be made here: cputime.py counts through a subreaper")
    assert float(cpu) >= 0.45, out.stdout
