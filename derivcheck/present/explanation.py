"""Teaching: show a rule's derivation, node by node, exactly.

``explain(rule)`` gives
1. the forward formula as a computational graph, node by node. Each node has
   its local derivative and the backward signal flowing through it. Element-wise
   chains are differentiated symbolically (the seed's sigmoid stages ``/``,
   ``+``, ``exp``, ``x``); array operations state their standard rule;
2. the Jacobian at a tiny shape;
3. closed forms in array notation (``dx = dout Wᵀ``). These are candidates
   written in the rule file. Each is checked numerically against the exact VJP
   at four shapes (the example sizes and three random ones, random values,
   the comparison's tolerance) and one that fails is not shown: evidence, not
   a symbolic proof. Only the element-wise ``dout · φ(y)`` line is proven
   (SymPy simplifies its difference from the chain rule's result to 0).

Renders as text (Unicode), markdown (with LaTeX maths) or LaTeX. In Jupyter
the object renders itself (``_repr_markdown_``, ``_repr_latex_``).
"""
from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field

import numpy as np
import sympy

from derivcheck.engine.ops import ELEMENTWISE
from derivcheck.errors import DerivcheckError, RuleError

_SUB = str.maketrans("aehijklmnoprstuvx0123456789", "ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ₀₁₂₃₄₅₆₇₈₉")
_PREC = {ast.Add: 1, ast.Sub: 1, ast.Mult: 2, ast.Div: 2, ast.MatMult: 2, ast.Pow: 4}


_SUPER = {"2": "²", "3": "³"}


def _rightmost(node):
    """The operand printed just before a right-hand bracket: y in dout·y(1 - y)."""
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        node = node.right
    return node


class Printer:
    """Formula trees in array notation: ``dout Wᵀ``, ``Σₙ dout``, ``dout·y(1 - y)``."""

    def __init__(self, rule, latex: bool = False):
        self.rule, self.latex = rule, latex
        taken = set(rule.inputs) | set(rule.labels) | rule.formula.assigned
        self.out_name = "L" if rule.output == () else ("y" if "y" not in taken else "out")
        self.out_dims = list(rule.output) if rule.output is not None else None

    def name(self, n: str) -> str:
        n = self.out_name if n == "out" else n
        if self.latex:
            return rf"\mathrm{{{n}}}" if len(n) > 1 else n
        return n

    def axis_label(self, axis) -> str:
        if isinstance(axis, int) and self.out_dims and -len(self.out_dims) <= axis < len(self.out_dims):
            d = self.out_dims[axis]
            if isinstance(d, str):
                return d
        return f"axis {axis}"

    def __call__(self, node, parent: int = 0) -> str:
        text, prec = self._node(node)
        if prec < parent:
            return rf"\left({text}\right)" if self.latex else f"({text})"
        return text

    def _node(self, node):
        L = self.latex
        if isinstance(node, ast.Constant):
            return (str(node.value), 5)
        if isinstance(node, ast.Name):
            return (self.name(node.id), 5)
        if isinstance(node, (ast.List, ast.Tuple)):
            return ("(" + ", ".join(self(e) for e in node.elts) + ")", 5)
        if isinstance(node, ast.Attribute):
            return (self(node.value, 5) + (r"^\top" if L else "ᵀ"), 5)
        if isinstance(node, ast.UnaryOp):
            return ("-" + self(node.operand, 3), 3)
        if isinstance(node, ast.Compare):
            op = {ast.Gt: ">", ast.GtE: r"\geq" if L else "≥", ast.Lt: "<", ast.LtE: r"\leq" if L else "≤"}[type(node.ops[0])]
            return (f"{self(node.left, 2)} {op} {self(node.comparators[0], 2)}", 0)
        if isinstance(node, ast.BinOp):
            p = _PREC[type(node.op)]
            if isinstance(node.op, ast.Div) and L:
                return (rf"\frac{{{self(node.left)}}}{{{self(node.right)}}}", 5)
            # * and @ are associative: a·(b·c) needs no brackets; - and / are not
            left = self(node.left, p)
            right = self(node.right, p if isinstance(node.op, (ast.Mult, ast.MatMult)) else p + 1)
            if isinstance(node.op, ast.Pow):
                power = self(node.right)
                if not L and power in _SUPER:
                    return (f"{self(node.left, 5)}{_SUPER[power]}", 4)
                return (f"{self(node.left, 5)}^{{{power}}}" if L else f"{self(node.left, 5)}^{self(node.right, 5)}", 4)
            if isinstance(node.op, ast.MatMult):
                return (f"{left} {right}", 2)
            if isinstance(node.op, ast.Mult):
                # y(1 - y): a one-letter name juxtaposes a bracket, as the seed writes it
                joined = right.startswith(("(", r"\left(")) and isinstance(_rightmost(node.left), ast.Name) and len(self(_rightmost(node.left))) == 1
                return (left + ("" if joined else (r" \cdot " if L else "·")) + right, 2)
            sym = {ast.Add: "+", ast.Sub: "-", ast.Div: "/"}[type(node.op)]
            return (f"{left} {sym} {right}", p)
        if isinstance(node, ast.Call):
            fn = node.func.id
            kw = {k.arg: k.value for k in node.keywords}
            args = node.args
            if fn == "sum" and "axis" in kw and isinstance(kw["axis"], (ast.Constant, ast.UnaryOp)):
                axis = ast.literal_eval(kw["axis"])
                label = self.axis_label(axis)
                if L:
                    return (rf"\sum_{{{label}}} {self(args[0], 3)}", 3)
                sub = label.lower().translate(_SUB) if len(label) == 1 and label.lower().translate(_SUB) != label.lower() else f"_{label}"
                return (f"Σ{sub} {self(args[0], 3)}", 3)
            if fn == "where" and len(args) == 3 and isinstance(args[2], ast.Constant) and args[2].value == 0:
                cond = self(args[0])
                return ((rf"{self(args[1], 2)} \cdot \mathbb{{1}}[{cond}]" if L else f"{self(args[1], 2)}·[{cond}]"), 2)
            inner = ", ".join([self(a) for a in args] + [f"{k}={self(v)}" for k, v in kw.items()])
            name = rf"\operatorname{{{fn}}}" if L else fn
            return (f"{name}({inner})", 5)
        return (ast.unparse(node), 5)


def _grad_name(n: str, latex: bool) -> str:
    return (rf"\frac{{\partial L}}{{\partial {n}}}" if latex else f"d{n}")


# ---------------------------------------------------------------------------
# Checking closed forms


def _sample_env(rule, dims, hyper, rng):
    from derivcheck.engine import reference

    d = reference.at(rule, hyper, dims)
    ref = {n: i.domain.sample(rng, d.shapes[n]) for n, i in rule.inputs.items()}
    for n, lab in rule.labels.items():
        ref[n] = reference.draw_label(lab, d.label_shapes[n], dims, rng)[0]
    cot = rng.normal(size=d.output_shape) if d.output_shape else np.asarray(rng.uniform(1.5, 3.0))
    formula_view = dict(ref)
    for n in rule.labels:
        formula_view[n] = rule.encode_label(n, ref[n], dims)
    env = rule.environment(dims, hyper, formula_view)
    out, scope = rule.formula.evaluate_scope(env, backend="numeric")
    upstream = {f"d{o}": cot[j] for j, o in enumerate(rule.outputs)} or {"dout": cot}  # dh_next, dc_next
    return ref, cot, {**scope, "out": np.asarray(out), **upstream}, d.evaluate(cot, **ref)


def prove(rule, hyper: dict, seed: int = 0, trials: int = 4) -> dict[str, tuple[bool, str]]:
    """input -> (holds, where it failed): each closed form checked numerically against the exact VJP
    at ``trials`` shapes (the example sizes, then random ones); not a symbolic proof."""
    from derivcheck.checks import compare

    results = {n: (True, "") for n in rule.closed_forms}
    for k in range(trials if results else 0):  # nothing to check: no reference to derive at four more shapes
        rng = np.random.default_rng([seed, k])
        dims = rule.example_dims() if k == 0 else {d: int(rng.integers(r.min, r.max + 1)) for d, r in rule.dims.items()}
        ref, cot, env, (_, grads, scales) = _sample_env(rule, dims, hyper, rng)
        for n, f in rule.closed_forms.items():
            if not results[n][0]:
                continue
            try:
                value = np.asarray(f.evaluate(env, backend="numeric"), dtype=np.float64)
            except (RuleError, ValueError, TypeError):
                results[n] = (False, f"cannot be evaluated at {dims}")
                continue
            if not compare(n, grads[n], value, scales[n], np.float64).passed:
                results[n] = (False, f"does not hold at {dims}")
    return results


# ---------------------------------------------------------------------------
# The graph


_ELEMENTWISE = {**{name: op.sym for name, op in ELEMENTWISE.items()}, "sigmoid": lambda a: 1 / (1 + sympy.exp(-a))}
_ARRAY_RULES = {
    "matmul": "da = g bᵀ, db = aᵀ g",
    "sum": "copies g back along the summed axes",
    "mean": "copies g back along the averaged axes, divided by their size",
    "max": "routes g to the maximum of each reduced group",
    "softmax": "da = y·(g - Σ g·y) along the axis",
    "log_softmax": "da = g - softmax(a)·Σ g along the axis",
    "pick": "puts g at the picked positions, 0 elsewhere",
    "repeat": "sums g over the repeated copies",
    "reshape": "reshapes g back to a's shape",
    "transpose": "transposes g with the inverse permutation",
    "expand_dims": "drops the inserted axis of g",
    "slice": "puts g at the sliced positions of a's shape, 0 elsewhere",
    "broadcast_to": "sums g back to a's shape (sum_to)",
    "sum_to": "copies g back to a's shape (broadcast_to)",
    "maximum": "passes g where a is the larger, else 0",
    "minimum": "passes g where a is the smaller, else 0",
    "where": "passes g to the chosen branch",
    "onehot": "none (labels are not differentiated)",
    "windows": "adds each window's g back at the window's place, the padding cut off (col2im)",
    "conv2d": "da = the transposed convolution of g with the filters b (deconv2d), db = Σ over images and positions of g times a's windows",
    "deconv2d": "da = the convolution of g with the filters b (conv2d), db = Σ over images and positions of a times g's windows",
    "zeros": "none (a constant)",
    "concatenate": "splits g along the axis, each array its own piece",
    # arithmetic with a constant array (t * [0.0, 1.0]): element-wise, each gradient summed back over broadcast axes
    "Add": "da = g, db = g",
    "Sub": "da = g, db = -g",
    "Mult": "da = g·b, db = g·a",
    "Div": "da = g / b, db = -g·a / b²",
    "Pow": "da = g·b·a^(b - 1)",
    "UnaryOp": "da = -g",
}


@dataclass
class Node:
    label: str
    text: str  # forward, in the operands' labels
    shape: tuple
    lines: list = field(default_factory=list)  # local derivative and backward signal


RECURRENCE = ("a loop over the T steps (a recurrence): each step runs the loop's body on its slice of the sequence and on "
              "the state the step before left; the backward runs the steps in reverse, and each step's gradient of the "
              "state it took joins the upstream gradient of the step before. The Jacobian below is the loop unrolled.")


def graph(rule, hyper: dict) -> tuple[list[Node], list[str]]:
    """The formula node by node, and the chain rule result for element-wise formulas (none for a loop: see RECURRENCE)."""
    if rule.formula.loop is not None:
        return [], []
    dims = rule.example_dims()
    pr = Printer(rule)
    # numeric shapes of every node, at small distinct sizes
    env = rule.environment(dims, hyper, {n: np.full(rule.shape_of(i.shape, dims), 0.5) for n, i in rule.inputs.items()}
                           | {n: np.full(rule.shape_of(lab.symbolic_shape(), dims), 0.5) for n, lab in rule.labels.items()})
    from derivcheck.engine.formula import backend_ops, evaluate_node

    nodes: list[Node] = []
    defs: dict[str, tuple] = {}  # label -> (op, operand labels, scalar local expr)
    counter = [0]
    scope = dict(env)

    def visit(node, target=None):
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Constant) or not any(isinstance(n, ast.Name) for n in ast.walk(node)):
            return None  # a constant, however written (-1)
        operands = []
        if isinstance(node, ast.BinOp):
            operands = [visit(node.left), visit(node.right)]
        elif isinstance(node, ast.UnaryOp):
            operands = [visit(node.operand)]
        elif isinstance(node, ast.Call):
            operands = [visit(a) for a in node.args] + [visit(k.value) for k in node.keywords]
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            operands = [visit(node.value)]
        elif isinstance(node, (ast.List, ast.Tuple, ast.Compare)):
            return None
        counter[0] += 1
        label = target or f"v{counter[0]}"
        value = np.asarray(evaluate_node(node, scope, backend_ops("numeric")))
        scope[label] = value
        shown = _relabel(node, operands)
        nodes.append(Node(label, pr(shown), value.shape))
        op = _op_name(node)
        # a scalar expression when every operand is element-wise in the inputs
        args = []
        for o, sub in zip(operands, _children(node)):
            if o is None:
                args.append(_const(sub))
            else:
                args.append(sympy.Symbol(o))
        expr = _scalar_op(node, args)
        defs[label] = (op, [o for o in operands if o is not None], expr)
        return label

    for target, node in rule.formula.statements:
        visit(node, target or "out")
    # backward: element-wise locals symbolically, array ops by their rule; each output gets its own upstream gradient
    g = {o: sympy.Symbol(f"d{o}") for o in rule.outputs} or {"out": sympy.Symbol("dout")}
    final = []
    differentiable = set(rule.inputs) | {n.label for n in nodes}
    for n in reversed(nodes):
        op, operands, expr = defs[n.label]
        gn = g.get(n.label, sympy.Symbol(f"d{n.label}"))
        wrt = [o for o in operands if o in differentiable]
        if expr is None:  # an array operation: its standard rule, in the node's own names; the signal goes on by name
            signal, value = f"d{_lbl(n.label, pr)}", _sx(gn, pr)
            n.lines.append(f"rule: {_in_names(_ARRAY_RULES[op], operands, n.label, pr)}"
                           + (f" ({signal} = {value})" if value != signal else ""))
            for o in wrt:
                g[o] = sympy.Symbol(f"d{o}")
            continue
        for o in wrt:
            local = _in_own_terms(sympy.diff(expr, sympy.Symbol(o)), expr, n.label)
            g[o] = g.get(o, 0) + gn * local
            n.lines.append(f"local ∂{_lbl(n.label, pr)}/∂{_lbl(o, pr)} = {_sx(local, pr)},  signal d{_lbl(o, pr)} = {_sx(g[o], pr)}")
    # the chain rule all the way to the inputs (element-wise formulas): in the inputs and the output
    if all(defs[n.label][2] is not None for n in nodes):
        subs = {}
        for n in nodes:  # forward order: each intermediate in terms of the inputs; the output stays a name
            if n.label != "out":
                subs[sympy.Symbol(n.label)] = defs[n.label][2].subs(subs)
        for x in rule.inputs:
            if x in g:
                final.append(f"d{x} = {_sx(g[x].subs(subs), pr)}")
    return nodes, final


def _from_output_line(rule, hyper) -> str:
    """d x = dout · φ(y), proven equal to the chain rule's result for every x."""
    from derivcheck.engine import symarray

    (x,) = rule.inputs
    xs = sympy.Symbol(x, real=True)
    y = symarray.exact(np.asarray(rule.formula.evaluate({x: symarray.asarray(xs), **rule.example_dims()}, backend="symbolic")).item())
    env = rule.environment(rule.example_dims(), hyper, {x: symarray.asarray(xs), "out": symarray.asarray(y)})
    phi = symarray.exact(np.asarray(rule.from_output.evaluate(env, backend="symbolic")).item())
    holds = sympy.simplify(phi - sympy.diff(y, xs)) == 0
    shown = Printer(rule)(ast.BinOp(ast.Name("dout"), ast.Mult(), rule.from_output.statements[-1][1]))
    return f"d{x} = {shown}" + ("    (proven: equal for every x)" if holds else "    (does NOT hold: not a closed form of this rule)")


def _in_names(text: str, operands: list, label: str, pr) -> str:
    """An array rule (``da = g bᵀ, db = aᵀ g``) in the node's names: its operands for a and b, the
    node's signal d<label> for g (``dx = dv1 Wᵀ, dW = xᵀ dv1``), so that a rule's b is never read
    as a bias b, nor its g as an LSTM's gate g. A constant operand keeps its letter."""
    a, b = (list(operands) + [None, None])[:2]
    names = {"g": f"d{_lbl(label, pr)}"}
    for letter, o in (("a", a), ("b", b)):
        if o is not None:
            names[letter], names[f"d{letter}"] = _lbl(o, pr), f"d{_lbl(o, pr)}"
    # not \b: ᵀ is a letter to re, so 'bᵀ' would be one word
    return re.sub(r"(?<![A-Za-z0-9_])(da|db|a|b|g)(?![A-Za-z0-9_])", lambda m: names.get(m.group(1), m.group(1)), text)


def _lbl(label, pr):
    return pr.name(label)


def _sx(expr, pr) -> str:
    s = re.sub(r"\bout\b", pr.out_name, sympy.sstr(expr))
    return s.replace("**2", "²").replace("**", "^").replace("*", "·")


def _const(node):
    from derivcheck.engine import symarray

    try:
        return symarray.exact(ast.literal_eval(node))
    except (ValueError, SyntaxError):
        return None


def _children(node):
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.Call):
        return list(node.args) + [k.value for k in node.keywords]
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return [node.value]
    return []


def _relabel(node, operands):
    """The node with each operand replaced by its label (v1, y, ...)."""
    node = ast.parse(ast.unparse(node), mode="eval").body
    kids = _children(node)
    for kid, label in zip(kids, operands):
        if label is not None and not isinstance(kid, ast.Name):
            new = ast.Name(id=label, ctx=ast.Load())
            for parent in ast.walk(node):
                for fname, value in ast.iter_fields(parent):
                    if value is kid:
                        setattr(parent, fname, new)
                    elif isinstance(value, list):
                        for i, v in enumerate(value):
                            if v is kid:
                                value[i] = new
                            elif isinstance(v, ast.keyword) and v.value is kid:
                                v.value = new
    return node


def _op_name(node) -> str:
    if isinstance(node, ast.Call):
        return node.func.id
    if isinstance(node, ast.BinOp):
        return "matmul" if isinstance(node.op, ast.MatMult) else type(node.op).__name__
    if isinstance(node, ast.Attribute):
        return "transpose"
    if isinstance(node, ast.Subscript):
        return "slice"
    return type(node).__name__


def _scalar_op(node, args):
    """The node as a scalar SymPy expression of its operands, if it is element-wise."""
    if any(a is None for a in args):
        return None
    if isinstance(node, ast.BinOp) and not isinstance(node.op, ast.MatMult):
        a, b = args
        return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b, ast.Div: a / b, ast.Pow: a ** b}[type(node.op)]
    if isinstance(node, ast.UnaryOp):
        return -args[0] if isinstance(node.op, ast.USub) else args[0]
    if isinstance(node, ast.Call) and node.func.id in _ELEMENTWISE and len(args) == 1:
        return _ELEMENTWISE[node.func.id](args[0])
    if isinstance(node, ast.Call) and node.func.id == "maximum" and len(args) == 2:
        return sympy.Max(*args)
    return None


def _in_own_terms(local, expr, label):
    """exp(v1) is v2 itself; -1/v3**2 is -y**2 when y = 1/v3: say it the way the seed does."""
    own = sympy.Symbol(label)
    try:
        shown = local.subs(expr, own)
        if isinstance(expr, sympy.Pow) and expr.exp == -1:
            shown = shown.subs(expr.base, 1 / own)
    except (TypeError, ValueError):
        return local
    return shown if sympy.count_ops(shown) <= sympy.count_ops(local) else local


# ---------------------------------------------------------------------------


@dataclass
class Explanation:
    rule: object
    hyper: dict
    dims: dict
    nodes: list
    chain: list
    derivation: object  # the element-by-element derivation at ``dims``: its Jacobian, printed when a format asks
    closed: list  # [(input, Formula, holds, note)]
    layer: list = field(default_factory=list)  # lines comparing a failing layer with the formula

    @functools.cached_property
    def jacobian_text(self) -> str:
        from derivcheck.present.render import jacobians_text

        return jacobians_text(self.derivation, list(self.rule.inputs), simplify="small")

    @functools.cached_property
    def jacobian_latex(self) -> str:
        from derivcheck.present.render import jacobians_latex

        return jacobians_latex(self.derivation, list(self.rule.inputs), simplify="small")

    def text(self) -> str:
        r, pr = self.rule, Printer(self.rule)
        lines = [f"{r.name}: {r.summary}", "", "forward formula:"]
        lines += [f"  {ln}" for ln in r.formula.text.strip().splitlines()]
        if r.formula.loop is not None:
            lines += ["", f"computational graph: {RECURRENCE}"]
        else:
            lines += ["", "computational graph, node by node (shapes at " + ", ".join(f"{k}={v}" for k, v in self.rule.example_dims().items()) + "):"]
        for n in self.nodes:
            lines.append(f"  {pr.name(n.label):<4} = {n.text}    {list(n.shape)}")
        if r.formula.loop is None and r.outputs:
            lines += ["", f"backward, from {', '.join('d' + o for o in r.outputs)} at the outputs to the inputs "
                          f"(an output that feeds another adds both signals):"]
        elif r.formula.loop is None:  # a loop has no node graph: RECURRENCE says how its backward runs
            lines += ["", "backward, from dout at the output to the inputs:"]
        for n in reversed(self.nodes):
            lines.append(f"  at {pr.name(n.label)} = {n.text}:")
            lines += [f"      {ln}" for ln in n.lines]
        if self.chain:
            lines += ["", "chain rule, all the way to the inputs:"] + [f"  {ln}" for ln in self.chain]
        sizes = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        lines += ["", f"Jacobian at {sizes}:"]
        if r.outputs:
            lines.append(f"  (out stacks the outputs: {', '.join(f'out[{j}] = {o}' for j, o in enumerate(r.outputs))})")
        lines += [f"  {ln}" for ln in self.jacobian_text.splitlines()[2:]]
        lines += ["", "closed forms (each checked against the exact Jacobian at 4 shapes, random values):"]
        shown = [c for c in self.closed if c[2]]
        for n, f, _, _ in shown:
            lines.append(f"  {_grad_name(n, False)} = {Printer(r)(f.statements[-1][1])}")
        if not shown:
            lines.append("  (none that holds for these hyperparameters)")
        if self.layer:
            lines += ["", "your layer against the formula:"] + [f"  {ln}" for ln in self.layer]
        return "\n".join(lines)

    def markdown(self) -> str:
        r = self.rule
        out = [f"## {r.name}", "", r.summary, "", "**Forward formula**", "", "```", r.formula.text.strip(), "```", "",
               "**Computational graph**", ""]
        pl = Printer(r, latex=True)
        if r.formula.loop is not None:
            out.append(RECURRENCE[0].upper() + RECURRENCE[1:])
        for n in self.nodes:
            out.append(f"- ${pl.name(n.label)} = {pl(_parse(n))}$ — shape {list(n.shape)}; " + "; ".join(n.lines))
        if self.chain:
            out += ["", "**Chain rule**", ""] + [f"- `{c}`" for c in self.chain]
        out += ["", f"**Jacobian** at {', '.join(f'{k}={v}' for k, v in self.dims.items())}", ""]
        for part in self.jacobian_latex.split("\n\n"):  # one display block each: a blank line ends $$
            out += ["$$", part, "$$", ""]
        out += ["**Closed forms** (checked against the exact Jacobian at 4 shapes, random values)", ""]
        out += [f"- ${_grad_name(n, True)} = {pl(f.statements[-1][1])}$" for n, f, ok, _ in self.closed if ok]
        if self.layer:
            out += ["", "**Your layer against the formula**", ""] + [f"- {ln}" for ln in self.layer]
        return "\n".join(out)

    def latex(self) -> str:
        pl = Printer(self.rule, latex=True)
        parts = [rf"% derivcheck explain {self.rule.name}", r"\begin{align*}"]
        parts += [rf"{pl.name(n.label)} &= {pl(_parse(n))} \\" for n in self.nodes]
        parts += [rf"{_grad_name(n, True)} &= {pl(f.statements[-1][1])} \\" for n, f, ok, _ in self.closed if ok]
        parts += [r"\end{align*}", "", self.jacobian_latex]
        return "\n".join(parts)

    def render(self, fmt: str) -> str:
        return {"text": self.text, "markdown": self.markdown, "latex": self.latex}[fmt]()

    def _repr_markdown_(self):
        return self.markdown()

    def _repr_latex_(self):
        return "$$" + self.latex().replace(r"\begin{align*}", r"\begin{aligned}").replace(r"\end{align*}", r"\end{aligned}").split("\n\n")[0] + "$$"


def _parse(node: Node):
    """A node's forward text back to a tree, for LaTeX (operand labels are plain names)."""
    text = node.text.replace("ᵀ", ".T").replace("·", "*").replace("^", "**")
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError:
        return ast.Constant(node.text)


def explain(rule, shape: dict | None = None, hyper: dict | None = None, seed: int = 0) -> Explanation:
    """The derivation of ``rule`` (a Rule or a rule's name); renders as text, markdown or LaTeX."""
    from derivcheck.engine.rules import load_rule

    if isinstance(rule, str):
        rule = load_rule(rule)
    hyper = rule.resolve_hyper(hyper or {})
    tiny = _tiny(rule)
    dims = rule.resolve_dims(shape) if shape else tiny
    if _jacobian_size(rule, dims) > ELEMENTS_SPELLED_OUT:  # --shape for a layer at real size: the Jacobian at a tiny one
        dims = tiny
    d = rule.at(hyper=hyper, **dims)
    nodes, chain = graph(rule, hyper)
    proofs = prove(rule, hyper, seed)
    closed = [(n, f, *proofs[n]) for n, f in rule.closed_forms.items()]
    if rule.from_output is not None and chain:  # the seed's last step: dout * y * (1 - y), proven
        chain.append(_from_output_line(rule, hyper))
    return Explanation(rule, hyper, dims, nodes, chain, d, closed)


def explain_layer(exp: Explanation, target: str, rule, rep) -> Explanation:
    """Put the formula at a failing layer's worst element (from ``rep``, its verify report) next to what
    the layer returned."""
    from derivcheck.results import pair

    failing = [c for c in rep.checks if not c.passed and c.index is not None and c.dims]
    if not failing:
        exp.layer = [f"{target} passes every check ({rep.verdict}): nothing to compare"] if rep.verdict == "pass" else \
            [f"{target} fails, but not at a single element: " + "; ".join(c.message for c in rep.checks if not c.passed)]
        return exp
    c = failing[0]
    idx = tuple(c.index)
    what = f"out[{','.join(map(str, idx))}]" if c.name == "forward" else f"d{c.name.split(' ', 1)[1]}[{','.join(map(str, idx))}]"
    expr = _expected_entry(rule, exp.hyper, c, idx)
    e, g = pair(c.expected, c.got)
    exp.layer = [
        f"{c.name} fails at trial seed {c.seed}, " + ", ".join(f"{k}={v}" for k, v in c.dims.items()),
        f"expected {what} = {expr}",
        f"         = {e} at the trial's values",
        f"the layer returned {g}",
    ] + [f"diagnosis: {dg['message']}" for dg in rep.diagnosis]
    return exp


ELEMENTS_SPELLED_OUT = 10_000  # up to this many Jacobian entries, an element is written out symbol by symbol
TINY_ENTRIES = 72  # set by hand: the Jacobian explain spells out has at most about this many entries (readable; printing is slow)


def _tiny(rule) -> dict:
    """The sizes explain spells the Jacobian out at. A loop: two steps, every other size 1 (the unrolled
    chain stays readable). Otherwise sizes of 2 (1 where a rule's range says so); then, while the Jacobian
    has more than TINY_ENTRIES entries, one size goes down to its minimum: the one that keeps the most
    entries within the budget (a GRU's batch before its width), else the one that shrinks it most (an
    LSTM's width first)."""
    if rule.formula.loop is not None:
        steps = {n.id for n in ast.walk(rule.formula.loop.count) if isinstance(n, ast.Name)}
        return rule.resolve_dims({d: min(n, 2) if d in steps else 1 for d, n in rule.example_dims().items()})
    tiny = {d: min(n, 2) for d, n in rule.example_dims().items()}
    size = _jacobian_size(rule, tiny)
    while size > TINY_ENTRIES:
        options = [(_jacobian_size(rule, o), o) for o in ({**tiny, d: rule.dims[d].min} for d, n in tiny.items() if n > rule.dims[d].min)]
        if not options:
            break
        within = [(s, o) for s, o in options if s <= TINY_ENTRIES]
        size, tiny = max(within, key=lambda so: so[0]) if within else min(options, key=lambda so: so[0])
    return tiny


def _jacobian_size(rule, dims) -> int:
    """|out| x Σ|input| at these sizes, from the formula's numeric shape check (no derivation)."""
    import math

    ins = sum(math.prod(rule.shape_of(i.shape, dims)) for i in rule.inputs.values())
    try:
        out = math.prod(rule.output_shape(dims, rule.resolve_hyper()))
    except Exception:  # noqa: BLE001 - a size the formula refuses is reported by the derivation itself
        return 0
    return out * ins


def _expected_entry(rule, hyper, c, idx) -> str:
    """The failing element's exact formula: spelled out at small sizes, in index notation at large ones."""
    from derivcheck.engine import reference
    from derivcheck.engine.generic import entry

    g, _ = reference.generic_for(rule, hyper)
    if g is not None:
        if _jacobian_size(rule, c.dims) > ELEMENTS_SPELLED_OUT:
            which = "forward" if c.name == "forward" else c.name.split(" ", 1)[1]
            return sympy.sstr(entry(g, which, idx, c.dims))
    d = rule.at(hyper=hyper, **c.dims)
    if c.name == "forward":
        expr = d.output[idx] if idx else d.output[()]
    else:
        n = c.name.split(" ", 1)[1]
        dout = np.array([sympy.Symbol(f"dout_{'_'.join(map(str, o))}" if o else "dout") for o in np.ndindex(*d.output_shape)], dtype=object)
        J = d.jacobian_array(n).reshape(len(dout), -1)
        flat = int(np.ravel_multi_index(idx, d.shapes[n])) if idx else 0
        expr = sympy.Add(*(dout[o] * J[o, flat] for o in range(len(dout))))
    return sympy.sstr(sympy.simplify(expr))


def explain_model(target: str, rep, rule_dirs=()) -> str:
    """A network as the chain of its layers' rules: forward layer by layer, backward from the loss.

    ``rep`` is the report of one run of the model (``verify`` with one trial of one step), which names
    its layers; each layer's closed forms are its rule's, checked as ``explain`` checks them.
    """
    from derivcheck.check.network import REGULARIZATION_NOTE
    from derivcheck.engine.rules import load_rule

    if not rep.layers:
        raise DerivcheckError(f"{target} could not be run to learn its layers: "
                              + "; ".join(c.message for c in rep.checks if not c.passed))
    name = target.rpartition(":")[2]

    def label(l):
        shown = l["name"] if l["kind"] in l["name"] else f"{l['name']} {l['kind']}"
        return f"{shown} ({l['rule'] or 'no rule'})"

    width = max(len(label(l)) for l in rep.layers)
    lines = [f"{name}, a network ({rep.style}): x -> " + " -> ".join(l["name"] for l in rep.layers) + " -> loss", "",
             "forward, layer by layer (each layer's output is the next one's x):"]
    rules = {}
    for l in rep.layers:
        if l["rule"] is None:
            lines.append(f"  {label(l):<{width}}  {l['kind']} has no rule: `derivcheck rules affine` prints one to start from")
            continue
        rule = rules[l["rule"]] = load_rule(l["rule"], rule_dirs)
        stmts = [ln.strip() for ln in rule.formula.text.strip().splitlines() if ln.strip()]
        lines.append(f"  {label(l):<{width}}  " + "; ".join(stmts[:-1] + [f"out = {stmts[-1]}"]))
    lines += [f"  {note}" for note in rep.notes if note.startswith(REGULARIZATION_NOTE)]  # a CS231n model's L2 term
    lines += ["", "backward, from dout = 1 at the loss to x (each layer's dout is the dx of the layer after it):"]
    backward = {}  # rule name -> its closed forms, checked once however many layers use it (Affine1, Affine2)
    for l in reversed(rep.layers):
        if l["rule"] is None:
            lines.append(f"  {label(l):<{width}}  (no rule: not derived)")
            continue
        if l["rule"] not in backward:
            rule = rules[l["rule"]]
            proofs = prove(rule, rule.resolve_hyper({}))
            forms = [f"{_grad_name(n, False)} = {Printer(rule)(f.statements[-1][1])}"
                     for n, f in rule.closed_forms.items() if proofs[n][0]]
            backward[l["rule"]] = (",  ".join(forms) if forms else
                                   f"no closed form in its rule: derivcheck explain {rule.name} shows the derivation")
        lines.append(f"  {label(l):<{width}}  {backward[l['rule']]}")
    lines += ["", "each closed form is checked against its rule's exact Jacobian at 4 shapes (random values);",
              f"derivcheck verify {target} checks the network itself, layer by layer "
              f"(this run: {rep.verdict.upper()})"]
    return "\n".join(lines)
