"""Expressions as JSON for the derivation cache: one table of whitelisted SymPy node types.

:class:`Encoder` writes each sub-expression once (a DAG); :func:`decoder` rebuilds
them with those constructors only, the symbols being the derivation's own.
An unknown node, a foreign symbol or anything malformed raises ``ValueError``
and the entry is rebuilt. :func:`load` and :func:`store` read and write the
element-by-element tier's entries (its output and non-zero Jacobian entries)
through :mod:`derivcheck.engine.cache`.
"""
from __future__ import annotations

import json
import re

import mpmath
import numpy as np
import sympy

from derivcheck.engine import cache
from derivcheck.engine.indexed import IsMax, ReduceMax, rebuilt
from derivcheck.engine.ops import sympy_nodes

NODES = sympy_nodes()  # SymPy function class -> its record (ops.py)

_FUNCS = {
    "Add": sympy.Add,
    "Mul": sympy.Mul,
    "Pow": sympy.Pow,
    **{fn.__name__: fn for fn in NODES},  # exp, log, tanh, sin, cos, Abs: the language's functions (ops.py)
    "sign": sympy.sign,
    "Max": sympy.Max,
    "Min": sympy.Min,
    "Heaviside": sympy.Heaviside,
    "Piecewise": sympy.Piecewise,
    "ExprCondPair": sympy.functions.elementary.piecewise.ExprCondPair,
    "StrictGreaterThan": sympy.StrictGreaterThan,
    "GreaterThan": sympy.GreaterThan,
    "StrictLessThan": sympy.StrictLessThan,
    "LessThan": sympy.LessThan,
    "And": sympy.And,
    "Or": sympy.Or,
    "Not": sympy.Not,
    "KroneckerDelta": sympy.KroneckerDelta,
    "IsMax": IsMax,
}
_INDEX_NAME = re.compile(r"^[a-z][0-9]{1,9}$")
_CONSTANTS = {"true": sympy.true, "false": sympy.false, "E": sympy.E, "Half": sympy.S.Half}


class Unencodable(Exception):
    """An expression with a node the cache does not know; such a derivation is not cached."""


class Encoder:
    """Expressions as one table of nodes, each sub-expression once (a DAG): ``enc(expr)`` is the
    index of ``expr``'s node in ``enc.nodes``. A node is ``[tag, ...]``, its children given by the
    indices of earlier nodes. A generic VJP's error bound repeats its sub-expressions many times
    (LSTM's: 157,345 tree nodes, 2,977 distinct), so a tree would be decoded 50 times over."""

    def __init__(self):
        self.nodes: list = []
        self._seen: dict = {}

    def __call__(self, expr) -> int:
        hit = self._seen.get(expr)
        if hit is None:
            node = self._node(expr)
            self.nodes.append(node)
            hit = self._seen[expr] = len(self.nodes) - 1
        return hit

    def _node(self, expr) -> list:
        if isinstance(expr, sympy.Symbol):
            if expr.is_integer and not expr.is_positive:  # an index variable of the shape-generic tier
                return ["X", expr.name]
            return ["S", expr.name]
        if isinstance(expr, sympy.Indexed):
            return ["Ix", str(expr.base.label)] + [self(i) for i in expr.indices]
        if isinstance(expr, (sympy.Sum, ReduceMax)):
            tag = "Sum" if isinstance(expr, sympy.Sum) else "RMax"
            return [tag, self(expr.function)] + [[self(v), self(lo), self(hi)] for v, lo, hi in expr.limits]
        if isinstance(expr, sympy.Integer) or type(expr) is int:  # a size a rule fixes may be a plain int
            return ["I", str(int(expr))]
        if isinstance(expr, sympy.Rational):
            return ["Q", str(expr.p), str(expr.q)]
        if isinstance(expr, sympy.Float):
            sign, man, exp, _ = expr._mpf_
            return ["F", str(-man if sign else man), exp, expr._prec]
        for name, const in _CONSTANTS.items():
            if expr is const:
                return ["C", name]
        name = type(expr).__name__
        if name in _FUNCS and _FUNCS[name] is type(expr) or name == "ExprCondPair":
            return [name] + [self(a) for a in expr.args]
        raise Unencodable(name)


MAX_NODES = 2_000_000  # an entry's node table: the engine writes tens of thousands at most


def decoder(nodes, symbols: dict, bases: frozenset = frozenset()):
    """Rebuild an :class:`Encoder`'s table; ``symbols`` by name, ``bases`` the array names Indexed may
    read. Returns ``node(ref)``, the expression of a reference. A child must be an earlier node, so the
    table cannot loop; anything malformed (a node, a reference) raises ValueError."""
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise ValueError("malformed node table")
    built: list = []

    def child(ref):
        if type(ref) is not int or not 0 <= ref < len(built):
            raise ValueError(f"bad node reference {ref!r}")
        return built[ref]

    for node in nodes:
        built.append(_build(node, child, symbols, bases))
    return child


def _build(tree, child, symbols: dict, bases: frozenset):
    """One node, its children read by ``child``."""
    if not isinstance(tree, list) or not tree or not isinstance(tree[0], str):
        raise ValueError("malformed node")
    tag, args = tree[0], tree[1:]
    if tag == "X":
        if len(args) != 1 or not isinstance(args[0], str) or not _INDEX_NAME.match(args[0]) or not bases:
            raise ValueError(f"bad index {args!r}")
        return sympy.Symbol(args[0], integer=True)
    if tag == "Ix":
        if not args or args[0] not in bases:
            raise ValueError(f"foreign array {args[:1]!r}")
        return sympy.IndexedBase(args[0], real=True)[tuple(child(a) for a in args[1:])]
    if tag in ("Sum", "RMax"):
        if len(args) < 2 or not all(isinstance(lim, list) and len(lim) == 3 for lim in args[1:]):
            raise ValueError("malformed sum")
        limits = [tuple(child(x) for x in lim) for lim in args[1:]]
        if not all(isinstance(v, sympy.Symbol) for v, _, _ in limits):
            raise ValueError("a sum's index is not a symbol")
        return rebuilt(sympy.Sum if tag == "Sum" else ReduceMax, child(args[0]), limits)
    if tag == "S":
        if len(args) != 1 or args[0] not in symbols:
            raise ValueError(f"foreign symbol {args!r}")
        return symbols[args[0]]
    if tag == "I":
        return sympy.Integer(_small_int(args[0]))
    if tag == "Q":
        return sympy.Rational(_small_int(args[0]), _small_int(args[1]))
    if tag == "F":
        man, exp, prec = _small_int(args[0]), int(args[1]), int(args[2])
        if abs(exp) > 100_000:
            raise ValueError("float out of bounds")
        if not 1 <= prec <= 4096:
            raise ValueError("bad float precision")
        return sympy.Float(mpmath.mpf((man, exp)), precision=prec)
    if tag == "C":
        return _CONSTANTS[args[0]]
    if tag in _FUNCS:
        decoded = [child(a) for a in args]
        if tag == "Pow" and (len(decoded) != 2 or (decoded[1].is_Number and abs(decoded[1]) > MAX_EXPONENT)):
            raise ValueError("power out of bounds")  # Pow(3, 10**10) would never finish evaluating
        if tag in _AS_STORED:
            return _FUNCS[tag](*decoded, evaluate=False)
        return _FUNCS[tag](*decoded)
    raise ValueError(f"unknown node {tag!r}")


# Rebuilt as stored, not re-simplified: the entry holds the args of an expression SymPy had
# already put in canonical form, so evaluating again only repeats that work (most of a cold
# load's time: Abs and Add asking assumptions). tests/test_generic.py checks the round trip is exact.
_AS_STORED = frozenset(("Add", "Mul", "Pow", *(fn.__name__ for fn in NODES), "sign", "Max", "Min",
                        "Heaviside", "KroneckerDelta", "IsMax"))


MAX_DIGITS = 40  # integers in entries: the engine writes small ones; a huge one is an attack or corruption
MAX_EXPONENT = 1024


def _small_int(text) -> int:
    if not isinstance(text, str) or len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError("integer out of bounds")
    return int(text)


def load(key: str, derivation) -> tuple | None:
    """The cached (output_shape, outputs, jacobians) for ``derivation``, or None."""
    data = cache.load_entry(key)
    if data is None:
        return None
    try:
        symbols = {s.name: s for arr in (*derivation.symbols.values(), *derivation.label_symbols.values()) for s in arr.ravel()}
        shape = tuple(int(n) for n in data["output_shape"])
        decode = decoder(data["nodes"], symbols)
        out = [decode(t) for t in data["out"]]
        if len(out) != int(np.prod(shape)):
            return None
        if set(data["jac"]) != set(derivation.symbols):
            return None
        jac = {}
        for name, syms in derivation.symbols.items():
            triples = []
            for o, i, tree in data["jac"][name]:
                if not (isinstance(o, int) and isinstance(i, int) and 0 <= o < len(out) and 0 <= i < syms.size):
                    return None
                triples.append((o, i, decode(tree)))
            jac[name] = triples
        return shape, out, jac
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError, json.JSONDecodeError):
        return None  # corrupt or foreign: rebuild


def store(key: str, rule_name: str, exprs: tuple) -> bool:
    """Write an entry atomically; False if it cannot be cached (unknown node, no folder)."""
    shape, out, jac = exprs
    enc = Encoder()
    try:
        data = {
            "rule": rule_name,
            "output_shape": list(shape),
            "out": [enc(e) for e in out],
            "jac": {name: [[o, i, enc(e)] for o, i, e in triples] for name, triples in jac.items()},
            "nodes": enc.nodes,
        }
    except Unencodable:
        return False
    return cache.store_entry(key, data)
