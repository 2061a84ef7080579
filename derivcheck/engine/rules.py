"""Rules: one TOML file per operation, parsed and validated, never executed.

A rule file looks like this (``rules/affine.toml``)::

    name = "affine"
    summary = "Fully connected layer: out = x W + b"
    formula = "x @ W + b"
    output = ["N", "H"]

    [inputs.x]
    shape = ["N", "D"]
    [inputs.W]
    shape = ["D", "H"]
    [inputs.b]
    shape = ["H"]

See ``docs/rules.md`` for every key. Errors name the file and the line.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from derivcheck.errors import DerivcheckError, RuleError
from derivcheck.engine.formula import Formula

# letters and digits, with single underscores before a letter (prev_h, x_min): never before a
# digit or at the end, so an element's symbol name_i_j (symarray.symbols) names one element only
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*(_[A-Za-z][A-Za-z0-9]*)*$")
_NAME_RULE = "letters and digits, starting with a letter; an underscore must be followed by a letter (prev_h, x_min)"
_MULTIPLE = re.compile(r"^\s*([0-9]{1,3}|[A-Za-z][A-Za-z0-9_]*)\s*\*\s*([A-Za-z][A-Za-z0-9_]*)\s*$")


@dataclass(frozen=True)
class Multiple:
    """A size that is a whole multiple of a dimension, written ``"3*H"`` in a shape: a GRU's
    weights hold its three gates side by side, (D, 3*H); an LSTM's four, (D, 4*H). The factor
    may be a dimension too: groupnorm's C channels are G groups of K, ``"G*K"``."""

    factor: int | str
    dim: str

    def __str__(self) -> str:
        return f"{self.factor}*{self.dim}"

    def size(self, dims: dict):
        return (dims[self.factor] if isinstance(self.factor, str) else self.factor) * dims[self.dim]


def dim_names(entry) -> tuple:
    """The dimensions a shape entry names (``"H"`` and ``"3*H"`` name H, ``"G*K"`` G and K); () for a literal size."""
    if isinstance(entry, Multiple):
        return (entry.factor, entry.dim) if isinstance(entry.factor, str) else (entry.dim,)
    return (entry,) if isinstance(entry, str) else ()


DOMAIN_KINDS = ("normal", "uniform", "simplex", "peaked")
LABEL_KINDS = ("classes", "real", "mask", "kept")
HYPER_TYPES = ("int", "float", "bool", "axis", "shape", "dim", "choice")


@dataclass(frozen=True)
class Domain:
    """Where random values for an input come from."""

    kind: str = "normal"
    scale: float = 1.0
    low: float = 0.0
    high: float = 1.0
    avoid: tuple[float, ...] = ()  # points where the operation has a kink
    margin: float = 0.0  # keep |value - avoid| >= margin

    def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
        if self.kind == "simplex":
            raw = rng.uniform(0.1, 1.0, size=shape)
            return raw / raw.sum(axis=-1, keepdims=True)
        if self.kind == "peaked":  # rows of probabilities over many orders of magnitude: logits ~ N(0, scale)
            logits = rng.normal(0.0, self.scale, size=shape)
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        if self.kind == "uniform":
            values = rng.uniform(self.low, self.high, size=shape)
        else:
            values = rng.normal(0.0, self.scale, size=shape)
        for point in self.avoid:
            close = np.abs(values - point) < self.margin
            # push values out of the band, keeping their side of the kink
            side = np.where(values >= point, 1.0, -1.0)
            values = np.where(close, point + side * (self.margin + np.abs(values - point)), values)
        return values


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple  # dim names (str), multiples of them (Multiple) or literal sizes (int)
    domain: Domain
    stress: Domain | None = None  # extreme values for the numerical-stability probe


@dataclass(frozen=True)
class Label:
    """A non-differentiable input: class labels (one-hot in formulas), real targets, or a boolean mask (0/1 in formulas).

    Kind ``kept`` is a mask the layer draws itself (dropout): it is not handed to the
    layer but read back from the layer's forward output, 1 where the output is not 0
    (the inputs are drawn away from 0); ``drop`` (or ``keep``) names the hyperparameter
    that is the chance of an element being dropped (or kept).
    """

    name: str
    kind: str
    shape: tuple
    classes: str | None
    domain: Domain
    drop: str | None = None  # kept: the hyperparameter that is the chance of dropping an element
    keep: str | None = None  # kept: or the one that is the chance of keeping it (CS231n's p)
    updated: bool = False  # the layer updates it in place by design (DeZero's running statistics): not a side effect

    @property
    def given(self) -> bool:
        """Handed to the layer (every kind but ``kept``, which the layer draws)."""
        return self.kind != "kept"

    def symbolic_shape(self) -> tuple:
        return self.shape + (self.classes,) if self.kind == "classes" else self.shape


@dataclass(frozen=True)
class Hyper:
    name: str
    type: str
    default: object
    doc: str = ""
    choices: tuple = ()
    dim: str | None = None
    to_layer: bool = True  # False: for derivcheck only (say, how labels are encoded)
    also: tuple = ()  # values a layer may use instead of the default (log(y + 1e-7)): see Rule.alternatives
    names: tuple = ()  # other names a layer's parameter may give it (leaky ReLU's slope: alpha, negative_slope)
    vary: tuple = ()  # values the trials go through when the user did not set it (stride 1 and 2): see Rule.trial_hyper

    def parse(self, text: str, dims: set[str]):
        """A value from the command line: ``1``, ``1,0,2``, ``true``, ``none``."""
        text = text.strip()
        try:
            if self.type == "int" or self.type == "dim":
                return int(text)
            if self.type == "float":
                return float(text)
            if self.type == "bool":
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return text.lower() in ("true", "1")
            if self.type == "choice":
                if text not in self.choices:
                    raise ValueError
                return text
            if self.type == "axis":
                if text.lower() == "none":
                    return None
                parts = [int(p) for p in text.split(",") if p.strip()]
                return parts[0] if len(parts) == 1 and "," not in text else parts
            if self.type == "shape":
                return [p.strip() if p.strip() in dims else int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            pass
        raise DerivcheckError(f"hyperparameter '{self.name}' takes {self.describe()}, not '{text}'")

    def describe(self) -> str:
        return {
            "int": "an integer",
            "dim": "an integer (a dimension's size)",
            "float": "a number",
            "bool": "true or false",
            "choice": "one of " + ", ".join(map(str, self.choices)),
            "axis": "an axis, a comma-separated list of axes, or none",
            "shape": "a comma-separated shape (sizes or dimension names)",
        }[self.type]

    def check(self, value) -> bool:
        if self.type in ("int", "dim"):
            return isinstance(value, int) and not isinstance(value, bool)
        if self.type == "float":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "choice":
            return value in self.choices
        if self.type == "axis":
            return value is None or (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)
            )
        if self.type == "shape":
            return isinstance(value, (list, tuple)) and all(isinstance(v, (int, str)) for v in value)
        return False


@dataclass(frozen=True)
class DimRange:
    min: int = 1
    max: int = 4


@dataclass(frozen=True)
class Windows:
    """A layer's precondition on its sizes (CS231n's pooling and convolution assert it): windows of ``window``,
    one every ``stride``, with ``pad`` added on each side, tile ``size`` exactly. Each of window, stride and pad
    is a hyperparameter's name, a dimension's name or a whole number."""

    size: str
    window: str | int
    stride: str | int
    pad: str | int

    @staticmethod
    def _value(v, dims: dict, hyper: dict) -> int:
        return v if isinstance(v, int) else int(dims[v]) if v in dims else int(hyper[v])

    def fits(self, dims: dict, hyper: dict) -> bool:
        span = self._value(self.size, dims, hyper) + 2 * self._value(self.pad, dims, hyper) - self._value(self.window, dims, hyper)
        stride = self._value(self.stride, dims, hyper)
        return span >= 0 and stride > 0 and span % stride == 0

    def describe(self, dims: dict, hyper: dict) -> str:
        said = {k: self._value(getattr(self, k), dims, hyper) for k in ("size", "window", "stride", "pad")}
        return (f"({self.size} + 2*{self.pad} - {self.window}) is a multiple of {self.stride}, at least 0 "
                f"(here ({said['size']} + 2*{said['pad']} - {said['window']}) and {said['stride']})")


@dataclass(frozen=True)
class State:
    """A recurrent layer's initial state, set through a method before each forward (book 2's
    ``set_state(h, c)`` on a stateful TimeLSTM) and not passed to forward; ``grads`` names the
    attribute where backward leaves a differentiable state input's gradient (``dh``)."""

    method: str
    names: tuple
    grads: dict


@dataclass
class Rule:
    name: str
    summary: str
    path: str
    source: str
    formula: Formula
    inputs: dict[str, Input]
    labels: dict[str, Label]
    hyper: dict[str, Hyper]
    dims: dict[str, DimRange]
    output: tuple | None
    doc: str = ""
    from_output: Formula | None = None  # element-wise derivative in terms of `out` (sigmoid: out * (1 - out))
    closed_forms: dict = field(default_factory=dict)  # input -> Formula of its gradient (candidates, checked by explain)
    aliases: tuple = ()  # other names of the operation, for guessing a rule from a target's name (affine: linear)
    pairs: dict = field(default_factory=dict)  # a layer parameter that takes two hyperparameters as one (h, w) pair: kernel_size
    state: "State | None" = None  # inputs a layer takes through a method before forward (book 2's set_state)
    forward_only: str = ""  # why only the forward is checked (a test mode, whose backward is train mode's); "" to check both
    windows: tuple = ()  # preconditions on the sizes (Windows): trials draw only sizes that meet them
    _derivations: dict = field(default_factory=dict, repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def outputs(self) -> tuple:
        """The names of the layer's several outputs (LSTM's h_next, c_next), in the order it returns
        them; () for a layer with one. Several outputs are one array to the engine: stacked, the
        output's index first, each of the shape ``output`` declares."""
        return self.formula.outputs

    # -- hyperparameters -------------------------------------------------
    def resolve_hyper(self, given: dict | None = None) -> dict:
        """Defaults overlaid with ``given``; unknown names and bad values are refused."""
        values = {name: h.default for name, h in self.hyper.items()}
        for name, value in (given or {}).items():
            if name not in self.hyper:
                known = ", ".join(self.hyper) or "none"
                raise DerivcheckError(f"rule '{self.name}' has no hyperparameter '{name}' (it has: {known})")
            h = self.hyper[name]
            if h.type == "dim":  # a size: it pins its dimension (pinned_dims); the value is the dimension's
                if value is not None:
                    self.resolve_dims({h.dim: value}, partial=True)
                continue
            if isinstance(value, str) and h.type not in ("choice",):
                value = h.parse(value, set(self.dims))
            if not h.check(value):
                raise DerivcheckError(f"hyperparameter '{name}' of rule '{self.name}' takes {h.describe()}, not {value!r}")
            values[name] = value
        for lab in self.labels.values():  # a mask's rate is a probability (a dropout rate of 1.5 kept "-6 ± nan")
            if lab.kind == "kept":
                rate, dropping = (lab.drop, True) if lab.drop else (lab.keep, False)
                v = float(values[rate])
                if not ((0 <= v < 1) if dropping else (0 < v <= 1)):
                    raise DerivcheckError(
                        f"hyperparameter '{rate}' of rule '{self.name}' is the chance of {'dropping' if dropping else 'keeping'} "
                        f"an element: it must be in {'[0, 1)' if dropping else '(0, 1]'}, not {values[rate]!r}")
        return values

    def trial_hyper(self, k: int, given: dict | None = None) -> dict:
        """Trial ``k``'s hyperparameters: the defaults overlaid with ``given`` in trial 0; from trial 1 on, each
        hyperparameter with ``vary = [...]`` that the user did not set goes through its values, every
        combination in turn (a stride bug shows only at stride 2, an empty ``[pad:-pad]`` only at pad 0)."""
        given = given or {}
        values = self.resolve_hyper(given)
        varying = [h for h in self.hyper.values() if h.vary and h.name not in given]
        if k == 0 or not varying:
            return values
        step = k - 1
        for h in varying:  # the default last: trial 1 changes every one of them
            order = [v for v in h.vary if v != h.default] + [h.default]
            values[h.name] = order[step % len(order)]
            step //= len(order)
        return values

    def alternatives(self, given: dict | None = None) -> list[dict]:
        """Other hyperparameter values a layer may use, for those the user did not set.

        A hyperparameter with ``also = [1e-7]`` (the books' ``log(y + 1e-7)``) lets
        each check pass against the rule at those values too, with a note: the
        forward may use the epsilon and the backward be the exact gradient without it.
        """
        given = given or {}
        base = self.resolve_hyper(given)
        return [{**base, name: v} for name, h in self.hyper.items() if name not in given for v in h.also]

    # -- shapes ------------------------------------------------------------
    def pinned_dims(self, given: dict) -> dict:
        """Sizes that hyperparameters given by the user determine.

        A ``dim`` hyperparameter (repeat's ``N``) is its dimension's size; a
        ``shape`` one given concrete sizes where its default names dimensions
        (broadcast_to's ``shape = 4,3`` for ``[N, D]``) pins those dimensions.
        """
        pins: dict = {}

        def pin(d, v, name):
            v = self.resolve_dims({d: v}, partial=True)[d]
            if pins.get(d, v) != v:
                raise DerivcheckError(f"hyperparameter '{name}' sets {d}={v}, but {d}={pins[d]} is set too")
            pins[d] = v

        for name, value in given.items():
            h = self.hyper.get(name)
            if h is None or value is None:
                continue
            if h.type == "dim":
                pin(h.dim, value, name)
            elif h.type == "shape" and isinstance(h.default, (list, tuple)):
                value = h.parse(value, set(self.dims)) if isinstance(value, str) else value
                if len(value) == len(h.default):
                    for d, v in zip(h.default, value):
                        if isinstance(d, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0:
                            pin(d, v, name)
        return pins

    def resolve_dims(self, dims: dict, hyper: dict | None = None, partial: bool = False) -> dict:
        """Check an assignment of sizes to the rule's dimensions (every one, unless ``partial``)."""
        missing = [d for d in self.dims if d not in dims]
        unknown = [d for d in dims if d not in self.dims]
        if unknown:
            raise DerivcheckError(f"rule '{self.name}' has no dimension {', '.join(unknown)} (its dimensions: {', '.join(self.dims)})")
        out = {}
        for d, value in dims.items():
            if isinstance(value, str):
                if not value.strip().isdigit():
                    raise DerivcheckError(f"dimension {d} must be a positive integer, not '{value}'")
                value = int(value)
            if not isinstance(value, int) or value < 1:
                raise DerivcheckError(f"dimension {d} must be a positive integer, not {value!r}")
            fixed = self.dims[d]
            if fixed.min == fixed.max and value != fixed.min:  # two classes of a binary loss: the formula needs it
                raise DerivcheckError(f"dimension {d} of rule '{self.name}' is fixed at {fixed.min}, not {value}")
            out[d] = value
        if missing and not partial:
            raise DerivcheckError(f"rule '{self.name}' needs a size for {', '.join(missing)} (as in --shape {self.example_shape()})")
        return out

    def example_dims(self) -> dict:
        """Small, distinct sizes (2, 3, 4, ... within each range): a shape mix-up cannot hide."""
        return self.fit({d: min(r.max, max(r.min, 2 + i)) for i, (d, r) in enumerate(self.dims.items())})

    def fit(self, dims: dict, hyper: dict | None = None, fixed=()) -> dict:
        """``dims`` moved to the nearest sizes in range that meet the rule's preconditions (``windows``) at ``hyper``
        (the defaults when None); sizes in ``fixed`` (the user's --shape) are left as they are: see :meth:`unmet`."""
        if not self.windows:
            return dims
        hyper = self.resolve_hyper() if hyper is None else hyper
        out = dict(dims)
        for w in self.windows:
            if w.size in fixed or w.fits(out, hyper):
                continue
            r = self.dims[w.size]
            for v in sorted(range(r.min, r.max + 1), key=lambda v: (abs(v - out[w.size]), -v)):  # nearest, larger first
                if w.fits({**out, w.size: v}, hyper):
                    out[w.size] = v
                    break
        return out

    def unmet(self, dims: dict, hyper: dict) -> list[str]:
        """The preconditions ``dims`` do not meet at ``hyper``, as sentences."""
        return [w.describe(dims, hyper) for w in self.windows if not w.fits(dims, hyper)]

    def example_shape(self) -> str:
        return ",".join(f"{d}={n}" for d, n in self.example_dims().items())

    def shape_of(self, spec: tuple, dims: dict) -> tuple[int, ...]:
        return tuple(dims[s] if isinstance(s, str) else s.size(dims) if isinstance(s, Multiple) else s for s in spec)

    def element_counts(self, dims: dict) -> dict[str, int]:
        """How many elements each array has at ``dims``: the inputs, the labels and ("output") the output; an
        array whose shape these sizes do not settle is left out. Python integers: sizes may be any."""
        specs = {**{n: i.shape for n, i in self.inputs.items()}, **{n: lab.shape for n, lab in self.labels.items()}}
        if self.output is not None:
            specs["output"] = self.output
        counts = {}
        for name, spec in specs.items():
            try:
                shape = self.shape_of(spec, dims)
            except (KeyError, TypeError, ValueError):
                continue
            counts[name] = math.prod(int(n) for n in shape)
        return counts

    def sample_dims(self, rng: np.random.Generator) -> dict:
        return {d: int(rng.integers(r.min, r.max + 1)) for d, r in self.dims.items()}

    def planned_dims(self, k: int, seed: int, hyper: dict | None = None) -> dict:
        """Trial ``k``'s sizes: distinct, then all equal, then all minimal (size 1), then random from ``seed``;
        each moved to meet the rule's preconditions at ``hyper`` (:meth:`fit`)."""
        if k == 0:
            return self.fit(self.example_dims(), hyper)
        if k == 1:
            return self.fit({d: min(r.max, max(r.min, 3)) for d, r in self.dims.items()}, hyper)
        if k == 2:
            return self.fit({d: r.min for d, r in self.dims.items()}, hyper)
        return self.fit(self.sample_dims(np.random.default_rng([seed, k, 7])), hyper)

    def environment(self, dims: dict, hyper: dict, arrays: dict) -> dict:
        """Names a formula can read: arrays, dimensions and hyperparameters."""
        env = dict(dims)
        for name, h in self.hyper.items():
            value = hyper[name]
            if h.type == "dim":
                value = dims[h.dim]
            elif h.type == "shape":
                value = [dims[v] if isinstance(v, str) else v for v in value]
            env[name] = value
        env.update(arrays)
        return env

    def output_shape(self, dims: dict, hyper: dict) -> tuple[int, ...]:
        """The output's shape at these sizes: the formula evaluated numerically on constant arrays."""
        arrays = {n: np.full(self.shape_of(i.shape, dims), 0.5) for n, i in self.inputs.items()}
        for n, lab in self.labels.items():
            arrays[n] = np.full(self.shape_of(lab.symbolic_shape(), dims), 0.5)
        return np.shape(self.formula.evaluate(self.environment(dims, hyper, arrays), backend="numeric"))

    def formula_values(self, values: dict, dims: dict) -> dict:
        """The inputs (then the labels) as the formula reads them at ``dims``: float64, labels one-hot; checked."""
        out = {}
        for name, spec in self.inputs.items():
            if name not in values:
                raise DerivcheckError(f"missing value for input '{name}'")
            v = np.asarray(values[name], dtype=np.float64)
            shape = self.shape_of(spec.shape, dims)
            if v.shape != shape:
                raise DerivcheckError(f"input '{name}' has shape {v.shape}, the reference is at {shape}")
            out[name] = v
        for name in self.labels:
            if name not in values:
                raise DerivcheckError(f"missing value for label '{name}'")
            out[name] = self.encode_label(name, values[name], dims)
        return out

    def encode_label(self, name: str, value, dims: dict) -> np.ndarray:
        """A label as formulas see it, in float64: class indices (N,) become one-hot rows (N, C)."""
        lab = self.labels[name]
        value = np.asarray(value)
        given = self.shape_of(lab.shape, dims)
        want = self.shape_of(lab.symbolic_shape(), dims)
        if lab.kind == "classes" and value.shape == given and value.shape != want:
            classes = dims[lab.classes]
            if not np.issubdtype(value.dtype, np.integer) or value.min(initial=0) < 0 or value.max(initial=0) >= classes:
                raise DerivcheckError(f"label '{name}' must hold class indices 0..{classes - 1}")
            value = np.eye(classes)[value]
        if value.shape != want:
            raise DerivcheckError(f"label '{name}' has shape {value.shape}, expected {given} or {want}")
        return value.astype(np.float64)

    def at(self, hyper: dict | None = None, **sizes):
        """The derivation at concrete sizes: ``rule.at(N=2, D=3, H=4)``.

        Hyperparameters go in ``hyper`` or, by name, among the sizes.
        """
        hyper = dict(hyper or {})
        for name in list(sizes):
            if name in self.hyper and name not in self.dims:
                hyper[name] = sizes.pop(name)
        from derivcheck.engine.derive import derive  # local: keeps `import derivcheck.engine.rules` light

        return derive(self, self.resolve_dims(sizes), self.resolve_hyper(hyper))


# ---------------------------------------------------------------------------
# Loading


def _locate(text: str, table: str, key: str | None = None) -> int | None:
    """Line (1-based) of ``key`` inside ``[table]`` (or of the table's header)."""
    current = ""
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
    array = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]\s*(#.*)?$")  # [[windows]]: the i-th is table "windows[i]"
    seen: dict = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = array.match(line)
        if m:
            name = m.group(1).replace('"', "").replace(" ", "")
            current = f"{name}[{seen.setdefault(name, -1) + 1}]"
            seen[name] += 1
            if key is None and current == table:
                return number
            continue
        m = header.match(line)
        if m:
            current = m.group(1).replace('"', "").replace(" ", "")
            if key is None and current == table:
                return number
            continue
        if key is not None:
            parent, _, child = f"{table}.{key}".lstrip(".").rpartition(".")
            if current == parent and re.match(rf"^\s*\"?{re.escape(child)}\"?\s*=", line):
                return number
            # dotted or inline form inside the parent table: `x = {...}`, `x.shape = [...]`
            if table and current == table.rpartition(".")[0] and re.match(
                rf"^\s*\"?{re.escape(table.rpartition('.')[2])}\"?\s*(=|\.)", line
            ):
                return number
    if key is not None:
        return _locate(text, table) if table else None
    return None


class _Loader:
    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text

    def fail(self, message: str, table: str = "", key: str | None = None):
        raise RuleError(self.path, _locate(self.text, table, key), message)

    def table(self, data, table: str) -> dict:
        if not isinstance(data, dict):
            self.fail(f"[{table}] must be a table", *table.rsplit(".", 1))
        return data

    def keys(self, data: dict, allowed: set, table: str):
        for key in data:
            if key not in allowed:
                where = f"[{table}]" if table else "the top level"
                self.fail(f"unknown key '{key}' in {where} (allowed: {', '.join(sorted(allowed))})", table, key)

    def shape(self, value, table: str, key: str = "shape", multiples: bool = True) -> tuple:
        """A shape: dimension names, literal sizes and (where ``multiples``) whole multiples of a dimension, "3*H"."""
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            self.fail('shape must be a list of dimension names and sizes, as in ["N", "D"]', table, key)
        out = []
        for v in value:
            m = _MULTIPLE.match(v) if isinstance(v, str) and multiples else None
            if m:
                factor = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
                if (factor < 1 if isinstance(factor, int) else not _NAME.match(factor)) or not _NAME.match(m.group(2)):
                    self.fail(f"size '{v}' must be a positive whole number or a dimension times a dimension name, "
                              f"as in \"3*H\" or \"G*K\"", table, key)
                v = Multiple(factor, m.group(2))
            elif isinstance(v, str) and not _NAME.match(v):
                also = ' or a multiple of one, as in "3*H"' if multiples else ""
                self.fail(f"dimension name '{v}' must be {_NAME_RULE}{also}", table, key)
            if isinstance(v, int) and v < 1:
                self.fail(f"literal size {v} must be positive", table, key)
            out.append(v)
        return tuple(out)

    def domain(self, value, table: str, key: str = "domain") -> Domain:
        if value is None:
            return Domain()
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, dict):
            self.fail(f"{key} must be a kind name or a table such as " + '{kind = "uniform", low = 0.5, high = 2}', table, key)
        allowed = {"kind", "scale", "low", "high", "avoid", "margin"}
        bad = set(value) - allowed
        if bad:
            self.fail(f"unknown {key} key '{sorted(bad)[0]}' (allowed: {', '.join(sorted(allowed))})", table, key)
        kind = value.get("kind", "normal")
        if kind not in DOMAIN_KINDS:
            self.fail(f"unknown {key} kind '{kind}' (known: {', '.join(DOMAIN_KINDS)})", table, key)
        try:
            dom = Domain(
                kind=kind,
                scale=float(value.get("scale", 1.0)),
                low=float(value.get("low", 0.0)),
                high=float(value.get("high", 1.0)),
                avoid=tuple(float(v) for v in value.get("avoid", ())),
                margin=float(value.get("margin", 0.0)),
            )
        except (TypeError, ValueError):
            self.fail(f"{key} values (scale, low, high, avoid, margin) must be numbers", table, key)
        if kind == "uniform" and not dom.low < dom.high:
            self.fail(f"{key} needs low < high (got low={dom.low}, high={dom.high})", table, key)
        return dom


def load_rule_file(path) -> Rule:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError(path, None, f"cannot read rule: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RuleError(path, None, "rule is not UTF-8 text") from None
    return parse_rule(text, path)


def parse_rule(text: str, path) -> Rule:
    path = Path(path)
    L = _Loader(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise RuleError(path, int(m.group(1)) if m else None, f"not valid TOML: {msg}") from None

    L.keys(data, {"name", "summary", "doc", "formula", "output", "inputs", "labels", "hyper", "dims", "derivative_from_output",
                  "closed_form", "aliases", "pairs", "state", "forward_only", "windows"}, "")
    for required in ("name", "summary", "formula", "inputs"):
        if required not in data:
            raise RuleError(path, None, f"missing required key '{required}'")
    name = data["name"]
    if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9_]*$", name):
        L.fail("name must be lower-case letters, digits and _", "", "name")
    if name != path.stem:
        L.fail(f"name '{name}' must match the file name '{path.stem}.toml'", "", "name")
    if not isinstance(data["summary"], str) or not data["summary"].strip():
        L.fail("summary must be a non-empty one-line string", "", "summary")
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and re.match(r"^[a-z][a-z0-9_]*$", a) for a in aliases):
        L.fail('aliases must be a list of lower-case names, as in ["linear"]', "", "aliases")

    dims: dict[str, DimRange] = {}
    names: dict[str, str] = {}  # name -> what it is, to refuse clashes

    def claim(n, what, table, key):
        if not _NAME.match(n):
            L.fail(f"{what} name '{n}' must be {_NAME_RULE}", table, key)
        if n in names and not (what == "dimension" and names[n] == "dimension"):
            L.fail(f"'{n}' is used both as {names[n]} and as {what}", table, key)
        names[n] = what

    def add_dims(spec, table):
        for s in spec:
            for d in dim_names(s):
                claim(d, "dimension", table, "shape")
                dims.setdefault(d, DimRange())

    inputs = {}
    for n, spec in L.table(data["inputs"], "inputs").items():
        t = f"inputs.{n}"
        spec = L.table(spec, t)
        L.keys(spec, {"shape", "domain", "stress", "doc"}, t)
        if "shape" not in spec:
            L.fail(f"input '{n}' needs a shape, as in shape = [\"N\", \"D\"]", t)
        claim(n, "an input", "inputs", n)
        shape = L.shape(spec["shape"], t)
        add_dims(shape, t)
        stress = L.domain(spec["stress"], t, "stress") if "stress" in spec else None
        inputs[n] = Input(n, shape, L.domain(spec.get("domain"), t), stress)
    if not inputs:
        L.fail("a rule needs at least one differentiable input", "inputs")

    labels = {}
    for n, spec in L.table(data.get("labels", {}), "labels").items():
        t = f"labels.{n}"
        spec = L.table(spec, t)
        L.keys(spec, {"kind", "shape", "classes", "domain", "doc", "drop", "keep", "updated"}, t)
        kind = spec.get("kind", "classes")
        if kind not in LABEL_KINDS:
            L.fail(f"unknown label kind '{kind}' (known: {', '.join(LABEL_KINDS)})", t, "kind")
        claim(n, "a label", "labels", n)
        shape = L.shape(spec.get("shape", []), t)
        add_dims(shape, t)
        classes = spec.get("classes")
        if kind == "classes":
            if not isinstance(classes, str):
                L.fail("class labels need classes = \"C\": the dimension that counts the classes", t, "classes")
            claim(classes, "dimension", t, "classes")
            dims.setdefault(classes, DimRange())
        rates = {k: spec[k] for k in ("drop", "keep") if k in spec}
        if kind == "kept" and (len(rates) != 1 or not all(isinstance(v, str) for v in rates.values())):
            L.fail("a kept mask needs one of drop = \"NAME\" or keep = \"NAME\": the hyperparameter that is the chance "
                   "of dropping (keeping) an element", t, next(iter(rates), "kind"))
        if kind != "kept" and rates:
            L.fail("only a kept mask (kind = \"kept\") takes drop or keep", t, next(iter(rates)))
        updated = spec.get("updated", False)
        if not isinstance(updated, bool) or (updated and kind != "real"):
            L.fail("updated = true marks a real label the layer updates in place (DeZero's running mean)", t, "updated")
        labels[n] = Label(n, kind, shape, classes, L.domain(spec.get("domain"), t), rates.get("drop"), rates.get("keep"), updated)

    for d, spec in L.table(data.get("dims", {}), "dims").items():
        t = f"dims.{d}"
        spec = L.table(spec, t)
        if d not in dims:
            claim(d, "dimension", "dims", d)  # a size only hyperparameters use (broadcast_to's N)
        L.keys(spec, {"min", "max"}, t)
        lo, hi = spec.get("min", 1), spec.get("max", 4)
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            L.fail(f"dimension {d} needs integers 1 <= min <= max (got min={lo}, max={hi})", t)
        dims[d] = DimRange(lo, hi)

    hypers = {}
    for n, spec in L.table(data.get("hyper", {}), "hyper").items():
        t = f"hyper.{n}"
        spec = L.table(spec, t)
        L.keys(spec, {"type", "default", "doc", "choices", "dim", "layer", "also", "names", "vary"}, t)
        to_layer = spec.get("layer", True)
        if not isinstance(to_layer, bool):
            L.fail(f"'layer' of hyperparameter '{n}' must be true or false", t, "layer")
        other_names = spec.get("names", [])
        if not isinstance(other_names, list) or not all(isinstance(a, str) and a.isidentifier() for a in other_names):
            L.fail(f"'names' of hyperparameter '{n}' must be a list of parameter names, as in names = [\"alpha\"]", t, "names")
        kind = spec.get("type")
        if kind not in HYPER_TYPES:
            L.fail(f"hyperparameter '{n}' needs type = one of {', '.join(HYPER_TYPES)}", t, "type" if "type" in spec else None)
        if kind == "dim":
            d = spec.get("dim", n)
            if d not in dims:
                L.fail(f"hyperparameter '{n}' takes the size of dimension '{d}', which no input has", t, "dim")
            if n != d:
                claim(n, "a hyperparameter", "hyper", n)
            h = Hyper(n, kind, None, spec.get("doc", ""), dim=d, to_layer=to_layer, names=tuple(other_names))
        else:
            claim(n, "a hyperparameter", "hyper", n)
            if "default" not in spec:
                L.fail(f"hyperparameter '{n}' needs a default", t)
            default = spec["default"]
            if kind == "axis" and default == "none":
                default = None
            choices = tuple(spec.get("choices", ()))
            h = Hyper(n, kind, default, spec.get("doc", ""), choices=choices, to_layer=to_layer, names=tuple(other_names))
            also = spec.get("also", [])
            if not isinstance(also, list) or len(also) > 3 or not all(h.check(v) and v != default for v in also):
                L.fail(f"'also' of hyperparameter '{n}' must be a list of up to 3 values other than the default, "
                       f"each {h.describe()}", t, "also")
            h = dataclasses.replace(h, also=tuple(also))
            vary = spec.get("vary", [])
            if "vary" in spec and (not isinstance(vary, list) or not 2 <= len(vary) <= 4 or kind != "int"
                                   or not all(h.check(v) for v in vary) or len(set(vary)) != len(vary) or default not in vary):
                L.fail(f"'vary' of hyperparameter '{n}' must be a list of up to 4 distinct ints that holds its default "
                       f"(an int hyperparameter's values for the trials to go through, as in vary = [1, 2])", t, "vary")
            h = dataclasses.replace(h, vary=tuple(vary))
            if kind == "choice" and not choices:
                L.fail(f"hyperparameter '{n}' of type choice needs choices = [...]", t)
            if not h.check(default):
                L.fail(f"default {default!r} of hyperparameter '{n}' is not {h.describe()}", t, "default")

            if kind == "shape":
                for v in default:
                    if isinstance(v, str) and v not in dims:
                        L.fail(f"default shape names '{v}', which is no dimension of the inputs", t, "default")
        hypers[n] = h

    pairs = {}
    for n, members in L.table(data.get("pairs", {}), "pairs").items():
        if not (isinstance(members, list) and len(members) == 2 and all(m in hypers and hypers[m].type == "int" for m in members)
                and members[0] != members[1]):
            L.fail(f"pair '{n}' must name two int hyperparameters of this rule, as in {n} = [\"pool_h\", \"pool_w\"]", "pairs", n)
        if not re.match(r"^[a-z][a-z0-9_]*$", n):
            L.fail(f"pair name '{n}' must be lower-case letters, digits and _", "pairs", n)
        claim(n, "a pair of hyperparameters", "pairs", n)
        pairs[n] = tuple(members)

    state = None
    if "state" in data:
        t = L.table(data["state"], "state")
        L.keys(t, {"set", "inputs", "grads"}, "state")
        method, names, grads = t.get("set"), t.get("inputs"), L.table(t.get("grads", {}), "state")
        if not isinstance(method, str) or not method.isidentifier() or method.startswith("_"):
            L.fail("state needs set = \"METHOD\": the layer's method that sets the state before forward (set_state)", "state", "set")
        if not (isinstance(names, list) and names and all(isinstance(n, str) and (n in inputs or n in labels) for n in names)
                and len(set(names)) == len(names)):
            L.fail("state inputs must list the inputs and labels the set method takes, in its order: inputs = [\"h0\"]", "state", "inputs")
        for n in names:
            if n in inputs and n not in grads:
                L.fail(f"state input '{n}' has a gradient: name the attribute backward leaves it in, grads = {{{n} = \"dh\"}}",
                       "state", "grads")
        for n, attr in grads.items():
            if n not in names or n not in inputs or not (isinstance(attr, str) and attr.isidentifier() and not attr.startswith("_")):
                L.fail(f"state grads: '{n}' must be a state input, and its value an attribute name", "state", "grads")
        state = State(method, tuple(names), dict(grads))

    windows = []
    raw_windows = data.get("windows", [])
    if not isinstance(raw_windows, list):
        L.fail('windows is a list of tables, [[windows]] with size = "IH", window = "pool_h", stride = "stride", pad = 0',
               "", "windows")
    for i, spec in enumerate(raw_windows):
        t = f"windows[{i}]"
        spec = L.table(spec, t)
        L.keys(spec, {"size", "window", "stride", "pad", "doc"}, t)
        size = spec.get("size")
        if size not in dims:
            L.fail(f"windows size must name a dimension of the inputs (one of {', '.join(dims)}), not {size!r}", t, "size")
        parts = {}
        for key in ("window", "stride", "pad"):
            v = spec.get(key, 0 if key == "pad" else None)
            ok = (isinstance(v, int) and not isinstance(v, bool) and v >= (0 if key == "pad" else 1)) or \
                (isinstance(v, str) and (v in dims or (v in hypers and hypers[v].type == "int")))
            if not ok:
                L.fail(f"windows {key} must be a dimension, an int hyperparameter or a whole number "
                       f"({'at least 0' if key == 'pad' else 'at least 1'}), not {v!r}", t, key)
            parts[key] = v
        windows.append(Windows(size, parts["window"], parts["stride"], parts["pad"]))

    forward_only = data.get("forward_only", "")
    if not isinstance(forward_only, str) or ("forward_only" in data and not forward_only.strip()):
        L.fail('forward_only must be a one-line reason that only the forward is checked, as in "test mode: the '
               'layer\'s backward belongs to train mode"', "", "forward_only")

    output = None
    if "output" in data:
        output = L.shape(data["output"], "", "output")
        for d in (d for s in output for d in dim_names(s)):
            if d not in dims:
                L.fail(f"output names dimension '{d}', which no input has", "", "output")

    for n, lab in labels.items():
        if lab.kind == "kept":
            t = f"labels.{n}"
            key, rate = ("drop", lab.drop) if lab.drop else ("keep", lab.keep)
            if rate not in hypers or hypers[rate].type != "float":
                L.fail(f"{key} = \"{rate}\" names no float hyperparameter of this rule", t, key)
            if output is None or tuple(lab.shape) != tuple(output):
                L.fail("a kept mask is read back from the output, so its shape is the output's (output = [...])", t, "shape")

    ftext = data["formula"]
    if not isinstance(ftext, str):
        L.fail("formula must be a string", "", "formula")
    fline = _locate(text, "", "formula") or 1
    if re.match(r'^\s*formula\s*=\s*("""|\'\'\')\s*$', text.splitlines()[fline - 1]):
        fline += 1  # TOML drops the newline right after an opening """
    known = set(inputs) | set(labels) | set(hypers) | set(dims)
    formula = Formula.parse(ftext, path, fline, known)

    from_output = None
    if "derivative_from_output" in data:
        dtext = data["derivative_from_output"]
        if not isinstance(dtext, str) or len(inputs) != 1:
            L.fail("derivative_from_output must be a formula string, for a rule with one input", "", "derivative_from_output")
        from_output = Formula.parse(dtext, path, _locate(text, "", "derivative_from_output") or 1, known | {"out"})

    closed_forms = {}
    for n, ctext in L.table(data.get("closed_form", {}), "closed_form").items():
        if n not in inputs:
            L.fail(f"closed_form names '{n}', which is no input (inputs: {', '.join(inputs)})", "closed_form", n)
        if not isinstance(ctext, str):
            L.fail(f"closed_form {n} must be a formula string", "closed_form", n)
        assigned = formula.assigned
        # the upstream gradient: dout, or one per output (dh_next, dc_next); out is the output, or the outputs by name
        upstream = {f"d{o}" for o in formula.outputs} if formula.outputs else {"dout", "out"}
        closed_forms[n] = Formula.parse(ctext, path, _locate(text, "closed_form", n) or 1, known | assigned | upstream)

    rule = Rule(
        name=name,
        summary=data["summary"].strip(),
        path=str(path),
        source=text,
        formula=formula,
        inputs=inputs,
        labels=labels,
        hyper=hypers,
        dims=dims,
        output=output,
        doc=data.get("doc", ""),
        from_output=from_output,
        closed_forms=closed_forms,
        aliases=tuple(aliases),
        pairs=pairs,
        state=state,
        forward_only=forward_only.strip(),
        windows=tuple(windows),
    )
    _check_shapes(rule, L)
    return rule


def _check_shapes(rule: Rule, L: _Loader) -> None:
    """Evaluate the formula numerically at distinct sizes: a shape that cannot work fails here."""
    probe = rule.example_dims()
    out = np.empty(rule.output_shape(probe, rule.resolve_hyper()))
    if rule.output is not None:
        want = rule.shape_of(rule.output, probe)
        if rule.outputs:
            want = (len(rule.outputs), *want)  # each output has the declared shape
        if out.shape != want:
            sizes = ", ".join(f"{k}={v}" for k, v in probe.items())
            if rule.outputs:  # the stacked outputs: the output's index first
                L.fail(f"formula's {len(rule.outputs)} outputs each have shape {out.shape[1:]} but output declares "
                       f"{list(rule.output)} = {want[1:]} (at {sizes})", "", "output")
            L.fail(f"formula gives shape {out.shape} but output declares {list(rule.output)} = {want} (at {sizes})", "", "output")


# ---------------------------------------------------------------------------
# The catalog


def builtin_rules_dir() -> Path:
    """The installed catalog (package ``derivcheck.catalog``), or ``rules/`` of a source checkout."""
    try:
        return Path(str(resources.files("derivcheck.catalog")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "rules"


def rule_dirs(extra=()) -> list[Path]:
    """Search order: the user's folders (first wins), then the built-in catalog."""
    dirs = [Path(p) for p in extra]
    env = os.environ.get("DERIVCHECK_RULES")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    for d in dirs:
        if not d.is_dir():
            raise DerivcheckError(f"rule folder '{d}' does not exist (given by --rules, DERIVCHECK_RULES or the config's 'rules')")
    return dirs + [builtin_rules_dir()]


def rule_files(extra=()) -> dict[str, Path]:
    """Every rule file by name, none of them read; a user's shadows a built-in one of the same name."""
    found: dict[str, Path] = {}
    for d in rule_dirs(extra):
        for f in sorted(d.glob("*.toml")):
            found.setdefault(f.stem, f)
    return found


def list_rules(extra=(), errors: list | None = None) -> dict[str, Rule]:
    """Every rule by name. With ``errors``, a rule file that cannot be loaded is added there and skipped."""
    found: dict[str, Rule] = {}
    for name, f in rule_files(extra).items():
        try:
            found[name] = _cached_load(f)
        except RuleError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return found


def load_rule(name: str, extra=()) -> Rule:
    """The rule called ``name``, from the user's folders or the built-in catalog."""
    if name.endswith(".toml") or os.sep in name:
        return _cached_load(Path(name))
    for d in rule_dirs(extra):
        f = d / f"{name}.toml"
        if f.is_file():
            return _cached_load(f)
    known = sorted(p.stem for d in rule_dirs(extra) for p in d.glob("*.toml"))
    close = [k for k in known if k.startswith(name[:3])] or known
    raise DerivcheckError(f"no rule named '{name}' (known: {', '.join(close)}; `derivcheck rules` lists them all)")


def aliases(extra=()) -> dict:
    """alias (underscores dropped) -> rule name; the first rule listing an alias has it."""
    found: dict = {}
    for rule_name, rule in list_rules(extra, errors=[]).items():
        for a in rule.aliases:
            found.setdefault(a.replace("_", ""), rule_name)
    return found


_LOADED: dict[tuple, Rule] = {}


def _cached_load(path: Path) -> Rule:
    import stat

    try:
        st = path.stat()
    except OSError as exc:
        raise RuleError(path, None, f"cannot read rule: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the read forever
        raise RuleError(path, None, "not a regular file: a rule is a .toml file")
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _LOADED:
        _LOADED[key] = load_rule_file(path)
    return _LOADED[key]
