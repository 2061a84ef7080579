"""This user's secret key, which authenticates the derivation cache's entries (HMAC-SHA256).

It lives in the user's own cache home (``$XDG_CACHE_HOME/derivcheck/secret.key``,
else ``~/.cache/derivcheck/secret.key``), made once, readable by the user alone,
whatever cache folder a configuration names: a repository that ships a cache
folder cannot ship the key. Kept apart from cache.py, which reads SymPy
expressions, so that reading the key costs no SymPy import.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from derivcheck.errors import DerivcheckError

_KEY: bytes | None = None


def user_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "derivcheck"


def private(path: Path, what: str) -> None:
    """Refuse ``path`` if users other than its owner may write it, or if it is not ours."""
    st = os.stat(path)
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise DerivcheckError(f"{what} {path} belongs to another user: derivcheck will not trust it "
                              f"(set DERIVCHECK_CACHE_DIR to a folder of your own, or DERIVCHECK_CACHE=0)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DerivcheckError(f"{what} {path} can be written by other users (mode {stat.filemode(st.st_mode)}): "
                              f"derivcheck will not trust it; run chmod go-w {path}, or set DERIVCHECK_CACHE_DIR "
                              f"to a folder of your own, or DERIVCHECK_CACHE=0")


def secret() -> bytes:
    """This user's key for entry MACs: made once, 0600, in the user's own cache home."""
    global _KEY
    if _KEY is None:
        home = user_home()
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        private(home, "the cache home")
        path = home / "secret.key"
        if not path.exists():
            # written whole under a name of its own, then linked into place: a process starting at the
            # same moment (the gate's -j workers on a fresh machine) sees no key or the whole key, never
            # a half-written one, and the first link wins
            fd, tmp = tempfile.mkstemp(dir=home, prefix=".secret-")  # 0600
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(secrets.token_bytes(32))
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
                raise DerivcheckError(f"the cache key {path} must be a file of yours that only you can read "
                                      f"(chmod 600 {path}, or delete it to make a new one)")
            key = fh.read()
        if len(key) < 32:
            raise DerivcheckError(f"the cache key {path} is damaged: delete it and derivcheck makes a new one")
        _KEY = key
    return _KEY


def forget() -> None:
    """Forget this process's key (after the environment that chose it changed)."""
    global _KEY
    _KEY = None


def mac(payload: bytes) -> str:
    """``payload``'s HMAC-SHA256 under this user's key, in hex."""
    return hmac.new(secret(), payload, hashlib.sha256).hexdigest()
