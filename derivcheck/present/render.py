"""Rendering a derivation's Jacobians as text, LaTeX or JSON."""
from __future__ import annotations

import json
import weakref

import numpy as np
import sympy


# SymPy's simplify is for display only, and its cost explodes with the number of symbols: 17 s
# for one entry of the rnn rule (six symbols in a tanh), with a result no shorter. Entries
# with more symbols than this are shown as derived.
SIMPLIFY_SYMBOLS = 3


def _tidy(e):
    return sympy.simplify(e) if len(getattr(e, "free_symbols", ())) <= SIMPLIFY_SYMBOLS else e


SORTED_NODES = 200  # set by hand: entries up to this many nodes print with their terms sorted


def _large(e) -> bool:
    return any(k > SORTED_NODES for k, _ in enumerate(sympy.preorder_traversal(e)))


def _order(entries) -> str | None:
    """SymPy's term order for printing these entries: its default (sorted, as a reader expects) when all
    are small; else the order they were derived in. Sorting the terms of an unrolled recurrence's entries
    is most of printing them (time_lstm_stateful's tiny-shape Jacobian: 1.2 s of text, 0.3 s unsorted)."""
    return "none" if any(_large(e) for e in entries if isinstance(e, sympy.Basic)) else None


_SIMPLIFIED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # derivation -> {(input, simplify): J}


def _jacobian(d, name, simplify) -> np.ndarray:
    """``simplify``: True for every entry (derive --simplify asks for it), "small" for entries
    of few symbols (explain's tiny-shape Jacobian), False for none. Simplified once per derivation:
    explain renders the same Jacobian as text and as LaTeX."""
    J = d.jacobian_array(name)
    if not simplify or not J.size:
        return J
    done = _SIMPLIFIED.setdefault(d, {})
    if (name, simplify) not in done:
        done[name, simplify] = np.vectorize(_tidy if simplify == "small" else sympy.simplify, otypes=[object])(J)
    return done[name, simplify]


def _index(idx) -> str:
    return "[" + ",".join(map(str, idx)) + "]" if idx else ""


def jacobians_json(d, wrt, simplify: bool = False) -> str:
    """``{"rule", "shape", "hyper", "jacobians": {input: nested lists of SymPy strings}}``.

    Each Jacobian nests as ``output.shape + input.shape`` (output-index-major).
    """
    payload = {
        "rule": d.rule.name,
        "shape": d.dims,
        "hyper": {k: v for k, v in d.hyper.items()},
        "output_shape": list(d.output_shape),
        "jacobians": {},
    }
    for name in wrt:
        J = _jacobian(d, name, simplify)
        payload["jacobians"][name] = np.vectorize(str, otypes=[object])(J).tolist()
    return json.dumps(payload, indent=2, ensure_ascii=False)


def jacobians_text(d, wrt, simplify: bool = False) -> str:
    sizes = ", ".join(f"{k}={v}" for k, v in d.dims.items())
    lines = [f"rule {d.rule.name} at {sizes}: out has shape {d.output_shape}"]
    shown = {k: v for k, v in d.hyper.items() if d.rule.hyper[k].type != "dim"}  # a size's is in the sizes above
    if shown:
        lines.append("hyperparameters: " + ", ".join(f"{k}={v!r}" for k, v in shown.items()))
    lines.append("")
    for o, expr in zip(np.ndindex(*d.output_shape), d.output.ravel()):
        lines.append(f"  out{_index(o)} = {sympy.sstr(expr, order=_order([expr]))}")
    for name in wrt:
        shape = d.shapes[name]
        lines += ["", f"∂out/∂{name}: shape {d.output_shape + shape} (output index first), non-zero entries:"]
        J = _jacobian(d, name, simplify)
        count = 0
        for o in np.ndindex(*d.output_shape):
            for i in np.ndindex(*shape):
                e = J[o + i]
                if e != 0:
                    count += 1
                    lines.append(f"  ∂out{_index(o)}/∂{name}{_index(i)} = {sympy.sstr(e, order=_order([e]))}")
        if not count:
            lines.append("  (all zero)")
    return "\n".join(lines)


def jacobians_latex(d, wrt, simplify: bool = False) -> str:
    """Each Jacobian as a matrix: rows are output elements, columns input elements."""
    out_size = int(np.prod(d.output_shape))
    parts = []
    for name in wrt:
        in_size = int(np.prod(d.shapes[name]))
        entries = _jacobian(d, name, simplify).ravel().tolist()
        M = sympy.Matrix(out_size, in_size, entries)
        parts.append(
            rf"\frac{{\partial \mathrm{{out}}}}{{\partial {sympy.latex(sympy.Symbol(name))}}} = "
            + sympy.latex(M, mat_delim="[", mat_str="array", order=_order(entries))
        )
    return "\n\n".join(parts)
