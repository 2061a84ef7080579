"""The rule formula language: a NumPy-like subset of Python, parsed, never eval'ed.

A formula is a few assignments followed by one expression, the output::

    y = softmax(x, axis=-1)
    -sum(t * log(y)) / N

Only the constructs below are accepted; anything else is refused with the
rule file's line. The same tree is evaluated by two backends: ``symbolic``
(SymPy object arrays, for derivation) and ``numeric`` (NumPy, used to check
shapes cheaply when a rule is loaded).
"""
from __future__ import annotations

import ast
import inspect
import operator
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import sympy

from . import indexed, symarray
from .errors import RuleError


def _np_sum_to(x, shape):
    shape = tuple(shape)
    lead = x.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"sum_to: cannot sum shape {x.shape} to the longer shape {shape}")
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1)
    y = x.sum(axis=axes, keepdims=True) if axes else x
    y = y.reshape(y.shape[lead:])
    if y.shape != shape:
        raise ValueError(f"sum_to: shape {x.shape} does not broadcast to {shape}")
    return y


def _np_softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_pick(y, t):
    if y.shape != t.shape:
        raise ValueError(f"pick: labels of shape {t.shape} do not match scores of shape {y.shape}")
    return np.sum(y * t, axis=-1)


def _slice_bounds(shape: tuple, bounds: list) -> list[tuple]:
    """``(start, stop)`` for every axis of an array of ``shape`` from a formula's slices.

    Bounds count from 0 (no negative ones, no step) and must lie within the axis, with
    start < stop: a slice past the end is an error here, where NumPy would quietly clip it.
    Sizes may be symbols (the shape-generic tier): a bound SymPy cannot place is refused.
    """
    if len(bounds) > len(shape):
        raise IndexError(f"{len(bounds)} slices for an array of {len(shape)} axes")
    out = []
    for axis, size in enumerate(shape):
        start, stop = bounds[axis] if axis < len(bounds) else (None, None)
        start = sympy.Integer(0) if start is None else start
        stop = size if stop is None else stop
        for b in (start, stop):
            if isinstance(b, (bool, float, str, list)) or not (isinstance(b, int) or isinstance(b, sympy.Expr) and b.is_integer):
                raise TypeError(f"a slice bound must be a whole number or a size, not {b!r}")
        checks = [sympy.sympify(start) >= 0, sympy.sympify(stop) > start, sympy.sympify(size) >= stop]
        if any(c is sympy.false for c in checks):
            raise IndexError(f"slice {start}:{stop} of an axis of size {size}: bounds count from 0 and lie within the axis, start before stop")
        if any(c is not sympy.true for c in checks):
            raise IndexError(f"slice {start}:{stop} of an axis of size {size}: cannot tell that it lies within the axis")
        out.append((start, stop))
    return out


def _np_slice(x, bounds):
    return x[tuple(slice(int(a), int(b)) for a, b in bounds)]


def _stack(stack):
    """A backend's ``stack``: the several outputs of a formula (``h_next, c_next``) as one array,
    the output's index first. Each output has the same shape (checked here, for every backend)."""
    def stacked(arrays, names):
        shapes = [tuple(a.shape) for a in arrays]
        for n, s in zip(names[1:], shapes[1:]):
            if len(s) != len(shapes[0]) or any(sympy.simplify(symarray.exact(a) - symarray.exact(b)) != 0 for a, b in zip(s, shapes[0])):
                raise ValueError(f"the outputs {names[0]} {_shape_text(shapes[0])} and {n} {_shape_text(s)} have different "
                                 f"shapes: several outputs must have one shape")
        return stack(arrays)
    return stacked


def _shape_text(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


_NP_RELATIONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}

# name -> (symbolic implementation, numeric implementation). The symbolic one's
# signature is the function's signature in the formula language.
FUNCTIONS = {
    "exp": (symarray.exp, np.exp),
    "log": (symarray.log, np.log),
    "tanh": (symarray.tanh, np.tanh),
    "sin": (symarray.sin, np.sin),
    "cos": (symarray.cos, np.cos),
    "sqrt": (symarray.sqrt, np.sqrt),
    "abs": (symarray.abs_, np.abs),
    "sigmoid": (symarray.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "maximum": (symarray.maximum, np.maximum),
    "minimum": (symarray.minimum, np.minimum),
    "where": (symarray.where, np.where),
    "sum": (symarray.sum, lambda x, axis=None, keepdims=False: np.sum(x, axis=_tuple(axis), keepdims=keepdims)),
    "mean": (symarray.mean, lambda x, axis=None, keepdims=False: np.mean(x, axis=_tuple(axis), keepdims=keepdims)),
    "max": (symarray.max, lambda x, axis=None, keepdims=False: np.max(x, axis=_tuple(axis), keepdims=keepdims)),
    "matmul": (symarray.matmul, np.matmul),
    "reshape": (symarray.reshape, lambda x, shape: np.reshape(x, tuple(shape))),
    "transpose": (symarray.transpose, lambda x, axes=None: np.transpose(x, _tuple(axes))),
    "repeat": (symarray.repeat, np.repeat),
    "broadcast_to": (symarray.broadcast_to, lambda x, shape: np.broadcast_to(x, tuple(shape))),
    "sum_to": (symarray.sum_to, _np_sum_to),
    "softmax": (symarray.softmax, _np_softmax),
    "log_softmax": (symarray.log_softmax, lambda x, axis=-1: np.log(_np_softmax(x, axis))),
    "pick": (symarray.pick, _np_pick),
    "onehot": (symarray.onehot, lambda t: t),
    "windows": (symarray.windows, symarray.patches),
    "conv2d": (symarray.conv2d, symarray.np_conv2d),
}


def _tuple(axis):
    return tuple(axis) if isinstance(axis, list) else axis


BACKENDS = {
    "symbolic": SimpleNamespace(
        functions={k: v[0] for k, v in FUNCTIONS.items()},
        matmul=symarray.matmul,
        compare=symarray.compare,
        transpose=symarray.transpose,
        slice=_np_slice,
        stack=_stack(lambda arrays: np.stack([symarray.asarray(a) for a in arrays])),
        wrap=symarray.asarray,
        exact=True,
    ),
    # shape-generic index notation (see indexed.py); names it lacks raise Unsupported
    "generic": SimpleNamespace(
        functions={k: getattr(indexed, {"abs": "abs_"}.get(k, k)) for k in FUNCTIONS},
        matmul=indexed.matmul,
        compare=indexed.compare,
        transpose=indexed.transpose,
        slice=indexed.slice_,
        stack=_stack(indexed.stack),
        wrap=indexed.asarray,
        exact=True,
    ),
    "numeric": SimpleNamespace(
        functions={k: v[1] for k, v in FUNCTIONS.items()},
        matmul=np.matmul,
        compare=lambda op, a, b: _NP_RELATIONS[op](a, b),
        transpose=np.transpose,
        slice=_np_slice,
        stack=_stack(lambda arrays: np.stack([np.asarray(a) for a in arrays])),
        wrap=np.asarray,
        exact=False,
    ),
}

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<="}
_SIGNATURES = {name: inspect.signature(impl[0]) for name, impl in FUNCTIONS.items()}


def signature_text(name: str) -> str:
    """``sum(x, axis=None, keepdims=False)``: a function as the formula language spells it."""
    params = [p.replace(annotation=inspect.Parameter.empty) for p in _SIGNATURES[name].parameters.values()]
    return f"{name}{inspect.Signature(params)}"


@dataclass
class Formula:
    """A parsed, checked formula. ``line`` maps formula line 1 to the rule file."""

    text: str
    path: str
    first_line: int
    statements: list  # [(target name or None, expression node)]
    outputs: tuple = ()  # the names of several outputs (a last line 'h_next, c_next'); () for one output

    @classmethod
    def parse(cls, text: str, path, first_line: int, known: set[str]) -> "Formula":
        def fail(node, message):
            raise RuleError(path, first_line + getattr(node, "lineno", 1) - 1, message)

        try:
            tree = ast.parse(text.strip("\n"), mode="exec")
        except SyntaxError as exc:
            raise RuleError(path, first_line + (exc.lineno or 1) - 1, f"formula is not valid syntax: {exc.msg}") from None
        except (RecursionError, MemoryError):
            raise RuleError(path, first_line, "formula is nested too deeply to parse: split it with assignments") from None
        if not tree.body:
            raise RuleError(path, first_line, "formula is empty: write the output expression")
        names = set(known)
        statements, outputs = [], ()
        for i, stmt in enumerate(tree.body):
            last = i == len(tree.body) - 1
            if isinstance(stmt, ast.Assign) and not last:
                if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                    fail(stmt, "formula assignments must be to a single name, as in 'y = exp(x)'")
                _check(stmt.value, names, fail)
                statements.append((stmt.targets[0].id, stmt.value))
                names.add(stmt.targets[0].id)
            elif isinstance(stmt, ast.Expr) and last:
                _check(stmt.value, names, fail)
                statements.append((None, stmt.value))
                if isinstance(stmt.value, ast.Tuple):
                    outputs = _outputs(stmt.value, names - set(known), fail)
            elif last:
                fail(stmt, "the formula's last line must be the output expression")
            else:
                fail(stmt, f"formula lines must be assignments 'name = expression', not {type(stmt).__name__}")
        return cls(text, str(path), first_line, statements, outputs)

    @property
    def names(self) -> set[str]:
        """Every name the formula reads (inputs, labels, hyperparameters, dimensions)."""
        return {n.id for _, node in self.statements for n in ast.walk(node) if isinstance(n, ast.Name)}

    def line_of(self, node) -> int:
        return self.first_line + getattr(node, "lineno", 1) - 1

    def evaluate(self, env: dict, backend: str = "symbolic"):
        """Evaluate with values for every known name; errors carry the rule's line."""
        return self.evaluate_scope(env, backend)[0]

    def evaluate_scope(self, env: dict, backend: str = "symbolic"):
        """(output, every name in scope afterwards, the formula's own assignments included)."""
        ops = BACKENDS[backend]
        scope = dict(env)
        result = None
        for target, node in self.statements:
            try:
                with np.errstate(all="ignore"):
                    result = _eval(node, scope, ops)
                    if target is None and self.outputs:
                        result = _outputs_value(node, result, self.outputs, ops)
            except _NodeError as exc:
                raise RuleError(self.path, self.line_of(exc.node), exc.message) from None
            if target is not None:
                scope[target] = result
        return result, scope


def _outputs(node: ast.Tuple, assigned: set[str], fail) -> tuple:
    """The names of a formula's several outputs, from its last line ``h_next, c_next``."""
    names = [e.id if isinstance(e, ast.Name) else None for e in node.elts]
    if len(names) < 2 or None in names:
        fail(node, "a layer's several outputs are written as names assigned above, in the order the layer returns "
                   "them: 'h_next, c_next'")
    for n in names:
        if n not in assigned:
            fail(node, f"output '{n}' is not assigned in the formula: write '{n} = ...' above")
        if names.count(n) > 1:
            fail(node, f"output '{n}' is named twice")
    return tuple(names)


def _outputs_value(node, values: list, names: tuple, ops):
    """The several outputs as one array (the output's index first)."""
    try:
        return ops.stack([_array(v, ops) for v in values], names)
    except ValueError as exc:
        raise _NodeError(node, str(exc)) from None


class _NodeError(Exception):
    def __init__(self, node, message):
        self.node, self.message = node, message


def _check(node, names: set[str], fail) -> None:
    """Refuse anything outside the whitelist, unknown functions and undefined names."""
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, bool)) and node.value is not None:
            fail(node, f"constant {node.value!r} is not a number")
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            fail(node, f"'{node.id}' is a function: call it, as in '{node.id}(x)'")
        if node.id not in names:
            fail(node, f"undefined name '{node.id}' (defined here: {', '.join(sorted(names)) or 'none'})")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS and not isinstance(node.op, ast.MatMult):
            fail(node, f"operator {type(node.op).__name__} is not allowed (use + - * / ** @)")
        _check(node.left, names, fail)
        _check(node.right, names, fail)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            fail(node, f"unary operator {type(node.op).__name__} is not allowed")
        _check(node.operand, names, fail)
    elif isinstance(node, ast.Compare):
        if len(node.ops) != 1 or type(node.ops[0]) not in _COMPARE:
            fail(node, "comparisons must be a single one of > >= < <=")
        _check(node.left, names, fail)
        _check(node.comparators[0], names, fail)
    elif isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            _check(elt, names, fail)
    elif isinstance(node, ast.Subscript):
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for part in parts:
            if not isinstance(part, ast.Slice):
                fail(node, f"'{ast.unparse(node)}': only slices 'start:stop' can index an array, as in A[:, H:2*H]")
            if part.step is not None:
                fail(node, f"'{ast.unparse(node)}': a slice cannot have a step")
            for bound in (part.lower, part.upper):
                if bound is not None:
                    _check(bound, names, fail)
        _check(node.value, names, fail)
    elif isinstance(node, ast.Attribute):
        if node.attr != "T":
            fail(node, f"attribute '.{node.attr}' is not allowed (only '.T')")
        _check(node.value, names, fail)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            fail(node, "only the formula functions can be called, by name")
        name = node.func.id
        if name not in FUNCTIONS:
            fail(node, f"unknown function '{name}' (known: {', '.join(sorted(FUNCTIONS))})")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            fail(node, f"{name}(): * and ** arguments are not allowed")
        try:
            _SIGNATURES[name].bind(*node.args, **{k.arg: k.value for k in node.keywords})
        except TypeError as exc:
            fail(node, f"{signature_text(name)}: {exc}")
        for arg in node.args + [k.value for k in node.keywords]:
            _check(arg, names, fail)
    else:
        fail(node, f"{type(node).__name__} is not allowed in a formula")


def _eval(node, scope, ops):
    try:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return scope[node.id]
        if isinstance(node, (ast.Tuple, ast.List)):
            return [_eval(e, scope, ops) for e in node.elts]
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](_eval(node.operand, scope, ops))
        if isinstance(node, ast.BinOp):
            left, right = _eval(node.left, scope, ops), _eval(node.right, scope, ops)
            if isinstance(node.op, ast.MatMult):
                return ops.matmul(_array(left, ops), _array(right, ops))
            if not isinstance(left, (np.ndarray, indexed.TArray)) and not isinstance(right, (np.ndarray, indexed.TArray)):
                if isinstance(node.op, ast.Pow):
                    _check_power(node, left, right)
                if isinstance(node.op, ast.Div) and isinstance(left, int) and isinstance(right, int):
                    return sympy.Rational(left, right) if ops.exact else left / right
                return _BINOPS[type(node.op)](left, right)  # plain numbers: sizes, constants
            return _BINOPS[type(node.op)](_array(left, ops), _array(right, ops))
        if isinstance(node, ast.Compare):
            return ops.compare(_COMPARE[type(node.ops[0])], _eval(node.left, scope, ops), _eval(node.comparators[0], scope, ops))
        if isinstance(node, ast.Attribute):
            return ops.transpose(_eval(node.value, scope, ops))
        if isinstance(node, ast.Subscript):
            value = _array(_eval(node.value, scope, ops), ops)
            parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            bounds = [tuple(None if b is None else _eval(b, scope, ops) for b in (p.lower, p.upper)) for p in parts]
            return ops.slice(value, _slice_bounds(value.shape, bounds))
        if isinstance(node, ast.Call):
            fn = ops.functions[node.func.id]
            args = [_eval(a, scope, ops) for a in node.args]
            kwargs = {k.arg: _eval(k.value, scope, ops) for k in node.keywords}
            return fn(*args, **kwargs)
    except _NodeError:
        raise
    except (ValueError, TypeError, IndexError, ArithmeticError) as exc:  # numpy AxisError is a ValueError
        raise _NodeError(node, f"cannot evaluate '{ast.unparse(node)}': {exc}") from None
    raise _NodeError(node, f"{type(node).__name__} is not allowed in a formula")


MAX_EXPONENT = 1024  # constant folding of plain numbers: 2 ** 10 ** 10 would never finish


def _check_power(node, base, exponent) -> None:
    """Refuse a power of plain numbers too large to fold (sizes and constants only reach here)."""
    for value in (base, exponent):
        if isinstance(value, str):
            raise _NodeError(node, f"'{ast.unparse(node)}': {value!r} is text, not a number")
    try:
        too_big = abs(exponent) > MAX_EXPONENT and abs(base) not in (0, 1)
    except TypeError:  # a SymPy size symbol (the shape-generic tier): SymPy keeps N ** k unevaluated
        return
    if too_big:
        raise _NodeError(node, f"'{ast.unparse(node)}': an exponent above {MAX_EXPONENT} is refused (the number would be too large)")


def _array(value, ops):
    return value if isinstance(value, np.ndarray) else ops.wrap(value)
