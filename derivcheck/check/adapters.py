"""Adapters: run a user's layer, in whatever style it is written, as one interface.

Styles (auto-detected, or forced with ``--style``):

- ``dlfs1``  book 1: ``Affine(W, b)``; ``forward(x)`` / ``forward(x, t)``;
  ``backward(dout)`` returns dx; parameter gradients in ``d<Name>`` attributes.
- ``dlfs2``  book 2: ``params`` / ``grads`` lists; gradients written into the
  grads slots.
- ``dezero`` book 3: a ``Function`` subclass (or a function that applies one),
  duck-typed: call with Variables, set the output's ``grad``, ``backward()``,
  read the inputs' ``grad``.
- ``functional`` CS231n: ``NAME_forward(...) -> (out, cache)`` and
  ``NAME_backward(dout, cache) -> grads``; or a loss ``NAME(x, y) -> (loss, dx)``.

Rule inputs, labels and hyperparameters bind to constructor and function
parameters by name, then by position.
"""
from __future__ import annotations

import ast
import difflib
import functools
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derivcheck.errors import DerivcheckError
from derivcheck.vocab import STYLES



class LayerError(Exception):
    """The user's layer raised while running: a failure of the layer, not of derivcheck."""

    def __init__(self, stage: str, exc: BaseException):
        self.stage, self.exc = stage, exc
        tb = exc.__traceback__
        frames = [f for f in _frames(tb) if "derivcheck" not in Path(f.filename).parts[-2:-1]]
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        try:
            said = str(exc)
        except BaseException:  # noqa: BLE001 - an exception whose __str__ raises still names its class
            said = "(its message could not be read: its __str__ raised)"
        super().__init__(f"{stage} raised {type(exc).__name__}{where}: {said}")


def _frames(tb):
    import traceback

    return traceback.extract_tb(tb) if tb else []


# ---------------------------------------------------------------------------
# Loading a target


def target_spec(obj) -> str:
    """How to name a layer object on the command line: ``file.py:Name`` or ``module:Name``."""
    if isinstance(obj, str):
        return obj
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
    path = getattr(module, "__file__", None)
    return f"{path}:{name}" if path else f"{getattr(obj, '__module__', '?')}:{name}"


def _names_a_file(where: str) -> bool:
    """A target's module part names a file (``path/to/layers.py``), not a module (``package.module``)."""
    return where.endswith(".py") or "/" in where or "\\" in where


def check_target(spec: str) -> None:
    """The checks of :func:`load_target` that run none of the user's code.

    The form, that a file exists and, read with ``ast`` (not imported), that it
    defines the name. Whatever cannot be told this way is left to the worker.
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise DerivcheckError(f"target '{spec}' must look like path/to/layers.py:Affine or package.module:Affine")
    if not _names_a_file(where):
        return
    path = Path(where)
    if not path.is_file():
        raise DerivcheckError(f"target file '{where}' not found (from {Path.cwd()})")
    try:
        tree = _source_tree(path)
    except (SyntaxError, ValueError, OSError):
        return  # the worker's import says it best
    defined, dynamic = [], False
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            dynamic |= any(a.name == "*" for a in node.names)
            defined += [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined += [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        else:
            dynamic |= not isinstance(node, ast.Expr)  # names made in if/try/for blocks: not told statically
    if dynamic or name in defined or f"{name}_forward" in defined:
        return
    shown = [d for d in defined if not d.startswith("_") and d[:1].isupper() or d.endswith("_forward")]
    close = difflib.get_close_matches(name, [d for d in defined if not d.startswith("_")], n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"it defines: {', '.join(shown) or 'no classes or functions'}"
    raise DerivcheckError(f"'{where}' has no '{name}' ({hint})")


def top_level_defs(spec: str) -> set[str] | None:
    """The names of the classes and functions a target's file defines at its top level, read with ``ast``
    (nothing runs); None for a module target or a file that cannot be read."""
    where = spec.rpartition(":")[0]
    if not where or not _names_a_file(where) or not Path(where).is_file():
        return None
    try:
        tree = _source_tree(Path(where))
    except (SyntaxError, ValueError, OSError):
        return None
    return {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}


def _source_tree(path: Path) -> ast.Module:
    """``path``'s syntax tree, parsed once per version of the file (read-only: callers only walk it).

    The adapters read a target file several times per check (what it defines, whether a
    class is a model, what it imports); a gate over a layer library reads one file per
    binding. Raises what ``ast.parse`` and reading raise.
    """
    return _parse(*_version(path))


def _version(path: Path) -> tuple[str, int, int]:
    """The key of one version of a file: its resolved path, modification time and size."""
    st = Path(path).stat()
    return str(Path(path).resolve()), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=64)
def _parse(path: str, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(Path(path).read_bytes())


def load_module(where: str):
    """The module part of a target (``path/to/file.py`` or ``package.module``), imported once per process."""
    if _names_a_file(where):
        path = Path(where)
        if not path.is_file():
            raise DerivcheckError(f"target file '{where}' not found (from {Path.cwd()})")
        return _import_file(path)
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m package.module` run from here
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise DerivcheckError(f"module '{where}' not found in {Path.cwd()} or the installed packages: "
                                  f"run from the folder holding it, install it, or name the file, like {where.replace('.', '/')}.py") from None
        raise DerivcheckError(f"importing '{where}' failed: {_describe(exc)}") from None
    except Exception as exc:  # the user's module itself is broken
        raise DerivcheckError(f"importing '{where}' failed: {_describe(exc)}") from None


def load_target(spec):
    """``path/to/file.py:Name``, ``package.module:Name`` or the object itself -> (object, module, name)."""
    if not isinstance(spec, str):
        module = sys.modules.get(getattr(spec, "__module__", ""), None)
        if module is None or not (inspect.isclass(spec) or inspect.isfunction(spec)):
            raise DerivcheckError(f"{spec!r} is not a layer class or function")
        return spec, module, spec.__name__
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise DerivcheckError(f"target '{spec}' must look like path/to/layers.py:Affine or package.module:Affine")
    module = load_module(where)
    obj = getattr(module, name, None)
    if obj is None:
        for suffix in ("_forward",):  # functional targets may be named without the suffix
            if hasattr(module, name + suffix):
                return None, module, name
        defined = [k for k, v in vars(module).items() if not k.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v)) and getattr(v, "__module__", None) == module.__name__]
        close = difflib.get_close_matches(name, defined, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"it defines: {', '.join(defined) or 'no classes or functions'}"
        raise DerivcheckError(f"'{where}' has no '{name}' ({hint})")
    return obj, module, name


LOSS_ATTRS = ("lastLayer", "last_layer", "loss_layer", "lossLayer")  # where a model keeps its loss layer


# ---------------------------------------------------------------------------
# Telling a model (a network) from a layer, without running it


KNOWN_NETWORKS = ("a book-1 model has layers, loss() and gradient(); a book-2 model has layers, a loss_layer, forward() "
                  "and backward(); a DeZero model subclasses Model; a CS231n model has a params dict and loss(X, y) "
                  "returning (loss, grads)")


def model_shape(methods: set, attrs: set, bases: set = frozenset()) -> str | None:
    """The convention of a class with these methods, ``self.`` attributes and base class names, or None for a layer."""
    if "Model" in bases and "forward" in methods:  # DeZero: class Net(Model), layers as attributes
        return "dezero"
    if "layers" not in attrs:
        # CS231n: a params dict and loss(X, y) -> (loss, grads), made of layer functions
        return "functional" if "loss" in methods and "params" in attrs and "gradient" not in methods else None
    if "gradient" in methods and "loss" in methods:
        return "dlfs1"
    if "forward" in methods and "backward" in methods and attrs & set(LOSS_ATTRS):
        return "dlfs2"
    if "predict" in methods:  # layers and predict(x), no loss: its forward alone (seed 000, book 1 ch. 3)
        return "predict"
    return None


def model_convention(spec: str) -> str | None:
    """'dlfs1', 'dlfs2', 'predict' (forward only), 'dezero' or 'functional' (CS231n) when ``file.py:Name`` (or ``module:Name``) is a model class, read with ``ast``.

    No user code runs: the parent process decides from the source whether a
    target is a layer or a network; the worker then checks it.
    """
    where, _, name = spec.rpartition(":")
    path = Path(where) if _names_a_file(where) else _module_file(where)
    if path is None or not path.is_file():
        return None
    try:
        tree = _source_tree(path)
    except (SyntaxError, ValueError, OSError):
        return None
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    if name not in classes:
        return None
    methods, attrs, bases, todo, seen = set(), set(), set(), [name], set()
    while todo:  # the class and its bases defined in the same file (class BadNet(TwoLayerNet))
        node = classes[todo.pop()]
        seen.add(node.name)
        methods |= {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        attrs |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                  and isinstance(n.value, ast.Name) and n.value.id == "self"}
        names = {b.id if isinstance(b, ast.Name) else b.attr for b in node.bases if isinstance(b, (ast.Name, ast.Attribute))}
        bases |= names
        todo += [b for b in names if b in classes and b not in seen]
    return model_shape(methods, attrs, bases)


def _module_file(dotted: str) -> Path | None:
    """Where ``package.module`` would be found from the current folder, without importing anything."""
    rel = Path(*dotted.split("."))
    for base in [Path.cwd()] + [Path(p) for p in sys.path if p]:  # an installed package's file, read, never imported
        for cand in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
            if cand.is_file():
                return cand
    return None



def _describe(exc: BaseException) -> str:
    frames = _frames(exc.__traceback__)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}:{exc.lineno})"
    elif frames:
        where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def import_roots(path: Path) -> list[Path]:
    """The folders a target file needs importable, as when the project's own scripts run.

    The file's folder (Python puts a script's folder first), the folder holding the
    file's top-level package (``__init__.py`` files up the chain), and for each
    absolute import the file makes that is not importable yet, the nearest folder
    above the file holding that name: ``from common.functions import *`` in
    ``book/common/layers.py`` makes ``book/`` importable, with or without
    ``common/__init__.py``. Read with ``ast``: nothing of the user's runs here.
    """
    path = path.resolve()
    roots = [path.parent, _package_top(path)]
    try:
        names = _absolute_imports(*_version(path))
    except (SyntaxError, ValueError, OSError):
        names = ()  # the import itself reports it
    for name in names:
        if name in sys.modules or _findable(name):
            continue
        for folder in path.parents:
            if (folder / name).is_dir() or (folder / f"{name}.py").is_file():
                roots.append(folder)
                break
    return list(dict.fromkeys(roots))


@functools.lru_cache(maxsize=64)
def _absolute_imports(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The top-level names the file at ``path`` imports absolutely, in order, each once."""
    names = []
    for node in ast.walk(_parse(path, mtime_ns, size)):
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return tuple(dict.fromkeys(names))


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None  # a top-level name: no code runs
    except (ImportError, ValueError):
        return False


def _package_top(path: Path) -> Path:
    """The folder holding the file's top-level package: up through the ``__init__.py`` files (the file's own
    folder when it has none)."""
    top = path.parent
    while (top / "__init__.py").is_file() and top.parent != top:
        top = top.parent
    return top


@functools.lru_cache(maxsize=64)
def _relative_level(path: str, mtime_ns: int, size: int) -> int:
    """How many folders the file's deepest relative import climbs (0: it has none)."""
    return max((n.level for n in ast.walk(_parse(path, mtime_ns, size)) if isinstance(n, ast.ImportFrom)), default=0)


def package_of(path: Path) -> tuple[Path, str] | None:
    """(the folder to import from, the dotted module name) of a file that imports relatively (``from .layers
    import *``, as CS231n's fast_layers.py and classifiers/cnn.py do): it can only be imported as a module of
    its package. The package reaches up through ``__init__.py`` files, and at least as many folders as its
    deepest relative import climbs (a namespace package has none). None for a file with no relative import."""
    path = path.resolve()
    try:
        level = _relative_level(*_version(path))
    except (SyntaxError, ValueError, OSError):
        return None
    if level == 0:
        return None
    top = _package_top(path)
    if len(path.parent.relative_to(top).parts) < level and len(path.parents) > level:
        top = path.parents[level]
    parts = path.parent.relative_to(top).parts + (path.stem,)
    if not all(p.isidentifier() for p in parts):
        return None
    return top, ".".join(parts)


def _import_file(path: Path):
    path = path.resolve()
    package = package_of(path)
    if package is not None:  # imported as its package's module, as `python -m` from the project's root would
        top, dotted = package
        if str(top) not in sys.path:
            sys.path.insert(0, str(top))
        try:
            module = importlib.import_module(dotted)
        except Exception as exc:
            raise DerivcheckError(f"importing '{path}' as {dotted} (it imports relatively, so as a module of its "
                                  f"package, from {top}) failed: {_describe(exc)}") from None
        if Path(getattr(module, "__file__", "") or "").resolve() != path:  # another module of that name came first
            raise DerivcheckError(f"importing '{path}' as {dotted} gave {getattr(module, '__file__', None)}: another "
                                  f"module of that name is importable; run from {top} and name the target {dotted}:NAME")
        return module
    roots = import_roots(path)
    for folder in reversed(roots):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    modname = f"_derivcheck_target_{abs(hash(str(path)))}_{path.stem}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[modname]
        tried = ""
        if isinstance(exc, ModuleNotFoundError):
            tried = f"; importable were {', '.join(str(r) for r in roots)} (the file's folder, its project root, and any folder above it holding the names it imports) and the installed packages"
        raise DerivcheckError(f"importing '{path}' failed: {_describe(exc)}{tried}") from None
    return module


# ---------------------------------------------------------------------------
# Style detection


def _is_dezero_function_class(obj) -> bool:
    if not inspect.isclass(obj):
        return False
    names = {c.__name__ for c in obj.__mro__[1:]}
    return "Function" in names and hasattr(obj, "forward") and hasattr(obj, "backward") and callable(obj)


def _dezero_layer_base(cls) -> str | None:
    """'Layer' or 'Model' when ``cls`` is a DeZero Layer (one with params() and cleargrads(), made of Functions)."""
    names = [c.__name__ for c in cls.__mro__]
    if "Layer" in names and callable(getattr(cls, "params", None)) and callable(getattr(cls, "cleargrads", None)):
        return "Model" if "Model" in names else "Layer"
    return None


def _variable_class(module, obj=None):
    """The Variable class of the DeZero-like framework ``obj`` belongs to."""
    classes = [obj] if inspect.isclass(obj) else []
    classes += [v for v in vars(module).values() if _is_dezero_function_class(v)]
    candidates = [module] + [sys.modules.get(c.__module__) for cls in classes for c in cls.__mro__]
    for mod in candidates:
        if mod is not None and inspect.isclass(getattr(mod, "Variable", None)):
            return mod.Variable
    try:
        return importlib.import_module("dezero").Variable
    except ModuleNotFoundError as exc:
        if exc.name == "dezero":
            return None  # no dezero installed: the caller says there is no Variable class
        raise DerivcheckError(f"importing the dezero package failed: {_describe(exc)}") from None
    except Exception as exc:  # an installed dezero that is broken: say so, not "no Variable class"
        raise DerivcheckError(f"importing the dezero package failed: {_describe(exc)}") from None


def detect_style(obj, module, name) -> str:
    if obj is None or (inspect.isfunction(obj) and hasattr(module, f"{name}_backward")) or (
        inspect.isfunction(obj) and name.endswith("_forward")
    ):
        return "functional"
    if _is_dezero_function_class(obj):
        return "dezero"
    if inspect.isfunction(obj):
        # a function of a DeZero-like module (it applies or composes Functions: MatMul()(x, W),
        # linear_simple; or it sits among the Function classes its module defines and works through
        # Variable's operators, as embed_id's W[x]); otherwise a loss (x, y) -> (loss, dx) or a
        # function computing a value
        return "dezero" if _applies_function(obj, module) or _among_functions(obj, module) else "functional"
    if inspect.isclass(obj):
        if not hasattr(obj, "forward"):
            raise DerivcheckError(f"'{name}' has no forward method: which style is it? (use --style {'|'.join(STYLES)})")
        layer = _dezero_layer_base(obj)
        if layer is not None:
            raise DerivcheckError(
                f"'{name}' is a DeZero {layer} (dezero.layers, dezero.models): it makes its parameters at its first call "
                f"and applies Functions, whose gradients its parameters collect; verify the Functions it applies "
                f"(dezero.functions:linear, dezero.functions_conv:conv2d, ...), or a Model class of your own that uses "
                f"it, in a file: a Model is checked as a network, node by node")
        return "dlfs2" if _mentions(obj, "grads") else "dlfs1"
    raise DerivcheckError(f"'{name}' is neither a class nor a function (it is a {type(obj).__name__})")


def _among_functions(fn, module) -> bool:
    """``fn`` is defined in a module of DeZero functions (dezero.functions): one that defines Function classes of
    its own and no CS231n-style NAME_forward function (a module of both keeps its plain functions functional)."""
    name = getattr(module, "__name__", None)
    members = vars(module)
    return (getattr(fn, "__module__", None) == name
            and any(_is_dezero_function_class(v) and getattr(v, "__module__", None) == name for v in members.values())
            and not any(k.endswith("_forward") and inspect.isfunction(v) for k, v in members.items()))


def _applies_function(fn, module, depth: int = 3) -> bool:
    """``fn`` applies a DeZero Function, makes Variables, or calls a function of its module that does
    (``flatten`` calls ``reshape``, which applies ``Reshape``), up to ``depth`` calls deep."""
    names = set(getattr(fn, "__code__", None).co_names if hasattr(fn, "__code__") else ())
    if any(_is_dezero_function_class(getattr(module, n, None)) or n in ("Variable", "as_variable") for n in names):
        return True
    return depth > 0 and any(inspect.isfunction(f := getattr(module, n, None)) and f is not fn
                             and _applies_function(f, module, depth - 1) for n in names)


@functools.lru_cache(maxsize=256)
def _mentions(cls, attr: str) -> bool:
    """``self.attr`` appears in the class or in a class it inherits from (a subclass that only overrides
    backward keeps its base's params and grads)."""
    for c in inspect.getmro(cls):
        if c is object:
            continue
        try:
            if f"self.{attr}" in inspect.getsource(c):
                return True
        except (OSError, TypeError):
            continue
    return False


# ---------------------------------------------------------------------------
# Binding


def _params(fn, skip_self: bool):
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
    ctor_ps = _params(ctor_fn, skip_self=True) if ctor_fn is not None else []
    call_ps = _params(call_fn, skip_self=True) if call_fn is not None else []
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


# ---------------------------------------------------------------------------
# Running


@dataclass
class Outcome:
    output: object
    grads: dict  # rule input -> array (or None when the layer gave none)
    rebound: list = field(default_factory=list)  # book 2: messages for grads slots that backward rebound
    forward_only: str = ""  # why there is no backward to check (a layer or function that only computes a value)
    output_problem: str = ""  # why the layer's several outputs could not be read as the rule's (then output is as returned)


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

    style = ""
    forward_only = ""  # set by prepare() for a layer with no backward: why
    flags_note = ""  # a hyperparameter set as the built layer's attribute (Dlfs1Adapter._set_flags)

    @property
    def loose_note(self) -> str:
        """A rule hyperparameter that reached no parameter, beside a parameter left at a default of its kind."""
        loose = getattr(getattr(self, "binding", None), "loose", [])
        return "; ".join(
            f"rule hyperparameter {h} = {self.hyper[h]!r} reaches no parameter of {self.name}, and its {p} is left at its "
            f"default {d!r}: if {p} is {h}, pass --hyper {h}={d} or name the parameter {h}" for h, p, d in loose)

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

    def prepare(self):
        """Bind the rule's names to the layer's parameters (no values needed yet)."""
        raise NotImplementedError

    def build(self, values: dict):
        raise NotImplementedError

    def run(self, values: dict, cotangent) -> Outcome:
        raise NotImplementedError

    def held(self, values: dict) -> dict:
        """The values the layer computes with: for a layer that holds its parameters, its own arrays."""
        return values


_AXIS_ERROR = getattr(getattr(np, "exceptions", np), "AxisError")  # np.AxisError before NumPy 1.25


def rank_mismatch(exc: BaseException) -> bool:
    """An exception that says the layer wanted arrays of another rank (N, T, D = x.shape on a 2-D x)."""
    text = str(exc)
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


def _same_array(a, b) -> bool:
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)


def dlfs1_gradient(layer, attr: str, n: str):
    """Book 1's gradient of the parameter held in ``layer.attr`` (rule input ``n``): dW, or grad_W, or W_grad."""
    for cand in (f"d{attr}", f"d{n}", f"grad_{attr}", f"{attr}_grad"):
        if hasattr(layer, cand):
            return getattr(layer, cand)
    return None


def dezero_grad(cotangent, y):
    """A cotangent as ``y.grad``: a Variable from DeZero's step 32 on (backward takes create_graph), an array before."""
    cot = np.asarray(cotangent, dtype=np.asarray(y.data).dtype)
    try:
        if "create_graph" in inspect.signature(y.backward).parameters:
            return type(y)(cot)
    except (TypeError, ValueError):
        pass
    return cot


class Dlfs1Adapter(Adapter):
    style = "dlfs1"

    def prepare(self):
        self.binding = bind(self.rule, self.obj.__init__, self.obj.forward, self.name, call_takes_all_inputs=False)
        if not callable(getattr(self.obj, "backward", None)):
            others = backward_like(self.obj)
            if others:  # a backward by another name: checking the forward alone would call a wrong layer verified
                raise DerivcheckError(
                    f"{self.name} has no backward method, but it has {', '.join(f'{m}()' for m in others)}: the {self.style} "
                    f"convention calls backward({', '.join(self.douts)}) and derivcheck does not know what {others[0]} "
                    f"takes and returns. Name it backward, or add a two-line subclass in a file of yours "
                    f"(class Checked({self.name}):\n    def backward(self, dout): return self.{others[0]}(dout)) and "
                    f"verify that")
            self.forward_only = f"{self.name} has a forward method and no backward"
        else:
            unfit = cannot_take(self.obj.backward, len(self.douts))
            if unfit:
                raise DerivcheckError(
                    f"{self.name}.backward{unfit}: the {self.style} convention calls backward({', '.join(self.douts)}) "
                    f"alone, so derivcheck cannot call it as written. If it follows another convention, say which "
                    f"(--style); else give the extra parameters defaults, or wrap the layer in a subclass whose "
                    f"backward({', '.join(self.douts)}) calls it with what it needs")
        state = self.rule.state
        if state is not None and not callable(getattr(self.obj, state.method, None)):
            raise DerivcheckError(f"{self.name} has no method {state.method}: rule '{self.rule.name}' sets its state "
                                  f"({', '.join(state.names)}) with {state.method}({', '.join(state.names)}) before each forward")

    def build(self, values):
        args = self._ctor_args(self.binding, values)
        self.instance = call_user(self.obj, list(args.items()), f"{self.name}({', '.join(args)})")
        self._set_flags()
        self.param_arrays = {n: values[n] for n in self.params}  # the arrays handed over
        # labels the constructor takes (book 1's running_mean): refreshed in place each step, as parameters are
        self.label_arrays = {n: values[n] for kind, n in self.binding.ctor.values() if kind == "label"}

    def _set_flags(self):
        """A hyperparameter no parameter takes, named as an attribute the constructor set, is set there:
        book 2's TimeDropout has no train_flg argument, and its models switch ``layer.train_flg``."""
        bound = {n for _, n in self.binding.ctor.values()} | {n for _, _, n in self.binding.call}
        own = vars(self.instance) if hasattr(self.instance, "__dict__") else {}
        self.flags = {n: self.layer_hyper[n] for n, h in self.rule.hyper.items()
                      if h.to_layer and n not in bound and n in own and isinstance(own[n], type(self.layer_hyper[n]))}
        for n, value in self.flags.items():
            setattr(self.instance, n, value)

    @property
    def flags_note(self) -> str:
        """What _set_flags set, as the report says it."""
        flags = getattr(self, "flags", {})
        if not flags:
            return ""
        return (f"set {', '.join(f'{self.name}.{n} = {v}' for n, v in flags.items())} after construction "
                f"(no parameter takes {', '.join(flags)})")

    def attribute_of(self, name: str) -> str | None:
        """The attribute that holds the parameter bound to rule input ``name``."""
        target = self.param_arrays[name]
        for attr, value in vars(self.instance).items():
            if value is target:
                return attr
        for attr, value in vars(self.instance).items():
            if _same_array(value, target):
                return attr
        return None

    def update_params(self, values):
        """What an optimizer does between steps: new values written into the same arrays."""
        for n in self.params:
            self.param_arrays[n][...] = values[n]
        self._refresh_labels(values)

    def _refresh_labels(self, values):
        for n, held in self.label_arrays.items():
            held[...] = values[n]

    def forward_call(self, values) -> tuple:
        """One call of the layer's forward (after setting its state, for a rule with one): (its output as the
        reference has it, what is wrong with it or "")."""
        state = self.rule.state
        if state is not None:
            call_user(getattr(self.instance, state.method), [(None, values[n]) for n in state.names], f"{self.name}.{state.method}")
        out = own(call_user(self.instance.forward, self._call_args(self.binding, values), f"{self.name}.forward"))
        return pack_outputs(self.rule, out, f"{self.name}.forward")

    def backward_call(self, cotangent):
        """One call of the layer's backward, given one upstream gradient per output; what it returns."""
        return call_user(self.instance.backward, [(None, c) for c in split_cotangent(self.rule, cotangent)], f"{self.name}.backward")

    def held(self, values):
        return {**values, **{n: self.param_arrays[n] for n in self.params}}

    def run(self, values, cotangent) -> Outcome:
        out, problem = self.forward_call(values)
        if self.forward_only:
            return Outcome(out, {}, forward_only=self.forward_only, output_problem=problem)
        return Outcome(out, self.gradients(self.backward_call(cotangent)), output_problem=problem)

    def gradients(self, dx) -> dict:
        """Every rule input's gradient after a backward call that returned ``dx``."""
        grads = {}
        data = [n for _, kind, n in self.binding.call if kind == "input"]
        if len(data) == 1:
            grads[data[0]] = dx
        elif data:
            parts = dx if isinstance(dx, (tuple, list)) else (dx,)
            grads.update(zip(data, parts))
        for n in self.params:
            grads[n] = self._param_grad(n)
        for n, attr in (self.rule.state.grads.items() if self.rule.state else ()):
            grads[n] = getattr(self.instance, attr, None)  # a state's gradient: book 2's TimeRNN.dh
        return grads

    def _param_grad(self, n):
        return dlfs1_gradient(self.instance, self.attribute_of(n) or n, n)

    def grad_location(self, n) -> str:
        if self.rule.state is not None and n in self.rule.state.grads:
            return f"{self.name}.{self.rule.state.grads[n]}"
        if n not in self.params:
            data = [m for _, kind, m in self.binding.call if kind == "input"]
            suffix = f"[{data.index(n)}]" if len(data) > 1 else ""
            return f"{self.name}.backward({', '.join(self.douts)}){suffix}"
        return f"{self.name}.d{self.attribute_of(n) or n}"


class Dlfs2Adapter(Dlfs1Adapter):
    style = "dlfs2"

    def build(self, values):
        super().build(values)
        self.slots = {}
        params = getattr(self.instance, "params", None)
        grads = getattr(self.instance, "grads", None)
        if self.forward_only and params is None and not self.params:
            params = []  # nothing held: nothing to find
        if self.forward_only and isinstance(params, list) and grads is None:
            grads = [None] * len(params)  # nothing is read from it
        if not isinstance(params, list) or not isinstance(grads, list):
            raise DerivcheckError(f"{self.name} has no params/grads lists after construction: is it --style dlfs1?")
        for n in self.params:
            idx = next((i for i, p in enumerate(params) if p is self.param_arrays[n]), None)
            if idx is None:
                idx = next((i for i, p in enumerate(params) if _same_array(p, self.param_arrays[n])), None)
            if idx is None or idx >= len(grads):
                raise DerivcheckError(f"{self.name}.params holds no array equal to the '{n}' it was constructed with")
            self.slots[n] = idx
        self.grad_arrays = list(grads)  # what an optimizer that collected layer.grads holds
        self.param_list = params

    def update_params(self, values):
        for n, i in self.slots.items():
            self.param_list[i][...] = values[n]
        self._refresh_labels(values)

    def held(self, values):
        return {**values, **{n: self.param_list[i] for n, i in self.slots.items()}}

    def run(self, values, cotangent) -> Outcome:
        if self.forward_only:
            return super().run(values, cotangent)
        before = [id(g) for g in self.instance.grads]
        outcome = super().run(values, cotangent)
        grads = self.instance.grads
        for n, i in self.slots.items():
            if id(grads[i]) != before[i]:
                outcome.rebound.append(
                    f"backward rebinds grads[{i}] (grads[{i}] = d{n}) instead of writing into it "
                    f"(grads[{i}][...] = d{n}): an optimizer holding the old grads list never sees the new gradient")
        return outcome

    def _param_grad(self, n):
        return self.instance.grads[self.slots[n]]

    def grad_location(self, n) -> str:
        if n not in self.params:
            return super().grad_location(n)
        return f"{self.name}.grads[{self.slots[n]}]"


class DezeroAdapter(Adapter):
    style = "dezero"

    def prepare(self):
        cls = self.obj
        self.Variable = _variable_class(self.module, cls)
        if self.Variable is None:
            raise DerivcheckError(f"no Variable class found for DeZero-style '{self.name}' (in its module or the dezero package)")
        if self.rule.outputs:
            raise DerivcheckError(f"rule '{self.rule.name}' has several outputs ({', '.join(self.rule.outputs)}), and a DeZero "
                                  f"function with several outputs is not supported yet: check it in another style")
        if inspect.isclass(cls):
            self.binding = bind(self.rule, cls.__init__, cls.forward, self.name, call_takes_all_inputs=True)
        else:  # a function that builds and applies a Function: f(x, W) / reshape(x, shape)
            self.binding = bind(self.rule, None, cls, self.name, call_takes_all_inputs=True)
        self.config = self._config()

    def _config(self):
        """DeZero's Config class, whose ``train`` this rule's ``train`` sets around each call (test mode), or None.

        A rule without ``train`` leaves the framework as it is (train mode, as a fresh process starts);
        a framework without ``Config.train`` is always in train mode, so only a test-mode rule is refused.
        """
        if "train" not in self.rule.hyper:
            return None
        config = getattr(sys.modules.get(self.Variable.__module__), "Config", None)
        if config is not None and isinstance(getattr(config, "train", None), bool):
            return config
        if self.hyper["train"]:
            return None
        raise DerivcheckError(
            f"rule '{self.rule.name}' runs DeZero functions in test mode (Config.train = False), and the framework of "
            f"'{self.name}' ({self.Variable.__module__}) has no Config class with a train flag to switch: check it with "
            f"the train-mode rule, or give the framework DeZero's `class Config: train = True`")

    def run(self, values, cotangent) -> Outcome:
        if self.config is None:
            return self._run(values, cotangent)
        before = self.config.train
        self.config.train = self.hyper["train"]
        try:
            return self._run(values, cotangent)
        finally:
            self.config.train = before

    def build(self, values):
        pass  # a Function is built afresh for every call

    def update_params(self, values):
        pass  # every array is a call argument: fresh Variables each step

    def _run(self, values, cotangent) -> Outcome:
        variables = {n: self.Variable(values[n]) for _, kind, n in self.binding.call if kind == "input"}
        arrays = [variables.get(n, values.get(n)) for _, kind, n in self.binding.call if kind in ("input", "label")]
        hypers = {p: self._value(kind, n, values) for p, kind, n in self.binding.call if kind in ("hyper", "dict", "pair")}
        if inspect.isclass(self.obj):  # Function(hyper...)(*inputs)
            ctor = {p: self._value(kind, n, values) for p, (kind, n) in self.binding.ctor.items()}
            fn = call_user(self.obj, list(ctor.items()), f"{self.name}({', '.join(ctor)})")
            y = call_user(fn, [(None, a) for a in arrays], f"{self.name}.forward")
        else:  # a function applying a Function: f(x, W), reshape(x, shape=...)
            y = call_user(self.obj, [(None, a) for a in arrays] + list(hypers.items()), self.name)
        if isinstance(y, (list, tuple)):
            y = y[0]
        if not hasattr(y, "data") or not hasattr(y, "backward"):
            raise LayerError(self.name, TypeError(f"returned {type(y).__name__}, not a Variable"))
        out = own(y.data)  # as it is now, whatever backward does to the array
        if self.forward_only:
            return Outcome(out, {}, forward_only=self.forward_only)
        y.grad = dezero_grad(cotangent, y)
        if not any(v is y for v in variables.values()):
            call_user(y.backward, [], f"{self.name}.backward")
        # else: y is an input handed back (DeZero's sum_to(x, x.shape) returns x): a leaf whose
        # gradient is the cotangent itself; DeZero's backward() on a leaf would fail on its missing creator
        grads = {n: getattr(getattr(v, "grad", None), "data", getattr(v, "grad", None)) for n, v in variables.items()}
        return Outcome(out, grads)

    def grad_location(self, n) -> str:
        return f"{n}.grad"


class FunctionalAdapter(Adapter):
    style = "functional"

    def build(self, values):
        pass

    def prepare(self):
        if inspect.isclass(self.obj):
            raise DerivcheckError(f"style functional needs functions, and '{self.name}' is a class: try --style dlfs1, dlfs2 or dezero")
        fwd = getattr(self.module, f"{self.name}_forward", None)
        bwd_name = f"{self.name}_backward"
        # NAME_forward, NAME_backward, and CS231n's variants: conv_forward_naive with conv_backward_naive,
        # batchnorm_backward_alt (a second backward of batchnorm_forward)
        parts = re.fullmatch(r"(?P<base>.+?)_(?P<which>forward|backward)(?P<suffix>_[A-Za-z0-9]+)?", self.name)
        if fwd is None and parts is not None:
            # a suffix counts only where its pair exists: temporal_softmax_loss_mask_forward_only is a loss function
            base, suffix = parts["base"], parts["suffix"] or ""
            if parts["which"] == "forward" and (not suffix or hasattr(self.module, f"{base}_backward{suffix}")):
                fwd, bwd_name = self.obj, f"{base}_backward{suffix}"
            elif parts["which"] == "backward":  # the backward named: check it with its forward
                fwd = getattr(self.module, f"{base}_forward{suffix}", None) or getattr(self.module, f"{base}_forward", None)
                if fwd is not None:
                    bwd_name = self.name
                elif not suffix:
                    raise DerivcheckError(f"found {self.name} but no {base}_forward next to it: a backward is checked with its forward")
        bwd = getattr(self.module, bwd_name, None)
        if fwd is not None and bwd is None:
            raise DerivcheckError(f"found {fwd.__name__} but no {bwd_name} next to it")
        if fwd is None and callable(bwd) and callable(self.obj) and not inspect.isclass(self.obj):
            fwd = self.obj  # NAME(x) -> (out, cache) beside NAME_backward(dout, cache): the deeplearning.ai course's relu
        self.loss_fn = None
        if fwd is None:
            if not callable(self.obj):
                raise DerivcheckError(f"'{self.name}' is not a function")
            self.loss_fn = self.obj  # NAME(x, y) -> (loss, dx)
            fwd = self.obj
        self.fwd, self.bwd, self.bwd_name = fwd, bwd, bwd_name
        self.binding = bind(self.rule, None, fwd, self.name, call_takes_all_inputs=True)

    def update_params(self, values):
        pass

    def run(self, values, cotangent) -> Outcome:
        args = self._call_args(self.binding, values)
        result = own(call_user(self.fwd, args, f"{self.fwd.__name__}"))
        if self.loss_fn is not None and isinstance(result, (np.ndarray, np.generic, float, int)) and not isinstance(result, bool):
            return Outcome(result, {}, forward_only=f"{self.name} returns one value and has no {self.name}_backward next to it")
        k = len(self.rule.outputs) or 1
        if self.forward_only:  # a test mode: (out, cache) or out alone, and no backward called
            out = (tuple(result[:k]) if k > 1 else result[0]) if isinstance(result, tuple) and len(result) == k + 1 else result
            out, problem = pack_outputs(self.rule, out, self.fwd.__name__)
            return Outcome(out, {}, forward_only=self.forward_only, output_problem=problem)
        if not isinstance(result, tuple) or len(result) != k + 1:
            if k > 1:
                raise DerivcheckError(
                    f"{self.fwd.__name__} returned {_count(result)}, not {k + 1}: rule '{self.rule.name}' has {k} outputs, so "
                    f"the functional style is NAME_forward(...) -> ({', '.join(self.rule.outputs)}, cache) with "
                    f"NAME_backward({', '.join(self.douts)}, cache)")
            raise DerivcheckError(
                f"{self.fwd.__name__} returned a {type(result).__name__}, not a pair: the functional style is "
                f"NAME_forward(...) -> (out, cache) with NAME_backward(dout, cache), or a loss NAME(x, y) -> (loss, dx). "
                f"A function that only computes a value has no backward to check")
        data = [n for _, kind, n in self.binding.call if kind == "input"]
        if self.loss_fn is not None:
            out, dx = result
            parts = dx if isinstance(dx, tuple) else (dx,)
            # a loss function gives the gradient for an upstream gradient of 1
            grads = {n: None if g is None else np.asarray(g) * np.asarray(cotangent) for n, g in zip(data, parts)}
            return Outcome(out, grads)
        *out, cache = result
        out, problem = pack_outputs(self.rule, tuple(out) if k > 1 else out[0], self.fwd.__name__)
        back = call_user(self.bwd, [(None, c) for c in split_cotangent(self.rule, cotangent)] + [(None, cache)], self.bwd_name)
        parts = back if isinstance(back, tuple) else (back,)
        return Outcome(out, dict(zip(data, parts)), output_problem=problem)

    def grad_location(self, n) -> str:
        data = [m for _, kind, m in self.binding.call if kind == "input"]
        if n not in data:
            return self.bwd_name if self.loss_fn is None else self.name
        if self.loss_fn is not None:  # (loss, dx): the gradient is the pair's second item
            return f"{self.name}(...)[1]" + (f"[{data.index(n)}]" if len(data) > 1 else "")
        return f"{self.bwd_name}(...)[{data.index(n)}]"


def _count(result) -> str:
    return f"{len(result)} values" if isinstance(result, tuple) else f"a {type(result).__name__}"


ADAPTERS = {"dlfs1": Dlfs1Adapter, "dlfs2": Dlfs2Adapter, "dezero": DezeroAdapter, "functional": FunctionalAdapter}


def make_adapter(spec: str, rule, hyper: dict, layer_hyper: dict, style: str | None = None) -> Adapter:
    obj, module, name = load_target(spec)
    stage(OWN_WORK)
    style = style or detect_style(obj, module, name)
    if style not in ADAPTERS:
        raise DerivcheckError(f"unknown style '{style}' (known: {', '.join(STYLES)})")
    if style in ("dlfs1", "dlfs2") and not inspect.isclass(obj):
        raise DerivcheckError(f"style {style} needs a class, and '{name}' is a {type(obj).__name__}")
    if style in ("dlfs1", "dlfs2") and not callable(getattr(obj, "forward", None)):
        raise DerivcheckError(f"style {style} needs a class with a forward method (and a backward, to check one), and {name} has none")
    if rule.state is not None and style not in ("dlfs1", "dlfs2"):
        raise DerivcheckError(f"rule '{rule.name}' sets a layer's state through its method {rule.state.method} (a book-2 "
                              f"layer class); '{name}' is {style} style: pass the state as an argument, with a rule that takes it")
    adapter = ADAPTERS[style](obj, module, name, rule, hyper, layer_hyper)
    adapter.prepare()
    if rule.forward_only and not adapter.forward_only:
        adapter.forward_only = f"rule '{rule.name}': {rule.forward_only}"
    return adapter
