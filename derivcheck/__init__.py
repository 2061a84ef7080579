"""derivcheck: exact, symbolic verification of NumPy layers' backward passes.

>>> import derivcheck
>>> d = derivcheck.load_rule("affine").at(N=2, D=3, H=4)
>>> d.jacobian("W").shape
(2, 4, 3, 4)

Importing the package is cheap (the pytest plugin loads it at start-up):
SymPy and NumPy are imported when a name below is first used.
"""
from derivcheck.errors import DerivcheckError, RuleError

DISTRIBUTION = "derivcheck-exact"  # the name to pip install; "derivcheck" on the package index is another project

__all__ = ["DerivcheckError", "RuleError", "assert_backward", "explain", "list_rules", "load_rule"]

_LAZY = {
    "load_rule": "engine.rules",
    "list_rules": "engine.rules",
    "assert_backward": "run.api",
    "explain": "present.explanation",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'derivcheck' has no attribute '{name}'")
