"""Errors that derivcheck reports to users as one sentence (exit code 2)."""
from __future__ import annotations


class DerivcheckError(Exception):
    """Bad input from the user: a rule, a shape, a target, a configuration."""


class RuleError(DerivcheckError):
    """A malformed rule, located by file and line."""

    def __init__(self, path, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


class Unsupported(Exception):
    """The operation has no shape-generic form here; the concrete tier must be used."""
