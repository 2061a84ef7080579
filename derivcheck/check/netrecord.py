"""Run a whole network as its author does and record what flows: the layer's side of a network check.

This module runs in the layer's process (:mod:`derivcheck.run.remote`), never in the judge's. It builds
the model at the trial's sizes, overwrites its parameters with values from the seed, runs one
forward/backward per step with each layer's calls recorded, and hands back, per step, what the judge
(:mod:`derivcheck.check.network`) needs and nothing it would have to believe beyond data: each link's
name, rule name, binding and recorded calls (copies made as each call returned), the model's
parameters, loss and gradients, and the facts only the live objects can tell, read as the step ended
(which parameter array a layer holds *is* which of the model's, whether one layer object sits in two
places, whether the model's gradient list still holds a layer's slot, which DeZero Parameters a node's
input depends on). Every verdict is the judge's.

:class:`Link` is both sides' form of one layer: here with ``layer`` (the live object), in the judge
without it (:func:`link_of_plain`).
"""
from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field

import numpy as np

from derivcheck import wire
from derivcheck.check import calls
from derivcheck.check.binding import bind, Binding, norm_name
from derivcheck.check.conventions.base import call_user, LayerError, own, stage
from derivcheck.check.conventions.dezero import dezero_data, dezero_grad
from derivcheck.check.conventions.dlfs1 import dlfs1_gradient
from derivcheck.check.loading import KNOWN_NETWORKS, load_target, LOSS_ATTRS, model_shape
from derivcheck.check.targets import rule_in_convention
from derivcheck.errors import DerivcheckError
from derivcheck.results import NUMPY_DTYPES

_SIZE_WORDS = ("num_classes", "n_classes", "num_class")
# a CS231n model's regularization strength (its constructor's reg), set by hand: any value far from 0 makes
# the term's gradient, 2c·reg·W, stand far above rounding, so a missing or wrong term is seen
REG = 0.1


# ---------------------------------------------------------------------------
# The links of a network


@dataclass
class Call:
    kind: str  # "forward" or "backward"
    args: tuple
    out: object = None
    held: dict = field(default_factory=dict)  # parameters at the forward call
    grads: dict = field(default_factory=dict)  # parameter gradients right after the backward call
    wrote: list = field(default_factory=list)  # the arguments the call wrote into (calls.changed)


@dataclass
class Link:
    """One layer of the network: its rule, where it keeps parameters and gradients, what it was called with."""

    name: str  # as the model names it: "Affine1" (book 1's OrderedDict), "layers[0]", "lastLayer"
    kind: str  # its class's name (a function's, for CS231n's layer functions)
    style: str
    layer: object = None  # the live object: in the layer's process only
    rule: object = None
    why: str = ""  # no rule: why
    binding: Binding | None = None
    slots: dict = field(default_factory=dict)  # rule input -> attribute name (dlfs1) or params index (dlfs2)
    calls: list = field(default_factory=list)  # recorded calls of this step
    fn: dict = field(default_factory=dict)  # functional: the forward (or loss) call's role, label, stem, pair_label, paired_by
    fn_call: object = None  # functional: the recorded call (calls.FnCall), in the layer's process only
    grad_at: list = field(default_factory=list)  # functional: where each input's gradient came from ("affine_backward#2[1]")
    node_inputs: list = field(default_factory=list)  # dezero: (kind, rule name) of each input, in call order
    # read off the live objects as the step ended (see read_facts)
    instance: int = 0  # the place of the first link that is this very object (a shared instance: not its own)
    param_of: dict = field(default_factory=dict)  # rule input -> the model parameter it is (identity), if one
    held_now: dict = field(default_factory=dict)  # rule input -> the array the layer computes with
    grads_now: dict = field(default_factory=dict)  # rule input -> the layer's gradient of it after backward
    kept: list = field(default_factory=list)  # the arrays it keeps (a dropout's mask), where its rule draws one
    inputs: list = field(default_factory=list)  # dezero: per input, {"var": its Variable's token, "upstream": [params]}

    def label(self) -> str:
        return self.name if self.name == self.kind or self.kind in self.name else f"{self.name} ({self.kind})"

    def grad_where(self, n) -> str:
        if self.style == "dlfs2":
            return f"{self.name}.grads[{self.slots[n]}]"
        return f"{self.name}.d{self.slots[n]}"


def _held(link: Link, n):
    """The array the live layer computes with for parameter ``n``."""
    if link.style == "dlfs2":
        return link.layer.params[link.slots[n]]
    return getattr(link.layer, link.slots[n])


def _grad(link: Link, n):
    """The live layer's gradient of parameter ``n`` after its backward."""
    if link.style == "dlfs2":
        grads = getattr(link.layer, "grads", None)
        return grads[link.slots[n]] if isinstance(grads, list) and link.slots[n] < len(grads) else None
    return dlfs1_gradient(link.layer, link.slots[n], n)


def link_rule(name: str, style: str, rule_dirs):
    """The rule of a network's layer; a rule of several outputs (an LSTM's h_next, c_next) is refused:
    a network passes one array from layer to layer."""
    rule = rule_in_convention(name, style, rule_dirs, how="name it after a rule")
    if rule.outputs:
        raise DerivcheckError(f"rule '{rule.name}' has several outputs ({', '.join(rule.outputs)}), and a layer of several "
                              f"outputs is not checked inside a network yet: check it alone with derivcheck verify")
    return rule


def _bind_link(link: Link, rule_dirs) -> None:
    try:
        link.rule = link_rule(link.kind, link.style, rule_dirs)
    except DerivcheckError as exc:
        link.why = str(exc)
        return
    cls = type(link.layer)
    try:
        link.binding = bind(link.rule, cls.__init__, cls.forward, link.kind, call_takes_all_inputs=False)
    except DerivcheckError as exc:
        link.rule, link.why = None, str(exc)
        return
    held = [n for kind, n in link.binding.ctor.values() if kind == "input"]
    if link.style == "dlfs2":
        params = getattr(link.layer, "params", None)
        if not isinstance(params, list) or len(params) < len(held):
            link.rule, link.why = None, f"{link.kind}.params does not list its {len(held)} parameter(s) {', '.join(held)}"
            return
        link.slots = {n: i for i, n in enumerate(held)}
        return
    names = {p: n for p, (kind, n) in link.binding.ctor.items() if kind == "input"}
    for p, n in names.items():
        attr = next((a for a, v in vars(link.layer).items() if isinstance(v, np.ndarray)
                     and norm_name(a) in (norm_name(p), norm_name(n))), None)
        if attr is None:
            link.rule, link.why = None, f"{link.kind} keeps no attribute for its parameter {p}"
            return
        link.slots[n] = attr


def discover(model, style: str, rule_dirs=(), with_loss: bool = True) -> tuple[list[Link], Link | None]:
    """The model's layers in order, and its loss layer (None when it has none, or ``with_loss`` is false)."""
    raw = getattr(model, "layers", None)
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, (list, tuple)):
        items = [(f"layers[{i}]", layer) for i, layer in enumerate(raw)]
    else:
        raise DerivcheckError(f"{type(model).__name__}.layers is a {type(raw).__name__}, not a list or dict of layers")
    links = [Link(str(name), type(layer).__name__, style, layer) for name, layer in items]
    loss = next((Link(a, type(getattr(model, a)).__name__, style, getattr(model, a)) for a in LOSS_ATTRS
                 if getattr(model, a, None) is not None), None) if with_loss else None
    for link in links + ([loss] if loss else []):
        _bind_link(link, rule_dirs)
    return links, loss


# ---------------------------------------------------------------------------
# Recording what flows


def _record(link: Link) -> None:
    """Wrap the instance's forward and backward: each call is recorded (copies) and reported as a stage."""
    layer = link.layer
    fwd, bwd = layer.forward, getattr(layer, "backward", None)

    def forward(*args, **kwargs):
        call = Call("forward", tuple(own(a) for a in (*args, *kwargs.values())),
                    held={n: own(_held(link, n)) for n in link.slots} if link.rule else {})
        stage(f"{link.name}.forward")
        out = fwd(*args, **kwargs)
        call.out = own(out)
        call.wrote = calls.written(fwd, args, kwargs, call.args)
        link.calls.append(call)
        return out

    def backward(*args, **kwargs):
        call = Call("backward", tuple(own(a) for a in (*args, *kwargs.values())))
        stage(f"{link.name}.backward")
        out = bwd(*args, **kwargs)
        call.out = own(out)
        call.wrote = calls.written(bwd, args, kwargs, call.args)
        call.grads = {n: own(_grad(link, n)) for n in link.slots} if link.rule else {}
        link.calls.append(call)
        return out

    layer.forward = forward
    if bwd is not None:
        layer.backward = backward


def _undrawn(link: Link) -> bool:
    """Its rule has a label the layer draws itself (dropout's mask): the judge reads it off what the layer keeps."""
    return link.rule is not None and any(not lab.given for lab in link.rule.labels.values())


def arrays_in(kept, depth=0) -> list:
    """The arrays in a layer's attributes or a cache: a dict's values, a tuple's items, two levels down."""
    if isinstance(kept, np.ndarray):
        return [kept]
    items = kept.values() if isinstance(kept, dict) else kept if isinstance(kept, (tuple, list)) else ()
    return [a for v in items for a in (arrays_in(v, depth + 1) if depth < 2 else [])]


def read_facts(order: list[Link], params) -> None:
    """What only the live objects tell, read into each link as the step ends: which link is which object,
    which model parameter each held array is, the arrays held and the gradients left."""
    first = {}
    for i, link in enumerate(order):
        link.instance = first.setdefault(id(link.layer), i)
        for n in link.slots:
            arr = _held(link, n)
            link.param_of[n] = next((pn for pn, p in params if p is arr), None)
            link.held_now[n] = own(arr)
            link.grads_now[n] = own(_grad(link, n))
        if _undrawn(link):
            link.kept = [own(a) for a in arrays_in(vars(link.layer) if hasattr(link.layer, "__dict__") else {})]


def _fresh_values(arrays, rng) -> None:
    """What an optimizer does: new values written into the same arrays, of scale 1/sqrt(fan-in)
    (O(1) logits at any size: weights of scale 1 overflow a softmax at MNIST sizes, 0.01 hides a wrong layer)."""
    for arr in arrays:
        fan_in = arr.shape[0] if arr.ndim >= 2 else 4
        arr[...] = rng.normal(size=arr.shape) / np.sqrt(fan_in)


def _input_width(links, params) -> int:
    """The width of x: the first parametrised layer's first parameter's rows (W is D x H)."""
    for link in links:
        for n in link.slots:
            return int(np.shape(_held(link, n))[0])
    raise DerivcheckError("the network has no layer with parameters, so the width of its input cannot be told")


# ---------------------------------------------------------------------------
# Sizes


def size_params(cls) -> list[str]:
    """The constructor's size arguments (input_size, hidden_size, output_size, ..._dim, num_classes)."""
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name.endswith(("_size", "_dim", "_dims")) or p.name in _SIZE_WORDS:
            out.append(p.name)
    return out


def _plan(names: list[str], k: int, pinned: dict) -> dict:
    """Trial k's sizes: distinct, then all equal, then a batch of 1 (classes stay >= 2).

    ``names`` are the constructor's sizes, then N (the batch) and, for a model whose
    input width is not a constructor argument (DeZero's Linear learns it), D.
    """
    if k % 3 == 0:
        sizes = {n: 5 - min(i, 2) + (k // 3) for i, n in enumerate(names)}
        sizes["N"] = 2 + k // 3
    elif k % 3 == 1:
        sizes = {n: 3 for n in names}
        sizes["N"] = 3
    else:
        sizes = {n: 2 for n in names}
        sizes["N"] = 1
    sizes.update(pinned)
    return sizes


def _dedent(cls) -> str:
    import textwrap

    return textwrap.dedent(inspect.getsource(cls))


# ---------------------------------------------------------------------------
# The recorder


class NetworkRecorder:
    """One model class, in the layer's process: :meth:`header` says what it is, :meth:`trial` runs trial k."""

    def __init__(self, target: str, *, dtype="float64", seed=0, trials=3, steps=2, shape=None, rule_dirs=(), **_ignored):
        self.dtype = NUMPY_DTYPES[dtype]  # one of DTYPES: the judge refused any other before asking (network.py)
        self.seed, self.steps, self.rule_dirs = seed, steps, rule_dirs
        self.cls, self.module, self.name = load_target(target)
        if not inspect.isclass(self.cls):
            raise DerivcheckError(f"{self.name} is not a class: a network is checked as a model class")
        methods = {n for n, _ in inspect.getmembers(self.cls, callable)}
        attrs = set()
        for klass in self.cls.__mro__[:-1]:  # its own source and its bases' (class BadNet(TwoLayerNet))
            try:
                src = ast.parse(_dedent(klass))
            except (OSError, TypeError, SyntaxError):
                continue
            attrs |= {n.attr for n in ast.walk(src) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                      and n.value.id == "self"}
        self.style = model_shape(methods, attrs, {b.__name__ for b in self.cls.__mro__[1:]})
        if self.style is None:
            raise DerivcheckError(f"{self.name} is not a network derivcheck knows: {KNOWN_NETWORKS}")
        self.forward_only = self.style == "predict"
        self.sizes = size_params(self.cls)
        shaped = [(p.name, p.default) for p in list(inspect.signature(self.cls.__init__).parameters.values())[1:]
                  if p.name in self.sizes and isinstance(p.default, (tuple, list)) and len(p.default) >= 2
                  and not p.name.endswith("_dims")]
        if shaped:  # CS231n's ThreeLayerConvNet(input_dim=(3, 32, 32)): images, which this check cannot feed
            said = ", ".join(f"{n}={tuple(v)}" for n, v in shaped)
            raise DerivcheckError(
                f"{self.name} takes a shape ({said}): its input is an image batch (N, C, H, W) or another array of "
                f"rank > 2, and derivcheck's network check feeds a batch of vectors (N, D) only. Check its layers one "
                f"by one (derivcheck verify on each layer function or class; conv_forward_naive, max_pool_forward_fast, "
                f"... have rules)")
        unsized = [p.name for p in list(inspect.signature(self.cls.__init__).parameters.values())[1:]
                   if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in self.sizes]
        if unsized:  # the model cannot be built from sizes: a binding problem, not a failing model
            raise DerivcheckError(
                f"cannot build {self.name}: its constructor needs {', '.join(unsized)}, which is no size derivcheck "
                f"gives (a constructor's sizes are named input_size, hidden_size, output_size, ..._size, ..._dim or "
                f"num_classes); give {'them' if len(unsized) > 1 else 'it'} a default, or check a model class whose "
                f"constructor takes its sizes by those names")
        self.shape = {}
        for k, v in (shape or {}).items():
            if not str(v).strip().isdigit() or int(v) < 1:
                raise DerivcheckError(f"--shape {k} must be a positive integer, not '{v}'")
            self.shape[k] = int(v)
        extra = ["N", "D"] if self.style == "dezero" else ["N"]
        unknown = [k for k in self.shape if k not in self.sizes and k not in extra]
        if unknown:
            raise DerivcheckError(f"--shape names {', '.join(unknown)}, but {self.name}'s constructor has the sizes "
                                  f"{', '.join(self.sizes) or 'none'} (and N, the batch"
                                  + (", and D, the input's width)" if self.style == "dezero" else ")"))

    def header(self) -> dict:
        """What the judge needs to know of the model before its trials."""
        return {"name": self.name, "style": self.style, "shape": self.shape}

    def build(self, sizes: dict, trial_seed: int):
        np.random.seed(trial_seed % 2**32)  # the model's own initialisation (np.random.randn) follows the seed
        args = {n: [sizes[n]] * 2 if n.endswith("_dims") else sizes[n] for n in self.sizes}  # hidden_dims: two layers
        ctor = inspect.signature(self.cls.__init__).parameters
        if self.style == "functional" and "reg" in ctor:
            args["reg"] = REG
        if "dtype" in ctor:  # CS231n's FullyConnectedNet(dtype=np.float32) casts its params
            args["dtype"] = self.dtype
        return call_user(self.cls, list(args.items()), f"{self.name}({', '.join(f'{k}={v}' for k, v in args.items())})")

    def model_params(self, model) -> list[tuple[str, np.ndarray]]:
        params = getattr(model, "params", None)
        if isinstance(params, dict):
            return [(f"params['{k}']", v) for k, v in params.items() if isinstance(v, np.ndarray)]
        if isinstance(params, list):
            return [(f"params[{i}]", v) for i, v in enumerate(params) if isinstance(v, np.ndarray)]
        raise DerivcheckError(f"{self.name} has no params dict or list after construction")

    def trial(self, k: int) -> dict:
        """Trial ``k``: {"sizes", "seed", "steps": [one record per step run], "raised": None or where the model
        raised ({"step", "stage", "message", "wrong_rank", "built"}), "writes": [(call, argument) written in
        place], "links": the layers as found before the first step (book 1 and 2; [] else)}; as plain data."""
        sizes = _plan(self.sizes + (["D"] if self.style == "dezero" else []), k, self.shape)
        if self.style == "dezero":  # N and D are not the constructor's
            sizes["N"], sizes["D"] = sizes.pop("N"), sizes.pop("D")
        trial_seed = self.seed + k
        out = {"sizes": sizes, "seed": trial_seed, "steps": [], "raised": None, "writes": [], "links": []}
        self.found = out["links"]  # the layers found before the first step, if it raises (book 1 and 2)
        step = 0
        try:
            model = self.build(sizes, trial_seed)
            run = {"predict": self.forward_trial, "dezero": self.dezero_trial,
                   "functional": self.functional_trial}.get(self.style, self.loss_trial)
            for step, record in enumerate(run(model, sizes, trial_seed, out["writes"])):
                out["steps"].append(wire.plain(record))  # now: the next step writes into the same arrays
                step += 1
        except LayerError as exc:
            out["raised"] = {"step": step, "stage": str(exc.stage), "message": str(exc), "wrong_rank": bool(exc.wrong_rank),
                             "built": "model" in locals()}
        return wire.plain(out)

    # -- book 1 and 2: layers with forward/backward, a loss layer ---------------
    def loss_trial(self, model, sizes, trial_seed, writes):
        links, loss = discover(model, self.style, self.rule_dirs)
        if loss is None:
            raise DerivcheckError(f"{self.name} has no loss layer ({', '.join(LOSS_ATTRS)})")
        order = links + [loss]
        self.found += [plain_link(l) for l in order]
        rng = np.random.default_rng([trial_seed, 11])
        params = self.model_params(model)
        out_size = sizes.get(self.sizes[-1], 2) if self.sizes else 2
        for step in range(self.steps):
            _fresh_values([arr for _, arr in params], rng)
            wrapped = set()
            for link in order:
                link.calls, link.param_of, link.held_now, link.grads_now = [], {}, {}, {}
                if step == 0 and id(link.layer) not in wrapped:  # one instance in two places is wrapped once
                    _record(link)
                    wrapped.add(id(link.layer))
            width = _input_width(links, params)
            x = rng.normal(size=(sizes["N"], width)).astype(self.dtype)
            t = rng.integers(0, out_size, size=sizes["N"])
            model_loss, model_grads = self.forward_backward(model, x, t)
            writes += [(f"{link.label()}.{call.kind}", n) for link in order for call in link.calls for n in call.wrote]
            read_facts(order, params)
            record = {"links": [plain_link(l) for l in order], "params": [(n, own(p)) for n, p in params],
                      "x": x, "t": t, "model_loss": model_loss}
            if self.style == "dlfs1":
                record["model_grads"] = own(model_grads)
            else:  # book 2's model.grads: the very list of the layers' slots, gathered once
                record["grads_type"] = type(model_grads).__name__
                record["grads_is_slot"] = self.grads_are_slots(order, params, model_grads)
            yield record

    @staticmethod
    def grads_are_slots(order, params, model_grads) -> list:
        """For each parameter, whether model.grads[i] is the very array its layer's grads slot holds."""
        if not isinstance(model_grads, list):
            return []
        slot_of = {}
        for link in order:
            grads = getattr(link.layer, "grads", None)
            for n, pname in link.param_of.items():
                if pname is not None and isinstance(grads, list) and link.slots[n] < len(grads):
                    slot_of[pname] = grads[link.slots[n]]
        return [i < len(model_grads) and pname in slot_of and model_grads[i] is slot_of[pname]
                for i, (pname, _) in enumerate(params)]

    def forward_backward(self, model, x, t):
        """Run the model as its author does: (the loss it returned, the gradients it hands back)."""
        if self.style == "dlfs1":
            seen = {}
            loss_fn = model.loss

            def loss(*args, **kwargs):
                seen["loss"] = own(loss_fn(*args, **kwargs))
                return seen["loss"]

            model.loss = loss
            grads = call_user(model.gradient, [(None, x), (None, t)], f"{self.name}.gradient")
            return seen.get("loss"), grads
        value = call_user(model.forward, [(None, x), (None, t)], f"{self.name}.forward")
        call_user(model.backward, [], f"{self.name}.backward")
        return own(value), getattr(model, "grads", None)

    # -- a model with predict() and no loss ---------------------------------------
    def forward_trial(self, model, sizes, trial_seed, writes):
        raw = getattr(model, "layers", None)
        first = next(iter(raw.values() if isinstance(raw, dict) else raw or []), None)
        style = "dlfs2" if isinstance(getattr(first, "params", None), list) else "dlfs1"
        links, _ = discover(model, style, self.rule_dirs, with_loss=False)
        self.found += [plain_link(l) for l in links]
        rng = np.random.default_rng([trial_seed, 11])
        held = [(f"{l.name}.{n}", _held(l, n)) for l in links if l.rule for n in l.slots]
        for step in range(self.steps):
            _fresh_values([arr for _, arr in held], rng)
            for link in links:
                link.calls, link.param_of, link.held_now, link.grads_now = [], {}, {}, {}
            if step == 0:
                for link in {id(l.layer): l for l in links}.values():
                    _record(link)
            x = rng.normal(size=(sizes["N"], _input_width(links, held))).astype(self.dtype)
            out = call_user(model.predict, [(None, x)], f"{self.name}.predict")
            read_facts(links, [])
            yield {"links": [plain_link(l) for l in links], "x": x, "out": own(out)}

    # -- DeZero: the graph of Functions a call of the model made ----------------
    def dezero_trial(self, model, sizes, trial_seed, writes):
        rng = np.random.default_rng([trial_seed, 11])
        width = sizes.get("D", 3)
        for step in range(self.steps):
            x = rng.normal(size=(sizes["N"], width)).astype(self.dtype)
            if step == 0:  # a first call makes the parameters a layer sizes from its input (DeZero's Linear)
                call_user(model, [(None, x)], f"{self.name}(x)")
            params = _dezero_params(model)
            _fresh_values([p.data for _, p in params], rng)
            for _, p in params:
                p.grad = None
            y = call_user(model, [(None, x)], f"{self.name}(x)")
            if not hasattr(y, "creator") or y.creator is None:
                raise DerivcheckError(f"{self.name}(x) returned {type(y).__name__} with no graph behind it: a "
                                      f"DeZero model returns the Variable its Functions made")
            nodes = _graph(y)
            links = [Link(f"{type(f).__name__}#{i}", type(f).__name__, "dezero", f) for i, f in enumerate(nodes)]
            owners = {id(p): n for n, p in params}
            for link in links:
                link.name = _node_name(link, owners)
                _bind_node(link, self.rule_dirs)
                _record_node(link)
            cot = rng.normal(size=y.data.shape).astype(y.data.dtype)
            y.grad = dezero_grad(cot, y)
            call_user(y.backward, [], f"{self.name}: y.backward()")
            tokens = {}  # id(Variable) -> a number the judge can compare
            for link in links:
                link.inputs = [{"var": tokens.setdefault(id(v), len(tokens)),
                                "upstream": sorted(owners[i] for i in _upstream_params(v, owners))}
                               for v in link.layer.inputs]
                if _undrawn(link):
                    link.kept = [own(a) for a in arrays_in(vars(link.layer))]
            yield {"links": [plain_link(l) for l in links],
                   "params": [(n, own(p.data)) for n, p in params],
                   "param_vars": [tokens.get(id(p)) for _, p in params],
                   "param_grads": [own(dezero_data(p.grad)) for _, p in params]}

    # -- CS231n: loss(X, y) -> (loss, grads), made of layer functions ------------
    def functional_trial(self, model, sizes, trial_seed, writes):
        rng = np.random.default_rng([trial_seed, 11])
        params = self.model_params(model)
        width = next((int(a.shape[0]) for _, a in params if a.ndim >= 2), None)
        if width is None:
            raise DerivcheckError(f"{self.name}.params has no weight matrix, so the width of X cannot be told")
        classes = sizes.get(self.sizes[-1], 2) if self.sizes else 2
        for step in range(self.steps):
            _fresh_values([a for _, a in params], rng)
            x = rng.normal(size=(sizes["N"], width)).astype(self.dtype)
            t = rng.integers(0, classes, size=sizes["N"])
            given = x.copy()  # what the model was given, whatever it writes into X
            with calls.Recorder(self.module) as rec:
                result = call_user(model.loss, [(None, x), (None, t)], f"{self.name}.loss")
            if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
                raise DerivcheckError(f"{self.name}.loss(X, y) returned a {type(result).__name__}, not (loss, grads): a "
                                      f"CS231n model returns the loss and a dict of gradients keyed as its params")
            calls.pair(rec.calls)
            writes += [(c.label, n) for c in rec.calls for n in c.wrote]
            links = self.functional_links(rec.calls, params)
            if not any(link.rule and link.fn["role"] == "loss" for link in links):
                raise DerivcheckError(
                    f"{self.name}.loss called no loss function with a rule (softmax_loss(x, y), svm_loss(x, y)), so the "
                    f"model's gradient cannot be composed from rules; it called "
                    f"{', '.join(dict.fromkeys(c.name for c in rec.calls)) or 'no layer function at all (an inline network?)'}")
            yield {"links": [plain_link(l) for l in links], "params": [(n, own(p)) for n, p in params], "x": given,
                   "model_loss": own(result[0]), "model_grads": own(result[1]),
                   "reg": own(getattr(model, "reg", 0.0) or 0.0)}

    def functional_links(self, recorded, params) -> list[Link]:
        """The layers of one run: each top-level forward or loss call with a rule; one without a rule is
        looked into (affine_relu_forward is affine_forward then relu_forward), or is a link with no rule."""
        links = []

        def visit(c):
            link = Link(c.label, c.name, "functional", fn_call=c)
            link.fn = {"role": c.role, "label": c.label, "stem": c.stem,
                       "pair_label": c.pair.label if c.pair is not None else None, "paired_by": c.pair.paired_by if c.pair else ""}
            try:
                link.rule = link_rule(c.name, "functional", self.rule_dirs)
                link.binding = bind(link.rule, None, c.fn, c.name, call_takes_all_inputs=True)
            except DerivcheckError as exc:
                inner = [ch for ch in c.children if ch.role in ("forward", "loss")]
                if inner:
                    for ch in inner:
                        visit(ch)
                    return
                link.rule, link.why = None, str(exc)  # a boundary: NAME_forward(x, ...) and NAME_backward(dout, cache) -> dx
            names = [n for _, _, n in link.binding.call] if link.rule else ["x"] + [f"arg{i}" for i in range(1, len(c.raw))]
            link.param_of = {n: next((pn for pn, p in params if raw is p), None) for n, raw in zip(names, c.raw)}
            if c.role == "loss":  # (loss, dx): the gradient for an upstream gradient of 1
                out = c.out if isinstance(c.out, tuple) and len(c.out) == 2 else (c.out, None)
                grads = out[1] if isinstance(out[1], tuple) else (out[1],)
                link.calls = [Call("forward", c.args, out=out[0]), Call("backward", (1.0,), out=grads)]
                link.grad_at = [f"{c.label}[1]" + (f"[{i}]" if len(grads) > 1 else "") for i in range(len(grads))]
            else:
                out = c.out[0] if isinstance(c.out, tuple) and len(c.out) == 2 else c.out
                link.calls = [Call("forward", c.args, out=out)]
                if c.pair is not None:
                    link.calls.append(Call("backward", c.pair.args[:1], out=c.pair.out))
                    n = len(c.pair.out) if isinstance(c.pair.out, tuple) else 1
                    link.grad_at = [f"{c.pair.label}" + (f"[{i}]" if n > 1 else "") for i in range(n)]
            if _undrawn(link):  # a mask in the cache it returned
                link.kept = [own(a) for a in arrays_in(c.raw_out[1] if isinstance(c.raw_out, tuple) else ())]
            links.append(link)

        for c in recorded:
            if c.parent is None and c.role in ("forward", "loss"):
                visit(c)
        return links


# ---------------------------------------------------------------------------
# DeZero models: the graph of Functions


def _dezero_params(model) -> list[tuple[str, object]]:
    """(name, Parameter) of a DeZero model: 'l1.W' for the W of its attribute l1."""
    out, seen = [], set()

    def walk(obj, prefix, depth=0):
        for attr, value in sorted(vars(obj).items()):
            if attr.startswith("_") or id(value) in seen:
                continue
            if type(value).__name__ == "Parameter" and isinstance(getattr(value, "data", None), np.ndarray):
                seen.add(id(value))
                out.append((f"{prefix}{attr}", value))
            elif callable(getattr(value, "params", None)) and depth < 5:  # a Layer
                seen.add(id(value))
                walk(value, f"{prefix}{attr}.", depth + 1)

    walk(model, "")
    return out


def _graph(y) -> list:
    """The Functions behind ``y``, in the order they ran (DeZero's generation, then creation)."""
    funcs, seen, todo = [], set(), [y.creator]
    while todo:
        f = todo.pop()
        if f is None or id(f) in seen:
            continue
        seen.add(id(f))
        funcs.append(f)
        todo += [getattr(v, "creator", None) for v in f.inputs]
    return sorted(funcs, key=lambda f: getattr(f, "generation", 0))


def _node_name(link, owners) -> str:
    """'l1' when a node uses layer l1's parameters (shown as 'l1 (Linear)'), else 'Sigmoid#2' (its place in the graph)."""
    layers = sorted({owners[id(v)].rpartition(".")[0] for v in link.layer.inputs if id(v) in owners} - {""})
    return ", ".join(layers) if layers else link.name


def _bind_node(link, rule_dirs) -> None:
    """A Function node's rule (from its class name) and which of its inputs is which of the rule's."""
    try:
        link.rule = link_rule(link.kind, link.style, rule_dirs)
        link.binding = bind(link.rule, type(link.layer).__init__, type(link.layer).forward, link.kind, call_takes_all_inputs=True)
    except DerivcheckError as exc:
        link.rule, link.why = None, str(exc)
        return
    link.node_inputs = [(kind, n) for _, kind, n in link.binding.call if kind not in ("hyper", "pair")]
    if len(link.node_inputs) != len(link.layer.inputs):
        link.rule, link.why = None, f"{link.kind} took {len(link.layer.inputs)} inputs; rule '{link.rule.name}' has {len(link.node_inputs)}"


def _record_node(link) -> None:
    """A node's forward as it ran (its inputs and output), and its backward when DeZero calls it."""
    node = link.layer
    out = node.outputs[0]() if node.outputs else None
    link.calls = [Call("forward", tuple(own(dezero_data(v)) for v in node.inputs), out=own(getattr(out, "data", None)))]
    bwd = node.backward

    def backward(*gys):
        stage(f"{link.name}.backward")
        gxs = bwd(*gys)
        parts = gxs if isinstance(gxs, (tuple, list)) else (gxs,)
        link.calls.append(Call("backward", tuple(own(dezero_data(g)) for g in gys),
                               out=tuple(own(dezero_data(g)) for g in parts)))
        return gxs

    node.backward = backward


def _upstream_params(v, pnames) -> set:
    """The ids of the Parameters ``v`` depends on (itself included)."""
    found, seen, todo = set(), set(), [v]
    while todo:
        u = todo.pop()
        if id(u) in seen:
            continue
        seen.add(id(u))
        if id(u) in pnames:
            found.add(id(u))
        creator = getattr(u, "creator", None)
        if creator is not None:
            todo += list(creator.inputs)
    return found


# ---------------------------------------------------------------------------
# The record as data, and back: made here in the layer's process, read in the judge's


class Unreadable(Exception):
    """What the layer's process sent for a trial is not a record this module makes (the layer's doing)."""


_CALL_FIELDS = ("kind", "args", "out", "held", "grads", "wrote")
_LINK_FIELDS = ("name", "kind", "style", "why", "slots", "fn", "grad_at", "node_inputs", "instance", "param_of",
                "held_now", "grads_now", "kept", "inputs")


def plain_link(link: Link) -> dict:
    """A link as plain data (no live object): what the judge is sent."""
    out = {k: getattr(link, k) for k in _LINK_FIELDS}
    out["rule"] = link.rule.name if link.rule is not None else None
    out["binding"] = {"ctor": link.binding.ctor, "call": link.binding.call} if link.rule is not None else None
    out["calls"] = [{k: getattr(c, k) for k in _CALL_FIELDS} for c in link.calls]
    return out


def link_of_plain(data: dict, rule_dirs) -> Link:
    """The judge's link from what :func:`plain_link` made (checked by :func:`check_trial`); its rule looked
    up here, by the layer's kind (its name), in the judge's own catalogue."""
    link = Link(**{k: data[k] for k in _LINK_FIELDS})
    link.calls = [Call(**{k: c[k] for k in _CALL_FIELDS}) for c in data["calls"]]
    if data["rule"] is not None:
        link.rule = link_rule(link.kind, link.style, rule_dirs)
        if link.rule.name != data["rule"]:
            raise Unreadable(f"{link.kind}'s rule is '{link.rule.name}', not '{data['rule']}'")
        link.binding = Binding(ctor=dict(data["binding"]["ctor"]), call=[tuple(c) for c in data["binding"]["call"]])
    link.node_inputs = [tuple(p) for p in link.node_inputs]
    return link


_NONE = type(None)
_STEP_FIELDS = {  # by the model's style: what one step's record holds besides its links
    "dlfs1": {"params": list, "x": np.ndarray, "t": np.ndarray, "model_loss": object, "model_grads": object},
    "dlfs2": {"params": list, "x": np.ndarray, "t": np.ndarray, "model_loss": object, "grads_type": str, "grads_is_slot": list},
    "predict": {"x": np.ndarray, "out": object},
    "dezero": {"params": list, "param_vars": list, "param_grads": list},
    "functional": {"params": list, "x": np.ndarray, "model_loss": object, "model_grads": object, "reg": object},
}
STYLES = tuple(_STEP_FIELDS)  # the network conventions a record can be of

_LINK_TYPES = {"name": str, "kind": str, "style": str, "why": str, "slots": dict, "fn": dict, "grad_at": list,
               "node_inputs": list, "instance": int, "param_of": dict, "held_now": dict, "grads_now": dict, "kept": list,
               "inputs": list, "rule": (str, _NONE), "binding": (dict, _NONE), "calls": list}
_CALL_TYPES = {"kind": str, "args": tuple, "out": object, "held": dict, "grads": dict, "wrote": list}


def _fields(value, types: dict, where: str) -> dict:
    try:
        return wire.fields(value, types)
    except wire.Malformed as exc:
        raise Unreadable(f"{where}: {exc}") from None


def check_trial(trial, style: str, steps: int) -> dict:
    """``trial`` if it has the form :meth:`NetworkRecorder.trial` gives a model of ``style``, else Unreadable."""
    _fields(trial, {"sizes": dict, "seed": int, "steps": list, "raised": (dict, _NONE), "writes": list, "links": list},
            "the trial")
    if not all(type(n) is int and n > 0 for n in trial["sizes"].values()):
        raise Unreadable("the trial's sizes are not positive integers")
    if not all(isinstance(w, tuple) and len(w) == 2 and all(isinstance(x, str) for x in w) for w in trial["writes"]):
        raise Unreadable("the trial's writes are not (call, argument) names")
    if trial["raised"] is not None:
        _fields(trial["raised"], {"step": int, "stage": str, "message": str, "wrong_rank": bool, "built": bool}, "raised")
    if len(trial["steps"]) > steps or (trial["raised"] is None and len(trial["steps"]) != steps):
        raise Unreadable(f"the trial has {len(trial['steps'])} steps, not {steps}")
    for i, link in enumerate(trial["links"]):
        _check_link(link, i, style, "the trial's layers")
    for s, record in enumerate(trial["steps"]):
        _fields(record, {"links": list, **_STEP_FIELDS[style]}, f"step {s}")
        for name in ("params",):
            if name in record and not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                          and isinstance(p[1], np.ndarray) for p in record[name]):
                raise Unreadable(f"step {s}'s params are not (name, array) pairs")
        if style == "dezero" and not (len(record["param_vars"]) == len(record["param_grads"]) == len(record["params"])
                                      and all(v is None or type(v) is int for v in record["param_vars"])):
            raise Unreadable(f"step {s}'s parameters do not match their Variables and gradients")
        links = record["links"]
        if not links:
            raise Unreadable(f"step {s} has no links")
        for i, link in enumerate(links):
            _check_link(link, i, style, f"step {s}")
    return trial


def _check_link(link, i: int, style: str, whose: str) -> None:
    """Unreadable unless ``link`` is what :func:`plain_link` makes of the ``i``-th link of a ``style`` model."""
    where = f"{whose}'s link {i}"
    _fields(link, _LINK_TYPES, where)
    if not 0 <= link["instance"] <= i or link["style"] not in (style, "dlfs1", "dlfs2"):
        raise Unreadable(f"{where}'s instance or style is not one derivcheck gives")
    for c in link["calls"]:
        _fields(c, _CALL_TYPES, f"{where}'s call")
        if c["kind"] not in ("forward", "backward") or not all(isinstance(w, str) for w in c["wrote"]):
            raise Unreadable(f"{where}'s call is of no kind derivcheck records")
    if link["rule"] is not None:
        _fields(link["binding"], {"ctor": dict, "call": list}, f"{where}'s binding")
        if not all(isinstance(c, tuple) and len(c) == 3 and all(isinstance(x, (str, _NONE)) for x in c)
                   for c in link["binding"]["call"]) or \
                not all(isinstance(v, tuple) and len(v) == 2 for v in link["binding"]["ctor"].values()):
            raise Unreadable(f"{where}'s binding is not one derivcheck makes")
    if style == "functional":
        _fields(link["fn"], {"role": str, "label": str, "stem": str, "pair_label": (str, _NONE), "paired_by": str},
                f"{where}'s call record")
    if style == "dezero" and not all(isinstance(v, dict) and type(v.get("var")) is int
                                     and isinstance(v.get("upstream"), list) for v in link["inputs"]):
        raise Unreadable(f"{where}'s inputs are not derivcheck's")
    if not all(isinstance(v, (str, _NONE)) for v in link["param_of"].values()) or \
            not all(isinstance(g, str) for g in link["grad_at"]) or \
            not all(isinstance(p, tuple) and len(p) == 2 for p in link["node_inputs"]) or \
            set(link["held_now"]) - set(link["slots"]) or set(link["grads_now"]) - set(link["slots"]):
        raise Unreadable(f"{where} is not a link derivcheck records")
