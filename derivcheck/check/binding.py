"""Binding: a rule's inputs, labels and hyperparameters to a layer's constructor and call parameters,
by name, then by position."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from derivcheck.errors import DerivcheckError


def params_of(fn, skip_self: bool) -> list:
    """A function's parameters that can be passed by position or name (not *args, **kwargs); [] when unreadable."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    ps = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if skip_self and ps and ps[0].name == "self":
        ps = ps[1:]
    return ps


def norm_name(s: str) -> str:
    """A name as binding compares it: case and underscores ignored (dW, d_w and DW are one)."""
    return s.lower().replace("_", "")


DICT = "(the rule's hyperparameters as a dict)"  # what a NAME_param parameter binds to


@dataclass
class Binding:
    """Which rule names go to the constructor and which to the call (forward)."""

    ctor: dict = field(default_factory=dict)  # ctor parameter -> ("input"|"hyper"|"label", rule name)
    call: list = field(default_factory=list)  # [(call parameter or None, kind, rule name)] in call order
    dict_labels: list = field(default_factory=list)  # labels that go in a NAME_param dict (bn_param's running_mean)
    loose: list = field(default_factory=list)  # [(rule hyperparameter, layer parameter, its default)] bound to nothing

    def describe(self) -> str:
        c = ", ".join(f"{p}={n}" for p, (_, n) in self.ctor.items())
        f = ", ".join(f"{p or n}={n}" for p, _, n in self.call)
        return f"constructor({c}), call({f})"


def _same_kind(h, default) -> bool:
    """Could a parameter with this default be hyperparameter ``h``: a bool, a number or a choice as it is."""
    if isinstance(default, bool) or h.type == "bool":
        return isinstance(default, bool) and h.type == "bool"
    if h.type == "float":
        return isinstance(default, (int, float))
    if h.type in ("int", "dim"):
        return isinstance(default, int)
    return h.type == "choice" and isinstance(default, str)


def bind(rule, ctor_fn, call_fn, target_name: str, *, call_takes_all_inputs: bool) -> Binding:
    """Bind by name, then by position; refuse with a sentence saying what to do."""
    ctor_ps = params_of(ctor_fn, skip_self=True) if ctor_fn is not None else []
    call_ps = params_of(call_fn, skip_self=True) if call_fn is not None else []
    # a hyperparameter kept from the layer (layer = false: eps, how labels are encoded) binds to nothing
    state = rule.state.names if rule.state else ()  # set through a method before forward (Dlfs1Adapter), not bound here
    inputs = [n for n in rule.inputs if n not in state]
    labels = [n for n, lab in rule.labels.items() if lab.given and n not in state]
    hypers = [n for n, h in rule.hyper.items() if h.to_layer]
    hypers += list(rule.pairs)  # DeZero's kernel_size: (pool_h, pool_w) as one parameter, bound by name only
    data = inputs + labels
    b = Binding()
    taken: set[str] = set()

    def kind_of(n):
        if n in rule.pairs:
            return "pair"
        return "dict" if n == DICT else "input" if n in rule.inputs else "label" if n in rule.labels else "hyper"

    def names_of(n) -> set:
        h = rule.hyper.get(n)
        return {norm_name(n)} | {norm_name(a) for a in (h.names if h is not None else ())}

    def by_name(p, pool):
        for n in pool:
            if n not in taken and (p.name == n or norm_name(p.name) in names_of(n)):
                return n
        return None

    def take(n):
        taken.add(n)
        taken.update(rule.pairs.get(n, ()))  # kernel_size holds pool_h and pool_w

    call_slots, ctor_slots = [], []
    for p in call_ps:
        n = by_name(p, data + hypers)
        if n:
            take(n)
        call_slots.append((p, n))
    for p in ctor_ps:  # labels by name only: book 1's BatchNormalization(..., running_mean=None, running_var=None)
        n = by_name(p, ([] if call_takes_all_inputs else inputs) + hypers + labels)
        if n:
            take(n)
        ctor_slots.append((p, n))
    # by position: the call takes data from the front (x before W, b; labels last) ...
    free_data = [n for n in data if n not in taken]
    for i, (p, n) in enumerate(call_slots):
        if n is None and p.default is p.empty and free_data and not p.name.endswith("_param"):  # bn_param: a dict, below
            n = free_data.pop(0) if not (labels and p is call_slots[-1][0] and free_data[-1] in labels) else free_data.pop()
            taken.add(n)
            call_slots[i] = (p, n)
    # ... the constructor takes what is left: parameters, then hyperparameters
    free_ctor = [n for n in (([] if call_takes_all_inputs else inputs) + hypers) if n not in taken and n not in rule.pairs]
    for i, (p, n) in enumerate(ctor_slots):
        if n is None and p.default is p.empty and free_ctor:
            n = free_ctor.pop(0)
            taken.add(n)
            ctor_slots[i] = (p, n)
    # CS231n's conv_param, bn_param, dropout_param: a dict of the rule's hyperparameters (_call_args)
    dicts = {p.name for p, n in call_slots + ctor_slots if n is None and p.default is p.empty and p.name.endswith("_param")}
    call_slots = [(p, DICT if p.name in dicts else n) for p, n in call_slots]
    ctor_slots = [(p, DICT if p.name in dicts else n) for p, n in ctor_slots]
    if dicts:  # CS231n's test mode: bn_param also holds running_mean and running_var, the labels nothing else takes
        b.dict_labels = [n for n in labels if n not in taken]
        taken.update(b.dict_labels)
    missing_ctor = [p.name for p, n in ctor_slots if n is None and p.default is p.empty]
    missing_call = [p.name for p, n in call_slots if n is None and p.default is p.empty]
    if call_takes_all_inputs:
        for n in data:  # DeZero functions take every array as a call argument
            if n not in taken:
                call_slots.append((None, n))
                taken.add(n)
    unbound = [n for n in inputs if n not in taken]
    sig_c = ", ".join(p.name for p in ctor_ps)
    sig_f = ", ".join(p.name for p in call_ps)
    if missing_ctor or missing_call:
        what = ", ".join(missing_ctor + missing_call)
        raise DerivcheckError(
            f"cannot bind {target_name}'s parameter(s) {what} to rule '{rule.name}' "
            f"(inputs {', '.join(inputs)}; labels {', '.join(labels) or 'none'}; hyper {', '.join(hypers) or 'none'}): "
            f"rename them after the rule's names, give them defaults, or pick another --rule"
        )
    if unbound:
        raise DerivcheckError(
            f"cannot bind rule input(s) {', '.join(unbound)} of '{rule.name}' to {target_name}: "
            f"its constructor takes ({sig_c}) and its forward takes ({sig_f}); "
            f"name a parameter after the input, or pick another --rule"
        )
    unbound_labels = [n for n in labels if n not in taken]
    if unbound_labels:
        raise DerivcheckError(f"{target_name}'s forward takes ({sig_f}) but rule '{rule.name}' needs labels {', '.join(unbound_labels)} too")
    # a hyperparameter that reached nothing, and a parameter of the same type left at its default: perhaps one
    # under two names (CS231n's leaky_relu_forward(x, alpha=0.01), the rule's slope); the report says so
    loose_hypers = [n for n in hypers if n not in taken and n not in rule.pairs]
    loose_params = [p for p, n in call_slots + ctor_slots if n is None and p.default is not p.empty]
    b.loose = [(n, p.name, p.default) for n in loose_hypers for p in loose_params if _same_kind(rule.hyper[n], p.default)]
    b.ctor = {p.name: (kind_of(n), n) for p, n in ctor_slots if n is not None}
    b.call = [(p.name if p is not None else None, kind_of(n), n) for p, n in call_slots if n is not None]
    return b
