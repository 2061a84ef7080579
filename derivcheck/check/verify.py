"""Verification: run a layer at seeded random shapes and values, compare with the exact reference.

Each *trial* is one shape with its own seed (``seed + k``, printed). A trial
builds one layer instance and runs ``steps`` forward/backward passes on it,
writing new parameter values into the same arrays between steps, as a training
loop would. Every value and cotangent comes from the trial's seed.

Tolerances are set in :mod:`derivcheck.checks`; the exact reference and its
rounding scales come from :mod:`derivcheck.engine.reference`.
"""
from __future__ import annotations

import contextlib
import functools
import shlex
from pathlib import Path

import numpy as np

from derivcheck.engine import reference
from derivcheck.check.conventions.base import LayerError
from derivcheck.check.conventions.registry import detect_style, make_adapter
from derivcheck.check.loading import load_target, script_note, target_spec
from derivcheck.checks import Check, compare, unit_roundoff
from derivcheck.check.diagnose import diagnose_raised, settle_factor
from derivcheck.errors import DerivcheckError
from derivcheck.check.judge import Judge
from derivcheck.progress import status
from derivcheck.results import NUMPY_DTYPES, Report, warn
from derivcheck.vocab import DTYPES

# ---------------------------------------------------------------------------


class LocalLayers:
    """The layer, run in this process: what :class:`Verifier` asks of a layer (``layers=``), answered here.
    isolate.py answers the same questions from the layer's own process (``RemoteLayers``), so that the
    judgement is never made where the layer's code runs; this one is for a layer no worker can import
    (a class defined inside a function) and for tests of the judgement itself."""

    def __init__(self, target):
        self.target = target

    def detect_style(self) -> str:
        return detect_style(*load_target(self.target))

    def script_note(self) -> str:
        return script_note(load_target(self.target)[1])

    def trial(self, rule, hyper: dict, layer_hyper: dict, style, seed: int, steps=()) -> tuple:
        """The layer's adapter (base.Adapter: name, style, loose_note, can_repeat, step, repeat), made with NumPy's
        global generator seeded from ``seed`` (what the layer draws itself: its weights, dropout's masks), and an
        iterator of its outcomes at ``steps`` ((first, values, cotangent, unchanged) each), run as they are read:
        a step that raises ends it, and the steps after it are never run."""
        np.random.seed(seed % 2**32)
        adapter = make_adapter(self.target, rule, hyper, layer_hyper, style)
        return adapter, (adapter.step(*call) for call in steps)

    def make(self, rule, hyper: dict, layer_hyper: dict, style, seed: int = 0):
        return self.trial(rule, hyper, layer_hyper, style, seed)[0]


class Verifier:
    """One layer against one rule. ``run()`` returns a Report. ``layers``: where the layer runs (LocalLayers
    by default; isolate.RemoteLayers)."""

    def __init__(self, target: str, rule, *, hyper=None, style=None, dtype="float64", seed=0, trials=5, steps=2,
                 shape=None, strict=False, kinks=False, stress=True, variants=None, layers=None):
        self.layers = layers or LocalLayers(target)
        if dtype not in DTYPES:
            raise DerivcheckError(f"--dtype must be one of {', '.join(DTYPES)}, not '{dtype}'")
        if trials < 1 or steps < 1:
            raise DerivcheckError("--trials and --steps must be at least 1")
        self.variant_note = ""
        if variants:  # a guessed rule with a form of its own in the layer's convention (targets.variants_for)
            detected = style or self.layers.detect_style()
            if detected in variants:
                from derivcheck.engine.rules import load_rule_file

                base, rule = rule.name, load_rule_file(Path(variants[detected]))
                self.variant_note = (f"rule: {rule.name}, the {detected} convention's {base} (guessed from the "
                                     f"layer's name and style; --rule names another)")
        self.target, self.rule = target_spec(target), rule
        self.given_hyper = dict(hyper or {})
        self.hyper = rule.resolve_hyper(self.given_hyper)
        self.dtype_name, self.dtype = dtype, NUMPY_DTYPES[dtype]
        self.judge = Judge(rule, self.hyper, self.given_hyper, self.dtype)  # the one judgement (judge.py)
        self.seed, self.trials, self.steps = seed, trials, steps
        # sizes fixed in every trial: those --shape names, and those the hyperparameters determine
        self.shape = rule.resolve_dims(shape or {}, partial=True) or None  # as given, for the reproduce line
        self.hyper_pins = rule.pinned_dims(self.given_hyper)  # sizes the hyperparameters determine
        self.pins = dict(self.hyper_pins)
        for d, n in (self.shape or {}).items():
            if self.pins.get(d, n) != n:
                raise DerivcheckError(f"--shape sets {d}={n}, but a hyperparameter sets {d}={self.pins[d]}")
            self.pins[d] = n
        unmet = self.rule.unmet(self.fitted(self.rule.example_dims()), self.hyper)
        if unmet:  # a layer may rightly refuse such sizes (CS231n's asserts): never call it there
            said = ", ".join(f"{d}={n}" for d, n in self.pins.items())
            raise DerivcheckError(
                f"rule '{rule.name}' needs sizes where {'; and '.join(unmet)}"
                + (f": --shape {said} does not give them" if self.pins else ": no size in the rule's range does at these "
                   "hyperparameters") + " (choose sizes that do, with --shape)")
        self.refuse_oversized(self.fitted(self.rule.example_dims()))
        self.strict = strict
        self.kinks, self.stress = kinks, stress
        self.varied = {}  # the current trial's hyperparameters that differ from the run's (at_hyper)
        self.style = style
        # load the target now, so that a typo is an error (exit 2) before any trial
        self.probe = self.layers.make(self.rule, self.hyper, {}, style, seed)

    MAX_ELEMENTS = 1 << 27  # set by hand: 128 Mi elements (1 GiB in float64) per array; the reference holds several

    def refuse_oversized(self, dims: dict) -> None:
        """Sizes (from --shape or the hyperparameters) whose arrays could not be held: exit 2 before anything
        is allocated, naming the array, not a MemoryError halfway through a check."""
        for name, count in self.rule.element_counts(dims).items():
            if count > self.MAX_ELEMENTS:
                said = ", ".join(f"{d}={n}" for d, n in dims.items())
                what = "the output" if name == "output" else name
                raise DerivcheckError(f"at {said}, {what} would have {count:,} elements, more than derivcheck holds "
                                      f"({self.MAX_ELEMENTS:,}): check at smaller sizes (--shape); the exact check at "
                                      f"small sizes covers the same formula")

    # -- the trial plan ---------------------------------------------------------
    def trial_dims(self, k: int) -> dict:
        """The rule's planned sizes for trial ``k`` (Rule.planned_dims), pinned sizes always."""
        return self.fitted(self.rule.planned_dims(k, self.seed, self.hyper))

    def trial_hyper(self, k: int) -> dict:
        """Trial ``k``'s hyperparameters (Rule.trial_hyper), or the run's where the sizes --shape pins admit no
        windows at those values (a layer may rightly refuse them)."""
        hyper = self.rule.trial_hyper(k, self.given_hyper)
        if hyper != self.hyper and self.rule.windows:
            dims = self.rule.fit({**self.rule.planned_dims(k, self.seed, hyper), **self.pins}, hyper, fixed=self.pins)
            if self.rule.unmet(dims, hyper):
                return self.hyper
        return hyper

    def fitted(self, dims: dict) -> dict:
        """``dims`` with the pinned sizes, moved to meet the rule's preconditions (Rule.fit)."""
        return self.rule.fit({**dims, **self.pins}, self.hyper, fixed=self.pins)

    def layer_hyper(self, dims: dict) -> dict:
        """Hyperparameters as a layer receives them: sizes resolved, lists as tuples."""
        env = self.rule.environment(dims, self.hyper, {})
        out = {}
        for name, h in self.rule.hyper.items():
            if h.to_layer:
                v = env[name]
                out[name] = tuple(v) if isinstance(v, list) else v
        return out

    def sample(self, bound, rng) -> tuple[dict, dict]:
        """(values for the layer, in dtype; the same values for the reference, float64)."""
        layer, ref = reference.draw(self.rule, bound.shapes, bound.label_shapes, bound.dims, rng, self.dtype)
        if self.hyper.get("labels", "index") != "index":
            for n, lab in self.rule.labels.items():
                if lab.kind == "classes":
                    layer[n] = np.eye(bound.dims[lab.classes], dtype=self.dtype)[ref[n]]
        return layer, ref

    def cotangent(self, derivation, rng):
        shape = derivation.output_shape
        if shape == ():  # a loss: a random scalar that is not 1
            return np.asarray(rng.uniform(1.5, 3.0) * rng.choice([-1.0, 1.0]), dtype=self.dtype)
        while True:
            c = rng.normal(size=shape).astype(self.dtype)
            if not np.all(c == 1):
                return c

    # -- running ------------------------------------------------------------------
    def run(self) -> Report:
        rep = Report(self.target, self.rule.name, self.probe.style, self.dtype_name, self.seed, self.trials,
                     self.steps, {k: v for k, v in self.given_hyper.items()}, strict=self.strict)
        rep.notes = [n for n in (self.layers.script_note(), self.variant_note, reference.note_for(self.rule, self.hyper),
                                 self.probe.loose_note) if n]
        results: dict[str, Check] = {}
        factors: dict[str, list] = {}  # check -> [(factor, dims)] of every failing trial
        first_failure = None
        for k in range(self.trials):
            with self.at_hyper(self.trial_hyper(k)) as varied:
                dims = self.trial_dims(k)
                trial_seed = self.seed + k
                said = ", ".join(f"{d}={n}" for d, n in {**dims, **varied}.items())
                with status(f"trial {k + 1} of {self.trials} at {said}"):
                    checks = self.run_trial(k, dims, trial_seed, rep)
            for c in checks:
                # a failing check is shown at its first failure (what `reproduce` replays),
                # a passing one at its closest call
                keep = results.get(c.name)
                if keep is None or (not c.passed and keep.passed) or (c.passed and keep.passed and c.severity > keep.severity):
                    results[c.name] = c
                if not c.passed and first_failure is None:
                    first_failure = c
                for dg in c.diagnosis or []:
                    if dg["kind"] == "constant-factor":
                        factors.setdefault(c.name, []).append((dg["evidence"]["factor"], c.dims))
        # the probe speaks of numerics only: a layer whose formula is already wrong is not probed
        if self.stress and any(i.stress for i in self.rule.inputs.values()) and first_failure is None:
            stability = self.stability_check()
            if stability.passed or self.strict:  # its reproduce command is the run's own: it has no trial of its own
                results[stability.name] = stability
            else:  # the ordinary trials decide the verdict; an overflow only at extreme inputs is a warning
                warn(rep, "numerical-stability", f"{stability.message}; the ordinary trials pass, so this fails only "
                                                  f"under --strict (hint: {stability_hint(self.rule, stability.got)})", None)
        if self.kinks:
            rep.notes += self.kink_notes()
        rep.checks = list(results.values())
        rep.diagnosis = [d for c in rep.checks if not c.passed for d in (c.diagnosis or [])]
        for c in rep.checks:
            if c.name == "stability" and not c.passed:
                rep.diagnosis.append({
                    "check": "stability", "kind": "numerical-stability",
                    "message": f"stability: {c.message} (a numerical-stability failure: the formula is right for ordinary inputs)",
                    "hint": stability_hint(self.rule, c.got),
                    "evidence": {"expected": c.expected, "got": c.got},
                })
        for dg in rep.diagnosis:
            if dg["kind"] == "constant-factor":
                settle_factor(dg, factors[dg["check"]])
        rep.reproduce = self.reproduce_command(first_failure)
        return rep

    @contextlib.contextmanager
    def at_hyper(self, hyper: dict):
        """Run a trial at ``hyper`` (Rule.trial_hyper: a stride of 2 where the default is 1): the reference, the
        layer's arguments and the judgement all take it; yields what differs from the run's hyperparameters."""
        varied = {n: v for n, v in hyper.items() if v != self.hyper[n]}
        if not varied:
            yield varied
            return
        keep, self.hyper, self.judge = (self.hyper, self.judge), hyper, Judge(self.rule, hyper, self.given_hyper, self.dtype)
        self.varied = varied
        try:
            yield varied
        finally:
            self.judge.ignores_dout = self.judge.ignores_dout or keep[1].ignores_dout
            keep[1].ignores_dout = self.judge.ignores_dout
            (self.hyper, self.judge), self.varied = keep, {}

    def reproduce_command(self, failure: Check | None) -> str:
        options = dict(style=self.style, hyper=self.given_hyper, dtype=self.dtype_name, seed=self.seed,
                       trials=self.trials, steps=self.steps, shape=self.shape, strict=self.strict)
        return reproduce_line(self.target, self.rule, options, failure)

    def run_trial(self, k: int, dims: dict, trial_seed: int, rep: Report) -> list[Check]:
        rng = np.random.default_rng(trial_seed)
        d = reference.at(self.rule, self.hyper, dims)
        draws = []  # every step's values, drawn before any is run: the layer's process gets them all at once
        for _ in range(self.steps):
            values, ref = self.sample(d, rng)
            draws.append((values, ref, self.cotangent(d, rng)))
        unchanged = [n for n in draws[0][0] if not (n in self.rule.labels and self.rule.labels[n].updated)]  # running statistics
        # the layer gets copies: what it writes into cannot change what it is held to
        adapter, outcomes = self.layers.trial(self.rule, self.hyper, self.layer_hyper(dims), self.style, trial_seed,
                                              [(step == 0, values, np.array(cot, copy=True), unchanged)
                                               for step, (values, _, cot) in enumerate(draws)])
        checks = []
        ctx = lambda step: dict(trial=k, step=step, seed=trial_seed, dims=dict(dims),  # noqa: E731
                                hyper=dict(self.varied) if self.varied else None)
        history = {"expected": {n: [] for n in self.rule.inputs}, "passed": {}, "ref": []}  # for diagnosis
        kept = {n: [0, 0] for n, lab in self.rule.labels.items() if not lab.given}  # mask -> [kept, elements]
        for step, (values, ref, cot) in enumerate(draws):
            try:
                outcome = next(outcomes)
            except LayerError as exc:
                if k == 0 and step == 0 and not exc.stage.endswith("backward") and exc.wrong_rank:
                    shapes = ", ".join(f"{n} {tuple(np.shape(v))}" for n, v in values.items())
                    raise DerivcheckError(
                        f"{self.probe.name} does not fit rule '{self.rule.name}': given the rule's inputs ({shapes}), {exc}. "
                        f"It takes arrays of other ranks, so it implements another operation: pick the rule that fits "
                        f"(--rule NAME; `derivcheck rules` lists them) or write one (`derivcheck rules {self.rule.name}` "
                        f"prints this one to start from; docs/rules.md)") from None
                checks.append(Check("layer raised", False, message=str(exc),
                                    diagnosis=diagnose_raised(str(exc), str(exc.stage), self.rule, dims), **ctx(step)))
                return checks
            if outcome.flags_note and outcome.flags_note not in rep.notes:
                rep.notes.append(outcome.flags_note)
            if outcome.output is None and k == 0 and step == 0:
                raise DerivcheckError(outcome.no_output)
            ref = reference.read_kept(self.rule, ref, outcome.output)  # a mask the layer drew (dropout)
            for n in kept:
                kept[n][0] += int(ref[n].sum())
                kept[n][1] += ref[n].size
            # the reference reads private copies: a layer that writes into dout cannot change what it is held to
            checks += self.judge.call(rep, d, ref, cot, outcome.output, {n: outcome.grads.get(n) for n in self.rule.inputs},
                                      {"forward": "forward output", **outcome.where}, ctx(step), history=history,
                                      output_problem=outcome.output_problem, forward_only=outcome.forward_only,
                                      missing=adapter.style)
            if outcome.forward_only:
                rep.forward_only = outcome.forward_only
            checks += self.rebound_slots(outcome, ctx(step))
            self._side_effects(rep, k, outcome)
        checks += [self.kept_fraction(n, *counts, ctx(self.steps - 1)) for n, counts in kept.items()]
        if adapter.can_repeat and all(c.passed for c in checks):
            self._stale_check(rep, k, d, adapter, rng)  # only meaningful for a layer that is right so far
        return checks

    KEPT_SIGMAS = 5  # set by hand: a correct layer is outside 5 standard deviations with a chance below 1e-6

    def kept_fraction(self, name: str, kept: int, total: int, ctx) -> Check:
        """A mask the layer drew keeps about (1 - drop) of the elements: its count is binomial.

        Its value checks cannot see a layer that drops at another rate (a comparison the wrong
        way round keeps p, not 1 - p), since the mask is read off the layer's own output.
        """
        lab = self.rule.labels[name]
        rate = lab.drop or lab.keep
        keep = 1.0 - float(self.hyper[lab.drop]) if lab.drop else float(self.hyper[lab.keep])
        drop = 1.0 - keep
        mean, sd = total * keep, float(np.sqrt(total * keep * drop))
        bound = self.KEPT_SIGMAS * sd + 1
        c = Check(f"{name} kept", abs(kept - mean) <= bound, **ctx)
        c.message = (f"the layer kept {kept} of {total} elements over the trial's {self.steps} call(s); with "
                     f"{rate} = {float(self.hyper[rate]):g} about {mean:.1f} ± {bound:.1f} are kept "
                     f"({self.KEPT_SIGMAS} standard deviations, + 1)")
        return c

    @staticmethod
    def rebound_slots(outcome, ctx) -> list[Check]:
        """``grads[0] = dW`` in the book-2 convention: a failure, not a style issue.

        A book-2 model gathers ``layer.grads`` once, at construction; a rebound slot
        is never seen by the optimizer, so that parameter silently stops training.
        """
        if not outcome.rebound:
            return []
        check = Check("grads slots", False, message="; ".join(outcome.rebound), **ctx)
        check.diagnosis = [{"check": "grads slots", "kind": "rebinds-grads", "message": f"grads slots: {outcome.rebound[0]}",
                            "hint": "write into the slot: grads[0][...] = dW (an optimizer holds the list it got "
                                    "at construction)", "evidence": {"residual_over_tol": float("inf")}}]
        return [check]

    # -- extreme inputs and kinks -------------------------------------------------
    def _probe(self, seed: int, perturb):
        """Run the layer once at the example sizes with values changed by ``perturb``.

        Its question (overflow or a loss of digits at extreme values) does not depend on the sizes, and its
        50-digit reference costs per element: the sizes --shape pins are left out (softmax-with-loss at
        N=10000, C=1000 ran out of time and memory here), unless the layer cannot run at the example sizes."""
        try:
            return self._probe_at(self.rule.fit({**self.rule.example_dims(), **self.hyper_pins}, self.hyper,
                                                fixed=self.hyper_pins), seed, perturb)
        except LayerError:
            if set(self.pins) <= set(self.hyper_pins):
                raise
            return self._probe_at(self.fitted(self.rule.example_dims()), seed, perturb)  # a layer made for its sizes

    def _probe_at(self, dims: dict, seed: int, perturb):
        import warnings

        rng = np.random.default_rng(seed)
        d = reference.at(self.rule, self.hyper, dims)
        values, ref = self.sample(d, rng)
        perturb(d, values, ref, rng)
        cot = self.cotangent(d, rng)
        _, outcomes = self.layers.trial(self.rule, self.hyper, self.layer_hyper(dims), self.style, seed,
                                        [(True, values, np.array(cot, copy=True), ())])  # the layer may write into its dout
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow is what we are probing for
            outcome = next(outcomes)
        return d, dims, ref, cot, outcome

    def stability_check(self) -> Check:
        """Extreme inputs (each rule's ``stress`` values) against a 50-digit reference.

        Fails where the layer returns inf or NaN and the exact value is finite in
        the dtype, or where it loses more than half of the dtype's digits: an
        error above sqrt(u) * (|exact_i| + max(max_k |exact_k|, 1)), i.e. relative
        to the result's size or to 1, whichever is larger (a y(1 - y) that is tiny
        by cancellation is not held to digits it cannot have).
        """
        seed = self.seed + self.trials

        def stress(d, values, ref, rng):
            for n, spec in self.rule.inputs.items():
                if spec.stress:
                    v = spec.stress.sample(rng, d.shapes[n]).astype(self.dtype)
                    if spec.stress.kind == "peaked" or (spec.stress.kind == "uniform" and spec.stress.low > 0):
                        v = np.maximum(v, np.finfo(self.dtype).tiny)  # a positive domain stays positive in the dtype
                    values[n], ref[n] = v, v.astype(np.float64)

        try:
            d, dims, ref, cot, outcome = self._probe(seed, stress)
        except LayerError as exc:
            return Check("stability", False, seed=seed, message=f"at extreme inputs, {exc}")
        @functools.cache
        def exact(k):  # the 50-digit reference at the default (0) or the k-th also = [...] value, when first needed
            bound = d if k == 0 else reference.at(self.rule, self.judge.alternatives[k - 1], dims)
            exact_out, exact_grads = bound.exact(cot, **ref)
            if self.judge.ignores_dout and np.ndim(cot) == 0:  # a final loss, held to dout = 1 as in its trials (Judge.final_loss)
                exact_grads = {n: np.asarray(g, dtype=object) / float(cot) for n, g in exact_grads.items()}
            return {"forward": exact_out, **{f"grad {n}": g for n, g in exact_grads.items()}}

        pairs = [("forward", outcome.output)] + [(f"grad {n}", outcome.grads.get(n))
                                                 for n in self.rule.inputs if not outcome.forward_only]
        for name, got in pairs:
            first = self._stability_of(name, exact(0)[name], got, ref, dims, seed)
            if first is not None and all(self._stability_of(name, exact(k)[name], got, ref, dims, seed) is not None
                                         for k in range(1, len(self.judge.alternatives) + 1)):
                return first
        return Check("stability", True, seed=seed, dims=dims, message="extreme inputs handled")

    def _stability_of(self, name, exact, got, ref, dims, seed) -> Check | None:
        """The failure of one result at extreme inputs, or None."""
        limit = float(np.finfo(self.dtype).max)
        root_u = np.sqrt(unit_roundoff(self.dtype))
        # the 50-digit values as float64 (beyond float64, inf); what the dtype cannot hold is not judged (finite, below)
        ex = np.array([float(v) for v in np.asarray(exact, dtype=object).ravel()]).reshape(np.shape(exact))
        shape = np.shape(got) if got is not None else None
        if shape != ex.shape and not (ex.shape == () and shape is not None and np.size(got) == 1):
            # right at ordinary values, so the extreme ones changed what it returns
            return Check("stability", False, seed=seed, dims=dims, where=name,
                         message=f"{name} at extreme inputs is " + ("no value" if got is None else f"shape {shape}")
                         + f", where the exact value has shape {ex.shape}")
        try:
            g = np.asarray(got, dtype=np.float64).reshape(ex.shape)
        except (TypeError, ValueError):
            return Check("stability", False, seed=seed, dims=dims, where=name,
                         message=f"{name} at extreme inputs is a {type(got).__name__}, not an array of numbers")
        finite = np.abs(ex) <= limit
        broken = finite & ~np.isfinite(g)
        ctx = dict(seed=seed, dims=dims, where=name)
        inputs = ", ".join(f"{n} in [{ref[n].min():.3g}, {ref[n].max():.3g}]" for n, i in self.rule.inputs.items() if i.stress)
        if broken.any():
            idx = np.unravel_index(int(np.argmax(broken)), ex.shape)
            return Check("stability", False, index=[int(i) for i in idx], expected=float(ex[idx]), got=float(g[idx]),
                         message=f"{name} is {g[idx]} where the exact value is finite ({float(ex[idx]):.6g}), at extreme inputs ({inputs})", **ctx)
        ok = finite & np.isfinite(g)
        if ok.any():
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where not ok: masked out below
                err = np.where(ok, np.abs(g - ex), 0.0)
            tol = root_u * (np.abs(ex) + max(np.abs(ex[ok]).max(), 1.0))
            ratio = np.where(ok, err / np.maximum(tol, np.finfo(np.float64).tiny), 0.0)
            if ratio.max() > 1:
                idx = np.unravel_index(int(np.argmax(ratio)), ex.shape)
                return Check("stability", False, index=[int(i) for i in idx], expected=float(ex[idx]), got=float(g[idx]),
                             abs_err=float(err[idx]), tol=float(tol[idx]),
                             rel_err=float(err[idx] / abs(ex[idx])) if ex[idx] else float("inf"),
                             message=f"{name} loses more than half its digits at extreme inputs ({inputs})", **ctx)
        return None

    def kink_notes(self) -> list[str]:
        """Where a rule is not differentiable (its domain's ``avoid`` points), report the layer's convention."""
        notes = []
        for n, spec in self.rule.inputs.items():
            for point in spec.domain.avoid:
                def at_kink(d, values, ref, rng, n=n, point=point):
                    mask = rng.random(d.shapes[n]) < 0.5
                    mask.flat[0] = True
                    values[n] = np.where(mask, self.dtype(point), values[n]).astype(self.dtype)
                    ref[n] = values[n].astype(np.float64)
                    self._kink_mask = mask

                try:
                    d, dims, ref, cot, outcome = self._probe(self.seed + self.trials + 1, at_kink)
                except LayerError as exc:
                    notes.append(f"{n} = {point:g} (a kink): the layer raised: {exc}")
                    continue
                if outcome.forward_only:
                    continue  # no derivative to read
                g = outcome.grads.get(n)
                c = np.broadcast_to(np.asarray(cot, dtype=np.float64), self._kink_mask.shape) if np.ndim(cot) else None
                if g is None or np.shape(g) != self._kink_mask.shape:
                    notes.append(f"at the kink {n} = {point:g} the layer gave " + ("no gradient" if g is None else f"a gradient of shape {np.shape(g)}"))
                    continue
                if c is None:
                    continue  # a scalar cotangent: no per-element slope to read (no rule with a kink has one)
                slopes = sorted({round(float(v), 12) + 0.0 for v in (np.asarray(g, dtype=np.float64)[self._kink_mask] / c[self._kink_mask])})
                notes.append(f"at the kink {n} = {point:g} the layer's derivative is {', '.join(f'{v:g}' for v in slopes)}"
                             + (" (the usual convention, as PyTorch's relu)" if slopes == [0.0] else ""))
        return notes

    @staticmethod
    def _side_effects(rep, k, outcome):
        for n in outcome.modified:
            warn(rep, "mutates-input", f"forward/backward modified the caller's '{n}' in place", k)
        if outcome.dout_modified:
            warn(rep, "mutates-input", "backward modified the caller's upstream gradient (dout) in place", k)

    def _stale_check(self, rep, k, d, adapter, rng):
        """forward(a); forward(b); backward(g) must give the gradients at b."""
        (va, _), (vb, refb) = self.sample(d, rng), self.sample(d, rng)
        cot = self.cotangent(d, rng)
        try:
            out_b, grads = adapter.repeat([va, vb], np.array(cot, copy=True))
            refb = reference.read_kept(self.rule, refb, out_b)
        except LayerError as exc:  # it passed its trials, so it is the second forward in a row that it cannot take
            warn(rep, "stale-state", f"forward called twice in a row, then backward: {exc}", k)
            return

        exact = {}  # id(ref) -> (ref, its gradients and scales): evaluated once, not once per input

        def references(ref):  # the default first; the also = [...] values only if it is needed
            if id(ref) not in exact:
                exact[id(ref)] = (ref, d.evaluate(cot, **ref)[1:])
            yield exact[id(ref)][1]
            yield from ((grads, scales) for _, _, grads, scales in self.judge.alternatives_at(d.dims, cot, ref)())

        def matches(n, g, expected, scales):
            if self.judge.ignores_dout and np.ndim(cot) == 0:  # judged at dout = 1, as its trials were
                expected, scales = {n: expected[n] / float(cot)}, {n: scales[n] / abs(float(cot))}
            return compare(n, expected[n], g, scales[n], self.judge.judged_in(g)).passed

        def wrong(grads, ref):
            return [n for n, g in grads.items() if not any(matches(n, g, ex, scs) for ex, scs in references(ref))]

        stale = wrong(grads, refb)
        if stale:
            # the same values after one forward: if they are wrong too, the layer is wrong at these
            # values (a repeated embedding id), not holding on to an earlier call
            try:
                out_b, grads = adapter.repeat([vb], np.array(cot, copy=True))
                refb = reference.read_kept(self.rule, refb, out_b)  # a new mask, if it draws one
                again = wrong(grads, refb)
            except LayerError:
                again = stale
            if not set(stale) & set(again):
                warn(rep, "stale-state", f"after two forward calls, backward's gradient of '{stale[0]}' does not "
                                          f"belong to the latest call (state kept from an earlier call)", k)


def stability_hint(rule, got=None) -> str:
    """What to do about an overflow or a loss of digits, for this rule's kind of formula and the value the layer
    gave (``got``: +inf from a log of an exp is the exp overflowing, not the log's argument reaching 0)."""
    text = rule.formula.text
    if "softmax" in text:
        return "subtract the row max before exp, and use log-softmax instead of log(softmax)"
    if "log" in text and "exp" in text and got == float("inf"):
        return ("an exp overflowed inside the log: write log(1 + exp(x)) as np.logaddexp(0, x), and log(sum(exp(x))) "
                "with the max subtracted before exp")
    if "log" in text:
        return "keep the argument of log away from 0 without adding an epsilon to it (log1p, logaddexp, log-softmax)"
    if "exp" in text or "sigmoid" in text or "tanh" in text:
        return ("evaluate it in a form that cannot overflow: np.tanh rather than (e^x - e^-x)/(e^x + e^-x); "
                "for sigmoid, exp(-logaddexp(0, -x)) or a branch on the sign of x")
    return "evaluate it in a form that cannot overflow or lose digits at these inputs"


def reproduce_line(target: str, rule, options: dict, failure: Check | None = None) -> str:
    """The command that replays a check (the failing trial alone when there is one), quoted for a shell."""
    from derivcheck.engine.rules import builtin_rules_dir

    parts = ["derivcheck"]
    folder = Path(rule.path).resolve().parent
    if folder != builtin_rules_dir().resolve():
        parts += ["--rules", str(folder)]  # the user's rule, not a built-in one of the same name
    parts += ["verify", target, "--rule", rule.name]
    if options.get("style"):
        parts += ["--style", options["style"]]
    trial_hyper = (failure.hyper or {}) if failure is not None and failure.dims is not None and failure.step is not None else {}
    for k, v in {**(options.get("hyper") or {}), **trial_hyper}.items():
        parts += ["--hyper", f"{k}={_hyper_text(v)}"]
    if options.get("dtype", "float64") != "float64":
        parts += ["--dtype", options["dtype"]]
    if failure is not None and failure.dims is not None and failure.step is not None:
        parts += ["--seed", str(failure.seed), "--trials", "1", "--steps", str(failure.step + 1),
                  "--shape", ",".join(f"{d}={n}" for d, n in failure.dims.items())]
    else:
        parts += ["--seed", str(options.get("seed", 0)), "--trials", str(options.get("trials", 5)),
                  "--steps", str(options.get("steps", 2))]
        if options.get("shape"):
            parts += ["--shape", ",".join(f"{d}={n}" for d, n in options["shape"].items())]
    if options.get("strict"):
        parts.append("--strict")
    return " ".join(shlex.quote(p) for p in parts)


def _hyper_text(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, bool):
        return "true" if v else "false"
    return "none" if v is None else str(v)


def verify(target: str, rule, **options) -> Report:
    """Verify ``target`` (``file.py:Name``) against ``rule``; see :class:`Verifier`."""
    return Verifier(target, rule, **options).run()
