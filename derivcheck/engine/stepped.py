"""Recurrences without unrolling: a loop rule's cell derived shape-generically, run over the steps.

A loop rule (book 2's TimeLSTM) writes one step as the loop's body. Unrolled, the
element-by-element tier derives every step's expressions at every size: ~20 s for
an LSTM at T=3, and T=20 is out of reach. Here the body is split into **cells**,
one per value a step hands on (each carried state, each stacked value): a cell is
a formula of its own over the step's slice of the sequence (``xs_step``), the
previous step's states (``h_prev``) and the parameters, derived once by the
shape-generic tier (:mod:`derivcheck.engine.generic`) and proven against the concrete
tier like any rule. The loop then runs numerically: forward step by step, and
backward in reverse, each cell's VJP taking the gradient that reaches its output
(from the stacked output's cotangent and from the next step) and handing its
share to the previous step's states and to the parameters, summed over steps.

Rounding scales follow :mod:`derivcheck.engine.rounding` through the steps: a cell's
states and its carried gradient are *inexact* inputs (their running error bounds
enter the cell's bound, ``M(h[i]) = m_h[i]``), so a state's bound after step t
counts the rounding of every earlier step, as the unrolled expression's bound
does; a sum over steps (or over cells) of a gradient is charged as
``magnitude`` charges an Add of that many terms. The reuse allowance (a backward
may reuse forward values, see :mod:`derivcheck.engine.reference`) is counted at every
cell's output and carried with the bound: a little looser than the unrolled
tier's, which counts it at the final outputs only.

What can be run this way: a formula of initial states (``h = zeros([N, H])``,
``h = h0``), loops whose bodies are assignments, and a last line that is a
stacked or carried name, or ``concatenate`` of such names. Anything else raises
:class:`~derivcheck.errors.Unsupported` and the rule is unrolled as before.
The whole composition is proven against the unrolled tier at one small size
with two steps (``reference.stepped_for``).
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derivcheck.engine.formula import Loop, Stacked
from derivcheck.engine.program import DOUT, MEMO, WEIGHT, bound_name
from derivcheck.engine.rules import dim_names, parse_rule
from derivcheck.errors import RuleError, Unsupported

STEP, PREV = "step", "prev"  # a cell reads xs[:, t, :] as xs_step and the previous step's h as h_prev


@dataclass
class Cell:
    """One value a step computes (``out``: a carried state or a stacked value), as a rule of its own."""

    out: str
    last: int  # the body line that last assigns it before the value is taken
    rule: object  # the cell's Rule
    reads: dict  # cell input -> ("step", sequence input, axis) | ("prev", state) | ("name", a formula name)
    inexact: tuple  # the cell inputs computed with rounding (states, names set by an earlier loop)
    names: dict  # cell input -> its name in the cell's rule (canonical: see _canonical)
    derivation: object = None  # its generic derivation's program.Evaluator, set by reference.stepped_for

    @property
    def rule_inexact(self) -> tuple:
        """:attr:`inexact` as the cell's rule names them."""
        return tuple(self.names[n] for n in self.inexact)


@dataclass
class LoopPlan:
    count: str  # the dimension the loop runs over
    reverse: bool
    carried: list  # states: names assigned in the body and read before that in a step
    cells: list  # [Cell]: one per carried state and per stacked value
    stacked: dict  # stacked name -> (axis, index of its cell)


@dataclass
class Init:
    name: str
    shape: tuple | None  # zeros(shape): its shape entries
    source: str | None  # or the name it copies (an input, a label, or a name set before)


@dataclass
class Program:
    steps: list  # [Init | LoopPlan]
    output: list  # the names the last line reads
    axis: int | None  # concatenate's axis, or None for one name
    cells: list = field(default_factory=list)


def _shape_entries(node, dims) -> tuple:
    """``zeros([N, H])``'s shape, as a rule's shape entries."""
    if not isinstance(node, (ast.List, ast.Tuple)):
        raise Unsupported("zeros() with a shape that is not a list")
    out = []
    for e in node.elts:
        if isinstance(e, ast.Name) and e.id in dims:
            out.append(e.id)
        elif isinstance(e, ast.Constant) and isinstance(e.value, int) and not isinstance(e.value, bool):
            out.append(e.value)
        else:
            raise Unsupported(f"a state of shape {ast.unparse(node)}: sizes other than dimension names and numbers")
    return tuple(out)


def _toml_shape(shape: tuple) -> str:
    return "[" + ", ".join(str(s) if isinstance(s, int) else f'"{s}"' for s in shape) + "]"


def plan(rule) -> Program:
    """The rule's formula as initial states, loops of cells and a last line; Unsupported if it is not that."""
    if rule.outputs:
        raise Unsupported("a recurrence with several outputs")
    statements = rule.formula.statements
    shapes = {n: i.shape for n, i in rule.inputs.items()}
    for n, lab in rule.labels.items():
        if lab.kind in ("real", "mask"):
            shapes[n] = lab.shape
    taken = set(rule.formula.names) | rule.formula.assigned | set(rule.inputs) | set(rule.labels)
    steps, cells = [], []
    for target, node in statements[:-1]:
        if isinstance(node, Loop):
            steps.append(_loop_plan(rule, node, shapes, taken))
            cells.extend(steps[-1].cells)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zeros" and len(node.args) == 1 and not node.keywords:
            shapes[target] = _shape_entries(node.args[0], rule.dims)
            steps.append(Init(target, shapes[target], None))
        elif isinstance(node, ast.Name) and shapes.get(node.id) is not None:
            shapes[target] = shapes[node.id]
            steps.append(Init(target, None, node.id))
        else:
            raise Unsupported(f"'{target} = {ast.unparse(node)}' outside the loop: a state starts from zeros([...]) or a name")
    last = statements[-1][1]
    if isinstance(last, ast.Name) and last.id in shapes:
        return Program(steps, [last.id], None, cells)
    if (isinstance(last, ast.Call) and isinstance(last.func, ast.Name) and last.func.id == "concatenate" and len(last.args) == 1
            and isinstance(last.args[0], ast.List) and all(isinstance(e, ast.Name) and e.id in shapes for e in last.args[0].elts)
            and [k.arg for k in last.keywords] == ["axis"] and isinstance(last.keywords[0].value, ast.Constant)
            and isinstance(last.keywords[0].value.value, int)):
        return Program(steps, [e.id for e in last.args[0].elts], last.keywords[0].value.value, cells)
    raise Unsupported(f"a last line '{ast.unparse(last)}' other than a stacked name or concatenate([...], axis=k) of them")


class _Rename(ast.NodeTransformer):
    """A body expression as its cell reads it: steps of sequences and states not yet assigned this step renamed."""

    def __init__(self, var, prev: dict, fresh: set, step_names: dict, inputs: dict, known: set, taken: set):
        self.var, self.prev, self.fresh, self.step_names, self.inputs = var, prev, fresh, step_names, inputs
        self.known, self.taken = known, taken
        self.reads: dict = {}

    def visit_Subscript(self, node):
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        at = [i for i, p in enumerate(parts) if isinstance(p, ast.Name) and p.id == self.var]
        if not at:
            return self.generic_visit(node)
        plain = all(isinstance(p, ast.Slice) and p.lower is None and p.upper is None and p.step is None
                    for i, p in enumerate(parts) if i not in at)
        if not (isinstance(node.value, ast.Name) and node.value.id in self.inputs and len(at) == 1 and plain):
            raise Unsupported(f"'{ast.unparse(node)}': a step read other than an input's slice as in xs[:, t, :]")
        seq, axis = node.value.id, at[0]
        if (seq, axis) not in self.step_names:
            self.step_names[seq, axis] = _unique(f"{seq}_{STEP}", self.taken)
        name = self.step_names[seq, axis]
        self.reads[name] = ("step", seq, axis)
        return ast.copy_location(ast.Name(name, ast.Load()), node)

    def visit_Name(self, node):
        if node.id == self.var:
            raise Unsupported(f"the step '{self.var}' outside an index")
        if node.id in self.prev and node.id not in self.fresh:
            self.reads[self.prev[node.id]] = ("prev", node.id)
            return ast.copy_location(ast.Name(self.prev[node.id], ast.Load()), node)
        if node.id not in self.fresh and node.id in self.known:
            self.reads.setdefault(node.id, ("name", node.id))
        return node


def _unique(base: str, taken: set) -> str:
    name, k = base, 2
    while name in taken:
        name, k = f"{base}{k}", k + 1
    taken.add(name)
    return name


def _loop_plan(rule, loop: Loop, shapes: dict, taken: set) -> LoopPlan:
    if not (isinstance(loop.count, ast.Name) and loop.count.id in rule.dims):
        raise Unsupported(f"a loop over {ast.unparse(loop.count)} steps, not a dimension")
    count = loop.count.id
    body = [(t, v) for t, v in loop.body]
    # states: assigned in the body and read before their assignment within a step
    carried, seen = [], set()
    for target, node in body:
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id not in seen and n.id not in carried and any(t == n.id for t, _ in body):
                carried.append(n.id)
        if not isinstance(target, Stacked):
            seen.add(target)
    for s in carried:
        if s not in shapes:
            raise Unsupported(f"the state '{s}' has no value before the loop")
    prev = {s: _unique(f"{s}_{PREV}", taken) for s in carried}
    step_names: dict = {}
    # each statement renamed as the cell reads it, with the names assigned before it in the step
    renamed, fresh = [], set()
    for target, node in body:
        r = _Rename(loop.var, prev, set(fresh), step_names, rule.inputs, set(shapes), taken)
        renamed.append((target, r.visit(ast.parse(ast.unparse(node), mode="eval").body), r.reads))
        if not isinstance(target, Stacked):
            fresh.add(target)
    for (seq, axis), name in step_names.items():
        spec = rule.inputs[seq].shape
        if len(spec) <= axis or spec[axis] != count:
            raise Unsupported(f"'{seq}' stepped along axis {axis}, which is not its {count} axis")
        shapes[name] = spec[:axis] + spec[axis + 1:]
    for s in carried:
        shapes[prev[s]] = shapes[s]
    cells, stacked = [], {}
    for k, (target, _) in enumerate(body):
        if isinstance(target, Stacked):  # the parser has checked its target: hs[:, t, :]
            expr = body[k][1]
            if not (isinstance(expr, ast.Name) and expr.id in fresh):
                raise Unsupported(f"a stacked value '{ast.unparse(expr)}' that is not a name the body assigns")
            stacked[target.name] = (target.axis, _cell(rule, renamed[:k], expr.id, shapes, cells))
    for s in carried:
        _cell(rule, renamed, s, shapes, cells)
    for name in stacked:
        shapes[name] = None  # a stacked name: read by the last line only
    return LoopPlan(count, loop.reverse, carried, cells, stacked)


def _cell(rule, statements: list, out: str, shapes: dict, cells: list) -> int:
    """The cell computing ``out`` from ``statements`` (renamed, the body's lines before the value is
    taken): only the lines it needs. Returns its index in ``cells``, where one computing the same value
    (a stacked h and the carried h) is reused."""
    last = max((k for k, (t, _, _) in enumerate(statements) if t == out), default=None)
    if last is None:
        raise Unsupported(f"'{out}' is not assigned in the loop's body")
    for k, c in enumerate(cells):
        if (c.out, c.last) == (out, last):
            return k
    needed, keep, reads = {out}, [], {}
    for t, node, r in reversed(statements[: last + 1]):
        if isinstance(t, Stacked) or t not in needed:
            continue
        needed.discard(t)
        keep.append((t, node))
        needed |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        reads.update(r)
    keep.reverse()
    inputs = {n: how for n, how in reads.items() if n in needed and n not in rule.dims}
    for n, how in inputs.items():
        if how[0] == "name" and n not in rule.inputs and n not in shapes:
            raise Unsupported(f"the loop's body reads '{n}', which is neither an input nor a state")
        if how[0] == "name" and n in rule.hyper:
            raise Unsupported(f"the loop's body reads the hyperparameter '{n}'")
    names = _canonical(keep, inputs, set(rule.dims) | set(rule.formula.names))
    renamed = [(names[t], _Canonical(names).visit(ast.parse(ast.unparse(node), mode="eval").body)) for t, node in keep]
    formula = "\n".join([f"{t} = {ast.unparse(node)}" for t, node in renamed] + [names[out]])
    used_dims = {d for n in inputs for e in (shapes[n] if n in shapes and shapes[n] is not None else rule.inputs[n].shape)
                 for d in dim_names(e)}
    used_dims |= needed & set(rule.dims)
    text = ['summary = "one step of a recurrence: the value it hands on"', f"formula = '''\n{formula}\n'''"]
    for n in sorted(inputs, key=names.get):
        text += [f"[inputs.{names[n]}]", f"shape = {_toml_shape(shapes[n] if n in shapes and shapes[n] is not None else rule.inputs[n].shape)}"]
    for d in sorted(used_dims):
        r = rule.dims[d]
        text += [f"[dims.{d}]", f"min = {r.min}", f"max = {r.max}"]
    # named by its text, so that steps alike but for their names (time_lstm's, time_bi_lstm's two, lstm_sequence's)
    # share one derivation
    name = f"cell_{hashlib.sha256(chr(10).join(text).encode()).hexdigest()[:16]}"
    try:
        cell_rule = parse_rule(f'name = "{name}"\n' + "\n".join(text) + "\n", Path(rule.path).with_name(f"{name}.toml"))
    except RuleError as exc:  # a body this module does not follow (it reads a class label, say): unroll it instead
        raise Unsupported(f"its step '{out}' is not a formula of its own ({exc.message})") from None
    inexact = tuple(n for n, how in inputs.items()
                    if how[0] == "prev" or (how[0] == "name" and how[1] not in rule.inputs and how[1] not in rule.labels))
    cells.append(Cell(out, last, cell_rule, inputs, inexact, {n: names[n] for n in inputs}))
    return len(cells) - 1


def _canonical(keep: list, inputs: dict, taken: set) -> dict:
    """A cell's names -> the names its rule uses: inputs ``in1, in2, ...`` and the values it assigns
    ``val1, val2, ...``, numbered as they first appear, so that two steps that differ only in their
    names (Wx1 and Wx2, h and state) are one rule. Names the formula reads otherwise (sizes, functions) stay."""
    order = []
    for t, node in keep:
        order += [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in inputs and n.id not in order]
        order.append(t)
    names, counts = {}, {"in": 0, "val": 0}
    for n in order:
        if n in names:
            continue
        kind = "in" if n in inputs else "val"
        while True:
            counts[kind] += 1
            name = f"{kind}{counts[kind]}"
            if name not in taken:
                break
        names[n] = name
    return names


class _Canonical(ast.NodeTransformer):
    def __init__(self, names: dict):
        self.names = names

    def visit_Name(self, node):
        return ast.copy_location(ast.Name(self.names.get(node.id, node.id), node.ctx), node)


# ---------------------------------------------------------------------------
# Running a plan


class Backend:
    def __init__(self, name):
        self.name = name
        if name == "mpmath":
            import mpmath

            self.zero = mpmath.mpf(0)
        else:
            self.zero = 0.0

    def zeros(self, shape):
        return np.full(shape, self.zero, dtype=object) if self.name == "mpmath" else np.zeros(shape)


class GradientSum:
    """A gradient summed from contributions: its value and its bound, ``Σ M_k + (K - 1) Σ |g_k|``
    per element over the K contributions that reach it (an Add of K terms, as ``magnitude`` charges)."""

    def __init__(self, shape, be: Backend, bounds: bool):
        self.value = be.zeros(shape)
        self.bounds = bounds
        if bounds:
            self.M, self.abs, self.count = np.zeros(shape), np.zeros(shape), np.zeros(shape)

    def add(self, value, M=None, where=()):
        self.value[where] = self.value[where] + value
        if self.bounds:
            self.M[where] += M
            self.abs[where] += np.abs(value)
            self.count[where] += 1

    def bound(self):
        return self.M + np.maximum(self.count - 1, 0) * self.abs

    def absorb(self, other: "GradientSum", where=(), part=()):
        """Add ``other`` (its ``part``) as one contribution, at ``where``: its value, and its bound as that one's."""
        self.add(other.value[part], other.bound()[part] if self.bounds else None, where)


def _carries(step: LoopPlan, k: int) -> bool:
    """Whether cell ``k`` gives the state its name: the last of the loop's cells computing that name."""
    out = step.cells[k].out
    return out in step.carried and max(j for j, c in enumerate(step.cells) if c.out == out) == k


def _index(axis: int, t) -> tuple:
    return (slice(None),) * axis + (t,)


def run(prog: Program, values: dict, dims: dict, cot=None, backend: str = "numpy", bounds: bool = False):
    """(output, output bound, {input: gradient}, {input: gradient bound}) at ``values`` (the formula's).

    Without ``cot`` the gradients are {}; without ``bounds`` the bounds are None.
    """
    be = Backend(backend)
    bounds = bounds and backend == "numpy"
    scope = dict(values)
    M = {n: np.zeros(np.shape(v)) for n, v in values.items()} if bounds else {}
    tapes = []  # per loop: [(t, {cell input: value}, {cell input: bound}, [cell outputs])]
    for step in prog.steps:
        if isinstance(step, Init):
            if step.source is not None:
                scope[step.name] = scope[step.source]
                if bounds:
                    M[step.name] = M[step.source]
            else:
                shape = tuple(dims[s] if isinstance(s, str) else s for s in step.shape)
                scope[step.name] = be.zeros(shape)
                if bounds:
                    M[step.name] = np.zeros(shape)
            continue
        tape = []
        n = dims[step.count]
        stacked = {s: [None] * n for s in step.stacked}
        stacked_M = {s: [None] * n for s in step.stacked}
        for t in (reversed(range(n)) if step.reverse else range(n)):
            env, env_M = {}, {}
            for c in step.cells:
                for name, how in c.reads.items():
                    if how[0] == "step":
                        env[name] = scope[how[1]][_index(how[2], t)]
                        env_M[name] = M[how[1]][_index(how[2], t)] if bounds else None
                    else:
                        env[name] = scope[how[1]]
                        env_M[name] = M.get(how[1]) if bounds else None
            outs, outs_M = [], []
            for c in step.cells:
                e = {**dims, **{c.names[k]: env[k] for k in c.reads}, MEMO: {}}
                outs.append(c.derivation.forward(e, backend))
                if bounds:
                    e.update({bound_name(c.names[k]): env_M[k] for k in c.inexact})
                    outs_M.append(c.derivation.forward_bound(e))
            tape.append((t, env, env_M, outs))
            for s, (axis, k) in step.stacked.items():
                stacked[s][t] = outs[k]
                stacked_M[s][t] = outs_M[k] if bounds else None
            for k, c in enumerate(step.cells):
                if c.out in step.carried:
                    scope[c.out] = outs[k]
                    if bounds:
                        M[c.out] = outs_M[k]
        for s, (axis, _) in step.stacked.items():
            scope[s] = np.stack(stacked[s], axis=axis)
            if bounds:
                M[s] = np.stack(stacked_M[s], axis=axis)
        tapes.append(tape)
    parts = [scope[n] for n in prog.output]
    out = parts[0] if prog.axis is None else np.concatenate(parts, axis=prog.axis)
    out_M = (M[prog.output[0]] if prog.axis is None else np.concatenate([M[n] for n in prog.output], axis=prog.axis)) if bounds else None
    if cot is None:
        return out, out_M, {}, None
    return out, out_M, *_backward(prog, values, dims, scope, M, tapes, cot, be, bounds)


def _backward(prog, values, dims, scope, M, tapes, cot, be, bounds):
    grads: dict = {}  # name -> GradientSum of the gradient reaching that name's current value

    def sum_for(name):
        if name not in grads:
            grads[name] = GradientSum(np.shape(scope[name]), be, bounds)
        return grads[name]

    if prog.axis is None:
        sum_for(prog.output[0]).add(cot, np.zeros(np.shape(cot)) if bounds else None)
    else:
        at = 0
        for n in prog.output:
            size = np.shape(scope[n])[prog.axis]
            piece = cot[_index(prog.axis, slice(at, at + size))]
            sum_for(n).add(piece, np.zeros(np.shape(piece)) if bounds else None)
            at += size
    loops = iter(reversed(tapes))
    for step in reversed(prog.steps):
        if isinstance(step, Init):
            g = grads.pop(step.name, None)
            if g is not None and step.source is not None:
                sum_for(step.source).absorb(g)
            continue
        tape = next(loops)
        # the gradient of each cell's output at the step being undone: stacked outputs' slices, plus the states'
        # gradient from the step after (at the last step, from whatever read the state after the loop)
        stacked_g = {s: grads.pop(s, None) for s in step.stacked}
        state_g = {s: grads.pop(s, None) for s in step.carried}
        for t, env, env_M, outs in reversed(tape):
            into: dict = {}  # cell input -> GradientSum for this step
            for k, c in enumerate(step.cells):
                # the gradient reaching this cell's output: as the state handed to the next step (the last
                # cell computing that state), and as each stacked value it gives
                dout = GradientSum(np.shape(outs[k]), be, bounds)
                if c.out in step.carried and state_g.get(c.out) is not None and _carries(step, k):
                    dout.absorb(state_g[c.out])
                for s, (axis, kk) in step.stacked.items():
                    if kk == k and stacked_g[s] is not None:
                        dout.absorb(stacked_g[s], part=_index(axis, t))
                if bounds and not dout.count.any():
                    continue
                e = {**dims, **{c.names[n]: env[n] for n in c.reads}, DOUT: dout.value, MEMO: {}}
                vj = c.derivation.vjp(e, be.name)
                if bounds:
                    e.update({bound_name(c.names[n]): env_M[n] for n in c.inexact})
                    e[bound_name(DOUT)] = dout.bound()
                    e[WEIGHT] = np.abs(dout.value) * np.abs(outs[k])
                    vb, vs = c.derivation.vjp_bounds(e), c.derivation.vjp_support(e)
                for n in c.reads:
                    if n not in into:
                        into[n] = GradientSum(np.shape(env[n]), be, bounds)
                    into[n].add(vj[c.names[n]], vb[c.names[n]] + vs[c.names[n]] if bounds else None)
            new_state = {}
            for n, s in into.items():
                how = next(c.reads[n] for c in step.cells if n in c.reads)
                if how[0] == "prev":
                    new_state[how[1]] = s
                else:  # a step's slice of a sequence, or a name read whole (a parameter)
                    sum_for(how[1]).absorb(s, where=_index(how[2], t) if how[0] == "step" else ())
            state_g = {s: new_state.get(s) for s in step.carried}
        for s, g in state_g.items():  # the gradient of each state's value before the loop
            if g is not None:
                sum_for(s).absorb(g)
    grads_out = {n: grads[n].value if n in grads else be.zeros(np.shape(v)) for n, v in values.items()}
    bounds_out = {n: grads[n].bound() if n in grads else np.zeros(np.shape(v)) for n, v in values.items()} if bounds else None
    return grads_out, bounds_out
