"""On-disk cache of derivations: JSON data, never pickles or code.

An entry holds a derivation as data: its expressions as one table of
whitelisted SymPy node types (:mod:`derivcheck.engine.exprcodec`) and, for the
shape-generic tier, the NumPy steps they compile to
(:mod:`derivcheck.engine.program`), which a warm run evaluates without SymPy.
This module reads and writes entries and imports neither SymPy nor the engine.
Anything malformed — bad JSON, another key, an unknown node, a foreign symbol —
is treated as a miss and rebuilt. Keys cover the rule's text, the sizes, the hyperparameters the
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

FORMAT = 4  # 2: sparse Jacobian triples; generic entries. 3: expressions as one table of nodes. 4: a generic entry's NumPy steps

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
        _VERSIONS = (FORMAT, _version(DISTRIBUTION), code_digest(), _version("sympy"), _version("numpy"))
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
