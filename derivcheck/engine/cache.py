"""On-disk cache of derivations: JSON expression trees, never pickles or code.

An entry holds a derivation's output and non-zero Jacobian entries as one table
of whitelisted SymPy node types, each sub-expression once (:class:`Encoder`). Loading rebuilds the expressions with those
constructors only; symbols must be the derivation's own. Anything else — bad
JSON, another key, an unknown node, a foreign symbol — is treated as a miss
and rebuilt. Keys cover the rule's text, the sizes, the hyperparameters the
formula reads, the cache format and the derivcheck, SymPy and NumPy versions.
Writes go to a temporary file in the same folder and are renamed into place
(atomic), so parallel runs (pytest -n) never see half an entry; and a process
about to derive an entry takes the entry's lock first (:func:`deriving`), so
processes that need the same entry at once (``check -j``, test workers) derive
it once: the others wait, then read it.

The folder is ``$DERIVCHECK_CACHE_DIR``, else ``$XDG_CACHE_HOME/derivcheck``,
else ``~/.cache/derivcheck``; ``DERIVCHECK_CACHE=0`` turns the disk cache off.

The folder is untrusted: another user, or a repository that ships a
``cache-dir``, may have written it. So an entry is used only if it carries an
HMAC-SHA256 made with this user's secret key (cachekey.py), which lives in the
user's own cache home (``$XDG_CACHE_HOME/derivcheck/secret.key``, created 0600,
whatever ``cache-dir`` says), so a repository cannot ship it. Anything else is
rebuilt. Entries are read without following symlinks and only when they are
regular files of bounded size; sub-folders that are symlinks are neither read
nor written; a cache folder that other users can write is refused with a
message that says what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import stat
import os
import re
import tempfile
from importlib import metadata
try:
    import fcntl
except ImportError:  # Windows: no lock; a derivation may then be made twice, which is only slower
    fcntl = None
from pathlib import Path

from derivcheck import DISTRIBUTION
from derivcheck.engine import cachekey
from derivcheck.errors import DerivcheckError

import mpmath
import numpy as np
import sympy

from derivcheck.engine.indexed import IsMax, ReduceMax, rebuilt
from derivcheck.engine.ops import NODES

FORMAT = 3  # 2: sparse Jacobian triples; generic entries. 3: expressions as one table of nodes (Encoder)

_FUNCS = {
    "Add": sympy.Add,
    "Mul": sympy.Mul,
    "Pow": sympy.Pow,
    **{fn.__name__: fn for fn in NODES},  # exp, log, tanh, sin, cos, Abs: the language's functions (ops.py)
    "sign": sympy.sign,
    "Max": sympy.Max,
    "Min": sympy.Min,
    "Heaviside": sympy.Heaviside,
    "Piecewise": sympy.Piecewise,
    "ExprCondPair": sympy.functions.elementary.piecewise.ExprCondPair,
    "StrictGreaterThan": sympy.StrictGreaterThan,
    "GreaterThan": sympy.GreaterThan,
    "StrictLessThan": sympy.StrictLessThan,
    "LessThan": sympy.LessThan,
    "And": sympy.And,
    "Or": sympy.Or,
    "Not": sympy.Not,
    "KroneckerDelta": sympy.KroneckerDelta,
    "IsMax": IsMax,
}
_INDEX_NAME = re.compile(r"^[a-z][0-9]{1,9}$")
_CONSTANTS = {"true": sympy.true, "false": sympy.false, "E": sympy.E, "Half": sympy.S.Half}


class Unencodable(Exception):
    """An expression with a node the cache does not know; such a derivation is not cached."""


class Encoder:
    """Expressions as one table of nodes, each sub-expression once (a DAG): ``enc(expr)`` is the
    index of ``expr``'s node in ``enc.nodes``. A node is ``[tag, ...]``, its children given by the
    indices of earlier nodes. A generic VJP's error bound repeats its sub-expressions many times
    (LSTM's: 157,345 tree nodes, 2,977 distinct), so a tree would be decoded 50 times over."""

    def __init__(self):
        self.nodes: list = []
        self._seen: dict = {}

    def __call__(self, expr) -> int:
        hit = self._seen.get(expr)
        if hit is None:
            node = self._node(expr)
            self.nodes.append(node)
            hit = self._seen[expr] = len(self.nodes) - 1
        return hit

    def _node(self, expr) -> list:
        if isinstance(expr, sympy.Symbol):
            if expr.is_integer and not expr.is_positive:  # an index variable of the shape-generic tier
                return ["X", expr.name]
            return ["S", expr.name]
        if isinstance(expr, sympy.Indexed):
            return ["Ix", str(expr.base.label)] + [self(i) for i in expr.indices]
        if isinstance(expr, (sympy.Sum, ReduceMax)):
            tag = "Sum" if isinstance(expr, sympy.Sum) else "RMax"
            return [tag, self(expr.function)] + [[self(v), self(lo), self(hi)] for v, lo, hi in expr.limits]
        if isinstance(expr, sympy.Integer) or type(expr) is int:  # a size a rule fixes may be a plain int
            return ["I", str(int(expr))]
        if isinstance(expr, sympy.Rational):
            return ["Q", str(expr.p), str(expr.q)]
        if isinstance(expr, sympy.Float):
            sign, man, exp, _ = expr._mpf_
            return ["F", str(-man if sign else man), exp, expr._prec]
        for name, const in _CONSTANTS.items():
            if expr is const:
                return ["C", name]
        name = type(expr).__name__
        if name in _FUNCS and _FUNCS[name] is type(expr) or name == "ExprCondPair":
            return [name] + [self(a) for a in expr.args]
        raise Unencodable(name)


MAX_NODES = 2_000_000  # an entry's node table: the engine writes tens of thousands at most


def decoder(nodes, symbols: dict, bases: frozenset = frozenset()):
    """Rebuild an :class:`Encoder`'s table; ``symbols`` by name, ``bases`` the array names Indexed may
    read. Returns ``node(ref)``, the expression of a reference. A child must be an earlier node, so the
    table cannot loop; anything malformed (a node, a reference) raises ValueError."""
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise ValueError("malformed node table")
    built: list = []

    def child(ref):
        if type(ref) is not int or not 0 <= ref < len(built):
            raise ValueError(f"bad node reference {ref!r}")
        return built[ref]

    for node in nodes:
        built.append(_build(node, child, symbols, bases))
    return child


def _build(tree, child, symbols: dict, bases: frozenset):
    """One node, its children read by ``child``."""
    if not isinstance(tree, list) or not tree or not isinstance(tree[0], str):
        raise ValueError("malformed node")
    tag, args = tree[0], tree[1:]
    if tag == "X":
        if len(args) != 1 or not isinstance(args[0], str) or not _INDEX_NAME.match(args[0]) or not bases:
            raise ValueError(f"bad index {args!r}")
        return sympy.Symbol(args[0], integer=True)
    if tag == "Ix":
        if not args or args[0] not in bases:
            raise ValueError(f"foreign array {args[:1]!r}")
        return sympy.IndexedBase(args[0], real=True)[tuple(child(a) for a in args[1:])]
    if tag in ("Sum", "RMax"):
        if len(args) < 2 or not all(isinstance(lim, list) and len(lim) == 3 for lim in args[1:]):
            raise ValueError("malformed sum")
        limits = [tuple(child(x) for x in lim) for lim in args[1:]]
        if not all(isinstance(v, sympy.Symbol) for v, _, _ in limits):
            raise ValueError("a sum's index is not a symbol")
        return rebuilt(sympy.Sum if tag == "Sum" else ReduceMax, child(args[0]), limits)
    if tag == "S":
        if len(args) != 1 or args[0] not in symbols:
            raise ValueError(f"foreign symbol {args!r}")
        return symbols[args[0]]
    if tag == "I":
        return sympy.Integer(_small_int(args[0]))
    if tag == "Q":
        return sympy.Rational(_small_int(args[0]), _small_int(args[1]))
    if tag == "F":
        man, exp, prec = _small_int(args[0]), int(args[1]), int(args[2])
        if abs(exp) > 100_000:
            raise ValueError("float out of bounds")
        if not 1 <= prec <= 4096:
            raise ValueError("bad float precision")
        return sympy.Float(mpmath.mpf((man, exp)), precision=prec)
    if tag == "C":
        return _CONSTANTS[args[0]]
    if tag in _FUNCS:
        decoded = [child(a) for a in args]
        if tag == "Pow" and (len(decoded) != 2 or (decoded[1].is_Number and abs(decoded[1]) > MAX_EXPONENT)):
            raise ValueError("power out of bounds")  # Pow(3, 10**10) would never finish evaluating
        if tag in _AS_STORED:
            return _FUNCS[tag](*decoded, evaluate=False)
        return _FUNCS[tag](*decoded)
    raise ValueError(f"unknown node {tag!r}")


# Rebuilt as stored, not re-simplified: the entry holds the args of an expression SymPy had
# already put in canonical form, so evaluating again only repeats that work (most of a cold
# load's time: Abs and Add asking assumptions). tests/test_generic.py checks the round trip is exact.
_AS_STORED = frozenset(("Add", "Mul", "Pow", *(fn.__name__ for fn in NODES), "sign", "Max", "Min",
                        "Heaviside", "KroneckerDelta", "IsMax"))


MAX_DIGITS = 40  # integers in entries: the engine writes small ones; a huge one is an attack or corruption
MAX_EXPONENT = 1024


def _small_int(text) -> int:
    if not isinstance(text, str) or len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError("integer out of bounds")
    return int(text)


def cache_dir() -> Path | None:
    if os.environ.get("DERIVCHECK_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get("DERIVCHECK_CACHE_DIR"):
        return Path(os.environ["DERIVCHECK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "derivcheck"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "unknown"


_VERSIONS = None


def code_digest(folder: Path = Path(__file__).resolve().parents[1]) -> str:
    """A digest of every Python file of the package (names and contents): the code that makes a derivation.

    The whole package, not a list kept by hand: a list once left out the recurrence and reference
    modules, so an edit there reused cached proofs and a correct layer FAILed. Read once per process.
    """
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def entry_key(memory_key: tuple) -> str:
    global _VERSIONS
    if _VERSIONS is None:
        _VERSIONS = (FORMAT, _version(DISTRIBUTION), code_digest(), sympy.__version__, np.__version__)
    return hashlib.sha256(repr((_VERSIONS, memory_key)).encode()).hexdigest()


MAX_ENTRY_BYTES = 64 * 2**20
_CHECKED: dict = {}  # folder -> None (fine) or the DerivcheckError to raise


def forget() -> None:
    """Forget this process's key and folder checks (after the environment that chose them changed)."""
    cachekey.forget()
    _CHECKED.clear()


def _folder() -> Path | None:
    """The cache folder, made and checked (once per process); None when the disk cache is off."""
    d = cache_dir()
    if d is None:
        return None
    if d not in _CHECKED:
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            cachekey.private(d, "the cache folder")
            cachekey.secret()
            _CHECKED[d] = None
        except DerivcheckError as exc:
            _CHECKED[d] = exc
        except OSError:
            _CHECKED[d] = False  # cannot be made: run without a disk cache
    problem = _CHECKED[d]
    if isinstance(problem, DerivcheckError):
        raise problem
    return None if problem is False else d


def _path(key: str) -> Path | None:
    d = _folder()
    return None if d is None else d / key[:2] / f"{key}.json"


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)  # lstat: a symlink is not a folder of ours
    except OSError:
        return False


def _entry_folder(path: Path) -> bool:
    """Make the sub-folder an entry (or its lock) goes in; False if it is not a real folder of ours
    (a symlinked sub-folder would send our writes elsewhere). Another process may make it first."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return _real_dir(path.parent)


def load(key: str, derivation) -> tuple | None:
    """The cached (output_shape, outputs, jacobians) for ``derivation``, or None."""
    data = load_entry(key)
    if data is None:
        return None
    try:
        symbols = {s.name: s for arr in (*derivation.symbols.values(), *derivation.label_symbols.values()) for s in arr.ravel()}
        shape = tuple(int(n) for n in data["output_shape"])
        decode = decoder(data["nodes"], symbols)
        out = [decode(t) for t in data["out"]]
        if len(out) != int(np.prod(shape)):
            return None
        if set(data["jac"]) != set(derivation.symbols):
            return None
        jac = {}
        for name, syms in derivation.symbols.items():
            triples = []
            for o, i, tree in data["jac"][name]:
                if not (isinstance(o, int) and isinstance(i, int) and 0 <= o < len(out) and 0 <= i < syms.size):
                    return None
                triples.append((o, i, decode(tree)))
            jac[name] = triples
        return shape, out, jac
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError, json.JSONDecodeError):
        return None  # corrupt or foreign: rebuild


def store(key: str, rule_name: str, exprs: tuple) -> bool:
    """Write an entry atomically; False if it cannot be cached (unknown node, no folder)."""
    shape, out, jac = exprs
    enc = Encoder()
    try:
        data = {
            "rule": rule_name,
            "output_shape": list(shape),
            "out": [enc(e) for e in out],
            "jac": {name: [[o, i, enc(e)] for o, i, e in triples] for name, triples in jac.items()},
            "nodes": enc.nodes,
        }
    except Unencodable:
        return False
    return store_entry(key, data)


@contextlib.contextmanager
def deriving(key: str):
    """Hold ``key``'s lock (a ``.lock`` file beside the entry) while the caller derives and stores it.

    The caller reads the entry again once it holds the lock: a process that derived it
    meanwhile has stored it. Locks are only ever taken in one order (a generic entry,
    then the element-by-element entries its proof needs), so two processes cannot wait
    on each other; the kernel drops a lock when its process dies (a worker killed at
    its time limit). Without a folder, or where the lock cannot be made, no lock.
    """
    path = _path(key)
    fd = None
    if path is not None and fcntl is not None:
        try:
            if _entry_folder(path):
                fd = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


def load_or_make(key: str, load, make, store):
    """The one protocol from disk to a new derivation: ``load()`` the entry under ``key``; if there is none
    (None), hold ``key``'s lock, load again (a process that held it may have stored it meanwhile), and
    only then ``make()`` it and ``store(value)``. Returns what was loaded or made."""
    value = load()
    if value is None:
        with deriving(key):
            value = load()
            if value is None:
                value = make()
                store(value)
    return value


def load_entry(key: str) -> dict | None:
    """The JSON payload stored under ``key``, if its MAC is this user's (format and key checked), or None."""
    path = _path(key)
    if path is None or not _real_dir(path.parent):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None  # missing, or a symlink
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
                return None
            raw = fh.read(MAX_ENTRY_BYTES + 1)
        mac, sep, payload = raw.partition(b"\n")
        if not sep or not hmac.compare_digest(mac.decode("ascii", "replace"), cachekey.mac(payload)):
            return None  # not written by this user's derivcheck: rebuilt
        data = json.loads(payload.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
        return None
    return data


def store_entry(key: str, data: dict) -> bool:
    """Write ``data`` (JSON, with this user's MAC) under ``key`` atomically; False where it cannot."""
    path = _path(key)
    if path is None:
        return False
    payload = json.dumps({"format": FORMAT, "key": key, **data}, separators=(",", ":")).encode("utf-8")
    tmp = None
    try:
        if not _entry_folder(path):
            return False
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "wb") as fh:
            fh.write(cachekey.mac(payload).encode("ascii") + b"\n" + payload)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False
