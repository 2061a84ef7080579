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
    # (target, rule, hyperparameters, dtype, the checks that must fail (comma-separated) or the warning kind)
    ("AffineMissingTranspose", "affine", {}, "float64", "grad W"),
    ("AffineBiasNotSummed", "affine", {}, "float64", "grad b"),
    ("AffineStaleInput", "affine", {}, "float64", "grad W"),
    ("MatMulRebindsGrads", "matmul", {}, "float64", "warning:rebinds-grads"),
    ("AffineAccumulatesGrads", "affine", {}, "float64", "grad W"),
    ("SoftmaxUnshiftedSum", "softmax", {}, "float64", "forward,grad x"),  # backward reuses the wrong y
    ("SigmoidFromInput", "sigmoid", {}, "float64", "grad x"),
    ("SoftmaxWithLossIgnoresDout", "softmax_with_loss", {}, "float64", "grad x"),
    ("ReluWritesIntoDout", "relu", {}, "float64", "warning:mutates-input"),
    ("TanhSignFlipped", "tanh", {}, "float64", "grad x"),
    ("TransposeSameAxes", "transpose", {"axes": "1,2,0"}, "float64", "grad x"),
    ("softmax_loss_no_mean", "softmax_with_loss", {}, "float64", "grad x"),
    ("mean_squared_error_factor_two", "mean_squared_error", {}, "float64", "grad y"),
    ("repeat", "repeat", {}, "float64", "grad x"),
    ("SigmoidUpcasts", "sigmoid", {}, "float32", "warning:dtype"),
]
