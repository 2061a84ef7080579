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
    ("dlfs2/layers.py:MatMul", "matmul", {}),
    ("dlfs2/layers.py:Affine", "affine", {}),
    ("dlfs2/layers.py:Sigmoid", "sigmoid", {}),
    ("dlfs2/layers.py:Softmax", "softmax", {}),
    ("dlfs2/layers.py:SoftmaxWithLoss", "softmax_with_loss", {}),
    ("dlfs2/layers.py:Repeat", "repeat", {}),
    ("dlfs2/layers.py:Sum", "sum", {}),
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
    ("functional/layers.py:affine", "affine", {}),
    ("functional/layers.py:relu", "relu", {}),
    ("functional/layers.py:sigmoid", "sigmoid", {}),
    ("functional/layers.py:exp", "exp", {}),
    ("functional/layers.py:softmax_loss", "softmax_with_loss", {}),
    ("functional/layers.py:cross_entropy_loss", "cross_entropy", {}),
    ("functional/layers.py:mean_squared_error", "mean_squared_error", {}),
]

BROKEN = [
    # (target, rule, hyperparameters, dtype, the checks that must fail (comma-separated) or the
    #  warning kind, the diagnosis kind that must name the bug)
    ("AffineMissingTranspose", "affine", {}, "float64", "grad W", "transposed"),
    ("AffineBiasNotSummed", "affine", {}, "float64", "grad b", "missing-reduction"),
    ("AffineStaleInput", "affine", {}, "float64", "grad W", "stale-state"),
    ("MatMulRebindsGrads", "matmul", {}, "float64", "grads slots", "rebinds-grads"),
    ("AffineAccumulatesGrads", "affine", {}, "float64", "grad W", "accumulates"),
    ("SoftmaxUnshiftedSum", "softmax", {}, "float64", "forward,grad x", "forward-wrong"),  # backward reuses the wrong y
    ("SigmoidFromInput", "sigmoid", {}, "float64", "grad x", "input-instead-of-output"),
    ("SoftmaxWithLossIgnoresDout", "softmax_with_loss", {}, "float64", "grad x", "upstream-ignored"),
    ("ReluWritesIntoDout", "relu", {}, "float64", "warning:mutates-input", None),
    ("ReluInPlaceDoubled", "relu", {}, "float64", "grad x", "constant-factor"),
    ("AffineSqueezes", "affine", {}, "float64", "grad x", "shape"),
    ("TanhSignFlipped", "tanh", {}, "float64", "grad x", "sign-flipped"),
    ("TransposeSameAxes", "transpose", {"axes": "1,2,0"}, "float64", "grad x", "transposed"),
    ("softmax_loss_no_mean", "softmax_with_loss", {}, "float64", "grad x", "constant-factor"),
    ("mean_squared_error_factor_two", "mean_squared_error", {}, "float64", "grad y", "constant-factor"),
    ("repeat", "repeat", {}, "float64", "grad x", "wrong-axis"),
    ("SigmoidUpcasts", "sigmoid", {}, "float32", "warning:dtype", None),
    ("SoftmaxWithLossNoShift", "softmax_with_loss", {}, "float64", "stability", "numerical-stability"),
    ("LogWithEpsilon", "log", {}, "float64", "forward,grad x", "forward-wrong"),
]
