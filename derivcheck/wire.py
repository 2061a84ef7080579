"""Plain data between processes, with no pickle on the way in: what the layer's process hands the judge.

The judge (isolate.py) never unpickles what a process running user code sends: unpickling runs whatever
code the bytes name. Messages from that side are encoded here as one frame: a JSON header that holds
None, booleans, numbers, strings, lists, tuples and dicts with string keys, and NumPy arrays of numbers
(``.npy`` bytes, read back with ``allow_pickle=False``). Anything else the layer returned is sent as its
type's name only (:class:`Opaque`), so the judge can say what it was, and never holds the object.

:func:`plain` turns what a layer returned into that (in the layer's process, as soon as its call returns:
an ``__array__`` or an array subclass is resolved there, into a private copy); :func:`encode` and
:func:`decode` make and read the frame; :func:`decode` raises :class:`Malformed` for anything else.
"""
from __future__ import annotations

import io
import json
import math
import struct

import numpy as np

MAX_BYTES = 1 << 31  # set by hand: a message beyond 2 GiB is refused (a layer cannot make the judge allocate more)
MAX_DEPTH = 32  # nested lists, tuples and dicts, set by hand: deeper is not a result a layer hands back
_KINDS = "biufc"  # bool, int, uint, float, complex: the array dtypes a message may hold


class Malformed(ValueError):
    """A message that is not a frame :func:`encode` makes."""


class Opaque:
    """Something a layer returned that is not data (an object of its own): only its type's name crosses."""

    __slots__ = ()


_OPAQUE: dict[str, type] = {}


def opaque(type_name: str) -> Opaque:
    """An object whose type is named ``type_name`` (so a report can say "is a Tensor, not an array")."""
    cls = _OPAQUE.get(type_name)
    if cls is None:
        if len(_OPAQUE) > 1000:
            _OPAQUE.clear()
        cls = _OPAQUE[type_name] = type(type_name, (Opaque,), {"__slots__": ()})
    return cls()


def plain(value, depth: int = 0):
    """What a layer returned, as data a frame can hold: arrays copied into plain ndarrays (subclasses and
    ``__array__`` resolved), numbers and strings as they are, sequences and dicts element by element,
    anything else :func:`opaque`. Runs the layer's ``__array__``: call it where the layer's code may run."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if type(value) in (int, float):  # not a subclass (NumPy's float64 is one: below, as an array)
        return value
    if depth >= MAX_DEPTH:
        return opaque(type(value).__name__)
    if type(value) in (list, tuple):
        items = [plain(v, depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict) and type(value) is dict and all(type(k) is str for k in value):
        return {k: plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(type(value), "__array__"):
        try:
            arr = np.array(value, copy=True, subok=False)
        except BaseException:  # noqa: BLE001 - an __array__ that raises: the object is not data
            return opaque(type(value).__name__)
        if type(arr) is not np.ndarray:
            return opaque(type(value).__name__)
        if arr.dtype.kind == "O":
            try:
                arr = arr.astype(np.float64)
            except BaseException:  # noqa: BLE001 - objects that are not numbers
                return opaque(type(value).__name__)
        if arr.dtype.kind not in _KINDS or arr.dtype.fields is not None:
            return opaque(type(value).__name__)
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)
    return opaque(type(value).__name__)


def fields(value, types: dict) -> dict:
    """``value`` if it is a dict of exactly the keys of ``types``, each value of its type (``object``: any; a
    tuple: any of those; ``int`` is not ``bool``), else :class:`Malformed`: a decoded record checked for form."""
    if type(value) is not dict or set(value) != set(types):
        raise Malformed(f"not a record of {', '.join(types)}")
    for k, t in types.items():
        v, allowed = value[k], t if isinstance(t, tuple) else (t,)
        if t is not object and (not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed)):
            raise Malformed(f"its {k} is a {type(v).__name__}")
    return value


def encode(value) -> bytes:
    """One frame for ``value`` (made of what :func:`plain` returns)."""
    arrays: list[bytes] = []

    def tree(v):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"$f": repr(v)}
        if isinstance(v, np.ndarray):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, v, allow_pickle=False)
            arrays.append(buf.getvalue())
            return {"$a": len(arrays) - 1}
        if isinstance(v, tuple):
            return {"$t": [tree(x) for x in v]}
        if isinstance(v, list):
            return [tree(x) for x in v]
        if isinstance(v, dict):
            return {"$d": [[k, tree(x)] for k, x in v.items()]}
        if isinstance(v, Opaque):
            return {"$o": type(v).__name__}
        raise TypeError(f"not plain data: {type(v).__name__}")

    header = json.dumps(tree(value), allow_nan=False).encode()
    parts = [struct.pack("<QQ", len(header), len(arrays)), header]
    for a in arrays:
        parts += [struct.pack("<Q", len(a)), a]
    return b"".join(parts)


def decode(data: bytes):
    """The value in a frame; :class:`Malformed` for anything :func:`encode` does not make."""
    try:
        view = memoryview(data)
        n_header, n_arrays = struct.unpack_from("<QQ", view, 0)
        at = 16
        if n_header > len(data) or n_arrays > len(data):
            raise Malformed("lengths beyond the message")
        header = json.loads(bytes(view[at:at + n_header]))
        at += n_header
        arrays = []
        for _ in range(n_arrays):
            (size,) = struct.unpack_from("<Q", view, at)
            at += 8
            if at + size > len(data):
                raise Malformed("an array beyond the message")
            arr = np.lib.format.read_array(io.BytesIO(bytes(view[at:at + size])), allow_pickle=False)
            if type(arr) is not np.ndarray or arr.dtype.kind not in _KINDS or arr.dtype.fields is not None:
                raise Malformed(f"an array of dtype {arr.dtype}")
            arrays.append(arr)
            at += size
        if at != len(data):
            raise Malformed("bytes after the last array")
    except Malformed:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the bytes are, they are not a frame
        raise Malformed(f"{type(exc).__name__}: {exc}") from None

    def value(t, depth=0):
        if depth > MAX_DEPTH + 2:
            raise Malformed("nested too deep")
        if t is None or isinstance(t, (bool, str, int, float)):
            return t
        if isinstance(t, list):
            return [value(x, depth + 1) for x in t]
        if isinstance(t, dict) and len(t) == 1:
            (tag, x), = t.items()
            if tag == "$a" and type(x) is int and 0 <= x < len(arrays):
                return arrays[x]
            if tag == "$f" and x in ("nan", "inf", "-inf"):
                return float(x)
            if tag == "$t" and isinstance(x, list):
                return tuple(value(y, depth + 1) for y in x)
            if tag == "$d" and isinstance(x, list) and all(isinstance(p, list) and len(p) == 2 and type(p[0]) is str for p in x):
                return {k: value(y, depth + 1) for k, y in x}
            if tag == "$o" and type(x) is str:
                return opaque(x[:200])
        raise Malformed(f"an element that is not data: {str(t)[:80]}")

    try:
        return value(header)
    except RecursionError:
        raise Malformed("nested too deep") from None
