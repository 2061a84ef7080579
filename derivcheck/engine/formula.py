"""The rule formula language: a NumPy-like subset of Python, parsed, never eval'ed.

A formula is a few assignments followed by one expression, the output::

    y = softmax(x, axis=-1)
    -sum(t * log(y)) / N

Only the constructs below are accepted; anything else is refused with the
rule file's line. The same tree is evaluated by three backends (:func:`backend_ops`):
``symbolic`` (SymPy object arrays, the element-by-element tier), ``generic``
(index notation, the shape-generic tier) and ``numeric`` (NumPy: shapes, and
values where a check needs the rule's forward). Parsing and the numeric
backend import neither SymPy nor the symbolic tiers: a warm run needs only them.
"""
from __future__ import annotations

import ast
import inspect
import math
import operator
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from derivcheck.engine import windows
from derivcheck.engine.ops import ELEMENTWISE
from derivcheck.errors import RuleError, Unsupported


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
        start = 0 if start is None else start
        stop = size if stop is None else stop
        for b in (start, stop):
            if isinstance(b, (bool, float, str, list)) or not (isinstance(b, int) or _symbolic_integer(b)):
                raise TypeError(f"a slice bound must be a whole number or a size, not {b!r}")
        if all(isinstance(b, int) for b in (start, stop, size)):
            checks = [start >= 0, stop > start, size >= stop]
            unknown = False
        else:  # a size symbol (the shape-generic tier): SymPy decides, or cannot
            import sympy

            checks = [sympy.sympify(start) >= 0, sympy.sympify(stop) > start, sympy.sympify(size) >= stop]
            unknown = any(c is not sympy.true and c is not sympy.false for c in checks)
            checks = [c is not sympy.false for c in checks]
        if not all(checks):
            raise IndexError(f"slice {start}:{stop} of an axis of size {size}: bounds count from 0 and lie within the axis, start before stop")
        if unknown:
            raise IndexError(f"slice {start}:{stop} of an axis of size {size}: cannot tell that it lies within the axis")
        out.append((start, stop))
    return out


def _symbolic_integer(b) -> bool:
    """``b`` is a SymPy integer expression (a size of the shape-generic tier); never imports SymPy itself."""
    return type(b).__module__.startswith("sympy.") and getattr(b, "is_integer", False) is True


def _np_slice(x, bounds):
    return x[tuple(slice(int(a), int(b)) for a, b in bounds)]


def _same_size(a, b) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    import sympy

    from derivcheck.engine.symarray import exact

    return sympy.simplify(exact(a) - exact(b)) == 0


def _stack(stack):
    """A backend's ``stack``: the several outputs of a formula (``h_next, c_next``) as one array,
    the output's index first. Each output has the same shape (checked here, for every backend)."""
    def stacked(arrays, names):
        shapes = [tuple(a.shape) for a in arrays]
        for n, s in zip(names[1:], shapes[1:]):
            if len(s) != len(shapes[0]) or not all(_same_size(a, b) for a, b in zip(s, shapes[0])):
                raise ValueError(f"the outputs {names[0]} {shape_text(shapes[0])} and {n} {shape_text(s)} have different "
                                 f"shapes: several outputs must have one shape")
        return stack(arrays)
    return stacked


def shape_text(shape) -> str:
    """A shape as Python writes it, its sizes as they are named: (N, D), (4*H,), ()."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


_NP_RELATIONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _signature(text: str) -> inspect.Signature:
    """``"x, axis=None, keepdims=False"`` as a Signature: parsed (ast), its defaults literals, never eval'ed."""
    args = ast.parse(f"def f({text}): pass").body[0].args
    P = inspect.Parameter
    plain = [P(a.arg, P.POSITIONAL_OR_KEYWORD) for a in args.args]
    for k, d in enumerate(args.defaults, start=len(plain) - len(args.defaults)):
        plain[k] = plain[k].replace(default=ast.literal_eval(d))
    star = [P(args.vararg.arg, P.VAR_POSITIONAL)] if args.vararg else []
    return inspect.Signature(plain + star)


# The formula language's functions: name -> (signature as a formula calls it, numeric implementation). The
# symbolic tiers implement each under the same name (symarray.<name>, indexed.<name>; the element-wise ones
# through ops.py); tests/test_formula.py checks that their signatures are these.
_REDUCE = "x, axis=None, keepdims=False"
FUNCTIONS = {
    **{name: ("*args", op.np) for name, op in ELEMENTWISE.items()},  # exp, log, ...: ops.py
    "sigmoid": ("x", lambda x: 1 / (1 + np.exp(-x))),
    "maximum": ("*args", np.maximum),
    "minimum": ("*args", np.minimum),
    "where": ("cond, a, b", np.where),
    "sum": (_REDUCE, lambda x, axis=None, keepdims=False: np.sum(x, axis=_tuple(axis), keepdims=keepdims)),
    "mean": (_REDUCE, lambda x, axis=None, keepdims=False: np.mean(x, axis=_tuple(axis), keepdims=keepdims)),
    "max": (_REDUCE, lambda x, axis=None, keepdims=False: np.max(x, axis=_tuple(axis), keepdims=keepdims)),
    "matmul": ("a, b", np.matmul),
    "reshape": ("x, shape", lambda x, shape: np.reshape(x, tuple(shape))),
    "transpose": ("x, axes=None", lambda x, axes=None: np.transpose(x, _tuple(axes))),
    "expand_dims": ("x, axis", lambda x, axis: np.expand_dims(x, axis)),
    "repeat": ("x, repeats, axis=None", np.repeat),
    "broadcast_to": ("x, shape", lambda x, shape: np.broadcast_to(x, tuple(shape))),
    "sum_to": ("x, shape", _np_sum_to),
    "softmax": ("x, axis=-1", _np_softmax),
    "log_softmax": ("x, axis=-1", lambda x, axis=-1: np.log(_np_softmax(x, axis))),
    "pick": ("y, t", _np_pick),
    "onehot": ("t", lambda t: t),
    "windows": ("x, kh, kw, stride=1, pad=0", windows.patches),
    "conv2d": ("x, W, stride=1, pad=0", windows.np_conv2d),
    "deconv2d": ("x, W, stride=1, pad=0", windows.np_deconv2d),
    "zeros": ("shape", lambda shape: np.zeros(tuple(shape))),
    "concatenate": ("arrays, axis=0", lambda arrays, axis=0: np.concatenate([np.asarray(a) for a in arrays], axis=axis)),
}
SIGNATURES = {name: _signature(sig) for name, (sig, _) in FUNCTIONS.items()}


def _tuple(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def tier_functions(tier) -> dict:
    """A symbolic tier's (symarray's, indexed's) implementation of each of the language's functions: the
    element-wise ones from ops.py's table, the rest under their own names."""
    return {k: tier.elementwise(ELEMENTWISE[k].sym) if k in ELEMENTWISE else getattr(tier, k) for k in FUNCTIONS}


def _symbolic():
    from derivcheck.engine import symarray

    return SimpleNamespace(
        functions=tier_functions(symarray),
        matmul=symarray.matmul,
        compare=symarray.compare,
        transpose=symarray.transpose,
        slice=_np_slice,
        stack=_stack(lambda arrays: np.stack([symarray.asarray(a) for a in arrays])),
        wrap=symarray.asarray,
        exact=True,
        arrays=(np.ndarray,),
    )


def _generic():
    """Shape-generic index notation (see indexed.py); names it lacks raise Unsupported."""
    from derivcheck.engine import indexed

    return SimpleNamespace(
        functions=tier_functions(indexed),
        matmul=indexed.matmul,
        compare=indexed.compare,
        transpose=indexed.transpose,
        slice=indexed.slice_,
        stack=_stack(indexed.stack),
        wrap=indexed.asarray,
        exact=True,
        arrays=(np.ndarray, indexed.TArray),
    )


def _numeric():
    return SimpleNamespace(
        functions={k: v[1] for k, v in FUNCTIONS.items()},
        matmul=np.matmul,
        compare=lambda op, a, b: _NP_RELATIONS[op](a, b),
        transpose=np.transpose,
        slice=_np_slice,
        stack=_stack(lambda arrays: np.stack([np.asarray(a) for a in arrays])),
        wrap=np.asarray,
        exact=False,
        arrays=(np.ndarray,),
    )


_MAKERS = {"symbolic": _symbolic, "generic": _generic, "numeric": _numeric}
_BACKENDS: dict = {}


def backend_ops(name: str) -> SimpleNamespace:
    """A backend's functions and array operations, made at first use (the symbolic ones import SymPy)."""
    if name not in _BACKENDS:
        _BACKENDS[name] = _MAKERS[name]()
    return _BACKENDS[name]


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<="}


def signature_text(name: str) -> str:
    """``sum(x, axis=None, keepdims=False)``: a function as the formula language spells it."""
    return f"{name}{SIGNATURES[name]}"


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
            elif isinstance(stmt, ast.For) and not last:
                loop = _loop(stmt, names, set(known), fail)
                statements.append((None, loop))
                names |= loop.assigned
            elif isinstance(stmt, ast.Expr) and last:
                _check(stmt.value, names, fail)
                statements.append((None, stmt.value))
                if isinstance(stmt.value, ast.Tuple):
                    outputs = _outputs(stmt.value, names - set(known), fail)
            elif last:
                fail(stmt, "the formula's last line must be the output expression")
            else:
                fail(stmt, f"formula lines must be assignments 'name = expression' or a loop 'for t in range(T):', "
                           f"not {type(stmt).__name__}")
        return cls(text, str(path), first_line, statements, outputs)

    @property
    def assigned(self) -> set[str]:
        """Every name the formula assigns, inside a loop too (a loop's stacked names among them)."""
        return {t for t, _ in self.statements if t} | {n for _, node in self.statements if isinstance(node, Loop) for n in node.assigned}

    @property
    def loop(self) -> "Loop | None":
        """The formula's loop over steps (a recurrence), if it has one."""
        return next((node for _, node in self.statements if isinstance(node, Loop)), None)

    @property
    def names(self) -> set[str]:
        """Every name the formula reads (inputs, labels, hyperparameters, dimensions)."""
        nodes = [node.node if isinstance(node, Loop) else node for _, node in self.statements]
        return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}

    def line_of(self, node) -> int:
        return self.first_line + getattr(node, "lineno", 1) - 1

    def evaluate(self, env: dict, backend: str = "symbolic"):
        """Evaluate with values for every known name; errors carry the rule's line."""
        return self.evaluate_scope(env, backend)[0]

    def evaluate_scope(self, env: dict, backend: str = "symbolic"):
        """(output, every name in scope afterwards, the formula's own assignments included)."""
        ops = backend_ops(backend)
        scope = dict(env)
        result = None
        for target, node in self.statements:
            if isinstance(node, Loop):
                self._run(node, scope, ops)
                continue
            result = self._value(node, scope, ops, outputs=target is None)
            if target is not None:
                scope[target] = result
        return result, scope

    def _value(self, node, scope: dict, ops, outputs: bool = False):
        """One expression's value in ``scope`` (the several outputs stacked, for the last line); errors carry its line."""
        try:
            with np.errstate(all="ignore"):
                result = evaluate_node(node, scope, ops)
                return _outputs_value(node, result, self.outputs, ops) if outputs and self.outputs else result
        except _NodeError as exc:
            raise RuleError(self.path, self.line_of(exc.node), exc.message) from None

    def _run(self, loop: "Loop", scope: dict, ops) -> None:
        """Run a loop's body once per step, in ``scope``; then each stacked name is its steps' values,
        stacked along the step's axis. The shape-generic tier cannot unroll it (its sizes are symbols)."""
        def at(node):
            return self._value(node, scope, ops)

        count = at(loop.count)
        try:
            n = int(count)
        except TypeError:
            raise Unsupported(f"a loop over the {count} steps (a recurrence), which the element-by-element "
                                      f"tier unrolls at each trial's sizes") from None
        if n < 1:
            raise RuleError(self.path, self.line_of(loop.node), f"the loop runs {n} steps: it needs at least one")
        steps: dict = {s.name: {} for s, _ in loop.body if isinstance(s, Stacked)}
        for t in (reversed(range(n)) if loop.reverse else range(n)):
            scope[loop.var] = Step(t, n)
            for target, node in loop.body:
                value = at(node)
                if isinstance(target, Stacked):
                    steps[target.name][t] = _array(value, ops)
                else:
                    scope[target] = value
        del scope[loop.var]
        for target, _ in loop.body:
            if isinstance(target, Stacked):
                values = [steps[target.name][t] for t in range(n)]
                if target.axis > values[0].ndim:
                    raise RuleError(self.path, self.line_of(target.node), f"'{ast.unparse(target.node)}': the step's axis "
                                    f"{target.axis} is past the {values[0].ndim} axes of each step's value, plus one")
                scope[target.name] = ops.wrap(np.stack(values, axis=target.axis))


@dataclass
class Step:
    """The loop's step while its body runs: ``t`` of ``count``."""

    t: int
    count: int


@dataclass
class Stacked:
    """A loop body's ``hs[:, t, :] = h``: ``hs`` is every step's ``h``, stacked along ``axis``."""

    name: str
    axis: int
    node: ast.AST


@dataclass
class Loop:
    """``for t in range(T):`` (or ``reversed(range(T))``) and its body of assignments: a recurrence."""

    var: str
    count: ast.AST  # range's argument
    reverse: bool
    body: list  # [(name or Stacked, expression node)]
    node: ast.For

    @property
    def assigned(self) -> set[str]:
        return {t.name if isinstance(t, Stacked) else t for t, _ in self.body}


def _loop(stmt: ast.For, names: set[str], inputs: set[str], fail) -> Loop:
    """A formula's loop over steps, checked: ``for t in range(T):`` with assignments in its body, to a
    name (the state carried to the next step) or to a step of a stacked name (``hs[:, t, :] = h``)."""
    usage = "a loop is 'for t in range(T):' or 'for t in reversed(range(T)):', over a size"
    if not isinstance(stmt.target, ast.Name) or stmt.orelse:
        fail(stmt, usage)
    var = stmt.target.id
    if var in names:
        fail(stmt, f"the step '{var}' is already a name of the formula: choose another")
    it, reverse = stmt.iter, False
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "reversed" and len(it.args) == 1 and not it.keywords:
        it, reverse = it.args[0], True
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range" and len(it.args) == 1 and not it.keywords):
        fail(stmt, usage)
    count = it.args[0]
    _check(count, names, fail)
    inner, body, stacked = set(names), [], set()
    for sub in stmt.body:
        if isinstance(sub, ast.For):
            fail(sub, "loops cannot nest: a formula has one loop over steps")
        if not isinstance(sub, ast.Assign) or len(sub.targets) != 1:
            fail(sub, "a loop's body is assignments: 'h = tanh(...)', or 'hs[:, t, :] = h' to stack a value over the steps")
        _check(sub.value, inner, fail, frozenset({var}))
        target = sub.targets[0]
        if isinstance(target, ast.Name):
            if target.id in stacked:
                fail(sub, f"'{target.id}' is stacked over the steps here: it cannot also be assigned")
            body.append((target.id, sub.value))
            inner.add(target.id)
            continue
        parts = (target.slice.elts if isinstance(target.slice, ast.Tuple) else [target.slice]) if isinstance(target, ast.Subscript) else []
        at = [i for i, p in enumerate(parts) if isinstance(p, ast.Name) and p.id == var]
        plain = all(isinstance(p, ast.Slice) and p.lower is None and p.upper is None and p.step is None
                    for i, p in enumerate(parts) if i not in at)
        if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) and len(at) == 1 and plain):
            fail(sub, f"a loop assigns a name, or one step of a stacked name with '{var}' and ':' only, as in 'hs[:, {var}, :] = h'")
        name = target.value.id
        if name in inner or name in inputs or name in stacked:
            fail(sub, f"'{name}' is already a name: a stacked name is new, and stacked once")
        stacked.add(name)
        body.append((Stacked(name, at[0], target), sub.value))
    return Loop(var, count, reverse, body, stmt)


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


def _check(node, names: set[str], fail, steps: frozenset = frozenset()) -> None:
    """Refuse anything outside the whitelist, unknown functions and undefined names. ``steps``: the
    name of the loop's step inside a loop's body, which can only index an array (``xs[:, t, :]``)."""

    def check(sub):
        _check(sub, names, fail, steps)

    if isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, bool)) and node.value is not None:
            fail(node, f"constant {node.value!r} is not a number")
        if isinstance(node.value, float) and not math.isfinite(node.value):
            fail(node, f"a constant beyond float64's range (it reads as {node.value!r})")
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS and node.id not in names:  # an input or label may share a function's name (DeZero's mean)
            fail(node, f"'{node.id}' is a function: call it, as in '{node.id}(x)'")
        if node.id in steps:
            fail(node, f"the step '{node.id}' can only index an array, as in xs[:, {node.id}, :]")
        if node.id not in names:
            fail(node, f"undefined name '{node.id}' (defined here: {', '.join(sorted(names)) or 'none'})")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS and not isinstance(node.op, ast.MatMult):
            fail(node, f"operator {type(node.op).__name__} is not allowed (use + - * / ** @)")
        if isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) and node.right.value == 0:
            fail(node, "division by the constant 0")
        check(node.left)
        check(node.right)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            fail(node, f"unary operator {type(node.op).__name__} is not allowed")
        check(node.operand)
    elif isinstance(node, ast.Compare):
        if len(node.ops) != 1 or type(node.ops[0]) not in _COMPARE:
            fail(node, "comparisons must be a single one of > >= < <=")
        check(node.left)
        check(node.comparators[0])
    elif isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            check(elt)
    elif isinstance(node, ast.Subscript):
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for part in parts:
            if isinstance(part, ast.Name) and part.id in steps:
                continue  # xs[:, t, :]: the step's slice of a sequence
            if not isinstance(part, ast.Slice):
                fail(node, f"'{ast.unparse(node)}': only slices 'start:stop' can index an array, as in A[:, H:2*H]")
            if part.step is not None:
                fail(node, f"'{ast.unparse(node)}': a slice cannot have a step")
            for bound in (part.lower, part.upper):
                if bound is not None:
                    check(bound)
        check(node.value)
    elif isinstance(node, ast.Attribute):
        if node.attr != "T":
            fail(node, f"attribute '.{node.attr}' is not allowed (only '.T')")
        check(node.value)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            fail(node, "only the formula functions can be called, by name")
        name = node.func.id
        if name not in FUNCTIONS:
            fail(node, f"unknown function '{name}' (known: {', '.join(sorted(FUNCTIONS))})")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            fail(node, f"{name}(): * and ** arguments are not allowed")
        try:
            SIGNATURES[name].bind(*node.args, **{k.arg: k.value for k in node.keywords})
        except TypeError as exc:
            fail(node, f"{signature_text(name)}: {exc}")
        for arg in node.args + [k.value for k in node.keywords]:
            check(arg)
    else:
        fail(node, f"{type(node).__name__} is not allowed in a formula")


def evaluate_node(node, scope, ops):
    """The value of one parsed formula expression in backend ``ops`` (a :func:`backend_ops`), its names read from ``scope``."""
    try:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return scope[node.id]
        if isinstance(node, (ast.Tuple, ast.List)):
            return [evaluate_node(e, scope, ops) for e in node.elts]
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](evaluate_node(node.operand, scope, ops))
        if isinstance(node, ast.BinOp):
            left, right = evaluate_node(node.left, scope, ops), evaluate_node(node.right, scope, ops)
            if isinstance(node.op, ast.MatMult):
                return ops.matmul(_array(left, ops), _array(right, ops))
            if not isinstance(left, ops.arrays) and not isinstance(right, ops.arrays):
                if isinstance(node.op, ast.Pow):
                    _check_power(node, left, right)
                if isinstance(node.op, ast.Div) and isinstance(left, int) and isinstance(right, int):
                    return _exact_ratio(left, right) if ops.exact else left / right
                return _BINOPS[type(node.op)](left, right)  # plain numbers: sizes, constants
            return _BINOPS[type(node.op)](_array(left, ops), _array(right, ops))
        if isinstance(node, ast.Compare):
            return ops.compare(_COMPARE[type(node.ops[0])], evaluate_node(node.left, scope, ops), evaluate_node(node.comparators[0], scope, ops))
        if isinstance(node, ast.Attribute):
            return ops.transpose(evaluate_node(node.value, scope, ops))
        if isinstance(node, ast.Subscript):
            value = _array(evaluate_node(node.value, scope, ops), ops)
            parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            steps = {i: scope[p.id] for i, p in enumerate(parts) if isinstance(p, ast.Name)}  # xs[:, t, :] in a loop
            for axis, step in steps.items():
                if axis >= value.ndim or value.shape[axis] != step.count:
                    size = value.shape[axis] if axis < value.ndim else "no"
                    raise _NodeError(node, f"'{ast.unparse(node)}': axis {axis} has {size} elements, the loop runs {step.count} steps")
            bounds = [(s.t, s.t + 1) if i in steps else tuple(None if b is None else evaluate_node(b, scope, ops) for b in (p.lower, p.upper))
                      for i, p in enumerate(parts) for s in [steps.get(i)]]
            sliced = ops.slice(value, _slice_bounds(value.shape, bounds))
            return ops.wrap(np.squeeze(sliced, axis=tuple(steps))) if steps else sliced
        if isinstance(node, ast.Call):
            fn = ops.functions[node.func.id]
            args = [evaluate_node(a, scope, ops) for a in node.args]
            kwargs = {k.arg: evaluate_node(k.value, scope, ops) for k in node.keywords}
            return fn(*args, **kwargs)
    except _NodeError:
        raise
    except (ValueError, TypeError, IndexError, ArithmeticError) as exc:  # numpy AxisError is a ValueError
        raise _NodeError(node, f"cannot evaluate '{ast.unparse(node)}': {exc}") from None
    raise _NodeError(node, f"{type(node).__name__} is not allowed in a formula")


def _exact_ratio(left: int, right: int):
    import sympy

    return sympy.Rational(left, right)


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
