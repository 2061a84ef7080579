"""The bundled examples: which layer is checked against which rule (shared by tests)."""
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

REFERENCE = [
    # (target, rule, hyperparameters)
    ("dlfs1/layers.py:Affine", "affine", {}),
    ("dlfs1/layers.py:Relu", "relu", {}),
    ("dlfs1/layers.py:Sigmoid", "sigmoid", {}),
    ("dlfs1/layers.py:Tanh", "tanh", {}),
    ("dlfs1/layers.py:SoftmaxWithLoss", "softmax_with_loss", {}),
    ("dlfs1/layers.py:SoftmaxWithLoss", "softmax_with_loss", {"labels": "onehot"}),
    ("dlfs1/layers.py:BatchNormalization", "batchnorm", {}),
    ("dlfs2/layers.py:MatMul", "matmul", {}),
    ("dlfs2/layers.py:Affine", "affine", {}),
    ("dlfs2/layers.py:Sigmoid", "sigmoid", {}),
    ("dlfs2/layers.py:Softmax", "softmax", {}),
    ("dlfs2/layers.py:SoftmaxWithLoss", "softmax_with_loss", {}),
    ("dlfs2/layers.py:RNN", "rnn", {}),
    ("dlfs2/layers.py:Embedding", "embedding", {}),
    ("dlfs2/layers.py:SigmoidWithLoss", "sigmoid_with_loss", {}),
    ("dlfs2/layers.py:Repeat", "repeat", {}),
    ("dlfs2/layers.py:Sum", "sum", {}),
    ("dezero_style/functions.py:Sin", "sin", {}),
    ("dezero_style/functions.py:Cos", "cos", {}),
    ("dezero_style/functions.py:Exp", "exp", {}),
    ("dezero_style/functions.py:Log", "log", {}),
    ("dezero_style/functions.py:Tanh", "tanh", {}),
    ("dezero_style/functions.py:Sigmoid", "sigmoid", {}),
    ("dezero_style/functions.py:Reshape", "reshape", {}),
    ("dezero_style/functions.py:Transpose", "transpose", {}),
    ("dezero_style/functions.py:Transpose", "transpose", {"axes": "1,2,0"}),
    ("dezero_style/functions.py:Sum", "sum", {}),
    ("dezero_style/functions.py:Sum", "sum", {"axis": "1", "keepdims": "false"}),
    ("dezero_style/functions.py:BroadcastTo", "broadcast_to", {}),
    ("dezero_style/functions.py:SumTo", "sum_to", {}),
    ("dezero_style/functions.py:MatMul", "matmul", {}),
    ("dezero_style/functions.py:matmul", "matmul", {}),
    ("dezero_style/functions.py:MeanSquaredError", "mean_squared_error_dezero", {}),
    ("dezero_style/functions.py:LogSoftmax", "log_softmax", {}),
    ("dezero_style/functions.py:LeakyReLU", "leaky_relu", {}),
    ("dezero_style/functions.py:Clip", "clip", {}),
    ("dezero_style/functions.py:Max", "max", {}),
    ("dezero_style/functions.py:Max", "max", {"axis": "1"}),
    ("dezero_style/functions.py:Min", "min", {}),
    ("functional/layers.py:affine", "affine", {}),
    ("functional/layers.py:relu", "relu", {}),
    ("functional/layers.py:sigmoid", "sigmoid", {}),
    ("functional/layers.py:exp", "exp", {}),
    ("functional/layers.py:softmax_loss", "softmax_with_loss", {}),
    ("functional/layers.py:cross_entropy_loss", "cross_entropy", {}),
    ("functional/layers.py:mean_squared_error", "mean_squared_error", {}),
    ("functional/layers.py:linear_softmax_loss", "linear_softmax_loss", {}),
    ("functional/layers.py:svm_loss", "svm_loss", {}),
    ("functional/layers.py:batchnorm_forward", "batchnorm", {}),
    ("functional/layers.py:svm_loss_vectorized", "linear_svm_loss", {}),
]


def _broken():
    """The broken examples as examples/derivcheck.toml catalogues them (the one source of truth)."""
    from derivcheck.config import load_config

    layers, networks = [], []
    for b in load_config(EXAMPLES / "derivcheck.toml").bindings:
        if b.expect != "fail":
            continue
        if "/networks/" in b.target:
            networks.append((str(Path(b.target).relative_to(EXAMPLES)), b.caught_by, b.diagnosis))
        else:
            layers.append((b.target.rpartition(":")[2], b.rule, dict(b.hyper), b.dtype,
                           ",".join(b.caught_by), b.diagnosis, b.strict))
    return layers, networks


# (target in broken/layers.py, rule, hyperparameters, dtype, the checks that must fail (comma-separated) or
#  the warning kind, the diagnosis kind that must name the bug, whether it is checked with --strict)
BROKEN, BROKEN_NETWORKS = _broken()  # networks: (target under examples/, the checks that fail, the diagnosis kind)
