"""derivcheck: exact, symbolic verification of NumPy layers' backward passes.

>>> import derivcheck
>>> d = derivcheck.load_rule("affine").at(N=2, D=3, H=4)
>>> d.jacobian("W").shape
(2, 4, 3, 4)
"""
from .errors import DerivcheckError, RuleError
from .rules import list_rules, load_rule

__all__ = ["DerivcheckError", "RuleError", "list_rules", "load_rule"]
