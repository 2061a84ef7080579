"""Importing a user's target: ``path/to/layers.py:Affine`` or ``package.module:Affine`` to the class or
function it names, with its package's import roots; and telling a model (a network) from a layer
by reading its source, without running it."""
from __future__ import annotations

import __future__
import ast
import difflib
import functools
import importlib
import importlib.util
import inspect
import operator
import sys
from pathlib import Path

from derivcheck.check.conventions.base import Missing, describe
from derivcheck.errors import DerivcheckError


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


def _source_file(path: Path, where: str) -> None:
    """Refuse a target file that is missing or not Python source (a .txt, a notebook): derivcheck runs .py files."""
    if not path.is_file():
        raise DerivcheckError(f"target file '{where}' not found (from {Path.cwd()})")
    if path.suffix != ".py":
        raise DerivcheckError(f"target file '{where}' is not a .py file: derivcheck imports Python source files "
                              f"(path/to/layers.py:Name) and modules (package.module:Name); for a notebook, export "
                              f"its code to a .py file")


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
    _source_file(path, where)
    try:
        tree = _source_tree(path)
    except (SyntaxError, ValueError, OSError):
        return  # the worker's import says it best
    defined, dynamic = [], False
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.AugAssign)):
            dynamic |= isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)
            defined += _names_bound(node)
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
        _source_file(path, where)
        return _import_file(path)
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m package.module` run from here
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise DerivcheckError(f"module '{where}' not found in {Path.cwd()} or the installed packages: "
                                  f"run from the folder holding it, install it, or name the file, like {where.replace('.', '/')}.py") from None
        raise DerivcheckError(f"importing '{where}' failed: {describe(exc)}") from None
    except Exception as exc:  # the user's module itself is broken
        raise DerivcheckError(f"importing '{where}' failed: {describe(exc)}") from None


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
                                  f"package, from {top}) failed: {describe(exc)}") from None
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
    tried = (f"; importable were {', '.join(str(r) for r in roots)} (the file's folder, its project root, and any "
             f"folder above it holding the names it imports) and the installed packages")
    try:
        _SKIPPED[modname] = _run_definitions(_source_tree(path), path, module, tried)
    except Exception as exc:
        del sys.modules[modname]
        raise DerivcheckError(f"importing '{path}' failed: {describe(exc)}{tried if isinstance(exc, ModuleNotFoundError) else ''}") from None
    return module


# Scripts as modules. A chapter file of a book trains a model at its top level, reads data, plots; a
# check imports it for its classes and must not run that. Top-level loops, with-blocks and bare calls
# (nnfs.init(), print(...), model.train(...)) are skipped, and the report says which; imports,
# definitions, assignments and ifs run as written, and so does a sys.path change the imports need.
# The same loader keeps a file whose top level imports what only its script part uses (the course's
# dnn_app_utils imports h5py and matplotlib for its data and plots) from failing over it.
_SKIPPED: dict[str, list[tuple[int, str, bool]]] = {}  # module name -> (line, its first line, did work) of each skipped


def _does_work(node: ast.stmt) -> bool:
    if isinstance(node, (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)):
        call = node.value.func if isinstance(node.value, ast.Call) else None
        return not (isinstance(call, ast.Attribute) and ast.unparse(call.value) == "sys.path")
    return False


def _run_definitions(tree: ast.Module, path: Path, module, tried: str = "") -> list[tuple[int, str, bool]]:
    """Run ``tree``'s top level into ``module`` one statement at a time, but the ones that do work. An import
    or assignment that raises (an import only the script or its plots need, an assignment reading what a
    skipped call made) is skipped too, and each name it binds stands for a ``Missing`` value: a layer that
    uses one is stopped with what failed (exit 2), one that does not is checked. Another statement that
    raises fails the import. Returns the statements skipped, (line, text, did work)."""
    # each statement is compiled alone: the file's `from __future__ import annotations` must reach every one
    future = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            future |= functools.reduce(operator.or_, (getattr(__future__, a.name).compiler_flag for a in node.names
                                                      if hasattr(__future__, a.name)), 0)
    module.__doc__ = ast.get_docstring(tree, clean=False)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    skipped = []
    for node in tree.body:
        if _does_work(node):
            skipped.append((node.lineno, _first_line(lines, node), True))
            continue
        try:
            code = compile(ast.Module([node], type_ignores=[]), str(path), "exec", flags=future, dont_inherit=True)
            exec(code, module.__dict__)
        except Exception as exc:
            star = isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)  # binds who knows what
            if star or not ((isinstance(node, (ast.Import, ast.ImportFrom)) and isinstance(exc, ImportError))
                            or isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))):
                raise
            why = f"line {node.lineno} of {path.name} could not make ({describe(exc)}{tried if isinstance(exc, ImportError) else ''})"
            for name in _names_bound(node):
                module.__dict__.setdefault(name, Missing(name, why))
            skipped.append((node.lineno, f"{_first_line(lines, node)} (it raised {type(exc).__name__})", False))
    return skipped


def _names_bound(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _first_line(lines: list[str], node: ast.stmt) -> str:
    line = lines[node.lineno - 1].strip() if node.lineno - 1 < len(lines) else ""
    return line if len(line) <= 60 else line[:57] + "..."


def script_note(module) -> str:
    """What the report says of a target file that is a script: the statements not run, or ""."""
    skipped = _SKIPPED.get(getattr(module, "__name__", ""), [])
    if not skipped:
        return ""
    shown = "; ".join(f"line {n}: {text}" for n, text, _ in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    name = Path(module.__file__).name
    if any(work for _, _, work in skipped):
        return (f"{name} is a script: derivcheck ran its imports and definitions only, and skipped "
                f"{len(skipped)} top-level statement(s) ({shown})")
    return (f"derivcheck skipped {len(skipped)} top-level statement(s) of {name} that raised; the layer does not "
            f"use what they make ({shown})")
