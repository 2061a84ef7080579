"""Trials explore the integer hyperparameters that change index arithmetic (vary = [...] in a rule)."""
import json
import shlex


import derivcheck
from runner import run as run_cli

CONV = '''
import numpy as np


def conv_forward_naive(x, w, b, conv_param):
    s, p = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    oh, ow = 1 + (H + 2 * p - HH) // s, 1 + (W + 2 * p - WW) // s
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((N, F, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r, c = {row}, {col}
            patch = xp[:, :, r:r + HH, c:c + WW]
            out[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    s, p = conv_param["stride"], conv_param["pad"]
    HH, WW = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            r, c = {row}, {col}
            patch = xp[:, :, r:r + HH, c:c + WW]
            dw += np.tensordot(dout[:, :, i, j], patch, axes=([0], [0]))
            dxp[:, :, r:r + HH, c:c + WW] += np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
    dx = dxp[:, :, p:p + x.shape[2], p:p + x.shape[3]]
    return dx, dw, dout.sum(axis=(0, 2, 3))
'''


def write(tmp_path, row="i * s", col="j * s"):
    path = tmp_path / "conv.py"
    path.write_text(CONV.format(row=row, col=col))
    return f"{path}:conv_forward_naive"


def run(*args):
    return run_cli("verify", *args, "--rule", "convolution")


def test_trial_hyperparameters_go_through_every_combination_from_trial_1():
    rule = derivcheck.load_rule("convolution")
    plans = [(h["stride"], h["pad"]) for h in (rule.trial_hyper(k) for k in range(5))]
    assert plans == [(1, 0), (2, 1), (1, 1), (2, 0), (1, 0)]
    # a hyperparameter the user set stays set; the others still vary
    assert [(h["stride"], h["pad"]) for h in (rule.trial_hyper(k, {"stride": 1}) for k in range(4))] == [(1, 0), (1, 1), (1, 0), (1, 1)]


def test_a_correct_convolution_passes_at_every_stride_and_pad(tmp_path):
    result = run(write(tmp_path), "--trials", "5")
    assert result.exit_code == 0, result.output


def test_a_bug_seen_only_at_stride_2_is_caught_and_its_reproduce_line_has_the_stride(tmp_path):
    target = write(tmp_path, row="i", col="j")  # BUG: the window moves by 1 whatever the stride
    result = run(target, "--trials", "5", "--format", "json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    failed = [c for c in data["checks"] if not c["passed"]]
    assert failed and all(c["hyper"]["stride"] == 2 for c in failed), failed
    argv = shlex.split(data["reproduce"])
    assert argv[argv.index("--hyper") + 1] == "stride=2" or "stride=2" in argv, argv
    again = run_cli(*argv[1:])
    assert again.exit_code == 1, again.output
    text = run(target, "--trials", "5").output
    assert " with stride=2" in text
    # the user's own --hyper stride=1 is kept in every trial: the bug is not seen there
    assert run(target, "--trials", "5", "--hyper", "stride=1").exit_code == 0


def test_pinned_sizes_that_admit_no_windows_at_a_varied_stride_keep_the_runs_stride(tmp_path):
    # IH = IW = 4 with 3x3 filters: (4 + 2*pad - 3) is odd at pad 0 and 1, so stride 2 never tiles them; a layer that
    # asserts the course's precondition would raise there, so those trials stay at stride 1
    (tmp_path / "conv.py").write_text(CONV.format(row="i * s", col="j * s").replace(
        '    s, p = conv_param["stride"], conv_param["pad"]\n    N, C, H, W = x.shape',
        '    s, p = conv_param["stride"], conv_param["pad"]\n    N, C, H, W = x.shape\n'
        '    assert (H + 2 * p - w.shape[2]) % s == 0, "width does not work"', 1))
    result = run(f"{tmp_path / 'conv.py'}:conv_forward_naive", "--trials", "5", "--shape", "IH=4,IW=4,KH=3,KW=3")
    assert result.exit_code == 0, result.output
