"""The frames the layer's process sends the judge: data in, data out, and nothing else read as data."""
import io
import pickle

import numpy as np
import pytest

from derivcheck import wire


def test_plain_data_round_trips():
    value = ("ok", {"output": np.arange(6, dtype=np.float32).reshape(2, 3), "grads": {"x": np.eye(2), "b": None},
                    "where": {"x": "Affine.dW"}, "flag": True, "n": 3, "inf": float("inf"), "nan": float("nan"),
                    "list": [1.5, (2, "a")], "bools": np.array([True, False])})
    back = wire.decode(wire.encode(wire.plain(value)))
    assert back[0] == "ok" and isinstance(back, tuple)
    got = back[1]
    assert got["output"].dtype == np.float32 and np.array_equal(got["output"], value[1]["output"])
    assert np.array_equal(got["grads"]["x"], np.eye(2)) and got["grads"]["b"] is None
    assert got["where"] == {"x": "Affine.dW"} and got["flag"] is True and got["n"] == 3
    assert got["inf"] == float("inf") and np.isnan(got["nan"]) and got["list"] == [1.5, (2, "a")]
    assert got["bools"].dtype == bool


class Tensor:
    """Not an array: only its type's name crosses."""


class Lies:
    """Claims a dtype; its values are what __array__ gives."""
    dtype = np.dtype(np.float16)

    def __array__(self, dtype=None, copy=None):
        return np.array([1.0, 2.0])


class Sub(np.ndarray):
    pass


def test_what_is_not_data_is_made_plain_in_the_layer_s_process():
    assert type(wire.plain(Tensor())).__name__ == "Tensor" and isinstance(wire.plain(Tensor()), wire.Opaque)
    lies = wire.plain(Lies())
    assert type(lies) is np.ndarray and lies.dtype == np.float64  # the values' dtype, not the label
    sub = wire.plain(np.zeros(3).view(Sub))
    assert type(sub) is np.ndarray
    assert wire.plain(np.float32(2.5)).dtype == np.float32  # a NumPy scalar: a 0-d array of its dtype
    assert isinstance(wire.plain(np.array(["a"])), wire.Opaque)  # strings are not numbers
    assert isinstance(wire.plain(np.array([object()])), wire.Opaque)
    numbers = wire.plain(np.array([1, 2.5], dtype=object))  # numbers held as objects: read as float64
    assert numbers.dtype == np.float64
    ragged = wire.decode(wire.encode(wire.plain([np.zeros(2), np.zeros(3)])))
    assert [a.shape for a in ragged] == [(2,), (3,)]


def test_a_pickle_or_anything_else_is_malformed_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for bad in (pickle.dumps(Payload()), b"", b"x" * 16, wire.encode("ok")[:-1], wire.encode("ok") + b"!"):
        with pytest.raises(wire.Malformed):
            wire.decode(bad)
    assert not marker.exists()


def test_an_object_array_inside_a_frame_is_malformed():
    header = b'{"$a": 0}'
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([1, None], dtype=object), allow_pickle=True)
    blob = buf.getvalue()
    frame = len(header).to_bytes(8, "little") + (1).to_bytes(8, "little") + header + len(blob).to_bytes(8, "little") + blob
    with pytest.raises(wire.Malformed):
        wire.decode(frame)


def test_tags_that_are_not_the_codec_s_are_malformed():
    for header in (b'{"$x": 1}', b'{"$a": 5}', b'{"a": 1, "b": 2}', b'{"$f": "1e400"}', b"[" * 5000 + b"]" * 5000):
        frame = len(header).to_bytes(8, "little") + (0).to_bytes(8, "little") + header
        with pytest.raises(wire.Malformed):
            wire.decode(frame)


def _frame(header: bytes, *arrays: bytes) -> bytes:
    out = len(header).to_bytes(8, "little") + len(arrays).to_bytes(8, "little") + header
    for a in arrays:
        out += len(a).to_bytes(8, "little") + a
    return out


class _Marks:
    """Unpickling it creates a file: what a pickle inside a frame would do in the judge."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_inside_an_array_is_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([_Marks(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(wire.Malformed):
        wire.decode(_frame(b'{"$a": 0}', buf.getvalue()))
    assert not marker.exists()


def test_a_structured_array_is_malformed():
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(2, dtype=[("a", "f8"), ("b", "f8")]))
    with pytest.raises(wire.Malformed):
        wire.decode(_frame(b'{"$a": 0}', buf.getvalue()))


def test_every_non_finite_float_round_trips():
    back = wire.decode(wire.encode([float("-inf"), float("inf"), float("nan")]))
    assert back[0] == float("-inf") and back[1] == float("inf") and np.isnan(back[2])


def test_nesting_is_bounded_both_ways():
    deep = 1.0
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    flat = wire.plain(deep)
    inner = flat
    depth = 0
    while isinstance(inner, list):
        inner, depth = inner[0], depth + 1
    assert depth == wire.MAX_DEPTH and isinstance(inner, wire.Opaque)  # cut at MAX_DEPTH, named, not lost
    for tag in ("$t", "$d"):
        header = "1"
        for _ in range(wire.MAX_DEPTH + 3):
            header = f'{{"$t": [{header}]}}' if tag == "$t" else f'{{"$d": [["k", {header}]]}}'
        with pytest.raises(wire.Malformed):
            wire.decode(_frame(header.encode()))
    ok = "1"
    for _ in range(wire.MAX_DEPTH):
        ok = f'{{"$t": [{ok}]}}'
    assert wire.decode(_frame(ok.encode())) is not None  # as deep as plain makes it: read


@pytest.mark.parametrize("header", [
    b'{"$d": [[1, 2]]}', b'{"$d": [["a"]]}', b'{"$d": ["ab"]}', b'{"$d": "ab"}', b'{"$o": 3}', b'{"$f": 1}',
    b'{"$t": "ab"}', b'{"$a": "0"}', b'{"$a": -1}',
], ids=["key-not-text", "pair-short", "pair-not-list", "pairs-not-list", "type-not-text", "float-not-text",
        "tuple-not-list", "index-not-int", "index-negative"])
def test_a_tag_with_the_wrong_content_is_malformed(header):
    with pytest.raises(wire.Malformed):
        wire.decode(_frame(header))


def test_lengths_beyond_the_message_are_malformed():
    good = wire.encode(np.arange(3.0))
    for bad in (good[:-1], good[:20], (10 ** 6).to_bytes(8, "little") + good[8:], good[:8] + (5).to_bytes(8, "little") + good[16:]):
        with pytest.raises(wire.Malformed):
            wire.decode(bad)


def test_an_opaque_type_name_is_kept_up_to_200_characters():
    back = wire.decode(wire.encode(wire.opaque("T" * 300)))
    assert isinstance(back, wire.Opaque) and type(back).__name__ == "T" * 200


def test_fields_takes_a_record_of_exactly_its_keys_each_of_its_type():
    types = {"n": int, "name": str, "maybe": (str, type(None)), "any": object, "flag": bool}
    good = {"n": 3, "name": "x", "maybe": None, "any": [1], "flag": True}
    assert wire.fields(good, types) is good
    assert wire.fields({**good, "maybe": "y"}, types)["maybe"] == "y"
    assert wire.fields({"b": True}, {"b": (bool, type(None))}) == {"b": True}  # a bool where one of the types is bool
    for bad, said in [({**good, "n": True}, "its n is a bool"),  # a bool is no count
                      ({**good, "n": 3.0}, "its n is a float"),
                      ({**good, "maybe": 1}, "its maybe is a int"),
                      ({**good, "flag": 1}, "its flag is a int"),
                      ({k: v for k, v in good.items() if k != "any"}, "not a record of n, name, maybe, any, flag"),
                      ({**good, "extra": 1}, "not a record of"),
                      ([good], "not a record of")]:
        with pytest.raises(wire.Malformed, match=said):
            wire.fields(bad, types)
