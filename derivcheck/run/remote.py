"""The layer in a process of its own, and the judge's handle on it.

isolate.py runs a check as two processes: the *layer's process*, which imports the user's code and runs
it (:func:`serve`), and the *judge*, which has never imported it and computes the exact reference, the
tolerance, the comparison and the report (:class:`derivcheck.check.verify.Verifier`, given
:class:`RemoteLayers`). The judge asks; the layer's process answers with data only (:mod:`derivcheck.wire`:
no pickle, arrays copied as each call returns). Whatever the layer's code does to NumPy, to derivcheck or
to its own process, the judge's values and code are its own.

What the judge believes from the answers is the data: the arrays, where the layer keeps each result
(text), which calls raised (text). A process that stops answering, dies, or sends anything but a frame
of the expected form is the layer's failure (:class:`LayerGone`), named with the stage it was in.

The questions (``op`` names) are :class:`derivcheck.check.verify.LocalLayers`'s: ``detect_style``,
``script_note``, ``make``, and on a made adapter ``step`` and ``repeat``; for a network, ``network`` (its
header) and ``network_trial`` (what one trial recorded: :mod:`derivcheck.check.netrecord`).
"""
from __future__ import annotations

import collections
import os
import queue
import signal
import sys
import threading
import traceback
from multiprocessing.reduction import ForkingPickler

import numpy as np

from derivcheck import wire
from derivcheck.errors import DerivcheckError
from derivcheck.check.conventions import base as conventions
from derivcheck.check.conventions.base import LayerError, Outcome

IMPORTING = "importing the target"  # the stage until the layer's process names another
CALLING = "derivcheck's calls of the layer"  # the stage of a question after the import, until the layer's process names one
KEEP = 4  # set by hand: adapters the layer's process keeps (a trial's, the probe's); older ones are dropped


class LayerGone(Exception):
    """The layer's process stopped answering as it should: ended (``ended``: how it ended says why), or sent
    what is not an answer (``why`` says what)."""

    def __init__(self, why: str, stage: str, ended: bool = False):
        super().__init__(why)
        self.why, self.stage, self.ended = why, stage, ended


class LayerExited(Exception):
    """The user's module called sys.exit() while it was imported."""

    def __init__(self, code, stage: str):
        super().__init__(code)
        self.code, self.stage = code, stage


# -- the layer's process ---------------------------------------------------------------------------

def serving_modules() -> tuple:
    """What :func:`serve` uses, imported: isolate.py calls it before forking the layer's processes, so that
    each has it in memory instead of importing it again (tens of milliseconds a check)."""
    from derivcheck.check.conventions.registry import detect_style, make_adapter
    from derivcheck.check.loading import load_target, script_note
    from derivcheck.check.netrecord import NetworkRecorder
    from derivcheck.engine.rules import parse_rule

    return detect_style, make_adapter, load_target, script_note, NetworkRecorder, parse_rule


def serve(conn, target: str, refused: str | None = None) -> None:
    """Answer the judge's questions about ``target`` on ``conn`` until it closes (``refused``: answer each
    with that error instead, exit 2, and import nothing).

    Questions come pickled from the judge (trusted); every answer goes back as a :mod:`wire` frame:
    ("stage", name) as the user's code starts a piece, then ("ok", value), ("layer", stage, message,
    wrong_rank) for a LayerError, ("error", message) for bad input (exit 2), ("exited", code),
    ("internal", traceback)."""
    detect_style, make_adapter, load_target, script_note, NetworkRecorder, parse_rule = serving_modules()

    # forked from the caller: not its handler. The user's Ctrl-C reaches the supervisor too, which stops
    # everything; so a KeyboardInterrupt answered from here is only ever read as the layer's own raise
    signal.signal(signal.SIGINT, signal.default_int_handler)
    now = [IMPORTING]

    def send(message) -> None:
        conn.send_bytes(wire.encode(message))

    def on_stage(name: str) -> None:
        if name != conventions.OWN_WORK:
            now[0] = name  # the user's code last called, which a KeyboardInterrupt it raised is from
        send(("stage", str(name)))

    conventions.on_stage = on_stage
    send(("stage", IMPORTING))  # up and shut in: the judge's wait for the first answer is the import's from now
    rules: dict = {}
    adapters: collections.OrderedDict = collections.OrderedDict()  # the judge's handle -> the adapter
    failed = set()  # handles whose making or a call failed: the questions queued after it on them are skipped
    network = []  # the model's recorder, once asked for

    def rule_of(path: str, source: str):
        if source not in rules:
            rules[source] = parse_rule(source, path)
        return rules[source]

    def answer(op: str, args: tuple):
        if refused is not None:
            raise DerivcheckError(refused)
        if op == "detect_style":
            return detect_style(*load_target(target))
        if op == "script_note":
            return script_note(load_target(target)[1])
        if op == "network":
            network[:] = [NetworkRecorder(target, **args[0])]
            return network[0].header()
        if op == "network_trial":
            return network[0].trial(args[0])
        if op == "make":
            handle, path, source, hyper, layer_hyper, style, seed = args
            np.random.seed(seed % 2**32)  # what the layer draws itself (its weights, dropout's masks) follows the seed
            adapter = make_adapter(target, rule_of(path, source), hyper, layer_hyper, style)
            adapters[handle] = adapter
            while len(adapters) > KEEP:
                adapters.popitem(last=False)
            return {"name": str(adapter.name), "style": adapter.style, "loose_note": adapter.loose_note,
                    "can_repeat": adapter.can_repeat}
        adapter = adapters[args[0]]
        if op == "step":
            outcome = adapter.step(*args[1:])
            on_stage(f"reading what {adapter.name} returned")
            fields = {k: getattr(outcome, k) for k in ("output", "grads", "rebound", "forward_only", "output_problem",
                                                       "where", "modified", "dout_modified", "flags_note", "no_output")}
            return wire.plain(fields)
        if op == "repeat":
            out, grads = adapter.repeat(*args[1:])
            on_stage(f"reading what {adapter.name} returned")
            return wire.plain((out, grads))
        raise ValueError(f"no question {op!r}")

    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return  # the judge is gone
        if op == "done":
            return
        now[0] = IMPORTING if op in ("detect_style", "script_note", "make", "network") else CALLING
        handle = args[0] if op in ("make", "step", "repeat") else None
        if handle in failed:  # the judge sent it before it read that the layer failed: it reads this as nothing
            send(("skipped",))
            continue
        try:
            reply = ("ok", answer(op, args))
        except LayerError as exc:
            reply = ("layer", str(exc.stage), str(exc), bool(exc.wrong_rank))
        except DerivcheckError as exc:
            reply = ("error", str(exc))
        except SystemExit as exc:  # raised by the module's import (a layer's call would be a LayerError)
            reply = ("exited", repr(exc.code))
        except KeyboardInterrupt:  # the layer raised it (a Ctrl-C stops the supervisor, which reads no answer)
            reply = ("layer", now[0], f"{now[0]} raised KeyboardInterrupt", False)
        except BaseException as exc:  # noqa: BLE001 - everything else is reported, never lost
            reply = ("internal", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        if reply[0] != "ok" and handle is not None:
            failed.add(handle)
        try:
            send(reply)
        except (TypeError, ValueError) as exc:  # a reply that is not plain data: derivcheck's bug
            send(("internal", f"an answer that is not plain data: {exc}"))
        sys.stdout.flush()
        sys.stderr.flush()


# -- the judge's side ------------------------------------------------------------------------------

class RemoteLayers:
    """:class:`derivcheck.check.verify.LocalLayers`, answered by the layer's process on ``conn``.

    Questions may be sent before the answers to earlier ones are read (:meth:`send`: a trial's steps go at
    once, see :meth:`trial`); the layer's process answers them in order, and each answer is read into its
    question's :class:`Pending`. Once making an adapter or a call of it has failed, the questions already
    queued on that adapter are answered "skipped" and never reach the layer's code.
    The questions are written by a thread of their own, in the order sent: a step's arrays fill the pipe,
    and the layer's process writes its answer to the step before while the judge still writes the next; if
    the judge's one thread did both, each would wait for the other to read (a deadlock at the MNIST sizes).

    ``on_stage(kind, text)`` is told what the judge waits for: kind "start" (the layer's process, not yet
    up: derivcheck's own start), "import" (the target's import, in the first question), "layer" (the
    user's code; ``text`` is the stage the layer's process names, shown in messages only) or "own" (the
    judge's own work). The kind is the judge's to say, never the layer's.
    ``on_style(name)`` is told the layer's convention once the layer's process has named a known one (for
    a report the supervisor writes itself, when the check cannot finish)."""

    def __init__(self, conn, on_stage=lambda kind, text: None, on_style=lambda style: None):
        self.conn, self.on_stage, self.on_style = conn, on_stage, on_style
        self.up = self.imported = False  # the layer's process has said a word; has answered a question
        self.stage = IMPORTING
        self.waiting: collections.deque = collections.deque()  # sent, not yet answered, oldest first
        self.handles = 0  # the adapters named so far
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()  # questions pickled, not yet written; None: stop
        self.writer: threading.Thread | None = None
        self.broken: list = []  # why writing a question failed: the layer's process is gone

    def send(self, op: str, *args) -> "Pending":
        """Ask ``op``; its answer is read when :meth:`Pending.result` (or a later question's) needs it."""
        if self.broken:
            raise LayerGone(f"its process no longer takes questions ({self.broken[0]})", self.stage, ended=True)
        self._post((op, args))
        pending = Pending(self)
        self.waiting.append(pending)
        return pending

    def ask(self, op: str, *args):
        return self.send(op, *args).result()

    def read_next(self) -> None:
        """Read the answer to the oldest question still waiting for one."""
        kind = "layer" if self.imported else "import" if self.up else "start"
        self.stage = CALLING if self.imported else IMPORTING  # until the layer's process names its stage
        self.on_stage(kind, self.stage)
        while True:
            try:
                data = self.conn.recv_bytes(wire.MAX_BYTES)
            except (EOFError, OSError):
                raise LayerGone("its process ended", self.stage, ended=True) from None
            try:
                message = wire.decode(data)
            except wire.Malformed as exc:
                raise LayerGone(f"its process sent a message that is not derivcheck's ({exc}): the layer's code "
                                f"wrote to derivcheck's pipe", self.stage) from None
            tag = message[0] if isinstance(message, tuple) and message and isinstance(message[0], str) else None
            if tag == "stage" and len(message) == 2 and isinstance(message[1], str):
                self.stage = message[1][:500]
                if kind == "start":  # its first word: it is up, and imports the target for the first question
                    self.up, kind = True, "import"
                self.on_stage(kind, self.stage)
                continue
            self.imported = True
            break
        self.on_stage("own", conventions.OWN_WORK)
        self.waiting.popleft().answer = self._outcome(tag, message)

    def _outcome(self, tag, message) -> tuple:
        """("ok", value) or ("raise", the exception the answer stands for)."""
        if tag == "ok" and len(message) == 2:
            return ("ok", message[1])
        if tag == "skipped" and len(message) == 1:
            return ("raise", LayerGone("its process skipped a question derivcheck needed answered", self.stage))
        if tag == "layer" and len(message) == 4 and all(isinstance(m, str) for m in message[1:3]):
            return ("raise", LayerError.told(message[1], message[2], message[3] is True))
        if tag == "error" and len(message) == 2 and isinstance(message[1], str):
            return ("raise", DerivcheckError(message[1]))
        if tag == "exited" and len(message) == 2:
            try:
                return ("raise", LayerExited(_text(message[1], self.stage), self.stage))
            except LayerGone as exc:
                return ("raise", exc)
        if tag == "internal" and len(message) == 2 and isinstance(message[1], str):
            return ("raise", InternalInLayer(message[1]))
        return ("raise", LayerGone(f"its process sent an answer derivcheck did not ask for ({str(message)[:200]})",
                                   self.stage))

    def _post(self, message) -> None:
        """Pickle ``message`` here and write it after the messages posted before it, from the writer thread
        (started at the first); None stops the writer."""
        if self.writer is None:
            self.writer = threading.Thread(target=self._write, name="derivcheck-questions", daemon=True)
            self.writer.start()
        self.outbox.put(None if message is None else ForkingPickler.dumps(message))

    def _write(self) -> None:
        while (data := self.outbox.get()) is not None:
            try:
                self.conn.send_bytes(data)
            except (OSError, ValueError) as exc:  # its process ended: the reader sees that, and says so
                self.broken.append(exc)
                return

    def done(self) -> None:
        """The judge has asked its last question: the layer's process ends once it has read it. Waits for the
        writer a second at most (a layer that stopped reading is the supervisor's to stop)."""
        if not self.broken:
            self._post(("done", ()))
            self._post(None)
            self.writer.join(timeout=1.0)  # set by hand

    def detect_style(self) -> str:
        return _text(self.ask("detect_style"), self.stage)

    def script_note(self) -> str:
        return _text(self.ask("script_note"), self.stage)

    def network(self, options: dict) -> "RemoteRecorder":
        """The network's recorder in the layer's process (netrecord.NetworkRecorder), built from ``options``."""
        return RemoteRecorder(self, options)

    def trial(self, rule, hyper: dict, layer_hyper: dict, style, seed: int, steps=()) -> tuple:
        """The layer's adapter, made with NumPy's global generator seeded from ``seed``, and an iterator of its
        outcomes at ``steps`` ((first, values, cotangent, unchanged) each, as base.Adapter.step takes them).

        All of it is sent at once, before any answer is read: one wait for the layer's process instead of one
        per call (on a loaded machine each costs milliseconds). The outcomes are read in order; a step that
        raised ends the iterator with its LayerError, and the steps after it are never run."""
        from derivcheck.check.conventions.registry import STYLES

        self.handles += 1
        handle = self.handles
        made = self.send("make", handle, str(rule.path), rule.source, hyper, layer_hyper, style, seed)
        calls = [self.send("step", handle, first, _sendable(values), np.asarray(cot), list(unchanged))
                 for first, values, cot, unchanged in steps]
        info = _fields(made.result(), {"name": str, "style": str, "loose_note": str, "can_repeat": bool}, self.stage)
        if info["style"] not in STYLES:
            raise LayerGone(f"its process named a convention derivcheck does not know ({info['style'][:100]!r})", self.stage)
        self.on_style(info["style"])
        adapter = RemoteAdapter(self, rule, handle, info)
        return adapter, (adapter.outcome(call.result()) for call in calls)

    def make(self, rule, hyper: dict, layer_hyper: dict, style, seed: int = 0):
        return self.trial(rule, hyper, layer_hyper, style, seed)[0]


class Pending:
    """A question sent to the layer's process, and its answer once read."""

    def __init__(self, layers: RemoteLayers):
        self.layers, self.answer = layers, None

    def result(self):
        """The answer's value, or raise what it stands for; reads the answers before it first."""
        while self.answer is None:
            self.layers.read_next()
        kind, value = self.answer
        if kind == "raise":
            raise value
        return value


class RemoteRecorder:
    """What the network judge uses of a netrecord.NetworkRecorder (``header``, ``trial``), asked of the layer's
    process; a trial's record is checked for its form by the judge (netrecord.check_trial)."""

    def __init__(self, layers: RemoteLayers, options: dict):
        self.layers, self.options = layers, options

    def header(self) -> dict:
        from derivcheck.check.netrecord import STYLES

        header = _fields(self.layers.ask("network", self.options), {"name": str, "style": str, "shape": dict},
                         self.layers.stage)
        if header["style"] in STYLES:  # else the judge says it cannot read the record (network.NetworkJudge)
            self.layers.on_style(header["style"])
        return header

    def trial(self, k: int):
        return self.layers.ask("network_trial", k)


class InternalInLayer(Exception):
    """derivcheck's own code failed in the layer's process (with its traceback): exit 3, as a bug of ours."""


class RemoteAdapter:
    """What the judge uses of a base.Adapter (name, style, loose_note, can_repeat, repeat; its steps are asked
    in RemoteLayers.trial), asked of the layer's process; every answer is checked for its form before it is
    believed."""

    def __init__(self, layers: RemoteLayers, rule, handle: int, info: dict):
        self.layers, self.rule, self.handle = layers, rule, handle
        self.name, self.style = info["name"], info["style"]
        self.loose_note, self.can_repeat = info["loose_note"], info["can_repeat"]

    def outcome(self, answer) -> Outcome:
        """A step's answer as an Outcome, once its form is checked."""
        fields = _fields(answer, {"output": object, "grads": dict, "rebound": list, "forward_only": str,
                                  "output_problem": str, "where": dict, "modified": list, "dout_modified": bool,
                                  "flags_note": str, "no_output": str}, self.layers.stage)
        stage = self.layers.stage
        fields["grads"] = {n: fields["grads"].get(n) for n in self.rule.inputs if n in fields["grads"]}
        fields["where"] = {n: _text(w, stage) for n, w in fields["where"].items() if n in self.rule.inputs}
        fields["rebound"] = [_text(m, stage) for m in fields["rebound"]]
        fields["modified"] = [_text(m, stage) for m in fields["modified"] if m in self.rule.inputs or m in self.rule.labels]
        return Outcome(**fields)

    def repeat(self, values_list: list, cotangent) -> tuple:
        answer = self.layers.ask("repeat", self.handle, [_sendable(v) for v in values_list], np.asarray(cotangent))
        if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], dict)):
            raise LayerGone("its process answered repeat with something else", self.layers.stage)
        return answer[0], {n: answer[1][n] for n in self.rule.inputs if n in answer[1]}


def _sendable(values: dict) -> dict:
    return {n: np.asarray(v) for n, v in values.items()}


def _text(value, stage: str) -> str:
    if not isinstance(value, str):
        raise LayerGone(f"its process answered with a {type(value).__name__} where derivcheck expects text", stage)
    return value


def _fields(value, types: dict, stage: str) -> dict:
    """``value`` as a dict of exactly the fields ``types`` names, each of its type (wire.fields)."""
    try:
        return wire.fields(value, types)
    except wire.Malformed as exc:
        raise LayerGone(f"its process answered with something else than derivcheck asked for ({exc})", stage) from None


def redirect_output(path: str) -> None:
    """This process's standard output and error into ``path`` (the layer's prints, quoted when it dies)."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
