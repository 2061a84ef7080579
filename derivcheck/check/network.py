"""Verify a whole network, link by link, and say which layer is wrong.

A network's gradient is the chain rule applied to its layers. It is checked
the same way, on one forward/backward of the model as its author wrote it
(``gradient(x, t)`` in book 1, ``forward(x, t)`` then ``backward()`` in book 2):

- each layer against its rule, on the activations that actually flowed through
  the network: its output at the input it was given, its dx and parameter
  gradients at the dout it was given, each compared with the exact values (the
  rule's reference and tolerance, as ``verify`` does for one layer);
- the wiring between them: each layer applied once, in order; its input is the
  previous layer's output and its dout the next layer's dx; the loss layer's
  dout is 1 and the model's loss is its output; the model's parameters are the
  very arrays the layers hold, and the gradients the model hands back are the
  layers' own.

When every link and every connection holds, the model's gradient of every
parameter is the exact gradient up to each layer's rounding; when one does not,
the report names the first layer that disagrees (with that layer's diagnosis)
or the connection that is wrong, and the parameters whose gradients it spoils.

Models are built at small sizes: their constructor's size arguments
(``input_size``, ``hidden_size``, ``output_size``, anything ending in ``_size``
or ``_dim``, ``num_classes``) and the batch ``N`` take distinct small values,
then all equal, then a batch of 1; ``--shape input_size=784,hidden_size=50,
output_size=10,N=100`` checks the seed's MNIST network. The model's own random
initialisation draws from NumPy's global generator, seeded with the trial's
seed; every parameter is then overwritten in place with values from the seed,
of scale 1/sqrt(fan-in) (weights of scale 0.01 give logits too small to tell a
wrong layer apart; weights of scale 1 overflow the softmax at MNIST sizes).
"""
from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field

import numpy as np

from derivcheck.check import calls
from derivcheck.engine import reference
from derivcheck.check.binding import bind, Binding, norm_name
from derivcheck.check.conventions.base import call_user, LayerError, own, rank_mismatch, stage
from derivcheck.check.conventions.dezero import dezero_grad
from derivcheck.check.conventions.dlfs1 import dlfs1_gradient
from derivcheck.check.loading import KNOWN_NETWORKS, load_target, LOSS_ATTRS, model_shape
from derivcheck.checks import KAPPA, Check, compare, unit_roundoff
from derivcheck.errors import DerivcheckError
from derivcheck.engine.rules import Multiple
from derivcheck.check.targets import rule_in_convention
from derivcheck.check.judge import Judge, judged_dtype
from derivcheck.results import NUMPY_DTYPES, Report, warn
from derivcheck.vocab import DTYPES

_SIZE_WORDS = ("num_classes", "n_classes", "num_class")
# a CS231n model's regularization strength (its constructor's reg), set by hand: any value far from 0 makes
# the term's gradient, 2c·reg·W, stand far above rounding, so a missing or wrong term is seen
REG = 0.1
REGULARIZATION_NOTE = "regularization in "  # how the report's note on a CS231n model's L2 term begins


# ---------------------------------------------------------------------------
# The links of a network


@dataclass
class Link:
    """One layer of the network: its rule and where it keeps parameters and gradients."""

    name: str  # as the model names it: "Affine1" (book 1's OrderedDict), "layers[0]", "lastLayer"
    layer: object
    style: str
    rule: object = None
    why: str = ""  # no rule: why
    binding: Binding | None = None
    slots: dict = field(default_factory=dict)  # rule input -> attribute name (dlfs1) or params index (dlfs2)
    calls: list = field(default_factory=list)  # recorded calls of this trial
    fn_call: object = None  # functional: the recorded forward (or loss) call (calls.FnCall)
    grad_at: list = field(default_factory=list)  # functional: where each input's gradient came from ("affine_backward#2[1]")

    @property
    def kind(self) -> str:
        return self.layer.__name__ if self.style == "functional" else type(self.layer).__name__

    def label(self) -> str:
        return self.name if self.name == self.kind or self.kind in self.name else f"{self.name} ({self.kind})"

    def held(self, n):
        """The array the layer computes with for parameter ``n``."""
        if self.style == "dlfs2":
            return self.layer.params[self.slots[n]]
        return getattr(self.layer, self.slots[n])

    def grad(self, n):
        """The layer's gradient of parameter ``n`` after its backward."""
        if self.style == "dlfs2":
            grads = getattr(self.layer, "grads", None)
            return grads[self.slots[n]] if isinstance(grads, list) and self.slots[n] < len(grads) else None
        return dlfs1_gradient(self.layer, self.slots[n], n)

    def grad_where(self, n) -> str:
        if self.style == "dlfs2":
            return f"{self.name}.grads[{self.slots[n]}]"
        return f"{self.name}.d{self.slots[n]}"


def _link_rule(name: str, style: str, rule_dirs):
    """The rule of a network's layer; a rule of several outputs (an LSTM's h_next, c_next) is refused:
    a network passes one array from layer to layer."""
    rule = rule_in_convention(name, style, rule_dirs, how="name it after a rule")
    if rule.outputs:
        raise DerivcheckError(f"rule '{rule.name}' has several outputs ({', '.join(rule.outputs)}), and a layer of several "
                              f"outputs is not checked inside a network yet: check it alone with derivcheck verify")
    return rule


def _bind_link(link: Link, rule_dirs) -> None:
    try:
        link.rule = _link_rule(link.kind, link.style, rule_dirs)
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
    links = [Link(str(name), layer, style) for name, layer in items]
    loss = next((Link(a, getattr(model, a), style) for a in LOSS_ATTRS if getattr(model, a, None) is not None), None) \
        if with_loss else None
    for link in links + ([loss] if loss else []):
        _bind_link(link, rule_dirs)
    return links, loss


# ---------------------------------------------------------------------------
# Recording what flows


@dataclass
class Call:
    kind: str  # "forward" or "backward"
    args: tuple
    out: object = None
    held: dict = field(default_factory=dict)  # parameters at the forward call
    grads: dict = field(default_factory=dict)  # parameter gradients right after the backward call
    wrote: list = field(default_factory=list)  # the arguments the call wrote into (calls.changed)


def _record(link: Link) -> None:
    """Wrap the instance's forward and backward: each call is recorded (copies) and reported as a stage."""
    layer = link.layer
    fwd, bwd = layer.forward, getattr(layer, "backward", None)

    def forward(*args, **kwargs):
        call = Call("forward", tuple(own(a) for a in (*args, *kwargs.values())),
                    held={n: own(link.held(n)) for n in link.slots} if link.rule else {})
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
        call.grads = {n: own(link.grad(n)) for n in link.slots} if link.rule else {}
        link.calls.append(call)
        return out

    layer.forward = forward
    if bwd is not None:
        layer.backward = backward


def _warn_writes(rep, writes, trial) -> None:
    """A call that wrote into an array it was given (``writes``: (the call, the argument)): a side effect, as verify
    says of a layer alone, never a wiring mistake; every check reads the copies made at the call."""
    for who, n in writes:
        warn(rep, "mutates-input", f"{who} wrote into its argument '{n}' in place (an array the model may use again: "
                                   f"copy it first)", trial)


# ---------------------------------------------------------------------------
# Verifying


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


class NetworkVerifier:
    """One model class; ``run()`` returns a Report whose checks are per link and per connection."""

    def __init__(self, target: str, *, dtype="float64", seed=0, trials=3, steps=2, shape=None, strict=False,
                 rule_dirs=(), **_ignored):
        if dtype not in DTYPES:
            raise DerivcheckError(f"--dtype must be one of {', '.join(DTYPES)}, not '{dtype}'")
        self.target, self.dtype_name, self.dtype = target, dtype, NUMPY_DTYPES[dtype]
        self.seed, self.trials, self.steps, self.strict = seed, trials, steps, strict
        self.rule_dirs = rule_dirs
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
        self.forward_only = ""
        if self.style == "predict":
            self.forward_only = f"{self.name} has layers and predict() and no loss: each layer's forward is checked"
        if self.style is None:
            raise DerivcheckError(f"{self.name} is not a network derivcheck knows: {KNOWN_NETWORKS}")
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

    # -- one trial ------------------------------------------------------------
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

    def run(self) -> Report:
        rep = Report(self.target, "network", self.style, self.dtype_name, self.seed, self.trials, self.steps, {},
                     strict=self.strict)
        results: dict[str, Check] = {}
        first_bad = None
        for k in range(self.trials):
            sizes = _plan(self.sizes + (["D"] if self.style == "dezero" else []), k, self.shape)
            if self.style == "dezero":  # N and D are not the constructor's
                sizes["N"], sizes["D"] = sizes.pop("N"), sizes.pop("D")
            trial_seed = self.seed + k
            checks, chain = self.run_trial(k, sizes, trial_seed, rep)
            if k == 0 and chain:
                rep.notes.append("network: " + " -> ".join(chain))
                rep.layers = [{"name": l.name, "kind": l.kind, "rule": l.rule.name if l.rule else None}
                              for l in self.last_links]
            for c in checks:
                keep = results.get(c.name)
                if keep is None or (not c.passed and keep.passed):
                    results[c.name] = c
                if not c.passed and first_bad is None:
                    first_bad = c
        rep.checks = list(results.values())
        rep.diagnosis = [d for c in rep.checks if not c.passed for d in (c.diagnosis or [])]
        layer_bad = [c.name for c in rep.checks if not c.passed and ": " in c.name]  # in the order the layers run
        if layer_bad:
            rep.notes.insert(0, f"first layer that disagrees with its rule: {layer_bad[0]} (layers in forward order)")
        rep.reproduce = self.reproduce(first_bad)
        return rep

    def reproduce(self, failure: Check | None) -> str:
        import shlex

        parts = ["derivcheck", "verify", self.target]
        if self.dtype_name != "float64":
            parts += ["--dtype", self.dtype_name]
        if failure is not None and failure.trial is not None:
            parts += ["--seed", str(failure.seed), "--trials", "1", "--shape",
                      ",".join(f"{d}={n}" for d, n in (failure.dims or {}).items())]
        else:
            parts += ["--seed", str(self.seed), "--trials", str(self.trials)]
            if self.shape:
                parts += ["--shape", ",".join(f"{d}={n}" for d, n in self.shape.items())]
        if self.strict:
            parts.append("--strict")
        return " ".join(shlex.quote(p) for p in parts)

    def _model_raised(self, exc: LayerError, step: int, ctx: dict) -> Check:
        """The model's failure as a check; but a first forward that unpacks another rank (VGG16's images from
        derivcheck's (N, D) batch) is a model this check does not fit: exit 2, as for a layer."""
        if ctx["trial"] == 0 and step == 0 and "backward" not in exc.stage and rank_mismatch(exc.exc):
            raise DerivcheckError(
                f"{self.name} does not fit derivcheck's network check, which feeds a batch of vectors x of shape "
                f"(N, D): {exc}. It takes inputs of another rank (images, sequences): check its layers one by one "
                f"(`derivcheck verify` on each layer or Function)") from None
        return Check("model raised", False, message=str(exc), step=step, **ctx)

    def run_trial(self, k: int, sizes: dict, trial_seed: int, rep: Report) -> tuple[list[Check], list[str]]:
        ctx = dict(trial=k, seed=trial_seed, dims=dict(sizes))
        try:
            model = self.build(sizes, trial_seed)
        except LayerError as exc:
            return [Check("model raised", False, message=str(exc), step=0, **ctx)], []
        if self.forward_only:
            return self.run_forward_trial(model, sizes, trial_seed, rep, ctx)
        if self.style == "dezero":
            return self.run_dezero_trial(model, sizes, trial_seed, rep, ctx)
        if self.style == "functional":
            return self.run_functional_trial(model, sizes, trial_seed, rep, ctx)
        links, loss = discover(model, self.style, self.rule_dirs)
        if loss is None:
            raise DerivcheckError(f"{self.name} has no loss layer ({', '.join(LOSS_ATTRS)})")
        self.last_links = links + [loss]
        chain = [f"{l.label()}: {l.rule.name if l.rule else 'no rule'}" for l in links + [loss]]
        unknown = [l for l in links + [loss] if l.rule is None]
        checks = [Check(f"{l.label()}: no rule", False, message=f"{l.label()} cannot be checked: {l.why}", **ctx)
                  for l in unknown]
        rng = np.random.default_rng([trial_seed, 11])
        params = self.model_params(model)
        out_size = sizes.get(self.sizes[-1], 2) if self.sizes else 2
        for step in range(self.steps):
            _fresh_values([arr for _, arr in params], rng)
            wrapped = set()
            for link in links + [loss]:
                link.calls = []
                if step == 0 and id(link.layer) not in wrapped:  # one instance in two places is wrapped once
                    _record(link)
                    wrapped.add(id(link.layer))
            width = _input_width(links, params)
            x = rng.normal(size=(sizes["N"], width)).astype(self.dtype)
            t = rng.integers(0, out_size, size=sizes["N"])
            try:
                model_loss, model_grads = self.forward_backward(model, x, t)
            except LayerError as exc:
                checks.append(self._model_raised(exc, step, ctx))
                return checks, chain
            _warn_writes(rep, [(f"{link.label()}.{call.kind}", n) for link in links + [loss] for call in link.calls
                               for n in call.wrote], k)
            checks += self.judge(links, loss, params, x, t, model_loss, model_grads, dict(ctx, step=step), rep)
        return checks, chain

    def run_forward_trial(self, model, sizes, trial_seed, rep, ctx) -> tuple[list[Check], list[str]]:
        """A model with predict() and no loss: each layer's forward on what flows, and the forward wiring."""
        raw = getattr(model, "layers", None)
        first = next(iter(raw.values() if isinstance(raw, dict) else raw or []), None)
        style = "dlfs2" if isinstance(getattr(first, "params", None), list) else "dlfs1"
        links, _ = discover(model, style, self.rule_dirs, with_loss=False)
        self.last_links = links
        rep.forward_only = self.forward_only
        chain = [f"{l.label()}: {l.rule.name if l.rule else 'no rule'}" for l in links]
        checks = [Check(f"{l.label()}: no rule", False, message=f"{l.label()} cannot be checked: {l.why}", **ctx)
                  for l in links if l.rule is None]
        rng = np.random.default_rng([trial_seed, 11])
        held = [(f"{l.name}.{n}", l.held(n)) for l in links if l.rule for n in l.slots]
        for step in range(self.steps):
            _fresh_values([arr for _, arr in held], rng)
            for link in links:
                link.calls = []
            if step == 0:
                for link in {id(l.layer): l for l in links}.values():
                    _record(link)
            x = rng.normal(size=(sizes["N"], _input_width(links, held))).astype(self.dtype)
            try:
                out = call_user(model.predict, [(None, x)], f"{self.name}.predict")
            except LayerError as exc:
                checks.append(self._model_raised(exc, step, ctx))
                return checks, chain
            sctx = dict(ctx, step=step)
            shared = self.shared_instance(links, sctx)
            wires = [shared] if shared else self.forward_wiring(links, x, sctx)
            if not wires and not _same(np.asarray(out), np.asarray(links[-1].calls[0].out)):
                wires.append(self.wiring(f"what {self.name}.predict returned is not {links[-1].label()}'s output", sctx))
            checks += wires
            if not any(c.name == "wiring" for c in wires) or all(len(l.calls) == 1 for l in links):
                for link in links:
                    if link.rule is not None and len(link.calls) == 1:
                        self.check_link(link, sctx, checks, rep)
        return checks, chain

    def run_dezero_trial(self, model, sizes, trial_seed, rep, ctx) -> tuple[list[Check], list[str]]:
        """A DeZero Model: call it, walk the graph of Functions it recorded, check each node and each Parameter.

        The graph is the wiring (DeZero's backward walks it), so what is checked is
        each Function against its rule on the values that reached it, and that each
        Parameter's gradient is the sum of what the nodes using it handed back.
        """
        rng = np.random.default_rng([trial_seed, 11])
        width = sizes.get("D", 3)
        checks, chain = [], []
        for step in range(self.steps):
            sctx = dict(ctx, step=step)
            x = rng.normal(size=(sizes["N"], width)).astype(self.dtype)
            try:
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
                links = [Link(f"{type(f).__name__}#{i}", f, "dezero") for i, f in enumerate(nodes)]
                owners = {id(p): n for n, p in params}
                for link in links:
                    link.name = _node_name(link, owners)
                    _bind_node(link, self.rule_dirs)
                    _record_node(link)
                if step == 0:
                    self.last_links = links
                    chain = [f"{l.label()}: {l.rule.name if l.rule else 'no rule'}" for l in links]
                    checks += [Check(f"{l.label()}: no rule", False, message=f"{l.label()} cannot be checked: {l.why}", **ctx)
                               for l in links if l.rule is None]
                cot = rng.normal(size=y.data.shape).astype(y.data.dtype)
                y.grad = dezero_grad(cot, y)
                call_user(y.backward, [], f"{self.name}: y.backward()")
            except LayerError as exc:
                checks.append(self._model_raised(exc, step, ctx))
                return checks, chain
            checks += self.judge_dezero(links, params, sctx, rep)
        return checks, chain

    def judge_dezero(self, links, params, ctx, rep) -> list[Check]:
        checks, spoiled = [], {}
        var_of = {}  # id(input Variable) -> [(link, position)]
        for link in links:
            for i, v in enumerate(link.layer.inputs):
                var_of.setdefault(id(v), []).append((link, i))
        pnames = {id(p): n for n, p in params}
        for link in links:
            if link.rule is None or len(link.calls) != 2:
                continue
            bad = self.check_link(link, ctx, checks, rep)
            wrong = [i for i, (kind, n) in enumerate(link.node_inputs) if bad == "forward" or n in bad]
            for i in wrong:  # a wrong gradient of an input spoils every parameter upstream of it
                for pid in _upstream_params(link.layer.inputs[i], pnames):
                    spoiled.setdefault(pnames[pid], f"{link.name}'s {'forward' if bad == 'forward' else 'backward'}")
        for name, p in params:
            uses = var_of.get(id(p), [])
            if not uses:
                checks.append(self.wiring(f"parameter {name} is not used by the model's forward: its gradient is "
                                          f"{'None' if p.grad is None else 'left over'}", ctx))
                continue
            parts = [link.calls[1].out[i] for link, i in uses if len(link.calls) == 2]
            got = getattr(p.grad, "data", p.grad)
            if not parts or got is None:
                checks.append(self.wiring(f"parameter {name} got no gradient from backward", ctx, spoil=spoiled,
                                          params=[name], why="no gradient"))
                continue
            want = np.sum([np.asarray(g, dtype=np.float64) for g in parts], axis=0)
            c = compare(f"{name}.grad", want, got, np.sum([np.abs(np.asarray(g, dtype=np.float64)) for g in parts], axis=0),
                        judged_dtype(got, self.dtype), **ctx)
            if not c.passed:
                checks.append(self.wiring(f"{name}.grad is not the sum of what the {len(parts)} node(s) using it "
                                          f"returned for it", ctx, spoil=spoiled, params=[name], why=f"{name}.grad"))
        if spoiled or not any(c.name == "wiring" for c in checks):  # else _one_wiring_check fails it
            checks.append(_network_gradients(spoiled, "node by node", ctx))
        return _one_wiring_check(checks, ctx)

    # -- CS231n: loss(X, y) -> (loss, grads), made of layer functions ------------
    def run_functional_trial(self, model, sizes, trial_seed, rep, ctx) -> tuple[list[Check], list[str]]:
        """A CS231n model: its loss(X, y) is run with every layer function it reaches recorded (calls.py).

        Each forward/backward pair (and the loss function) is checked against its rule on what
        flowed through it; the wiring is that each layer's data input is X or an earlier layer's
        output, its dout the sum of the dx's of the layers using its output, the loss the data
        loss plus a regularization term, and grads[k] the sum of the layers' gradients of
        params[k] plus that term's gradient.
        """
        rng = np.random.default_rng([trial_seed, 11])
        params = self.model_params(model)
        width = next((int(a.shape[0]) for _, a in params if a.ndim >= 2), None)
        if width is None:
            raise DerivcheckError(f"{self.name}.params has no weight matrix, so the width of X cannot be told")
        classes = sizes.get(self.sizes[-1], 2) if self.sizes else 2
        checks, chain = [], []
        for step in range(self.steps):
            sctx = dict(ctx, step=step)
            _fresh_values([a for _, a in params], rng)
            x = rng.normal(size=(sizes["N"], width)).astype(self.dtype)
            t = rng.integers(0, classes, size=sizes["N"])
            given = x.copy()  # what the model was given, whatever it writes into X
            try:
                with calls.Recorder(self.module) as rec:
                    result = call_user(model.loss, [(None, x), (None, t)], f"{self.name}.loss")
            except LayerError as exc:
                checks.append(self._model_raised(exc, step, ctx))
                return checks, chain
            if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
                raise DerivcheckError(f"{self.name}.loss(X, y) returned a {type(result).__name__}, not (loss, grads): a "
                                      f"CS231n model returns the loss and a dict of gradients keyed as its params")
            calls.pair(rec.calls)
            _warn_writes(rep, [(c.label, n) for c in rec.calls for n in c.wrote], ctx["trial"])
            links = self.functional_links(rec.calls)
            if not any(link.rule and link.fn_call.role == "loss" for link in links):
                raise DerivcheckError(
                    f"{self.name}.loss called no loss function with a rule (softmax_loss(x, y), svm_loss(x, y)), so the "
                    f"model's gradient cannot be composed from rules; it called "
                    f"{', '.join(dict.fromkeys(c.name for c in rec.calls)) or 'no layer function at all (an inline network?)'}")
            if step == 0:
                self.last_links = links
                chain = [f"{l.label()}: {l.rule.name if l.rule else 'no rule'}" for l in links]
                checks += [Check(f"{l.label()}: no rule", False, message=f"{l.label()} cannot be checked: {l.why}", **ctx)
                           for l in links if l.rule is None]
            checks += _one_wiring_check(self.judge_functional(links, params, given, result, model, sctx, rep), sctx)
        return checks, chain

    def functional_links(self, recorded) -> list[Link]:
        """The layers of one run: each top-level forward or loss call with a rule; one without a rule is
        looked into (affine_relu_forward is affine_forward then relu_forward), or is a link with no rule."""
        links = []

        def visit(c):
            link = Link(c.label, c.fn, "functional", fn_call=c)
            try:
                link.rule = _link_rule(c.name, "functional", self.rule_dirs)
                link.binding = bind(link.rule, None, c.fn, c.name, call_takes_all_inputs=True)
            except DerivcheckError as exc:
                inner = [ch for ch in c.children if ch.role in ("forward", "loss")]
                if inner:
                    for ch in inner:
                        visit(ch)
                    return
                link.rule, link.why = None, str(exc)  # a boundary: NAME_forward(x, ...) and NAME_backward(dout, cache) -> dx
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
            links.append(link)

        for c in recorded:
            if c.parent is None and c.role in ("forward", "loss"):
                visit(c)
        return links

    def judge_functional(self, links, params, x, result, model, ctx, rep) -> list[Check]:
        checks, spoiled = [], {}
        model_loss, model_grads = result
        pnames = [n for n, _ in params]
        owner = {}  # (link name, rule input) -> params name
        produced = []  # (link, output): what each layer handed on, in forward order
        inputs_of = {}  # link name -> {rule input: (producer link or None for X)}
        ruled = [l for l in links if l.rule is not None]
        for link in links:
            c = link.fn_call
            names = [n for _, _, n in link.binding.call] if link.rule else ["x"] + [f"arg{i}" for i in range(1, len(c.raw))]
            args = dict(zip(names, c.raw))  # the very objects: a parameter is found by identity
            copies = dict(zip(names, c.args))  # their values at the call (a later write in place changes no verdict)
            inputs_of[link.name] = {}
            for n in _data_inputs(link) if link.rule is None else link.rule.inputs:
                raw, copy = args.get(n), copies.get(n)
                pname = next((pn for pn, p in params if raw is p), None) or \
                    next((pn for pn, p in params if _same(p, copy)), None)  # a copy computes with the same values
                if pname is not None:
                    owner[(link.name, n)] = pname
                    continue
                if _same(copy, x):
                    inputs_of[link.name][n] = None
                    continue
                src = next((l for l, out in reversed(produced) if _same(out, copy)), None)
                if src is None:
                    checks.append(self.wiring(f"{link.label()}'s {n} is neither X, nor an earlier layer's output, nor one "
                                              f"of {self.name}.params", ctx, spoil=spoiled, params=pnames,
                                              why=f"{link.name}'s {n}"))
                    continue
                inputs_of[link.name][n] = src
            produced.append((link, link.calls[0].out))
            if link.rule is None:  # its gradients cannot be checked: what flows back through it is taken as it is
                for (ln, _), p in owner.items():
                    if ln == link.name:
                        spoiled.setdefault(p, f"{link.name} has no rule")
        for pname in pnames:
            if pname not in owner.values():
                spoiled[pname] = "no layer computes with it"
        loss = [l for l in ruled if l.fn_call.role == "loss"][-1]
        upstream = {}  # link name -> params whose gradient flows through its dx
        for link in links:
            mine = {p for (ln, _), p in owner.items() if ln == link.name}
            for src in inputs_of[link.name].values():
                if src is not None:
                    mine |= upstream.get(src.name, set()) | {p for (ln, _), p in owner.items() if ln == src.name}
            upstream[link.name] = mine
        # backward: each layer back-propagated once, with the dx's of the layers that used its output
        for link in links:
            if link is loss or link.fn_call.role == "loss":
                continue
            c = link.fn_call
            users = [(l, n) for l in links for n, src in inputs_of[l.name].items() if src is link]
            mine = sorted(upstream[link.name] | {p for (ln, _), p in owner.items() if ln == link.name}, key=pnames.index)
            if not users:
                checks.append(self.wiring(f"{link.label()}'s output is used by no layer", ctx, spoil=spoiled, params=mine,
                                          why=f"{link.name}'s output unused"))
                continue
            if c.pair is None:
                checks.append(self.wiring(f"{link.label()} is never back-propagated: no {c.stem}_backward was given its "
                                          f"cache", ctx, spoil=spoiled, params=mine, why=f"{link.name} not back-propagated"))
                continue
            if c.pair.paired_by == "order":
                note = (f"{c.pair.label} was given something other than the cache {c.label} returned; it is taken as "
                        f"{c.label}'s backward, by order")
                if note not in rep.notes:
                    rep.notes.append(note)
            parts = []
            for user, n in users:
                i = _data_inputs(user).index(n)
                g = user.calls[1].out if len(user.calls) > 1 else None
                g = g if isinstance(g, tuple) else (g,)
                parts.append(g[i] if i < len(g) else None)
            dout = link.calls[1].args[0] if link.calls[1].args else None
            if any(p is None for p in parts) or dout is None:
                continue  # the user's check reports the missing gradient
            want = np.sum([np.asarray(p, dtype=np.float64) for p in parts], axis=0)
            ok = _same(dout, parts[0]) if len(parts) == 1 else compare(
                "dout", want, dout, np.sum([np.abs(np.asarray(p, dtype=np.float64)) for p in parts], axis=0),
                judged_dtype(dout, self.dtype)).passed
            if not ok:
                was = " + ".join(f"{user.name}'s d{n}" for user, n in users)
                checks.append(self.wiring(f"{c.pair.label}'s dout is not {was}", ctx, spoil=spoiled, params=mine,
                                          why=f"{link.name}'s dout"))
        # each layer on what flowed through it
        for link in ruled:
            if len(link.calls) < 2:
                continue
            bad = self.check_link(link, ctx, checks, rep)
            if bad == "forward":
                mine = pnames
            else:
                mine = [p for n in bad for (ln, m), p in owner.items() if ln == link.name and m == n]
                if any((link.name, n) not in owner for n in bad):  # a wrong dx spoils everything upstream
                    mine += sorted(upstream[link.name], key=pnames.index)
            for p in mine:
                spoiled.setdefault(p, f"{link.name}'s {'forward' if bad == 'forward' else 'backward'}")
        checks += self.regularized(links, loss, params, owner, model_loss, model_grads, model, ctx, spoiled, rep)
        checks.append(_network_gradients(spoiled, "link by link", ctx))
        return checks

    def regularized(self, links, loss, params, owner, model_loss, model_grads, model, ctx, spoiled, rep) -> list[Check]:
        """The model's loss is the data loss plus c·reg·Σ p² over some params, and grads[k] the sum of the
        layers' gradients of params[k] plus 2c·reg·params[k]; the term's form is read off the loss's value."""
        reg = float(getattr(model, "reg", 0.0) or 0.0)
        data_loss = float(np.asarray(loss.calls[0].out, dtype=np.float64))
        try:
            total = float(np.asarray(model_loss, dtype=np.float64))
        except (TypeError, ValueError):
            return [self.wiring(f"the loss {self.name}.loss returned is a {type(model_loss).__name__}, not a number", ctx)]
        names = [n for n, _ in params]
        weights = [n for n, p in params if p.ndim >= 2]
        squares = {n: float(np.sum(np.asarray(p, dtype=np.float64) ** 2)) for n, p in params}
        # the rounding of the model's own sums: each of its n squares and the two additions (a first-order bound)
        u = unit_roundoff(self.dtype)
        slack = KAPPA * u * (abs(total) + abs(data_loss) + reg * sum(squares.values()) * max(p.size for _, p in params))
        forms = [(0.0, [])] + ([(c, which) for c in (0.5, 1.0) for which in (weights, names)] if reg else [])
        extra = total - data_loss
        form = next(((c, which) for c, which in forms if abs(extra - c * reg * sum(squares[n] for n in which)) <= slack), None)
        if form is None:
            return [self.wiring(
                f"{self.name}'s loss is {loss.name}'s data loss plus {extra:.6g}, which is no L2 term c·reg·Σ W² (c = ½ or 1, "
                f"reg = {reg:g}, over the weights or all params)", ctx, spoil=spoiled, params=names,
                why="the loss's regularization", kind="regularization",
                hint="loss += 0.5 * self.reg * np.sum(W * W) for each weight W, and grads[W] += self.reg * W")]
        c, which = form
        said = f"{'½·' if c == 0.5 else ''}reg·Σ p² over {', '.join(which)} (reg = {reg:g})" if which else "none"
        note = f"{REGULARIZATION_NOTE}{self.name}'s loss: {said}, read from its value; the gradients are checked with it"
        if note not in rep.notes:
            rep.notes.append(note)
        by_link = {l.name: l for l in links}
        expected = {}  # params name -> (the sum of its layers' gradients, the regularization's gradient, scale)
        for pname, p in params:
            parts = []
            for (lname, n), owned in owner.items():
                link = by_link[lname]
                if owned != pname or len(link.calls) < 2 or link.rule is None:  # no rule: spoiled, not judged
                    continue
                i = _data_inputs(link).index(n)
                g = link.calls[1].out if isinstance(link.calls[1].out, tuple) else (link.calls[1].out,)
                if i < len(g) and g[i] is not None and np.shape(g[i]) == p.shape:
                    parts.append(np.asarray(g[i], dtype=np.float64))
            if parts:  # else no layer computes with it (spoiled above), or its layer's check reports the gradient
                term = 2 * c * reg * np.asarray(p, dtype=np.float64) if pname in which else np.zeros(p.shape)
                expected[pname] = (np.sum(parts, axis=0), term, np.sum(np.abs(parts), axis=0) + np.abs(term))
        checks = []
        for pname, (chained, term, scale) in expected.items():
            key = pname[len("params['"):-2]
            got = model_grads.get(key)
            if got is None:
                checks.append(self.wiring(f"grads has no '{key}' (the gradient of {pname})", ctx, spoil=spoiled,
                                          params=[pname], why=f"grads['{key}'] missing"))
                continue
            if compare(key, chained + term, got, scale, judged_dtype(got, self.dtype)).passed:
                continue
            other = next((o for o, (ch, te, sc) in expected.items() if o != pname and np.shape(got) == ch.shape
                          and compare(key, ch + te, got, sc, judged_dtype(got, self.dtype)).passed), None)
            p = dict(params)[pname]
            if other is not None:
                checks.append(self.wiring(f"grads['{key}'] is the gradient of {other}, not of {pname}", ctx, spoil=spoiled,
                                          params=[pname], why=f"grads['{key}']"))
            elif np.shape(got) != p.shape:
                checks.append(self.wiring(f"grads['{key}'] has shape {np.shape(got)}, {pname} has {p.shape}", ctx,
                                          spoil=spoiled, params=[pname], why=f"grads['{key}']"))
            else:
                checks.append(self.grads_wiring(key, pname, np.asarray(got, dtype=np.float64), chained, c, reg, p, which,
                                                ctx, spoiled))
        return checks

    def grads_wiring(self, key, pname, got, chained, c, reg, p, which, ctx, spoiled) -> Check:
        """Why grads[key] is wrong: the regularization's gradient missing, another multiple of reg·p, or neither."""
        why, hint = f"grads['{key}']", "grads[W] += self.reg * W for a loss with 0.5 * self.reg * np.sum(W * W)"
        term = f"{'½·' if c == 0.5 else ''}reg·Σ {key}²"
        rp = reg * np.asarray(p, dtype=np.float64)
        k = float(np.sum((got - chained) * rp) / np.sum(rp * rp)) if reg and np.any(rp) else 0.0
        fits = bool(reg) and np.allclose(got, chained + k * rp, rtol=1e-6, atol=1e-9 * (float(np.max(np.abs(chained))) + 1))
        if fits and pname in which and abs(k) < 1e-6:
            return self.wiring(f"grads['{key}'] lacks the regularization's gradient {_times(2 * c)}reg·{key}, which the "
                               f"loss's {term} has", ctx, spoil=spoiled, params=[pname], why=why, kind="regularization",
                               hint=hint)
        if fits:
            has = term if pname in which else f"no term in {key}"
            return self.wiring(f"grads['{key}'] has {_times(k)}reg·{key} added; the loss has {has}, whose gradient is "
                               f"{_times(2 * c) if pname in which else '0·'}reg·{key}", ctx, spoil=spoiled, params=[pname],
                               why=why, kind="regularization", hint=hint)
        return self.wiring(f"grads['{key}'] is not the sum of its layers' gradients of {pname}"
                           + (" plus the regularization's" if pname in which else ""), ctx, spoil=spoiled, params=[pname],
                           why=why)

    def shared_instance(self, order, ctx) -> Check | None:
        """One layer object in two places of the list: a wiring mistake that makes every other check moot."""
        first_use = {}
        for link in order:
            if id(link.layer) in first_use:
                return self.wiring(f"{first_use[id(link.layer)].name} and {link.name} are one {link.kind} instance: what it "
                                   f"saves in forward is the later call's when either backward runs; make one instance "
                                   f"per place in the network", ctx)
            first_use[id(link.layer)] = link
        return None

    def forward_wiring(self, order, x, ctx, spoil=None, params=()) -> list[Check]:
        """Each layer applied once, in order, each one's input the previous one's output (the first one's x).

        With ``spoil``, each mistake marks ``params`` (every gradient of the network) as spoiled.
        """
        checks = []
        for link in order:
            n = _forwards(link)
            if n != 1:
                what = "never applied" if n == 0 else f"applied {n} times in one forward pass"
                checks.append(self.wiring(f"{link.label()} is {what}: each layer of the list is applied once, in order", ctx,
                                          spoil=spoil, params=params, why=f"{link.name} {what}"))
        if checks:
            return checks
        upstream = x
        for i, link in enumerate(order):
            f = next(c for c in link.calls if c.kind == "forward")
            if not _same(f.args[0] if f.args else None, upstream):
                was = "x" if i == 0 else f"{order[i - 1].name}'s output"
                checks.append(self.wiring(f"{link.label()}'s input is not {was}: something between them changed it", ctx,
                                          spoil=spoil, params=params, why=f"{link.name}'s input"))
            upstream = f.out
        return checks

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

    # -- judging one step -----------------------------------------------------
    def judge(self, links, loss, params, x, t, model_loss, model_grads, ctx, rep) -> list[Check]:
        """Every link and connection of one step; the wiring mistakes found make one check, "wiring"."""
        return _one_wiring_check(self._judge(links, loss, params, x, t, model_loss, model_grads, ctx, rep), ctx)

    def _judge(self, links, loss, params, x, t, model_loss, model_grads, ctx, rep) -> list[Check]:
        checks = []
        order = links + [loss]
        shared = self.shared_instance(order, ctx)
        if shared:
            return [shared]
        spoiled: dict[str, str] = {}  # network parameter -> why its gradient is wrong
        owner = self.owners(order, params, checks, ctx)
        for pname, _ in params:
            if pname not in owner.values():
                spoiled[pname] = "no layer computes with it"
        checks += self.forward_wiring(order, x, ctx, spoil=spoiled, params=list(owner.values()))
        if not all(_forwards(l) == 1 for l in order):  # the order they ran in cannot be told
            return checks
        if model_loss is not None and not _same(np.asarray(model_loss), np.asarray(loss.calls[0].out)):
            checks.append(self.wiring(f"the loss {self.name} returned is not {loss.name}'s output", ctx))
        # backward: loss first with dout = 1, then each layer with the next one's dx
        dout = 1.0
        for i, link in reversed(list(enumerate(order))):
            b = [c for c in link.calls if c.kind == "backward"]
            if len(b) != 1:
                what = "never back-propagated" if not b else f"back-propagated {len(b)} times"
                checks.append(self.wiring(f"{link.label()} is {what} in one backward pass", ctx, spoil=spoiled,
                                          params=[p for l in order[:i + 1] for p in self.params_of(l, owner)],
                                          why=f"{link.name} {what}"))
                return checks
            got = b[0].args[0] if b[0].args else 1.0
            if not _same(np.asarray(got, dtype=np.float64), np.asarray(dout, dtype=np.float64)):
                was = "1" if link is loss else f"{order[i + 1].name}'s dx"
                checks.append(self.wiring(f"{link.label()}'s dout is not {was}", ctx, spoil=spoiled,
                                          params=[p for l in order[:i + 1] for p in self.params_of(l, owner)],
                                          why=f"{link.name}'s dout"))
            dout = b[0].out
        # each link on what flowed through it
        for i, link in enumerate(order):
            if link.rule is None:
                continue
            bad = self.check_link(link, ctx, checks, rep)
            if bad == "forward":
                mine = [p for l in order for p in self.params_of(l, owner)]
            else:
                mine = [p for n in bad for p in self.params_of(link, owner, only=n)]
                if any(n not in link.slots for n in bad):  # its dx: every parameter before it
                    mine += [p for l in order[:i] for p in self.params_of(l, owner)]
            for p in mine:
                spoiled.setdefault(p, f"{link.name}'s {'forward' if bad == 'forward' else 'backward'}")
        checks += self.model_gradients(order, params, owner, model_grads, ctx, spoiled)
        checks.append(_network_gradients(spoiled, "link by link", ctx))
        return checks

    def owners(self, order, params, checks, ctx) -> dict:
        """(link name, rule input) -> the model's name for that parameter; a layer holding a copy is a wiring mistake."""
        owner = {}
        for link in order:
            for n in link.slots:
                arr = link.held(n)
                name = next((pn for pn, p in params if p is arr), None)
                if name is None:
                    same = next((pn for pn, p in params if _same(p, arr)), None)
                    said = (f"it equals {same} but is another array (a copy?)" if same else "no model parameter is it")
                    checks.append(self.wiring(
                        f"{link.label()}'s {n} is not one of the model's params: {said}; an optimizer updating "
                        f"params never changes what the layer computes with", ctx))
                    continue
                owner[(link.name, n)] = name
        return owner

    def params_of(self, link, owner, only=None) -> list[str]:
        return [owner[(link.name, n)] for n in link.slots if (link.name, n) in owner and (only is None or n == only)]

    def wiring(self, message, ctx, spoil=None, params=(), why="", kind="wiring", hint=None) -> Check:
        c = Check("wiring", False, message=message, **ctx)
        c.diagnosis = [{"check": "wiring", "kind": kind, "message": f"wiring: {message}",
                        "hint": hint or "the layers may well be right; how the model connects them is not",
                        "evidence": {}}]
        if spoil is not None:
            for p in params:
                spoil.setdefault(p, why)
        return c

    def check_link(self, link: Link, ctx, checks, rep):
        """Compare one layer with its rule on what flowed through it; returns 'forward', or the inputs that fail."""
        rule = link.rule
        f = next(c for c in link.calls if c.kind == "forward")
        b = next((c for c in link.calls if c.kind == "backward"), None)  # None: a forward-only network
        data = [n for _, kind, n in link.binding.call if kind == "input"]
        labels = [n for _, kind, n in link.binding.call if kind == "label"]
        if link.style == "dezero":  # a Function node: every array is an input, in the order it was called with
            args = dict(zip([n for _, n in link.node_inputs], f.args))
        else:
            args = dict(zip([n for _, _, n in link.binding.call], f.args))
        values = {n: args[n] for n in data}
        values.update(f.held)
        ref = {n: np.asarray(v, dtype=np.float64) for n, v in values.items()}
        given = {}  # a CS231n settings dict the model passed (dropout_param = {"p": 0.8, ...}) sets the rule's values
        for _, kind, n in link.binding.call:
            if kind == "dict" and isinstance(args.get(n), dict):
                given.update({k: v for k, v in args[n].items() if k in rule.hyper})
        hyper = rule.resolve_hyper(given)
        for n in labels:
            lab = np.asarray(args[n])
            if lab.ndim == len(rule.labels[n].shape) + 1:  # one-hot rows
                lab = lab.argmax(axis=-1)
            ref[n] = lab
        for n, lab in rule.labels.items():  # a mask the layer drew (dropout's): read off what it output
            if not lab.given:
                ref = reference.read_kept(rule, {**ref, n: np.ones(np.shape(f.out))}, f.out)
                if any(np.any(np.asarray(v) == 0) for v in values.values()):  # after a ReLU: an output 0 tells nothing
                    kept = link.fn_call.raw_out[1] if link.style == "functional" and isinstance(link.fn_call.raw_out, tuple) \
                        else vars(link.layer) if hasattr(link.layer, "__dict__") else {}
                    ref[n] = _drawn_mask(_arrays_in(kept), ref[n], values)
        try:
            dims = _dims(rule, ref)
        except ValueError as exc:
            checks.append(Check(f"{link.label()}: forward", False, message=f"{link.label()} does not fit rule '{rule.name}': {exc}", **ctx))
            return "forward"
        if b is None:
            cot, pairs = np.ones(np.shape(f.out)), [("forward", f.out)]
        elif link.style == "functional":  # NAME_backward(dout, cache) returns one gradient per input, in order
            cot = np.asarray(b.args[0], dtype=np.float64)
            parts = b.out if isinstance(b.out, tuple) else (b.out,)
            pairs = [("forward", f.out)] + [(n, parts[i] if i < len(parts) else None) for i, n in enumerate(data)]
        elif link.style == "dezero":  # backward(gy) returns one gradient per input, in the inputs' order
            pos = {n: i for i, (_, n) in enumerate(link.node_inputs)}
            cot = np.asarray(b.args[0], dtype=np.float64)
            pairs = [("forward", f.out)] + [(n, b.out[pos[n]] if pos[n] < len(b.out) else None) for n in data]
        else:
            cot = np.asarray(b.args[0] if b.args else 1.0, dtype=np.float64)
            pairs = [("forward", f.out)] + [(n, b.out if len(data) == 1 else None) for n in data] + \
                [(n, b.grads.get(n)) for n in link.slots]
        where = {"forward": f"{link.name}.forward" if link.style != "functional" else f"{link.name}[0]",
                 **{n: f"{link.kind}.backward(gy)[{i}] ({link.name})" if link.style == "dezero"
                    else link.grad_at[i] if link.style == "functional" else f"{link.name}.backward(dout)"
                    for i, n in enumerate(data)},
                 **{n: link.grad_where(n) for n in link.slots}}
        judge = Judge(rule, hyper, given, self.dtype)  # as verify judges a layer alone (judge.py)
        prefix = f"{link.label()}: "
        d = reference.at(rule, hyper, dims)
        grads = {n: got for n, got in pairs[1:]}
        results = judge.call(rep, d, ref, cot, f.out, grads, where, ctx, forward_only="" if b is not None else "forward only",
                             missing=link.style, prefix=prefix)
        checks += results
        bad = [c.name[len(prefix):].removeprefix("grad ") for c in results if not c.passed]
        if "forward" in bad:
            return "forward"
        return bad

    def model_gradients(self, order, params, owner, model_grads, ctx, spoiled) -> list[Check]:
        """The gradients the model hands back are its layers' own, for the right parameters."""
        checks = []
        by_name = {owner[key]: key for key in owner}
        link_of = {l.name: l for l in order}
        if self.style == "dlfs1":
            if not isinstance(model_grads, dict):
                return [self.wiring(f"{self.name}.gradient returned a {type(model_grads).__name__}, not a dict of gradients", ctx)]
            for pname, _ in params:
                key = pname[len("params['"):-2]
                if pname not in by_name:
                    continue
                lname, n = by_name[pname]
                layer_grad = link_of[lname].grad(n)
                got = model_grads.get(key)
                if got is None or not _same(np.asarray(got), np.asarray(layer_grad)):
                    other = next((f"{link_of[ln].grad_where(m)}" for (ln, m) in owner
                                  if _same(np.asarray(got), np.asarray(link_of[ln].grad(m)))), None) if got is not None else None
                    said = "missing" if got is None else (f"{other}" if other else "not any layer's gradient")
                    checks.append(self.wiring(f"gradient()['{key}'] is {said}, not {link_of[lname].grad_where(n)} "
                                              f"(the gradient of {pname})", ctx, spoil=spoiled, params=[pname],
                                              why=f"gradient()['{key}']"))
            return checks
        if not isinstance(model_grads, list):
            return [self.wiring(f"{self.name}.grads is a {type(model_grads).__name__}, not a list", ctx)]
        for i, (pname, _) in enumerate(params):
            if pname not in by_name:
                continue
            lname, n = by_name[pname]
            link = link_of[lname]
            slot = link.layer.grads[link.slots[n]] if isinstance(getattr(link.layer, "grads", None), list) else None
            got = model_grads[i] if i < len(model_grads) else None
            if got is None or got is not slot:
                checks.append(self.wiring(
                    f"{self.name}.grads[{i}] is not {link.grad_where(n)} (the gradient of {pname}): the model gathered "
                    f"the layers' grads once and the layer has since rebound its slot", ctx, spoil=spoiled,
                    params=[pname], why=f"grads[{i}] rebound", kind="rebinds-grads",
                    hint=f"write into the slot: grads[{link.slots[n]}][...] = d{n} (the model holds the list it got at construction)"))
        return checks


def _drawn_mask(arrays, from_output: np.ndarray, values: dict) -> np.ndarray:
    """The mask a dropout layer drew, where its input has zeros (after a ReLU) and its output cannot tell:
    the array it keeps (``self.mask``, or the mask in a CS231n cache; bool or scaled) whose non-zeros are
    the output's wherever the input is not 0; the output's own pattern if it keeps none."""
    known = np.all([np.asarray(v) != 0 for v in values.values()], axis=0)
    for v in arrays:
        if v.shape == from_output.shape and np.array_equal((v != 0)[known], from_output[known] != 0):
            return (v != 0).astype(np.float64)
    return from_output


def _arrays_in(kept, depth=0) -> list:
    """The arrays in a layer's attributes or a cache: a dict's values, a tuple's items, two levels down."""
    if isinstance(kept, np.ndarray):
        return [kept]
    items = kept.values() if isinstance(kept, dict) else kept if isinstance(kept, (tuple, list)) else ()
    return [a for v in items for a in (_arrays_in(v, depth + 1) if depth < 2 else [])]


def _data_inputs(link) -> list[str]:
    """The inputs a functional link's backward returns gradients for, in order (a rule-less one: its x)."""
    if link.rule is None:
        return ["x"]
    return [n for _, kind, n in link.binding.call if kind == "input"]


def _times(k: float) -> str:
    """'' for a coefficient of 1, '2·' for 2, '0.37·' for 0.37 (as in 2·reg·W)."""
    return "" if abs(k - 1) < 1e-9 else f"{k:.3g}·"


def _forwards(link) -> int:
    """How many times the layer's forward ran in this step."""
    return sum(c.kind == "forward" for c in link.calls)


def _network_gradients(spoiled: dict, how: str, ctx) -> Check:
    """The network's verdict on its parameters' gradients: the spoiled ones and why, or all checked ``how``."""
    if spoiled:
        said = ", ".join(f"{p} ({why})" for p, why in spoiled.items())
        return Check("network gradients", False, message=f"parameters whose gradients are wrong: {said}", **ctx)
    return Check("network gradients", True, message=f"every parameter's gradient checked {how}", **ctx)


def _fresh_values(arrays, rng) -> None:
    """What an optimizer does: new values written into the same arrays, of scale 1/sqrt(fan-in)
    (O(1) logits at any size: weights of scale 1 overflow a softmax at MNIST sizes, 0.01 hides a wrong layer)."""
    for arr in arrays:
        fan_in = arr.shape[0] if arr.ndim >= 2 else 4
        arr[...] = rng.normal(size=arr.shape) / np.sqrt(fan_in)


def _one_wiring_check(checks: list, ctx) -> list:
    """The wiring mistakes of one step as one check, "wiring", with every message and diagnosis;
    "network gradients" fails with it (no gradient can be trusted when the wiring is wrong)."""
    wires = [c for c in checks if c.name == "wiring"]
    if not wires:
        return checks
    merged = wires[0]
    merged.message = "; ".join(dict.fromkeys(c.message for c in wires))
    merged.diagnosis = [d for c in wires for d in c.diagnosis]
    checks = [c for c in checks if c.name != "wiring"] + [merged]
    if not any(c.name == "network gradients" for c in checks):  # judging stopped at the wiring
        checks.append(Check("network gradients", False, message="not one can be trusted: the wiring is wrong", **ctx))
    return checks


def _dedent(cls) -> str:
    import textwrap

    return textwrap.dedent(inspect.getsource(cls))


def _input_width(links, params) -> int:
    """The width of x: the first parametrised layer's first parameter's rows (W is D x H)."""
    for link in links:
        for n in link.slots:
            return int(np.shape(link.held(n))[0])
    raise DerivcheckError("the network has no layer with parameters, so the width of its input cannot be told")


def _same(a, b) -> bool:
    try:
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    except (TypeError, ValueError):
        return False


def _dims(rule, arrays: dict) -> dict:
    """The rule's sizes read off the arrays' shapes; ValueError when they do not fit its shapes."""
    dims = {}
    specs = [(n, i.shape) for n, i in rule.inputs.items()] + [(n, lab.shape) for n, lab in rule.labels.items()]
    for n, spec in specs:
        shape = np.shape(arrays[n])
        if len(shape) != len(spec):
            raise ValueError(f"{n} has shape {shape}, the rule's {n} has {len(spec)} axes ({', '.join(map(str, spec))})")
        for s, v in zip(spec, shape):
            if isinstance(s, Multiple):
                factor = dims.get(s.factor) if isinstance(s.factor, str) else s.factor
                if factor is None:  # G of "G*K": no array has it alone
                    raise ValueError(f"{n} has shape {shape}: {v} is {s}, and no array gives {s.factor} alone")
                if v % factor or dims.setdefault(s.dim, v // factor) != v // factor:
                    raise ValueError(f"{n} has shape {shape}: {v} is not {s} with {s.dim} = {dims.get(s.dim, '?')}")
            elif isinstance(s, str):
                if dims.setdefault(s, v) != v:
                    raise ValueError(f"{n} has shape {shape}: {s} is {dims[s]} elsewhere")
            elif s != v:
                raise ValueError(f"{n} has shape {shape}, the rule's {n} has {s} there")
    return dims


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
        link.rule = _link_rule(link.kind, link.style, rule_dirs)
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
    link.calls = [Call("forward", tuple(own(getattr(v, "data", v)) for v in node.inputs),
                       out=own(getattr(out, "data", None)))]
    bwd = node.backward

    def backward(*gys):
        stage(f"{link.name}.backward")
        gxs = bwd(*gys)
        parts = gxs if isinstance(gxs, (tuple, list)) else (gxs,)
        link.calls.append(Call("backward", tuple(own(getattr(g, "data", g)) for g in gys),
                               out=tuple(own(getattr(g, "data", g)) for g in parts)))
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


def verify_network(target: str, **options) -> Report:
    return NetworkVerifier(target, **options).run()
