"""Every rule's exact VJP against central differences of its own forward.

The VJP tested is the reference the checks use (``reference.at``): the shape-generic
tier where the rule has one, which was proven against the element-by-element tier
at small shapes when it was derived (``reference.prove``, once per rule and run:
the tests' cache starts empty), so a wrong concrete tier fails here too.
"""
import numpy as np
import pytest
import sympy

import derivcheck
from derivcheck.engine import reference, symarray, windows
from derivcheck.engine.rules import list_rules

RULES = sorted(list_rules())
SEEDS = [0, 1, 2]
DIRECTIONS = 3  # after seed 0: directional derivatives along this many random directions per input


def _values(rule, d, rng):
    values = {n: i.domain.sample(rng, d.shapes[n]) for n, i in rule.inputs.items()}
    for n, lab in rule.labels.items():
        if lab.kind == "classes":
            values[n] = rng.integers(0, d.dims[lab.classes], size=d.label_shapes[n])
        else:
            values[n] = lab.domain.sample(rng, d.label_shapes[n])
    return values


def test_catalog_has_every_seed_operation():
    wanted = {
        "sigmoid", "relu", "tanh", "exp", "log", "affine", "matmul", "softmax", "softmax_with_loss",
        "cross_entropy", "mean_squared_error", "repeat", "sum", "reshape", "transpose", "broadcast_to", "sum_to",
    }
    assert wanted <= set(RULES)


# every rule at one seed, then every rule at the next: a rule's first derivation is not awaited by a
# second test worker taking the same rule at another seed (xdist hands out neighbouring tests at once)
@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_vjp_matches_central_differences(name, seed):
    """Seed 0 element by element (every entry of cotᵀJ); the other seeds, at other sizes and values, along
    random directions v (cotᵀJv, as JAX's check_grads does): a wrong entry of the VJP changes cotᵀJv for
    almost every v, and a recurrence's forward is run 2·DIRECTIONS times per input, not 2·|input|."""
    rule = derivcheck.load_rule(name)
    rng = np.random.default_rng(seed)
    dims = rule.sample_dims(rng)
    d = reference.at(rule, rule.resolve_hyper({}), rule.resolve_dims(dims))
    values = _values(rule, d, rng)
    cot = rng.normal(size=d.output_shape)
    grads = d.vjp(cot, **values)
    h = 1e-6

    def along(n, v):  # the derivative of cot·forward along v in input n, by central differences
        plus, minus = {**values, n: values[n] + h * v}, {**values, n: values[n] - h * v}
        return np.sum(cot * (d.forward(**plus) - d.forward(**minus))) / (2 * h)

    for n in rule.inputs:
        # central differences carry O(h^2) truncation and O(eps/h) rounding: ~1e-9 here
        where = f"{name} d/d{n} seed={seed} dims={dims}"
        if seed == SEEDS[0]:
            numeric = np.zeros(d.shapes[n])
            for idx in np.ndindex(*d.shapes[n]):
                e = np.zeros(d.shapes[n])
                e[idx] = 1.0
                numeric[idx] = along(n, e)
            np.testing.assert_allclose(grads[n], numeric, rtol=1e-6, atol=1e-7, err_msg=where)
            continue
        for _ in range(DIRECTIONS):
            v = rng.normal(size=d.shapes[n])
            np.testing.assert_allclose(np.sum(grads[n] * v), along(n, v), rtol=1e-6, atol=1e-7 * np.sqrt(v.size), err_msg=where)


def test_forward_matches_numpy():
    rng = np.random.default_rng(3)
    x, W, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=2)
    d = derivcheck.load_rule("affine").at(N=3, D=4, H=2)
    np.testing.assert_allclose(d.forward(x=x, W=W, b=b), x @ W + b, rtol=1e-14)
    g = rng.normal(size=(3, 2))
    grads = d.vjp(g, x=x, W=W, b=b)
    np.testing.assert_allclose(grads["x"], g @ W.T, rtol=1e-13)
    np.testing.assert_allclose(grads["W"], x.T @ g, rtol=1e-13)
    np.testing.assert_allclose(grads["b"], g.sum(axis=0), rtol=1e-13)


def test_matmul_jacobian_has_the_seed_closed_form():
    """dY/dW[n, h, d, h'] is x[n, d] where h == h' and zero elsewhere (seed 002)."""
    N, D, H = 2, 3, 4
    d = derivcheck.load_rule("matmul").at(N=N, D=D, H=H)
    J = d.jacobian_array("W")
    x = d.symbols["x"]
    assert J.shape == (N, H, D, H)
    for n, h, k, h2 in np.ndindex(N, H, D, H):
        assert J[n, h, k, h2] == (x[n, k] if h == h2 else 0)
    Jx = d.jacobian_array("x")
    W = d.symbols["W"]
    for n, h, n2, k in np.ndindex(N, H, N, D):
        assert Jx[n, h, n2, k] == (W[k, h] if n == n2 else 0)


def test_seed_002_tensorcontraction_example():
    """The seed's W (3x2) times X (2x1) and derive_by_array(Y, W)."""
    W = symarray.symbols("w", (3, 2))
    X = symarray.symbols("x", (2, 1))
    Y = symarray.matmul(W, X)
    assert Y.shape == (3, 1)
    assert Y[0, 0] == W[0, 0] * X[0, 0] + W[0, 1] * X[1, 0]
    dYdW = sympy.derive_by_array(sympy.Array(Y.tolist()), sympy.Array(W.tolist()))
    assert dYdW[0, 0] == sympy.Array([[X[0, 0]], [0], [0]])
    assert dYdW[2, 1] == sympy.Array([[0], [0], [X[1, 0]]])


def test_labels_index_and_onehot_agree():
    d = derivcheck.load_rule("softmax_with_loss").at(N=3, C=4)
    rng = np.random.default_rng(5)
    x, t = rng.normal(size=(3, 4)), np.array([0, 3, 1])
    onehot = np.eye(4)[t]
    assert d.forward(x=x, t=t) == pytest.approx(d.forward(x=x, t=onehot), rel=1e-15)
    y = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(d.vjp(np.array(2.5), x=x, t=t)["x"], 2.5 * (y - onehot) / 3, rtol=1e-12)


def test_hyperparameters_reach_the_formula():
    rule = derivcheck.load_rule("sum")
    assert rule.at(N=2, D=3).output_shape == (1, 3)  # the seed's Sum node defaults
    assert rule.at(N=2, D=3, axis=1, keepdims=False).output_shape == (2,)
    assert rule.at(N=2, D=3, hyper={"axis": None, "keepdims": False}).output_shape == ()
    assert derivcheck.load_rule("transpose").at(A=2, B=3, C=4, axes=[1, 0, 2]).output_shape == (3, 2, 4)
    assert derivcheck.load_rule("repeat").at(D=3, N=5).output_shape == (5, 3)


def test_bad_sizes_and_hypers_are_refused():
    rule = derivcheck.load_rule("sum")
    with pytest.raises(derivcheck.DerivcheckError, match="needs a size for D"):
        rule.at(N=2)
    with pytest.raises(derivcheck.DerivcheckError, match="has no dimension Q"):
        rule.at(N=2, D=2, Q=1)
    with pytest.raises(derivcheck.DerivcheckError, match="positive integer"):
        rule.at(N=0, D=2)
    with pytest.raises(derivcheck.DerivcheckError, match="axis 3 is out of range"):
        rule.at(N=2, D=2, axis=3)
    with pytest.raises(derivcheck.DerivcheckError, match="takes true or false"):
        rule.at(N=2, D=2, keepdims="maybe")
    with pytest.raises(derivcheck.DerivcheckError, match="no hyperparameter 'axes'"):
        rule.at(N=2, D=2, hyper={"axes": 1})
    # a size the rule fixes (a binary loss's two classes): refused, not a formula that cannot be evaluated
    with pytest.raises(derivcheck.DerivcheckError, match="dimension C of rule 'sigmoid_with_loss' is fixed at 2, not 5"):
        derivcheck.load_rule("sigmoid_with_loss").at(N=2, C=5)


def _conv_loop(x, W, b, stride, pad):
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (H + 2 * pad - kh) // stride + 1, (Wd + 2 * pad - kw) // stride + 1
    out = np.zeros((N, F, oh, ow))
    for n, f, i, j in np.ndindex(N, F, oh, ow):
        out[n, f, i, j] = np.sum(xp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw] * W[f]) + b[f]
    return out


def _loop_gradient(loop, args: dict, name: str, cot, **settings) -> np.ndarray:
    """The gradient of Σ cot · loop(**args) by args[name], by central differences of the loop itself."""
    h, arr = 1e-6, args[name]
    numeric = np.zeros(arr.shape)
    for idx in np.ndindex(*arr.shape):
        plus, minus = arr.copy(), arr.copy()
        plus[idx] += h
        minus[idx] -= h
        hi, lo = loop(**{**args, name: plus}, **settings), loop(**{**args, name: minus}, **settings)
        numeric[idx] = np.sum(cot * (hi - lo)) / (2 * h)
    return numeric


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1), (2, 0), (3, 2)])
def test_convolution_is_the_loop_over_windows(stride, pad):
    """Padding, stride and the floor of the output size, as the books' and CS231n's loops compute them."""
    rng = np.random.default_rng(stride * 10 + pad)
    dims = {"N": 2, "C": 2, "IH": 5, "IW": 4, "F": 3, "KH": 3, "KW": 2}
    d = derivcheck.load_rule("convolution").at(hyper={"stride": stride, "pad": pad}, **dims)
    x, W, b = rng.normal(size=(2, 2, 5, 4)), rng.normal(size=(3, 2, 3, 2)), rng.normal(size=3)
    want = _conv_loop(x, W, b, stride, pad)
    assert d.output_shape == want.shape
    np.testing.assert_allclose(d.forward(x=x, W=W, b=b), want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(windows.np_conv2d(x, W, stride, pad) + b[:, None, None], want, rtol=1e-13, atol=1e-13)
    # the gradient at these settings, against central differences of the loop itself
    cot = rng.normal(size=want.shape)
    grads = d.vjp(cot, x=x, W=W, b=b)
    for name in ("x", "W"):
        numeric = _loop_gradient(_conv_loop, {"x": x, "W": W, "b": b}, name, cot, stride=stride, pad=pad)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-7, err_msg=name)


def _deconv_loop(x, W, b, stride, pad):
    """DeZero's deconv2d written as the scatter it is: each pixel adds its filter-sized patch."""
    N, C, H, Wd = x.shape
    _, F, kh, kw = W.shape
    full = np.zeros((N, F, stride * (H - 1) + kh, stride * (Wd - 1) + kw))
    for n, c, i, j in np.ndindex(N, C, H, Wd):
        full[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += x[n, c, i, j] * W[c]
    return full[:, :, pad:full.shape[2] - pad, pad:full.shape[3] - pad] + b[:, None, None]


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1), (2, 0), (3, 1)])
def test_transposed_convolution_is_the_scatter_of_patches_and_convolutions_adjoint(stride, pad):
    rng = np.random.default_rng(stride * 10 + pad)
    dims = {"N": 2, "C": 2, "IH": 3, "IW": 2, "F": 3, "KH": 3, "KW": 2}
    d = derivcheck.load_rule("deconvolution").at(hyper={"stride": stride, "pad": pad}, **dims)
    x, W, b = rng.normal(size=(2, 2, 3, 2)), rng.normal(size=(2, 3, 3, 2)), rng.normal(size=3)
    want = _deconv_loop(x, W, b, stride, pad)
    assert d.output_shape == want.shape == (2, 3, stride * 2 + 3 - 2 * pad, stride + 2 - 2 * pad)
    np.testing.assert_allclose(d.forward(x=x, W=W, b=b), want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(windows.np_deconv2d(x, W, stride, pad) + b[:, None, None], want, rtol=1e-13, atol=1e-13)
    # x's gradient is the convolution of the upstream gradient with the same filters (W read as (F', C') = (C, F))
    cot = rng.normal(size=want.shape)
    grads = d.vjp(cot, x=x, W=W, b=b)
    np.testing.assert_allclose(grads["x"], windows.np_conv2d(cot, W, stride, pad), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(grads["b"], cot.sum(axis=(0, 2, 3)), rtol=1e-13, atol=1e-13)
    numeric = _loop_gradient(_deconv_loop, {"x": x, "W": W, "b": b}, "W", cot, stride=stride, pad=pad)
    np.testing.assert_allclose(grads["W"], numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("args,message", [
    ((np.zeros((1, 2, 3, 3)), np.zeros((3, 1, 2, 2))), "2 image channels, 3 filter channels"),
    ((np.zeros((2, 3)), np.zeros((3, 1, 2, 2))), "deconv2d takes (N, C, H, W) images and (C, F, kh, kw) filters"),
    ((np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), 1, 2), "leave no output"),
    ((np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), 0, 0), "the stride must be an integer of at least 1, not 0"),
    ((np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), 1, 0.5), "the pad must be an integer of at least 0, not 0.5"),
])
def test_transposed_convolution_refuses_what_it_cannot_compute(args, message):
    for fn in (symarray.deconv2d, windows.np_deconv2d):
        with pytest.raises(ValueError) as err:
            fn(*args)
        assert message in str(err.value)


def test_max_pooling_routes_to_each_windows_argmax():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 2, 5, 5))
    d = derivcheck.load_rule("pooling").at(hyper={"pool_h": 2, "pool_w": 3, "stride": 2, "pad": 0}, N=1, C=2, IH=5, IW=5)
    assert d.output_shape == (1, 2, 2, 2)
    cot = rng.normal(size=(1, 2, 2, 2))
    want_out, want_dx = np.zeros((1, 2, 2, 2)), np.zeros_like(x)
    for c, i, j in np.ndindex(2, 2, 2):
        window = x[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 3]
        p, q = np.unravel_index(np.argmax(window), window.shape)
        want_out[0, c, i, j] = window[p, q]
        want_dx[0, c, 2 * i + p, 2 * j + q] += cot[0, c, i, j]
    np.testing.assert_array_equal(d.forward(x=x), want_out)
    np.testing.assert_allclose(d.vjp(cot, x=x)["x"], want_dx, rtol=1e-15, atol=0)


@pytest.mark.parametrize("args,message", [
    ((np.zeros((2, 3)), 2, 2, 1, 0), "windows are taken of an (N, C, H, W) array"),
    ((np.zeros((1, 1, 3, 3)), 4, 2, 1, 0), "a 4x2 window does not fit an image of 3x3 padded by 0"),
    ((np.zeros((1, 1, 3, 3)), 2, 2, 0, 0), "the stride must be an integer of at least 1, not 0"),
    ((np.zeros((1, 1, 3, 3)), 2, 2, 1, -1), "the pad must be an integer of at least 0, not -1"),
    ((np.zeros((1, 1, 3, 3)), 2.0, 2, 1, 0), "the window height must be an integer of at least 1, not 2.0"),
])
def test_windows_refuses_what_cannot_be_windowed(args, message):
    with pytest.raises(ValueError) as err:
        windows.patches(*args)
    assert message in str(err.value)


def test_the_element_by_element_partials_are_sympys_derivatives():
    """derive.gradient (reverse accumulation) against diff, on every kind of node it meets: sums,
    products, powers with a symbolic exponent, functions, a max, and a Piecewise (diff's own)."""
    from derivcheck.engine.derive import gradient

    x, y, z, w = sympy.symbols("x y z w", real=True)
    e = (sympy.tanh(x * y) * sympy.exp(-x) + x ** y + sympy.log(1 + z ** 2) * sympy.Max(x, z)
         + sympy.Piecewise((x * z, z > 0), (y, True)) + (x * y) ** 2 / (1 + sympy.exp(-x)))
    grads = gradient(e, {x, y, z, w})
    assert set(grads) == {x, y, z}  # w does not occur: no entry, not a 0
    values = {x: 0.7, y: 1.3, z: 0.4}
    for s in (x, y, z):
        assert float(grads[s].xreplace(values)) == pytest.approx(float(e.diff(s).xreplace(values)), rel=1e-14)
    assert gradient(x - x + 3 * y, {x, y}) == {y: 3}  # a sum SymPy cancels has no partial by x


def test_expand_dims_inserts_where_numpy_does_in_every_tier():
    """Every place an axis can go into (2, 3), negative ones as NumPy counts them (DeZero's list.insert does not)."""
    rule = derivcheck.load_rule("expand_dims")
    x = np.arange(6.0).reshape(2, 3)
    for axis in range(-3, 3):
        want = np.expand_dims(x, axis)
        d = reference.at(rule, rule.resolve_hyper({"axis": axis}), {"N": 2, "D": 3})
        np.testing.assert_array_equal(d.forward(x=x), want)  # the shape-generic tier
        assert symarray.expand_dims(x, axis).shape == want.shape  # the element-by-element one
        np.testing.assert_array_equal(d.vjp(want * 2, x=x)["x"], x * 2)
    for axis in (3, -4, 1.0, True):
        with pytest.raises(ValueError, match="is not a place to insert an axis into 2 axes"):
            symarray.expand_dims(x, axis)


@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sin", "cos", "sqrt", "abs"])
def test_every_elementwise_function_is_complete_in_every_backend(name, tmp_path):
    # engine/ops.py is the one table of the language's element-wise functions: each entry must work in the
    # symbolic tier, the index-notation tier (proven against it), the numeric formula backend, compiled
    # NumPy and mpmath evaluation, the error bound, the cache's round trip and explain, and mean NumPy's function
    from derivcheck.engine import exprcodec, ops
    from derivcheck.engine.rules import parse_rule
    from derivcheck.present.explanation import explain

    assert set(ops.ELEMENTWISE) == {"exp", "log", "tanh", "sin", "cos", "sqrt", "abs"}  # a new one joins the list above
    op = ops.ELEMENTWISE[name]
    rule = parse_rule(f'name = "f_{name}"\nsummary = "{name}(x)"\nformula = "{name}(x)"\noutput = ["N"]\n'
                      f'[inputs.x]\nshape = ["N"]\ndomain = {{kind = "uniform", low = 0.5, high = 2.0}}\n', tmp_path / f"f_{name}.toml")
    x, cot = np.array([0.6, 1.3, 1.9]), np.array([0.3, -1.1, 0.8])
    h = 1e-6
    slope = (op.np(x + h) - op.np(x - h)) / (2 * h)
    g, note = reference.generic_for(rule, {})
    assert g is not None, note  # derived in index notation and proven against the element-by-element tier
    for bound in (reference.at(rule, {}, {"N": 3}), reference.ConcreteBound(rule, {}, {"N": 3})):
        out, grads, scales = bound.evaluate(cot, x=x)
        assert np.allclose(out, op.np(x), rtol=1e-15, atol=0) and np.allclose(grads["x"], cot * slope, rtol=1e-8)
        assert np.all(np.isfinite(scales["x"])) and np.all(scales["x"] > 0) and np.all(scales["forward"] > 0)
        exact_out, exact_grads = bound.exact(cot, x=x)
        assert np.allclose(np.asarray(exact_out, dtype=float), op.np(x), rtol=1e-15)
        assert np.allclose(np.asarray(exact_grads["x"], dtype=float), cot * slope, rtol=1e-8)
    numeric = rule.formula.evaluate(rule.environment({"N": 3}, {}, {"x": x}), backend="numeric")
    assert np.allclose(numeric, op.np(x), rtol=1e-15)
    s = sympy.Symbol("s", positive=True)
    expr = op.sym(s + 1) * s  # a node of it inside an expression, as a derivation stores it
    enc = exprcodec.Encoder()
    ref = enc(expr)
    assert exprcodec.decoder(enc.nodes, {"s": s})(ref) == expr  # the cache stores and rebuilds it
    assert f"{name}(" in explain(rule).text()


def test_the_languages_signatures_are_those_both_symbolic_tiers_implement():
    """A formula is checked against formula.SIGNATURES when its rule is read (without SymPy); each symbolic
    tier's function must take exactly those arguments, or a checked formula could fail to derive."""
    import inspect

    from derivcheck.engine import formula, indexed

    def bare(fn) -> str:
        sig = inspect.signature(fn)
        return str(sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                               return_annotation=inspect.Signature.empty))

    for tier in (symarray, indexed):
        for name, impl in formula.tier_functions(tier).items():
            assert bare(impl) == str(formula.SIGNATURES[name]), (tier.__name__, name)
