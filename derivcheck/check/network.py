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

The model runs in the layer's process (:mod:`derivcheck.check.netrecord`), which sends back what
flowed, as data; this module, in the judge's process, computes every check from that data.
"""
from __future__ import annotations

import numpy as np

from derivcheck.engine import reference
from derivcheck.check.netrecord import check_trial, Link, link_of_plain, STYLES, Unreadable
from derivcheck.checks import KAPPA, Check, compare, unit_roundoff
from derivcheck.errors import DerivcheckError
from derivcheck.engine.rules import Multiple
from derivcheck.check.judge import Judge, judged_dtype
from derivcheck.results import NUMPY_DTYPES, Report, warn
from derivcheck.vocab import DTYPES

REGULARIZATION_NOTE = "regularization in "  # how the report's note on a CS231n model's L2 term begins


class NetworkJudge:
    """One model class, judged from what its process recorded (``recorder``: ``header()``, ``trial(k)``);
    ``run()`` returns a Report whose checks are per link and per connection."""

    def __init__(self, target: str, recorder, *, dtype="float64", seed=0, trials=3, steps=2, shape=None, strict=False,
                 rule_dirs=(), **_ignored):
        if dtype not in DTYPES:
            raise DerivcheckError(f"--dtype must be one of {', '.join(DTYPES)}, not '{dtype}'")
        self.target, self.dtype_name, self.dtype = target, dtype, NUMPY_DTYPES[dtype]
        self.seed, self.trials, self.steps, self.strict = seed, trials, steps, strict
        self.rule_dirs, self.recorder = rule_dirs, recorder
        header = recorder.header()
        self.name, self.style, self.shape = str(header["name"]), str(header["style"]), dict(header["shape"])
        if self.style not in STYLES:
            raise Unreadable(f"a network of style {self.style!r}")
        self.forward_only = ""
        if self.style == "predict":
            self.forward_only = f"{self.name} has layers and predict() and no loss: each layer's forward is checked"

    def run(self) -> Report:
        rep = Report(self.target, "network", self.style, self.dtype_name, self.seed, self.trials, self.steps, {},
                     strict=self.strict)
        rep.forward_only = self.forward_only
        results: dict[str, Check] = {}
        first_bad = None
        for k in range(self.trials):
            checks, links = self.run_trial(k, check_trial(self.recorder.trial(k), self.style, self.steps), rep)
            if k == 0 and links:
                rep.notes.append("network: " + " -> ".join(f"{l.label()}: {l.rule.name if l.rule else 'no rule'}"
                                                          for l in links))
                rep.layers = [{"name": l.name, "kind": l.kind, "rule": l.rule.name if l.rule else None} for l in links]
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

    def run_trial(self, k: int, trial: dict, rep: Report) -> tuple[list[Check], list[Link]]:
        """Trial ``k`` from its record (netrecord.NetworkRecorder.trial): its checks, and its first step's links."""
        ctx = dict(trial=k, seed=int(trial["seed"]), dims={str(d): int(n) for d, n in trial["sizes"].items()})
        _warn_writes(rep, trial["writes"], k)  # (call, argument) names: check_trial saw they are text
        checks, first = [], []
        judge = {"predict": self.judge_forward, "dezero": self.judge_dezero,
                 "functional": self.judge_functional}.get(self.style, self.judge_loss)
        for step, record in enumerate(trial["steps"]):
            links = [link_of_plain(d, self.rule_dirs) for d in record["links"]]
            sctx = dict(ctx, step=step)
            if step == 0:
                first = links
                checks += _no_rule(links, ctx)
            checks += judge(links, record, sctx, rep)
        if trial["raised"] is not None:
            if not trial["steps"] and trial["links"]:  # the first step raised: the layers as they were found
                first = [link_of_plain(d, self.rule_dirs) for d in trial["links"]]
                checks += _no_rule(first, ctx)
            checks.append(self.model_raised(trial["raised"], ctx))
        return checks, first

    def model_raised(self, raised: dict, ctx: dict) -> Check:
        """The model's failure as a check; but a first forward that unpacks another rank (VGG16's images from
        derivcheck's (N, D) batch) is a model this check does not fit: exit 2, as for a layer."""
        step, message = int(raised["step"]), str(raised["message"])
        if raised["built"] and ctx["trial"] == 0 and step == 0 and "backward" not in str(raised["stage"]) \
                and raised["wrong_rank"] is True:
            raise DerivcheckError(
                f"{self.name} does not fit derivcheck's network check, which feeds a batch of vectors x of shape "
                f"(N, D): {message}. It takes inputs of another rank (images, sequences): check its layers one by one "
                f"(`derivcheck verify` on each layer or Function)") from None
        return Check("model raised", False, message=message, step=step, **ctx)

    # -- a model with predict() and no loss -------------------------------------
    def judge_forward(self, links, record, ctx, rep) -> list[Check]:
        """Each layer's forward on what flows, and the forward wiring."""
        shared = self.shared_instance(links, ctx)
        wires = [shared] if shared else self.forward_wiring(links, record["x"], ctx)
        if not wires and not _same(np.asarray(record["out"]), np.asarray(links[-1].calls[0].out)):
            wires.append(self.wiring(f"what {self.name}.predict returned is not {links[-1].label()}'s output", ctx))
        checks = list(wires)
        if not any(c.name == "wiring" for c in wires) or all(len(l.calls) == 1 for l in links):
            for link in links:
                if link.rule is not None and len(link.calls) == 1:
                    self.check_link(link, ctx, checks, rep)
        return checks

    # -- book 1 and 2 ---------------------------------------------------------
    def judge_loss(self, links, record, ctx, rep) -> list[Check]:
        """Every link and connection of one step; the wiring mistakes found make one check, "wiring"."""
        params = [(str(n), p) for n, p in record["params"]]
        model_grads = record.get("model_grads") if self.style == "dlfs1" else (record["grads_type"], record["grads_is_slot"])
        return _one_wiring_check(self._judge(links[:-1], links[-1], params, record["x"], record["t"], record["model_loss"],
                                             model_grads, ctx, rep), ctx)

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
                arr = link.held_now[n]
                name = link.param_of.get(n)
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
                    ref[n] = _drawn_mask(link.kept, ref[n], values)
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
                layer_grad = link_of[lname].grads_now[n]
                got = model_grads.get(key)
                if got is None or not _same(np.asarray(got), np.asarray(layer_grad)):
                    other = next((f"{link_of[ln].grad_where(m)}" for (ln, m) in owner
                                  if _same(np.asarray(got), np.asarray(link_of[ln].grads_now[m]))), None) if got is not None else None
                    said = "missing" if got is None else (f"{other}" if other else "not any layer's gradient")
                    checks.append(self.wiring(f"gradient()['{key}'] is {said}, not {link_of[lname].grad_where(n)} "
                                              f"(the gradient of {pname})", ctx, spoil=spoiled, params=[pname],
                                              why=f"gradient()['{key}']"))
            return checks
        kind, is_slot = model_grads  # read in the layer's process: model.grads[i] is the layer's slot (identity)
        if kind != "list":
            return [self.wiring(f"{self.name}.grads is a {kind}, not a list", ctx)]
        for i, (pname, _) in enumerate(params):
            if pname not in by_name:
                continue
            lname, n = by_name[pname]
            link = link_of[lname]
            if not (i < len(is_slot) and is_slot[i] is True):
                checks.append(self.wiring(
                    f"{self.name}.grads[{i}] is not {link.grad_where(n)} (the gradient of {pname}): the model gathered "
                    f"the layers' grads once and the layer has since rebound its slot", ctx, spoil=spoiled,
                    params=[pname], why=f"grads[{i}] rebound", kind="rebinds-grads",
                    hint=f"write into the slot: grads[{link.slots[n]}][...] = d{n} (the model holds the list it got at construction)"))
        return checks


    def judge_dezero(self, links, record, ctx, rep) -> list[Check]:
        """Each Function node against its rule on the values that reached it, and each Parameter's gradient the
        sum of what the nodes using it handed back (the graph is the wiring: DeZero's backward walks it)."""
        checks, spoiled = [], {}
        var_of = {}  # an input Variable's token -> [(link, position)]
        for link in links:
            for i, v in enumerate(link.inputs):
                var_of.setdefault(v["var"], []).append((link, i))
        for link in links:
            if link.rule is None or len(link.calls) != 2:
                continue
            bad = self.check_link(link, ctx, checks, rep)
            wrong = [i for i, (kind, n) in enumerate(link.node_inputs) if bad == "forward" or n in bad]
            for i in wrong:  # a wrong gradient of an input spoils every parameter upstream of it
                for pname in link.inputs[i]["upstream"]:
                    spoiled.setdefault(str(pname), f"{link.name}'s {'forward' if bad == 'forward' else 'backward'}")
        for (name, _), var, got in zip(record["params"], record["param_vars"], record["param_grads"]):
            uses = var_of.get(var, []) if var is not None else []
            if not uses:
                checks.append(self.wiring(f"parameter {name} is not used by the model's forward: its gradient is "
                                          f"{'None' if got is None else 'left over'}", ctx))
                continue
            parts = [link.calls[1].out[i] for link, i in uses if len(link.calls) == 2]
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

    def judge_functional(self, links, record, ctx, rep) -> list[Check]:
        """A CS231n model's loss(X, y): each forward/backward pair (and the loss function) against its rule on what
        flowed through it; the wiring is that each layer's data input is X or an earlier layer's output, its dout
        the sum of the dx's of the layers using its output, the loss the data loss plus a regularization term,
        and grads[k] the sum of the layers' gradients of params[k] plus that term's gradient."""
        return _one_wiring_check(self._judge_functional(links, record, ctx, rep), ctx)

    def _judge_functional(self, links, record, ctx, rep) -> list[Check]:
        checks, spoiled = [], {}
        params, x = [(str(n), p) for n, p in record["params"]], record["x"]
        pnames = [n for n, _ in params]
        owner = {}  # (link name, rule input) -> params name
        produced = []  # (link, output): what each layer handed on, in forward order
        inputs_of = {}  # link name -> {rule input: (producer link or None for X)}
        ruled = [l for l in links if l.rule is not None]
        for link in links:
            names = [n for _, _, n in link.binding.call] if link.rule else ["x"] + [f"arg{i}" for i in range(1, len(link.calls[0].args))]
            copies = dict(zip(names, link.calls[0].args))  # their values at the call (a later write in place changes no verdict)
            inputs_of[link.name] = {}
            for n in _data_inputs(link) if link.rule is None else link.rule.inputs:
                copy = copies.get(n)
                pname = link.param_of.get(n) or \
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
        losses = [l for l in ruled if l.fn["role"] == "loss"]
        if not losses:
            raise TypeError("a record with no loss link")
        loss = losses[-1]
        upstream = {}  # link name -> params whose gradient flows through its dx
        for link in links:
            mine = {p for (ln, _), p in owner.items() if ln == link.name}
            for src in inputs_of[link.name].values():
                if src is not None:
                    mine |= upstream.get(src.name, set()) | {p for (ln, _), p in owner.items() if ln == src.name}
            upstream[link.name] = mine
        # backward: each layer back-propagated once, with the dx's of the layers that used its output
        for link in links:
            if link is loss or link.fn["role"] == "loss":
                continue
            c = link.fn
            users = [(l, n) for l in links for n, src in inputs_of[l.name].items() if src is link]
            mine = sorted(upstream[link.name] | {p for (ln, _), p in owner.items() if ln == link.name}, key=pnames.index)
            if not users:
                checks.append(self.wiring(f"{link.label()}'s output is used by no layer", ctx, spoil=spoiled, params=mine,
                                          why=f"{link.name}'s output unused"))
                continue
            if c["pair_label"] is None:
                checks.append(self.wiring(f"{link.label()} is never back-propagated: no {c['stem']}_backward was given its "
                                          f"cache", ctx, spoil=spoiled, params=mine, why=f"{link.name} not back-propagated"))
                continue
            if c["paired_by"] == "order":
                note = (f"{c['pair_label']} was given something other than the cache {c['label']} returned; it is taken as "
                        f"{c['label']}'s backward, by order")
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
                checks.append(self.wiring(f"{c['pair_label']}'s dout is not {was}", ctx, spoil=spoiled, params=mine,
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
        checks += self.regularized(links, loss, params, owner, record, ctx, spoiled, rep)
        checks.append(_network_gradients(spoiled, "link by link", ctx))
        return checks

    def regularized(self, links, loss, params, owner, record, ctx, spoiled, rep) -> list[Check]:
        """The model's loss is the data loss plus c·reg·Σ p² over some params, and grads[k] the sum of the
        layers' gradients of params[k] plus 2c·reg·params[k]; the term's form is read off the loss's value."""
        model_loss, model_grads = record["model_loss"], record["model_grads"]
        try:
            reg = float(record["reg"])
        except (TypeError, ValueError):
            return [self.wiring(f"{self.name}.reg is a {type(record['reg']).__name__}, not a number", ctx)]
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
        for i, link in enumerate(order):
            if link.instance != i:
                return self.wiring(f"{order[link.instance].name} and {link.name} are one {link.kind} instance: what it "
                                   f"saves in forward is the later call's when either backward runs; make one instance "
                                   f"per place in the network", ctx)
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



def _no_rule(links, ctx) -> list[Check]:
    """A failing check for each link derivcheck has no rule for (why, in its message)."""
    return [Check(f"{l.label()}: no rule", False, message=f"{l.label()} cannot be checked: {l.why}", **ctx)
            for l in links if l.rule is None]


def _warn_writes(rep, writes, trial) -> None:
    """A call that wrote into an array it was given (``writes``: (the call, the argument)): a side effect, as verify
    says of a layer alone, never a wiring mistake; every check reads the copies made at the call."""
    for who, n in writes:
        warn(rep, "mutates-input", f"{who} wrote into its argument '{n}' in place (an array the model may use again: "
                                   f"copy it first)", trial)


def _drawn_mask(arrays, from_output: np.ndarray, values: dict) -> np.ndarray:
    """The mask a dropout layer drew, where its input has zeros (after a ReLU) and its output cannot tell:
    the array it keeps (``self.mask``, or the mask in a CS231n cache; bool or scaled) whose non-zeros are
    the output's wherever the input is not 0; the output's own pattern if it keeps none."""
    known = np.all([np.asarray(v) != 0 for v in values.values()], axis=0)
    for v in arrays:
        if isinstance(v, np.ndarray) and v.shape == from_output.shape and np.array_equal((v != 0)[known], from_output[known] != 0):
            return (v != 0).astype(np.float64)
    return from_output


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


def verify_network(target: str, recorder, **options) -> Report:
    """The network ``target``, judged here from what ``recorder`` (the layer's process) sends."""
    return NetworkJudge(target, recorder, **options).run()
