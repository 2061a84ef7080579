"""A verification's results: the report and its warnings, as every part of derivcheck reads them.

Kept light (NumPy and the Check record only): the process that prints or writes a
report never needs the engine to read one.
"""
from __future__ import annotations

import re

from dataclasses import asdict, dataclass, field

import numpy as np

from derivcheck.vocab import DTYPES

from derivcheck.checks import Check

NUMPY_DTYPES = {name: np.dtype(name).type for name in DTYPES}  # vocab.DTYPES as NumPy types


@dataclass
class Warning_:
    kind: str
    message: str
    trial: int | None = None


@dataclass
class Report:
    target: str
    rule: str
    style: str
    dtype: str
    seed: int
    trials: int
    steps: int
    hyper: dict
    checks: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    diagnosis: list = field(default_factory=list)
    reproduce: str = ""
    strict: bool = False
    notes: list = field(default_factory=list)  # information, never a failure (the kink convention)
    forward_only: str = ""  # why only the forward was checked (the layer has no backward), or ""
    layers: list = field(default_factory=list)  # a network's: [{"name", "kind", "rule"}] in forward order, loss last

    @property
    def verdict(self) -> str:
        if any(not c.passed for c in self.checks) or (self.strict and self.warnings):
            return "fail"
        return "pass"

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == "pass" else 1

    @classmethod
    def from_json(cls, data: dict) -> "Report":
        """The inverse of :meth:`to_json` (how a worker process hands its report back)."""
        fields = {k: data[k] for k in ("target", "rule", "style", "dtype", "seed", "trials", "steps", "hyper",
                                       "diagnosis", "notes", "reproduce")}
        rep = cls(**fields, strict=data.get("strict", False), forward_only=data.get("forward_only", ""),
                  layers=data.get("layers", []))
        rep.checks = [Check(**c) for c in data["checks"]]
        rep.warnings = [Warning_(**w) for w in data["warnings"]]
        by_check = {}
        for dg in rep.diagnosis:
            by_check.setdefault(dg["check"], []).append(dg)
        for c in rep.checks:
            if not c.passed and c.name in by_check:
                c.diagnosis = by_check[c.name]
        return rep

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "rule": self.rule,
            "style": self.style,
            "dtype": self.dtype,
            "seed": self.seed,
            "trials": self.trials,
            "steps": self.steps,
            "hyper": self.hyper,
            "verdict": self.verdict,
            "checks": [{k: v for k, v in asdict(c).items() if v is not None and k != "diagnosis"} for c in self.checks],
            "warnings": [asdict(w) for w in self.warnings],
            "diagnosis": self.diagnosis,
            "notes": self.notes,
            "reproduce": self.reproduce,
            "strict": self.strict,
            "forward_only": self.forward_only,
            **({"layers": self.layers} if self.layers else {}),
        }


def warn(rep: Report, kind: str, message: str, trial) -> None:
    """Add a warning to ``rep`` once (the same kind and message is said once)."""
    if not any(w.kind == kind and w.message == message for w in rep.warnings):
        rep.warnings.append(Warning_(kind, message, trial))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 and C1 controls but tab and newline; ESC among them


def escaped(s: str, chars: re.Pattern) -> str:
    """``s`` with each character ``chars`` matches written as \\xNN."""
    return chars.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def visible(s, indent: str = "") -> str:
    """``s`` as a terminal may show it: a control character (an escape sequence, a carriage return that would
    overwrite the line) written as \\xNN, and each line after the first indented by ``indent``, so that a
    layer's message cannot forge a line of the report ("verdict: PASS") or repaint the screen."""
    return escaped(str(s), _CONTROL).replace("\n", "\n" + indent)


def pair(expected: float, got: float) -> tuple[str, str]:
    """Expected and got with enough digits to tell them apart (-1.4013 vs -1.4013 will not do)."""
    for digits in (6, 9, 12, 17):
        e, g = f"{expected:.{digits}g}", f"{got:.{digits}g}"
        if e != g or expected == got:
            return e, g
    return e, g
