"""The exact reference a layer is compared with: output, VJP and rounding scales.

``at(rule, hyper, dims)`` gives a :class:`Bound` reference at those sizes. It
comes from one of three tiers:

- **shape-generic** (:mod:`derivcheck.engine.generic`): derived once per rule text and
  hyperparameters, evaluated by compiled NumPy code at any size. Before it is
  used it is compared with the concrete tier at small shapes (:func:`prove`);
  a disagreement is an error that names the rule.
- **concrete** (:mod:`derivcheck.engine.derive`): one symbol per element at the given
  sizes. Used where the generic tier has no form for an operation (a reshape
  that flattens axes, a matmul whose right operand is a stack of matrices),
  with a one-line note saying why.
- **stepped** (:mod:`derivcheck.engine.stepped`), for a rule whose formula loops over
  steps: the loop's cells derived by the generic tier, run over the steps, and
  compared with the loop unrolled by the concrete tier at one small size with
  two steps (:func:`stepped_for`). A loop it cannot run is unrolled, with a note.

Rounding scales (the ``s`` of :mod:`derivcheck.checks`):

- forward: ``M(out) + |out|``;
- gradient of input ``x``: ``M(v) + |v| + R``, where ``v = Σ_o c_o J_o`` is the
  VJP expression with the cotangent ``c`` exact, ``M`` its running error
  bound (which counts ``m_i |c_o J_oi|`` for the ``m_i`` terms summed), and
  ``R_i = Σ_o |c_o| |out_o|`` over the outputs that reach ``x_i``: the forward
  output a backward pass may reuse (the book's ``dout * y * (1 - y)``).
  The generic tier bounds ``R`` from above: an output reached through
  several terms of ``v`` is counted once per term.
"""
from __future__ import annotations

import numpy as np

from derivcheck.checks import compare
from derivcheck.engine import cache, program, stepped
from derivcheck.engine.program import DOUT, MEMO, WEIGHT, Evaluator, bound_name
from derivcheck.errors import DerivcheckError, Unsupported
from derivcheck.progress import status

# SymPy, and the engine modules that use it (generic, derive), are imported where a derivation is made or
# read as expressions: a warm run of a shape-generic rule, or of a loop's cells, evaluates stored steps (program.py).


def draw(rule, shapes: dict, label_shapes: dict, dims: dict, rng, dtype=np.float64) -> tuple[dict, dict]:
    """Random values from the rule's domains: (in ``dtype``, the same in float64); labels as class indices."""
    values, ref = {}, {}
    for n, spec in rule.inputs.items():
        v = spec.domain.sample(rng, shapes[n]).astype(dtype)
        values[n], ref[n] = v, v.astype(np.float64)
    for n, lab in rule.labels.items():
        if lab.given:
            values[n], ref[n] = draw_label(lab, label_shapes[n], dims, rng, dtype)
        else:  # the layer draws it: all kept until read_kept reads it off the forward's output
            ref[n] = np.ones(label_shapes[n])
    return values, ref


def read_kept(rule, ref: dict, output) -> dict:
    """``ref`` with each mask the layer drew (dropout's, kind ``kept``) read off its forward output:
    1 where the output is not 0. The inputs come from continuous distributions, so none is 0 and an
    output of 0 is a dropped element. A misshapen output leaves the mask all kept (the forward check
    fails on the shape)."""
    if all(lab.given for lab in rule.labels.values()):
        return ref
    try:
        out = np.asarray(output) if output is not None else None
    except ValueError:  # a ragged list: the forward check says what is wrong with it
        out = None
    for n, lab in rule.labels.items():
        if not lab.given and out is not None and out.shape == ref[n].shape:
            ref = {**ref, n: (out != 0).astype(np.float64)}
    return ref


MASK_KEPT = 0.7  # set by hand: the fraction of a mask's positions that are True, so both values occur at small sizes


def draw_label(lab, shape, dims: dict, rng, dtype=np.float64) -> tuple:
    """(the label as the layer gets it, as the reference reads it): class indices, a boolean mask, or reals."""
    if lab.kind == "classes":
        idx = rng.integers(0, dims[lab.classes], size=shape)
        return idx, idx.copy()
    if lab.kind == "mask":  # CS231n's temporal_softmax_loss: which time steps count
        m = rng.random(shape) < MASK_KEPT
        if m.size:
            m.flat[0] = True  # at least one position counts, so the loss depends on the input
        return m, m.astype(np.float64)
    v = lab.domain.sample(rng, shape).astype(dtype)
    return v, v.astype(np.float64)


class Bound:
    """The reference at one set of sizes; ``tier`` says which engine serves it."""

    tier = ""

    def __init__(self, rule, hyper: dict, dims: dict):
        self.rule, self.hyper, self.dims = rule, dict(hyper), dict(dims)
        self.shapes = {n: rule.shape_of(i.shape, dims) for n, i in rule.inputs.items()}
        self.label_shapes = {n: rule.shape_of(lab.shape, dims) for n, lab in rule.labels.items()}

    def _values(self, values: dict) -> dict:
        return self.rule.formula_values(values, self.dims)

    def _cotangent(self, cotangent) -> np.ndarray:
        cot = np.asarray(cotangent, dtype=np.float64)
        if cot.shape != self.output_shape:
            raise DerivcheckError(f"cotangent has shape {cot.shape}, the output has {self.output_shape}")
        return cot


def _mp(v) -> np.ndarray:
    """``v`` as an object array of mpmath numbers (0-d for a scalar), at the working precision."""
    import mpmath

    return np.asarray(np.frompyfunc(lambda e: mpmath.mpf(float(e)), 1, 1)(v), dtype=object)


class GenericBound(Bound):
    tier = "shape-generic"

    def __init__(self, rule, hyper, dims, derivation: Evaluator):
        super().__init__(rule, hyper, dims)
        self.derivation = derivation
        self.output_shape = derivation.output_shape(dims)

    def _env(self, values, cot=None, **extra) -> dict:
        env = {**self.dims, **self._values(values), **extra, MEMO: {}}
        if cot is not None:
            env[DOUT] = self._cotangent(cot)
        for n in self.derivation.inexact:  # here every value is exact: a bound of 0
            if n in env:
                env[bound_name(n)] = np.zeros(np.shape(env[n]))
        return env

    def forward(self, **values) -> np.ndarray:
        return self.derivation.forward(self._env(values))

    def vjp(self, cotangent, **values) -> dict[str, np.ndarray]:
        return self.derivation.vjp(self._env(values, cotangent))

    def evaluate(self, cotangent, **values):
        """(output, gradients, rounding scales) at these values: the module doc's formulas."""
        env = self._env(values, cotangent)
        g = self.derivation
        out = g.forward(env)
        grads = g.vjp(env)
        bounds = g.vjp_bounds(env)
        env[WEIGHT] = np.abs(env[DOUT]) * np.abs(out)
        reuse = g.vjp_support(env)
        scales = {n: bounds[n] + np.abs(grads[n]) + reuse[n] for n in grads}
        scales["forward"] = g.forward_bound(env) + np.abs(out)
        return out, grads, scales

    def exact(self, cotangent, digits: int = 50, **values):
        """Output and VJP at ``digits`` significant digits (mpmath), as object arrays of mpf."""
        import mpmath

        with mpmath.workdps(digits):
            env = {**self.dims, **{n: _mp(v) for n, v in self._values(values).items()}}
            env[DOUT] = _mp(self._cotangent(cotangent))
            out = self.derivation.forward(env, "mpmath")
            grads = self.derivation.vjp(env, "mpmath")
        return out, grads


class SteppedBound(Bound):
    """A loop rule's reference from its cells, run over the steps (:mod:`derivcheck.engine.stepped`)."""

    tier = "stepped"

    def __init__(self, rule, hyper, dims, prog):
        super().__init__(rule, hyper, dims)
        self.prog = prog
        self.output_shape = tuple(rule.output_shape(dims, hyper))

    def forward(self, **values) -> np.ndarray:
        return stepped.run(self.prog, self._values(values), self.dims)[0]

    def vjp(self, cotangent, **values) -> dict[str, np.ndarray]:
        grads = stepped.run(self.prog, self._values(values), self.dims, self._cotangent(cotangent))[2]
        return {n: grads[n] for n in self.rule.inputs}

    def evaluate(self, cotangent, **values):
        out, out_M, grads, bounds = stepped.run(self.prog, self._values(values), self.dims, self._cotangent(cotangent), bounds=True)
        scales = {n: bounds[n] + np.abs(grads[n]) for n in self.rule.inputs}
        scales["forward"] = out_M + np.abs(out)
        return out, {n: grads[n] for n in self.rule.inputs}, scales

    def exact(self, cotangent, digits: int = 50, **values):
        import mpmath

        with mpmath.workdps(digits):
            vals = {n: _mp(v) for n, v in self._values(values).items()}
            out, _, grads, _ = stepped.run(self.prog, vals, self.dims, _mp(self._cotangent(cotangent)), backend="mpmath")
        return out, {n: grads[n] for n in self.rule.inputs}


class ConcreteBound(Bound):
    tier = "concrete"

    def __init__(self, rule, hyper, dims):
        super().__init__(rule, hyper, dims)
        with status(f"deriving {rule.name} element by element at {', '.join(f'{k}={v}' for k, v in dims.items())}"):
            self.derivation = rule.at(hyper=hyper, **dims)
        self.output_shape = self.derivation.output_shape

    def forward(self, **values) -> np.ndarray:
        return self.derivation.forward(**values)

    def vjp(self, cotangent, **values) -> dict[str, np.ndarray]:
        return self.derivation.vjp(cotangent, **values)

    def evaluate(self, cotangent, **values):
        d = self.derivation
        entries, bounds, out_bound = d.entries(bounds=True, **values)
        out = d.forward(**values)
        c = self._cotangent(cotangent).ravel()
        o_abs = np.abs(out).ravel()
        grads, scales = {}, {}
        for n, (rows, cols) in d.nonzero.items():
            size = int(np.prod(self.shapes[n], dtype=int))
            J = entries[n]
            grads[n] = np.bincount(cols, weights=c[rows] * J, minlength=size).reshape(self.shapes[n])
            nonzero = J != 0
            terms = np.bincount(cols, weights=nonzero, minlength=size)
            s = np.abs(c[rows]) * (bounds[n] + terms[cols] * np.abs(J) + nonzero * o_abs[rows])
            scales[n] = np.bincount(cols, weights=s, minlength=size).reshape(self.shapes[n]) + np.abs(grads[n])
        scales["forward"] = out_bound + np.abs(out)
        return out, grads, scales

    def exact(self, cotangent, digits: int = 50, **values):
        return self.derivation.exact(cotangent, digits=digits, **values)


# ---------------------------------------------------------------------------

_GENERIC: dict[tuple, tuple] = {}  # key -> (GenericDerivation or None, note)


def cache_key(rule, hyper: dict, inexact: tuple = ()) -> tuple:
    used = {k: v for k, v in hyper.items() if k in rule.formula.names}
    return ("generic", rule.digest, repr(sorted(used.items()))) + ((tuple(inexact),) if inexact else ())


def proof_dims(rule, hyper: dict) -> list[dict]:
    """The small shapes the generic tier is checked at: distinct sizes, all equal, all minimal (pins kept)."""
    pins = rule.pinned_dims(hyper)
    plans = [{**rule.planned_dims(k, seed=0), **pins} for k in range(3)]  # the first three trials' sizes (no seed in them)
    return [p for i, p in enumerate(plans) if p not in plans[:i]]


def require_finite(rule, dims: dict, named_values) -> None:
    """An exact value that is inf or NaN at values from the rule's domain is a broken rule (exit 2), not a layer."""
    for what, value in named_values:
        value = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(value)):
            idx = np.unravel_index(int(np.argmin(np.isfinite(value))), value.shape) if value.ndim else ()
            raise DerivcheckError(
                f"rule '{rule.name}' gives a non-finite exact {what} ({value[idx]} at [{','.join(map(str, idx))}], sizes "
                f"{', '.join(f'{k}={v}' for k, v in dims.items())}) at values from its domain: its formula or domain "
                f"is wrong ({rule.path})")


def prove(rule, hyper: dict, g, seed: int = 0) -> None:
    """Compare the generic tier with the concrete one at :func:`proof_dims`; raise on disagreement.

    At each shape: the output shape, and the forward value and VJP at random
    values and cotangent (from ``seed``), within the checks' tolerance for
    float64 taken over both tiers' rounding (twice the generic scale).
    """
    for k, dims in enumerate(proof_dims(rule, hyper)):
        _agree(rule, hyper, dims, GenericBound(rule, hyper, dims, g.evaluator), "shape-generic", np.random.default_rng([seed, k, 99]))


def _agree(rule, hyper: dict, dims: dict, bound: "Bound", what_tier: str, rng) -> None:
    """``bound`` agrees with the concrete tier at ``dims`` (values and cotangent from ``rng``), or raise."""
    conc = ConcreteBound(rule, hyper, dims)
    where = f"rule '{rule.name}' at {', '.join(f'{d}={n}' for d, n in dims.items())}"
    if bound.output_shape != conc.output_shape:
        raise DerivcheckError(f"the {what_tier} derivation of {where} gives output shape {bound.output_shape}, "
                              f"the element-by-element one {conc.output_shape}: please report this")
    _, ref = draw(rule, conc.shapes, conc.label_shapes, dims, rng)
    cot = rng.normal(size=conc.output_shape)
    try:
        out, grads, scales = bound.evaluate(cot, **ref)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise DerivcheckError(f"the {what_tier} derivation of {where} cannot be evaluated ({exc}): please report this") from None
    want_grads = conc.vjp(cot, **ref)
    pairs = [("output", conc.forward(**ref), out)] + [(f"gradient of {n}", want_grads[n], grads[n]) for n in grads]
    require_finite(rule, dims, [(what, want) for what, want, _ in pairs])
    for (what, want, got), scale in zip(pairs, [scales["forward"]] + [scales[n] for n in grads]):
        c = compare(what, want, got, 2 * scale, np.float64)
        if c.index is None:  # not even the shape agrees
            raise DerivcheckError(f"the {what_tier} derivation of {where} disagrees with the element-by-element one: {c.message}: please report this")
        if not c.passed:
            raise DerivcheckError(
                f"the {what_tier} derivation of {where} disagrees with the element-by-element one: "
                f"{what}[{','.join(map(str, c.index))}] is {c.got!r}, expected {c.expected!r}: please report this")


def checked(rule, hyper: dict, inexact: tuple = ()):
    """The rule's generic derivation (a ``generic.GenericDerivation``) from disk, or derived, proven
    (:func:`prove`) and stored now. Raises :class:`Unsupported` (or SymPy's errors) where the generic tier
    has no form for it."""
    from derivcheck.engine.generic import GenericDerivation

    disk_key = cache.entry_key(cache_key(rule, hyper, inexact))

    def make():
        with status(f"deriving {rule.name} shape-generically"):
            g = GenericDerivation(rule, hyper, inexact=inexact)
        with status(f"proving the {rule.name} derivation against the element-by-element one"):
            prove(rule, hyper, g)
        return g

    return cache.load_or_make(disk_key, lambda: _load(rule, hyper, disk_key, inexact), make,
                              lambda g: _store(rule, disk_key, g))


_SYMPY_FAILED = (TypeError, ValueError, NotImplementedError, RecursionError, AttributeError)  # SymPy could not do it


def generic_for(rule, hyper: dict) -> tuple:
    """The checked generic derivation, its expressions too (memory, disk, or derived and checked now), or
    None and why not. Reads SymPy; :func:`evaluator_for` is what evaluating needs."""
    key = cache_key(rule, hyper)
    if key in _GENERIC:
        return _GENERIC[key]
    g, note = None, ""
    disk_key = cache.entry_key(key)
    why = _no_generic_form(cache.load_entry(disk_key))
    try:
        if why is not None:
            raise Unsupported(why)
        g = checked(rule, hyper)
    except Unsupported as exc:
        note = _concrete_note(exc)
        if why is None:  # kept, so that a later run of this rule need not import SymPy to learn it again
            cache.store_entry(disk_key, {"rule": rule.name, "no_generic_form": str(exc)})
    except _SYMPY_FAILED as exc:
        note = (f"reference: the element-by-element tier, at each trial's sizes (the shape-generic "
                f"derivation failed: {type(exc).__name__}: {exc})")
    _GENERIC[key] = (g, note)
    return g, note


def forget() -> None:
    """Forget every derivation this process holds in memory: they are read from disk, or made, again."""
    _GENERIC.clear()
    _EVALUATORS.clear()
    _STEPPED.clear()


def _concrete_note(why) -> str:
    return f"reference: the element-by-element tier, at each trial's sizes (no shape-generic form: {why})"


def _no_generic_form(data: dict | None) -> str | None:
    """Why a rule has no shape-generic form, as an entry under its generic key keeps it; None if it does not."""
    why = data.get("no_generic_form") if isinstance(data, dict) else None
    return why if isinstance(why, str) else None


_EVALUATORS: dict[tuple, tuple] = {}  # key -> (Evaluator or None, note)


def evaluator_for(rule, hyper: dict, inexact: tuple = ()) -> tuple[Evaluator | None, str]:
    """The checked generic derivation's NumPy steps: from memory, from its disk entry (without SymPy), or
    from :func:`generic_for` (a loop's cell, with ``inexact`` inputs: from :func:`checked`, whose errors
    are the stepped tier's to report); or None and why not."""
    key = cache_key(rule, hyper, inexact)
    if key not in _EVALUATORS:
        data = None if key in _GENERIC else cache.load_entry(cache.entry_key(key))
        hit, why = _load_steps(rule, data, inexact), _no_generic_form(data)
        if hit is not None:
            _EVALUATORS[key] = (hit, "")
        elif why is not None and not inexact:
            _EVALUATORS[key] = _GENERIC[key] = (None, _concrete_note(why))
        elif inexact:
            _EVALUATORS[key] = (checked(rule, hyper, inexact).evaluator, "")
        else:
            g, note = generic_for(rule, hyper)
            _EVALUATORS[key] = (None if g is None else g.evaluator, note)
    return _EVALUATORS[key]


_STEPPED: dict[tuple, tuple] = {}  # key -> (stepped.Program or None, note)


def stepped_proof_dims(rule, hyper: dict, prog) -> dict:
    """The one small size a stepped reference is proven at: two steps, the other sizes distinct and small
    (so that no two axes can be confused), within each dimension's range (pins kept)."""
    counts = {s.count for s in prog.steps if isinstance(s, stepped.LoopPlan)}
    dims, used = {}, {2}
    for d, r in rule.dims.items():
        if d in counts:
            dims[d] = min(max(2, r.min), r.max)
            continue
        v = r.min
        while v in used and v < r.max:
            v += 1
        dims[d] = v
        used.add(v)
    return {**dims, **rule.pinned_dims(hyper)}


def stepped_for(rule, hyper: dict):
    """A loop rule's stepped reference (:mod:`derivcheck.engine.stepped`): its cells derived and proven, the
    composition proven against the unrolled tier at :func:`stepped_proof_dims`; or None and why not."""
    key = ("stepped", rule.digest, repr(sorted(hyper.items())))
    if key in _STEPPED:
        return _STEPPED[key]
    prog, note = None, ""
    try:
        prog = stepped.plan(rule)
        for c in prog.cells:
            c.derivation = evaluator_for(c.rule, {}, (*c.rule_inexact, DOUT))[0]
        disk_key = cache.entry_key(key)

        def prove_steps() -> bool:
            dims = stepped_proof_dims(rule, hyper, prog)
            with status(f"proving {rule.name}'s steps against the unrolled derivation"):
                _agree(rule, hyper, dims, SteppedBound(rule, hyper, dims, prog), "stepped", np.random.default_rng([0, 98]))
            return True

        cache.load_or_make(disk_key, lambda: (cache.load_entry(disk_key) or {}).get("proven") is True or None, prove_steps,
                           lambda _: cache.store_entry(disk_key, {"rule": rule.name, "proven": True}))
        note = ("reference: the loop's cells derived shape-generically and run over the steps (proven against the "
                "unrolled element-by-element tier at two steps)")
    except Unsupported as exc:
        prog, note = None, f"no stepped form: {exc}"
    except _SYMPY_FAILED as exc:
        prog, note = None, f"the stepped derivation failed: {type(exc).__name__}: {exc}"
    _STEPPED[key] = (prog, note)
    return prog, note


def _store(rule, disk_key: str, g) -> None:
    from derivcheck.engine.exprcodec import Unencodable

    try:
        data = entry_data(rule, g)
    except Unencodable:
        return
    cache.store_entry(disk_key, data)


def entry_data(rule, g) -> dict:
    """What the disk cache holds of a generic derivation: its expressions as one table of nodes, and the
    NumPy steps they compile to (a warm run reads only those)."""
    from derivcheck.engine import exprcodec

    encode = exprcodec.Encoder()
    e = g.exprs
    return {
        "rule": rule.name,
        "out_indices": [encode(i) for i in e["out_indices"]],
        "out_shape": [encode(s) for s in e["out_shape"]],
        "out": encode(e["out"]),
        "out_M": encode(e["out_M"]),
        "vjp": {n: {"indices": [encode(i) for i in v["indices"]], "shape": [encode(s) for s in v["shape"]],
                    **{part: encode(v[part]) for part in ("expr", "M", "support")}}
                for n, v in e["vjp"].items()},
        "nodes": encode.nodes,
        "steps": program.dump(g.evaluator.parts()),
    }


def _load_steps(rule, data: dict | None, inexact: tuple = ()) -> Evaluator | None:
    """The NumPy steps of a stored generic derivation (a cache entry's ``data``), read without SymPy; None
    when there is no entry or it is malformed."""
    if data is None:
        return None
    try:
        parts = program.load(data["steps"])
        expected = {"out", "out_M", *(f"{p}:{n}" for n in rule.inputs for p in ("vjp", "M", "support"))}
        if set(parts) != expected:
            return None
        return Evaluator.from_parts(parts, rule.inputs, inexact)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None  # corrupt or foreign: rebuilt


def _load(rule, hyper, disk_key: str, inexact: tuple = ()):
    """A stored generic derivation with its expressions (a ``generic.GenericDerivation``), or None."""
    import sympy

    from derivcheck.engine import exprcodec
    from derivcheck.engine.generic import GenericDerivation, size_symbol

    data = cache.load_entry(disk_key)
    steps = _load_steps(rule, data, inexact)  # what the proof checked, and what warm runs evaluate
    if steps is None:
        return None
    names = [*rule.inputs, *rule.labels, DOUT, WEIGHT, *map(bound_name, inexact)]
    symbols = {d: size_symbol(d) for d in rule.dims}
    symbols.update({n: sympy.Symbol(n, real=True) for n in names})
    bases = frozenset(names)
    try:
        if set(data["vjp"]) != set(rule.inputs):
            return None
        dec = exprcodec.decoder(data["nodes"], symbols, bases)
        exprs = {
            "out_indices": [dec(i) for i in data["out_indices"]],
            "out_shape": [dec(s) for s in data["out_shape"]],
            "out": dec(data["out"]),
            "out_M": dec(data["out_M"]),
            "vjp": {n: {"indices": [dec(i) for i in v["indices"]], "shape": [dec(s) for s in v["shape"]],
                        **{part: dec(v[part]) for part in ("expr", "M", "support")}}
                    for n, v in data["vjp"].items()},
        }
        return GenericDerivation(rule, hyper, exprs, inexact, evaluator=steps)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError, Unsupported):
        return None  # corrupt or foreign: rebuild


def at(rule, hyper: dict, dims: dict) -> Bound:
    """The reference for ``rule`` with ``hyper`` at sizes ``dims``: generic where it can be, stepped for a loop."""
    ev, _ = evaluator_for(rule, hyper)
    if ev is not None:
        return GenericBound(rule, hyper, dims, ev)
    if rule.formula.loop is not None:
        prog, _ = stepped_for(rule, hyper)
        if prog is not None:
            return SteppedBound(rule, hyper, dims, prog)
    return ConcreteBound(rule, hyper, dims)


def note_for(rule, hyper: dict) -> str:
    """'' when the generic tier serves this rule, else the one-line reason it does not."""
    g, note = evaluator_for(rule, hyper)
    if g is None and rule.formula.loop is not None:
        prog, why = stepped_for(rule, hyper)
        return why if prog is not None else f"{note[:-1]}; {why})"
    return note
