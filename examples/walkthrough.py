"""The seed notes' derivations, re-derived with derivcheck.

    python examples/walkthrough.py

Each section prints what derivcheck derives and asserts that it matches what
the notes found by hand, so running the script is itself a check (the tests
run it).
"""
import numpy as np
import sympy

import derivcheck
from derivcheck.engine import symarray
from derivcheck.present.explanation import explain


def section(title):
    print(f"\n{'=' * 72}\n{title}\n{'=' * 72}")


# 1. Seed 002: the sigmoid's backward, stage by stage ("/", "+", "exp", "x")
section("1. Sigmoid: the four backward stages end in dout * y * (1 - y)")
sig = explain("sigmoid")
text = sig.text()
print(text[text.index("backward,") : text.index("Jacobian at")])
assert "local ∂y/∂v3 = -y²" in text  # stage "/": -1/x² = -y²
assert "local ∂v3/∂v2 = 1" in text  # stage "+": passes the signal on
assert "local ∂v2/∂v1 = v2" in text  # stage "exp": exp(x) itself
assert "local ∂v1/∂x = -1" in text  # stage "x": times -1
assert "dx = dout·y²·exp(-x)" in text  # the seed's  dL/dy · y² · exp(-x)
assert "dx = dout·y(1 - y)    (proven: equal for every x)" in text

# 2. Seed 001: Affine's three closed forms
section("2. Affine: dx = dout Wᵀ, dW = xᵀ dout, db = Σₙ dout (the bias is repeated, so its gradient sums)")
aff = explain("affine").text()
print(aff[aff.index("closed forms") :])
for line in ("dx = dout Wᵀ", "dW = xᵀ dout", "db = Σₙ dout"):
    assert line in aff

# 3. Seed 001: SoftmaxWithLoss's backward is (y - t) / N
section("3. Softmax with loss: dx = dout·(y - t) / N")
swl = explain("softmax_with_loss").text()
print(swl[swl.index("closed forms") :])
assert "dx = dout·(y - t) / N" in swl

# 4. Seed 001: the Repeat node's backward is a sum, and the Sum node's a repeat
section("4. Repeat and Sum nodes: each one's backward is the other")
rep = explain("repeat").text()
sm = explain("sum").text()
print(rep[rep.index("closed forms") :], sm[sm.index("closed forms") :], sep="\n")
assert "dx = Σₙ dout" in rep  # np.sum(dy, axis=0, keepdims=True)
assert "dx = broadcast_to(dout, (N, D))" in sm  # np.repeat(dy, N, axis=0)
d = derivcheck.load_rule("repeat").at(D=8, N=7)  # the seed's sizes
dy = np.random.default_rng(0).random((7, 8))
np.testing.assert_allclose(d.vjp(dy, x=np.random.default_rng(1).random((1, 8)))["x"], dy.sum(axis=0, keepdims=True))

# 5. Seed 002: SymPy's matmul as a tensorcontraction of a tensorproduct, and derive_by_array
section("5. Matmul with SymPy: Y = W X, and dY/dW holds the x elements, zeros elsewhere")
W, X = symarray.symbols("w", (3, 2)), symarray.symbols("x", (2, 1))
Y = symarray.matmul(W, X)  # tensorcontraction(tensorproduct(W, X), (1, 2))
print("Y =", Y.ravel().tolist())
dYdW = sympy.derive_by_array(sympy.Array(Y.tolist()), sympy.Array(W.tolist()))
print("dY/dW[0, 0] =", dYdW[0, 0].tolist())
assert dYdW[0, 0] == sympy.Array([[X[0, 0]], [0], [0]])
m = derivcheck.load_rule("matmul").at(N=2, D=3, H=4)
J = m.jacobian_array("W")  # output-index-major: [n, h, d, h']
assert all(J[n, h, k, h2] == (m.symbols["x"][n, k] if h == h2 else 0) for n, h, k, h2 in np.ndindex(2, 4, 3, 4))

# 6. Seed 003: DeZero's shape functions, each backward the inverse reshuffle
section("6. DeZero: reshape, transpose, sum, broadcast_to and sum_to")
for name, expected in [
    ("reshape", "dx = reshape(dout, (A, B))"),
    ("transpose", "dx = transpose(dout, (2, 1, 0))"),
    ("sum", "dx = broadcast_to(dout, (N, D))"),
    ("broadcast_to", "dx = sum_to(dout, (1, D))"),
    ("sum_to", "dx = broadcast_to(dout, (N, D))"),
]:
    t = explain(name).text()
    line = next(ln.strip() for ln in t.splitlines() if ln.strip().startswith("dx = ") and "(" in ln)
    print(f"{name:<13} {line}")
    assert expected in t, (name, t[t.index("closed forms") :])

print("\nall of the seed notes' results re-derived and checked")
