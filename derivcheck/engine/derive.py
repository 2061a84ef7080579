"""Derivation: a rule at concrete sizes -> exact Jacobians, lambdified to NumPy.

``derive(rule, dims, hyper)`` builds arrays of SymPy symbols for the inputs,
evaluates the rule's formula on them, takes the partials of each output
element by each differentiable input element it contains (what
``derive_by_array`` gives, by reverse accumulation: :func:`gradient`), and lambdifies (NumPy, common
subexpressions eliminated) the forward values and the non-zero Jacobian
entries. Results are cached per (rule content, sizes, hyperparameters the
formula reads): in memory here, on disk through :mod:`derivcheck.engine.cache`.
"""
from __future__ import annotations

import numpy as np
import sympy
from sympy.core.function import ArgumentIndexError
from sympy.tensor.array import ImmutableDenseNDimArray

from derivcheck.engine import cache, exprcodec, indexeval, symarray
from derivcheck.engine.program import MEMO
from derivcheck.engine.rounding import NotNumeric, bounds_at, magnitude, values_at
from derivcheck.errors import DerivcheckError, RuleError

_FROM_DISK = object()  # sentinel: expressions will be supplied by derive()



def _select(condlist, choicelist, default=0):
    """np.select for SymPy's printed Piecewise, whose last condition is Python's True (NumPy 2 wants arrays)."""
    return np.select([np.asarray(c, dtype=bool) for c in condlist], choicelist, default)


# Heaviside and Max/Min (a max's derivative is Heaviside(x_i - Max(others))) are printed
# through Piecewise, whose printing runs simplify_logic: seconds for a max over six
# elements, minutes for twelve. They go to lambdify as plain functions instead.
_HEAVISIDE, _MAX, _MIN = (sympy.Function(n) for n in ("heaviside_", "amax_", "amin_"))


def has_any(e, kinds: tuple, seen: set | None = None) -> bool:
    """``e.has(*kinds)``, visiting each shared subexpression once: an unrolled recurrence is a small
    graph but an exponentially large tree, which SymPy's own walks (``has``, lambdify's) traverse in full."""
    seen = set() if seen is None else seen
    stack = [e]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, kinds):
            return True
        stack.extend(node.args)
    return False


def _cse(exprs):
    """Common subexpressions for lambdify, in SymPy's canonical order left out (it sorts by walking every tree)."""
    return sympy.cse(exprs, order="none")


def _lambdify(args, exprs, modules):
    """NumPy (or mpmath) code for ``exprs``: common subexpressions once, no walk of the whole tree for
    implemented functions (lambdify's ``use_imps``: derivcheck's expressions have none)."""
    return sympy.lambdify(args, _plain(exprs), modules=modules, cse=_cse, use_imps=False, docstring_limit=0)


def _closures(args, exprs, backend: str):
    """What :func:`_lambdify` gives, built as indexeval's closures with one table for every shared
    subexpression: an unrolled recurrence's 50-digit reference (the stability probe), whose trees
    would take forever to print."""
    names = [str(s) for group in args for s in group]
    with indexeval.sharing():
        compiled = [indexeval.compiled(sympy.sympify(e), (), {}) for e in exprs]

    def evaluate(*values):
        env = dict(zip(names, (v for group in values for v in group)))
        env[MEMO] = {}
        return [c(env, backend)[()] for c in compiled]

    return evaluate


def _walked(args, exprs):
    """What :func:`_lambdify` gives, with nothing compiled: each call walks the expressions' graph once
    (rounding.values_at). An unrolled recurrence has few calls and a large graph with equal subtrees built
    apart, which a compiler keyed by expression compares node by node."""
    symbols = [s for group in args for s in group]

    def evaluate(*values):
        return values_at(exprs, dict(zip(symbols, (v for group in values for v in group))))

    return evaluate


WALKS_BEFORE_COMPILING = 32  # set by hand: see _walked_then_compiled


def _walked_then_compiled(args, exprs):
    """What :func:`_lambdify` gives, walked (:func:`_walked`) for the first WALKS_BEFORE_COMPILING calls,
    lambdified from then on. Lambdifying costs a hundred to a thousand walks (spatial_groupnorm at its
    example sizes: 2.8 s against 20 ms a walk), and a trial calls a derivation at its sizes a few times,
    where a process checks a layer once: most derivations are never called often enough to pay for it.
    Central differences call one hundreds of times, and get it compiled."""
    walked, compiled, calls = _walked(args, exprs), [], [0]

    def evaluate(*values):
        if not compiled:
            calls[0] += 1
            if calls[0] <= WALKS_BEFORE_COMPILING:
                try:
                    return walked(*values)
                except NotNumeric:  # a node the walk cannot evaluate: compile now
                    pass
            compiled.append(_lambdify(args, exprs, _NUMPY))
        return compiled[0](*values)

    return evaluate


def _plain(exprs):
    out, seen = [], set()
    kinds = (sympy.Heaviside, sympy.Max, sympy.Min)
    for e in map(sympy.sympify, exprs):
        if has_any(e, kinds, seen):  # one walk; replace rebuilds the tree, three times
            e = (e.replace(sympy.Heaviside, lambda a, *h: _HEAVISIDE(a))
                 .replace(sympy.Max, lambda *a: _MAX(*a)).replace(sympy.Min, lambda *a: _MIN(*a)))
        out.append(e)
    return out


def _np_reduce(ufunc):
    return lambda *args: ufunc.reduce(np.broadcast_arrays(*args)) if len(args) > 1 else args[0]


def _mp_heaviside(a):
    return 1 if a > 0 else 0 if a < 0 else 0.5


_NUMPY = [{"select": _select, "heaviside_": lambda a: np.heaviside(a, 0.5),
           "amax_": _np_reduce(np.maximum), "amin_": _np_reduce(np.minimum)}, "numpy"]  # lambdify's modules
_MPMATH = [{"heaviside_": _mp_heaviside, "amax_": max, "amin_": min}, "mpmath"]

class Derivation:
    """Exact derivatives of one rule at one set of sizes and hyperparameters."""

    def __init__(self, rule, dims: dict, hyper: dict, exprs=None):
        self.rule = rule
        self.dims = dict(dims)
        self.hyper = dict(hyper)
        self.shapes = {n: rule.shape_of(i.shape, dims) for n, i in rule.inputs.items()}
        self.label_shapes = {n: rule.shape_of(lab.shape, dims) for n, lab in rule.labels.items()}
        self.symbols = {n: symarray.symbols(n, s) for n, s in self.shapes.items()}
        self.label_symbols = {
            n: symarray.symbols(n, rule.shape_of(lab.symbolic_shape(), dims)) for n, lab in rule.labels.items()
        }
        if exprs is not _FROM_DISK:
            self._finish(exprs if exprs is not None else self._derive())

    def _finish(self, exprs):
        self.output_shape, self._out, self._jac = exprs
        self._compile()

    # -- symbolic ----------------------------------------------------------
    def _derive(self):
        env = self.rule.environment(self.dims, self.hyper, {**self.symbols, **self.label_symbols})
        try:
            out = symarray.asarray(self.rule.formula.evaluate(env, backend="symbolic"))
        except RuleError as exc:  # the rule loaded at its defaults, so these sizes or values are at fault
            raise DerivcheckError(f"rule '{self.rule.name}' cannot be evaluated at {self._where()}: {exc.message} ({exc.path}:{exc.line})") from None
        flat_out = list(out.ravel())
        position = {s: (name, i) for name, syms in self.symbols.items() for i, s in enumerate(syms.ravel())}
        jac = {name: [] for name in self.symbols}
        for o, e in enumerate(flat_out):  # sparse: each output's partials by the input symbols it contains
            for s, d in sorted(gradient(e, position.keys()).items(), key=lambda sd: position[sd[0]]):
                name, i = position[s]
                jac[name].append((o, i, d))
        return out.shape, flat_out, jac

    @property
    def output(self) -> np.ndarray:
        """The symbolic output as an object array."""
        return np.array(self._out, dtype=object).reshape(self.output_shape)

    def jacobian(self, name: str) -> ImmutableDenseNDimArray:
        """d output / d ``name`` as a SymPy array of shape ``output.shape + input.shape``."""
        return ImmutableDenseNDimArray(self.jacobian_array(name).ravel().tolist(), self.output_shape + self.shapes[name])

    def jacobian_array(self, name: str) -> np.ndarray:
        """d output / d ``name`` as an object array of shape ``output.shape + input.shape``."""
        self.check_input(name)
        J = np.full((len(self._out), int(np.prod(self.shapes[name], dtype=int))), sympy.Integer(0), dtype=object)
        for o, i, e in self._jac[name]:
            J[o, i] = e
        return J.reshape(self.output_shape + self.shapes[name])

    def check_input(self, name):
        if name not in self._jac:
            raise DerivcheckError(
                f"'{name}' is not a differentiable input of rule '{self.rule.name}' (they are: {', '.join(self._jac)})"
            )

    # -- numeric -------------------------------------------------------------
    def _compile(self):
        args = self._lambda_args()
        self._forward_fn = self._code(args, self._out)
        self.nonzero = {}
        entries = []
        for name, triples in self._jac.items():
            self.nonzero[name] = (np.array([o for o, _, _ in triples], dtype=np.intp), np.array([i for _, i, _ in triples], dtype=np.intp))
            entries += [e for _, _, e in triples]
        self._jac_fn = self._code(args, entries)
        self._entries, self._mag = entries, None  # the bounds are compiled when first asked for: a proof never asks

    def _code(self, args, exprs, backend: str = "numpy"):
        """``exprs`` as one function of the input lists: walked, then lambdified once called often
        (:func:`_walked_then_compiled`); for a loop's unrolled graph, walked or closures."""
        if self.rule.formula.loop is not None and backend == "numpy":
            return _walked(args, exprs)
        if self.rule.formula.loop is not None:
            return _closures(args, exprs, backend)
        if backend == "numpy":
            return _walked_then_compiled(args, exprs)
        return _lambdify(args, exprs, _MPMATH)

    def _mag_fn(self, *args):
        """Running error bounds of the output and Jacobian entries (see rounding.py): evaluated at these
        values by walking the expressions once; where they hold a node that walk cannot evaluate, compiled
        from ``magnitude`` on first use."""
        if self._mag is None:
            try:
                values = {s: v for syms, vals in zip(self._lambda_args(), args) for s, v in zip(syms, np.ravel(vals))}
                return bounds_at(list(self._out) + self._entries, values)
            except NotNumeric:
                memo: dict = {}
                exprs = [magnitude(e, memo) for e in self._out] + [magnitude(e, memo) for e in self._entries]
                self._mag = _lambdify(self._lambda_args(), exprs, _NUMPY)
        return self._mag(*args)

    def _lambda_args(self) -> list:
        return [list(s.ravel()) for s in self.symbols.values()] + [list(s.ravel()) for s in self.label_symbols.values()]

    def _args(self, values: dict) -> list:
        return [v.ravel() for v in self.rule.formula_values(values, self.dims).values()]

    def encode_label(self, name: str, value) -> np.ndarray:
        """Labels as the formula sees them: class indices become one-hot rows."""
        return self.rule.encode_label(name, value, self.dims)

    def forward(self, **values) -> np.ndarray:
        """The rule's output at these input (and label) values, in float64."""
        with np.errstate(all="ignore"):
            out = self._forward_fn(*self._args(values))
        return np.asarray(out, dtype=np.float64).reshape(self.output_shape)

    def entries(self, bounds: bool = False, **values):
        """Non-zero Jacobian entries at these values, ``{input: values}``.

        The positions are ``self.nonzero[input] = (output rows, input columns)``.
        With ``bounds``: also their running error bounds (same layout) and the
        output's, as ``(entries, entry bounds, output bound)``.
        """
        args = self._args(values)
        with np.errstate(all="ignore"):
            vals = np.asarray(self._jac_fn(*args), dtype=np.float64)
            mags = np.asarray(self._mag_fn(*args), dtype=np.float64) if bounds else None
        result, entry_bounds, start = {}, {}, 0
        for name, (rows, _) in self.nonzero.items():
            result[name] = vals[start : start + len(rows)]
            if bounds:
                entry_bounds[name] = mags[len(self._out) + start : len(self._out) + start + len(rows)]
            start += len(rows)
        if not bounds:
            return result
        return result, entry_bounds, mags[: len(self._out)].reshape(self.output_shape)

    def jacobians(self, **values) -> dict[str, np.ndarray]:
        """Dense Jacobians, each of shape ``(output.size, input.size)`` (for small shapes: tests, teaching)."""
        entries = self.entries(**values)
        out_size = int(np.prod(self.output_shape, dtype=int))
        result = {}
        for name, (rows, cols) in self.nonzero.items():
            J = np.zeros((out_size, int(np.prod(self.shapes[name], dtype=int))))
            J[rows, cols] = entries[name]
            result[name] = J
        return result

    def exact(self, cotangent, digits: int = 50, **values) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Output and VJP at ``digits`` significant digits (mpmath), as object arrays of mpf.

        For extreme inputs, where float64 evaluation of the reference itself overflows.
        """
        import mpmath

        if not hasattr(self, "_mp_fn"):
            args = [list(s.ravel()) for s in self.symbols.values()] + [list(s.ravel()) for s in self.label_symbols.values()]
            entries = [e for triples in self._jac.values() for _, _, e in triples]
            self._mp_fn = self._code(args, list(self._out) + entries, "mpmath")
        with mpmath.workdps(digits):
            args = [[mpmath.mpf(float(v)) for v in a] for a in self._args(values)]
            vals = self._mp_fn(*args)
            out_size = int(np.prod(self.output_shape))
            out = np.array([mpmath.mpf(v) for v in vals[:out_size]], dtype=object).reshape(self.output_shape)
            cot = [mpmath.mpf(float(c)) for c in np.asarray(cotangent, dtype=np.float64).ravel()]
            grads, start = {}, out_size
            for name, (rows, cols) in self.nonzero.items():
                g = [mpmath.mpf(0)] * int(np.prod(self.shapes[name]))
                for o, i, v in zip(rows, cols, vals[start : start + len(rows)]):
                    g[i] += cot[o] * v
                start += len(rows)
                grads[name] = np.array(g, dtype=object).reshape(self.shapes[name])
        return out, grads

    def vjp(self, cotangent, **values) -> dict[str, np.ndarray]:
        """The gradient of ``sum(cotangent * output)`` with respect to each input."""
        cot = np.asarray(cotangent, dtype=np.float64)
        if cot.shape != self.output_shape:
            raise DerivcheckError(f"cotangent has shape {cot.shape}, the output has {self.output_shape}")
        entries = self.entries(**values)
        c = cot.ravel()
        return {
            name: np.bincount(cols, weights=c[rows] * entries[name], minlength=int(np.prod(self.shapes[name], dtype=int))).reshape(self.shapes[name])
            for name, (rows, cols) in self.nonzero.items()
        }

    def _where(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        if self.hyper:
            where += " with " + ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return where

    def __repr__(self):
        return f"<Derivation {self.rule.name} at {self._where()}>"


_MEMORY: dict[tuple, Derivation] = {}


def _partials(node):
    """``[(argument, ∂node/∂argument)]`` for a sum, product, power or function of one node, or None
    for a node whose own ``diff`` is used (a Piecewise)."""
    if node.is_Add:
        return [(a, sympy.Integer(1)) for a in node.args]
    if node.is_Mul:
        args = node.args
        return [(a, sympy.Mul(*args[:i], *args[i + 1:])) for i, a in enumerate(args)]
    if node.is_Pow:
        base, exponent = node.args
        parts = [(base, exponent * base ** (exponent - 1))]
        if exponent.free_symbols:
            parts.append((exponent, node * sympy.log(base)))
        return parts
    if isinstance(node, sympy.Function) and not isinstance(node, sympy.Piecewise):
        try:
            return [(a, node.fdiff(i + 1)) for i, a in enumerate(node.args)]
        except (ArgumentIndexError, NotImplementedError, TypeError):
            return None
    return None


def gradient(e, wanted) -> dict:
    """``{s: ∂e/∂s}`` for the symbols ``s`` of ``wanted`` that ``e`` depends on (zeros left out).

    Reverse accumulation over ``e``'s sub-expressions, each visited once: one walk of the
    expression for every partial, where ``e.diff(s)`` walks it once per symbol (an LSTM output
    element depends on 40 input elements at N=2, D=3, H=4). Each node's local derivative is
    SymPy's own (``fdiff``, the product and power rules); a Piecewise is differentiated by ``diff``.
    """
    order, reaches = [], {}  # sub-expressions children first; does the node contain a wanted symbol
    stack = [(e, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            reaches[node] = node in wanted or any(reaches[a] for a in node.args)
            order.append(node)
        elif node not in reaches:
            reaches[node] = False
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in reaches)
    adjoint = {e: sympy.Integer(1)}
    grads: dict = {}
    for node in reversed(order):  # every parent before its children
        g = adjoint.pop(node, None)
        if g is None or not reaches[node]:
            continue
        if node in wanted:
            grads[node] = grads.get(node, 0) + g
            continue
        parts = _partials(node)
        if parts is None:
            for s in wanted & node.free_symbols:
                grads[s] = grads.get(s, 0) + g * node.diff(s)
            continue
        for a, local in parts:
            if reaches[a]:
                adjoint[a] = adjoint.get(a, 0) + g * local
    return {s: d for s, d in grads.items() if d != 0}


def cache_key(rule, dims: dict, hyper: dict) -> tuple:
    used = {k: v for k, v in hyper.items() if k in rule.formula.names}
    return (rule.digest, tuple(sorted(dims.items())), repr(sorted(used.items())))


def derive(rule, dims: dict, hyper: dict) -> Derivation:
    """The derivation for these sizes and hyperparameters: from memory, disk, or SymPy."""
    key = cache_key(rule, dims, hyper)
    if key not in _MEMORY:
        disk_key = cache.entry_key(key)
        derivation = Derivation(rule, dims, hyper, exprs=_FROM_DISK)
        exprs = cache.load_or_make(disk_key, lambda: exprcodec.load(disk_key, derivation), derivation._derive,
                                   lambda made: exprcodec.store(disk_key, rule.name, made))
        derivation._finish(exprs)
        _MEMORY[key] = derivation
    return _MEMORY[key]
