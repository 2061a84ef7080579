"""What every convention shares: the Adapter interface, calling the user's code (a LayerError
when it raises; the stage it is in), and reading what it returns."""
from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derivcheck.check.binding import Binding
from derivcheck.errors import DerivcheckError


_PACKAGE = Path(__file__).resolve().parents[2]  # derivcheck's own folder: its frames are not where a layer failed


class LayerError(Exception):
    """The user's layer raised while running: a failure of the layer, not of derivcheck."""

    def __init__(self, stage: str, exc: BaseException):
        self.stage, self.exc = stage, exc
        tb = exc.__traceback__
        frames = [f for f in traceback_frames(tb) if not Path(f.filename).resolve().is_relative_to(_PACKAGE)]
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        try:
            said = str(exc)
        except BaseException:  # noqa: BLE001 - an exception whose __str__ raises still names its class
            said = "(its message could not be read: its __str__ raised)"
        self.wrong_rank = rank_mismatch(exc)  # it wanted arrays of another rank (see rank_mismatch)
        super().__init__(f"{stage} raised {type(exc).__name__}{where}: {said}")

    @classmethod
    def told(cls, stage: str, message: str, wrong_rank: bool) -> "LayerError":
        """A LayerError as the layer's process reported it (isolate.py): its stage and message, as text."""
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        error.stage, error.exc, error.wrong_rank = stage, None, wrong_rank
        return error


class Unloaded(ImportError):
    """Raised by what stands for a name the target file's top level could not bind (loading.py): an import of a
    package not installed here, an assignment that failed without the script code it followed."""


class Missing:
    """Stands for such a name: any use of it raises Unloaded, saying which line of which file failed."""

    def __init__(self, name: str, why: str):
        object.__setattr__(self, "_why", f"used {name}, which {why}")

    def _fail(self, *args, **kwargs):
        raise Unloaded(object.__getattribute__(self, "_why"))

    def __getattr__(self, attr):
        self._fail()

    def __mro_entries__(self, bases):  # class Net(torch.nn.Module) with torch missing
        self._fail()

    __call__ = __getitem__ = __iter__ = __bool__ = __len__ = __array__ = __setattr__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __matmul__ = _fail
    __rmatmul__ = __pow__ = __neg__ = __lt__ = __le__ = __gt__ = __ge__ = _fail


def traceback_frames(tb):
    import traceback

    return traceback.extract_tb(tb) if tb else []


def describe(exc: BaseException) -> str:
    """An exception as a message: its class, its text, and the file and line it was raised at."""
    frames = traceback_frames(exc.__traceback__)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}:{exc.lineno})"
    elif frames:
        where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


@dataclass
class Outcome:
    output: object
    grads: dict  # rule input -> array (or None when the layer gave none)
    rebound: list = field(default_factory=list)  # book 2: messages for grads slots that backward rebound
    forward_only: str = ""  # why there is no backward to check (a layer or function that only computes a value)
    output_problem: str = ""  # why the layer's several outputs could not be read as the rule's (then output is as returned)
    # what Adapter.step adds, read after the call:
    where: dict = field(default_factory=dict)  # "forward" and each rule input -> where the layer keeps it (grad_location)
    modified: list = field(default_factory=list)  # the inputs the call changed in place
    dout_modified: bool = False  # the call wrote into its upstream gradient
    flags_note: str = ""  # Adapter.flags_note after build
    no_output: str = ""  # why a forward that returned None cannot be judged (no_output), when it did


def pack_outputs(rule, result, who: str) -> tuple:
    """(the output as the reference has it, what is wrong with it or ""): a layer's several outputs
    (LSTM's ``h_next, c_next``) stacked into one array, the output's index first; one output as returned."""
    if not rule.outputs:
        return result, ""
    names = ", ".join(rule.outputs)
    if not isinstance(result, (tuple, list)) or len(result) != len(rule.outputs):
        what = f"{len(result)} values" if isinstance(result, (tuple, list)) else f"one {type(result).__name__}"
        return result, f"{who} returned {what}; rule '{rule.name}' has {len(rule.outputs)} outputs ({names}), returned in that order"
    try:
        arrays = [np.asarray(a) for a in result]
    except (TypeError, ValueError) as exc:
        return result, f"{who} returned outputs that are not arrays ({exc})"
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) > 1:
        return result, f"{who} returned {', '.join(f'{n} of shape {s}' for n, s in zip(rule.outputs, shapes))}: rule '{rule.name}' gives each the same shape"
    return np.stack(arrays), ""


def split_cotangent(rule, cotangent) -> list:
    """The upstream gradients a backward takes: one per output (``backward(dh_next, dc_next)``)."""
    if not rule.outputs:
        return [cotangent]
    return [cotangent[j] for j in range(len(rule.outputs))]


class Adapter:
    """Build once per shape; then ``run(values, cotangent)`` per step, as training would."""

    style = ""  # the name --style takes and reports print; a subclass with a style is a convention (registry.py)
    order = 0  # its place in lists of the styles (the books' order)
    takes_state = False  # a rule's state method (book 2's set_state) can be called on its layers
    rule_forms: dict = {}  # rule -> the style whose form of it this convention writes too (else its own: RULE_STYLE)
    forward_only = ""  # set by prepare() for a layer with no backward: why
    flags_note = ""  # a hyperparameter set as the built layer's attribute (Dlfs1Adapter._set_flags)

    @property
    def loose_note(self) -> str:
        """A rule hyperparameter that reached no parameter, beside a parameter left at a default of its kind."""
        loose = getattr(getattr(self, "binding", None), "loose", [])
        return "; ".join(
            f"rule hyperparameter {h} = {self.hyper[h]!r} reaches no parameter of {self.name}, and its {p} is left at its "
            f"default {d!r}: if {p} is {h}, pass --hyper {h}={d} or name the parameter {h}" for h, p, d in loose)

    @classmethod
    def claims(cls, obj, module, name: str) -> int | None:
        """How surely ``obj`` (named ``name`` in ``module``; None for a NAME_backward without a NAME) is
        written in this convention, when no --style is given: a rank, lower is surer, or None for not at all.
        -1: its module says so (the deeplearning.ai course's L_model_forward beside it);
        0: the target's name says so (a NAME_forward/NAME_backward pair); 1: a framework type is recognised
        (a DeZero Function); 2: a plain function; 3: a class with a telling attribute (book 2's grads);
        4: a class with a forward method. Raise DerivcheckError for a target that is recognisably this
        convention's but cannot be checked as one layer (a DeZero Layer), saying what to check instead."""
        return None

    @classmethod
    def refuses(cls, obj, name: str) -> str:
        """Why ``obj`` cannot be run in this convention at all (it was forced with --style), or ""."""
        return ""

    def __init__(self, obj, module, name, rule, hyper: dict, layer_hyper: dict):
        self.obj, self.module, self.name, self.rule = obj, module, name, rule
        self.hyper = hyper  # every hyperparameter's value (rule defaults + user's)
        self.layer_hyper = layer_hyper  # hyperparameters as the layer receives them
        self.instance = None

    def _value(self, kind, n, values):
        if kind == "hyper":
            return self.layer_hyper[n]
        if kind == "pair":  # kernel_size = (pool_h, pool_w)
            return tuple(self.layer_hyper[m] for m in self.rule.pairs[n])
        if kind == "dict":  # bn_param: every hyperparameter by name (mode, eps, ...), and the labels nothing else
            # takes (running_mean), a fresh dict per call
            return {**{k: tuple(v) if isinstance(v, list) else v for k, v in self.hyper.items()},
                    **{m: values[m] for m in self.binding.dict_labels}}
        return values[n]

    def _ctor_args(self, binding: Binding, values: dict) -> dict:
        return {p: self._value(kind, n, values) for p, (kind, n) in binding.ctor.items()}

    def _call_args(self, binding: Binding, values: dict) -> list:
        return [(p, self._value(kind, n, values)) for p, kind, n in binding.call]

    @property
    def douts(self) -> list[str]:
        """The upstream gradients as the backward's arguments are named in messages: dout, or dh_next, dc_next."""
        return [f"d{n}" for n in self.rule.outputs] or ["dout"]

    @property
    def params(self) -> list[str]:
        """Rule inputs held by the layer (set at construction), as opposed to passed in."""
        return [n for kind, n in self.binding.ctor.values() if kind == "input"]

    # What a convention defines (the judge in verify.py calls these; see docs/internals.md):

    def prepare(self):
        """Bind the rule's names to the layer's parameters (no values needed yet): set ``self.binding``."""
        raise NotImplementedError

    def build(self, values: dict):
        """Construct the layer for one shape (a class), or nothing (a function, built afresh per call)."""
        raise NotImplementedError

    def run(self, values: dict, cotangent) -> Outcome:
        """One forward and, unless the layer has no backward, one backward, as training calls them."""
        raise NotImplementedError

    def grad_location(self, n: str) -> str:
        """Where the layer puts the gradient of rule input ``n``, as a report names it (``Affine.dW``)."""
        raise NotImplementedError

    def update_params(self, values: dict):
        """What an optimizer does between steps: new values into the parameters the layer holds (none
        when every array is a call argument)."""

    def held(self, values: dict) -> dict:
        """The values the layer computes with: for a layer that holds its parameters, its own arrays."""
        return values

    # Optional: forward_call(values) and backward_call(cotangent) one call each, and gradients(returned),
    # let the judge call forward twice before a backward (the stale-state check); Dlfs1Adapter has them.

    # What the judge calls (verify.py), the same here and through the layer's process (isolate.py):

    @property
    def can_repeat(self) -> bool:
        """The layer's forward and backward can be called one at a time (:meth:`repeat`)."""
        return hasattr(self, "forward_call") and not self.forward_only

    def step(self, first: bool, values: dict, cotangent, unchanged=()) -> Outcome:
        """One step of a trial, as training takes it: the first builds the layer at ``values``, a later one
        writes them into the parameters it holds; then one forward and backward (:meth:`run`). The outcome
        also says where each result is kept, and which of the ``unchanged`` inputs, or the upstream
        gradient, the call changed in place."""
        if first:
            self.build(values)
        else:
            self.update_params(values)
            values = self.held(values)
        before = {n: np.array(values[n], copy=True) for n in unchanged}
        cot_before = np.array(cotangent, copy=True)
        outcome = self.run(values, cotangent)
        outcome.modified = [n for n, was in before.items() if not np.array_equal(np.asarray(values[n]), was, equal_nan=True)]
        outcome.dout_modified = not np.array_equal(np.asarray(cotangent), cot_before, equal_nan=True)
        outcome.where = {"forward": "forward output",
                         **({} if outcome.forward_only else {n: self.grad_location(n) for n in self.rule.inputs})}
        outcome.flags_note = self.flags_note
        if outcome.output is None:
            outcome.no_output = no_output(self.name, self)
        return outcome

    def repeat(self, values_list: list, cotangent) -> tuple:
        """Forward at each of ``values_list`` in a row (its parameters set to each first), then one backward:
        (the last forward's output, every input's gradient). Needs :attr:`can_repeat`."""
        out = None
        for values in values_list:
            self.update_params(values)
            out = self.forward_call(self.held(values))[0]
        return out, self.gradients(self.backward_call(cotangent))


def sizes_of(rule, held: list, values: dict, skip=()) -> list[int]:
    """The sizes the shapes of the held arrays name, each once, in order (weights (D, H): D, H), but the
    dimensions in ``skip``: what a constructor built from sizes takes (nnfs's Layer_Dense(n_inputs, n_neurons))."""
    named: dict = {}
    for n in held:
        for s, size in zip(rule.inputs[n].shape, np.shape(values[n])):
            if isinstance(s, str) and s not in skip:
                named.setdefault(s, int(size))
    return list(named.values())


def constructor_args(name: str, params: list, layer_hyper: dict, sizes: list, where: str) -> list:
    """(parameter, value) for each of ``params`` ((parameter, the rule hyperparameter bound to it or None)): the
    hyperparameter's value, else the next of ``sizes``; refused, saying ``where`` the sizes come from, when they run out."""
    sizes, args = list(sizes), []
    for p, n in params:
        if n is not None:
            args.append((p, layer_hyper[n]))
        elif sizes:
            args.append((p, sizes.pop(0)))
        else:
            raise DerivcheckError(
                f"{name}({', '.join(p for p, _ in params)}): derivcheck gives a constructor's required parameters the "
                f"rule's hyperparameters by name, then {where}, and has nothing for {p}")
    return args


def no_output(name: str, adapter) -> str:
    """Why a layer whose forward returned None cannot be judged (exit 2, not a wrong layer)."""
    own_attrs = vars(adapter.instance) if hasattr(getattr(adapter, "instance", None), "__dict__") else {}
    kept = [a for a in ("output", "outputs", "out", "y", "A") if isinstance(own_attrs.get(a), np.ndarray)]
    where = (f"; it keeps an array in self.{kept[0]}, as the nnfs book's layers do (--style nnfs reads self.output, "
             f"and the gradients backward stores in self.dinputs, self.dweights, ...)" if kept else "")
    return (f"{name}'s forward returned None: the {adapter.style} convention takes the output from forward's return "
            f"value{where}. Return the output from forward, or wrap the layer in a subclass whose forward does")


_AXIS_ERROR = getattr(getattr(np, "exceptions", np), "AxisError")  # np.AxisError before NumPy 1.25


def rank_mismatch(exc: BaseException) -> bool:
    """An exception that says the layer wanted arrays of another rank (N, T, D = x.shape on a 2-D x)."""
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - a message that cannot be read says nothing about ranks
        return False
    return ((isinstance(exc, ValueError) and "values to unpack" in text)
            or (isinstance(exc, IndexError) and "tuple index out of range" in text)
            or isinstance(exc, _AXIS_ERROR))


# Called with the name of each piece of the user's code about to run ("Affine.backward"), and
# with OWN_WORK when it returns; the isolated worker (isolate.py) reports it, so that a layer
# that ends its process is named where, and a time limit reached in derivcheck's own
# computation is not blamed on the layer.
on_stage = None
OWN_WORK = "derivcheck's own computation"


def stage(name: str) -> None:
    """Say that the user's code ``name`` runs now (or OWN_WORK: derivcheck's own again)."""
    if on_stage is not None:
        on_stage(name)


@functools.lru_cache(maxsize=1024)
def _unfit_call(fn, positional: int, named: tuple) -> tuple[str, str] | None:
    """(why, the signature) when ``fn`` cannot take ``positional`` arguments and the keywords ``named``; None when
    it can or its signature is unknown (a builtin says so itself). Cached: a check calls one layer many times."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*([None] * positional), **dict.fromkeys(named))
    except TypeError as exc:
        return str(exc), str(signature)
    return None


def call_user(fn, args, stage_name):
    """Run the user's ``fn`` as ``stage_name`` (reported to the worker); what it raises is a LayerError.

    A call that does not fit ``fn``'s signature is derivcheck's binding at fault, not the layer: exit 2."""
    positional, named = [v for p, v in args if p is None], {p: v for p, v in args if p is not None}
    try:
        unfit = _unfit_call(fn, len(positional), tuple(named))
    except TypeError:  # an unhashable callable (a bound method of an instance with __eq__ and no __hash__)
        unfit = _unfit_call.__wrapped__(fn, len(positional), tuple(named))
    if unfit:
        given = ", ".join([f"{type(v).__name__}" for v in positional] + [f"{p}=" for p in named])
        raise DerivcheckError(
            f"derivcheck could not call {stage_name} as its convention says: {unfit[0]} (it passed ({given}) to "
            f"{getattr(fn, '__name__', stage_name)}{unfit[1]}). Name the rule it implements (--rule) or its "
            f"convention (--style)")
    stage(stage_name)
    try:
        return fn(*positional, **named)
    except SystemExit as exc:  # sys.exit() in a layer is the layer stopping, never derivcheck finishing
        raise LayerError(stage_name, exc) from exc
    except KeyboardInterrupt:  # the worker says so itself (isolate.py): a layer's own raise is its failure there
        raise
    except Unloaded as exc:  # it used what its file's top level could not make here: not evidence against it
        raise DerivcheckError(f"{stage_name} {exc}") from None
    except BaseException as exc:  # Exception, and GeneratorExit or a BaseException subclass of the layer's own
        raise LayerError(stage_name, exc) from exc
    finally:
        stage(OWN_WORK)


_BACKWARD_LIKE = re.compile(r"(backward\w*|backwards|back_?prop\w*|bprop|backpropagate|grad|gradient|gradients|vjp)", re.I)


def backward_like(cls) -> list[str]:
    """The public methods of ``cls`` named like a backward pass but not ``backward`` (backprop, backward_pass, grad)."""
    return [n for n in dir(cls) if n != "backward" and not n.startswith("_") and _BACKWARD_LIKE.fullmatch(n)
            and callable(getattr(cls, n, None))]


def cannot_take(fn, given: int) -> str:
    """Why ``fn`` (a method, looked up on its class) cannot be called with ``given`` positional arguments
    (" takes (dvalues, y_true)" for a required parameter more), or "" when it can (or its signature is unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ""
    ps = list(sig.parameters.values())
    if ps and ps[0].name == "self":
        ps = ps[1:]
    if any(p.kind == p.VAR_POSITIONAL for p in ps):
        return ""
    positional = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional[given:] if p.default is p.empty]
    required += [p.name for p in ps if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    said = ", ".join(p.name for p in ps)
    if required:
        return f" takes ({said}): {', '.join(required)} {'is' if len(required) == 1 else 'are'} required besides the upstream gradient"
    if len(positional) < given:
        return f" takes ({said}): no upstream gradient" if not positional else f" takes ({said}), fewer than {given} upstream gradients"
    return ""


def own(value):
    """A copy of the arrays in what the layer handed back or was given (an array, or arrays in tuples, a cache),
    made as its call returns or begins: a buffer the layer fills in later (its backward writing into the array
    forward returned) cannot change it."""
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    if isinstance(value, tuple):
        return tuple(own(v) for v in value)
    if isinstance(value, list):
        return [np.array(v, copy=True) if isinstance(v, np.ndarray) else v for v in value]
    return value


def same_array(a, b) -> bool:
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)


def count(result) -> str:
    return f"{len(result)} values" if isinstance(result, tuple) else f"a {type(result).__name__}"


@functools.lru_cache(maxsize=256)
def mentions(cls, attr: str) -> bool:
    """``self.attr`` appears in a method of the class or of a class it inherits from (a subclass that only
    overrides backward keeps its base's params and grads).

    Read method by method: the source of a class is found by parsing its whole file (inspect.getsource), a
    few milliseconds a class, paid again in each check's fresh process; a method's is found from its line."""
    for c in inspect.getmro(cls):
        if c is object:
            continue
        for method in _methods(c):
            try:
                if f"self.{attr}" in inspect.getsource(method):
                    return True
            except (OSError, TypeError):
                continue
    return False


def _methods(cls):
    """The functions the class itself defines: methods, static and class methods, properties' accessors."""
    for v in vars(cls).values():
        if isinstance(v, (staticmethod, classmethod)):
            v = v.__func__
        if isinstance(v, property):
            yield from (f for f in (v.fget, v.fset, v.fdel) if inspect.isfunction(f))
        elif inspect.isfunction(v):
            yield v
