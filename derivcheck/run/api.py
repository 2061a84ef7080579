"""The Python API for hand-written tests: :func:`assert_backward`.

It sits above the judging code (verify, network) and the isolation that runs them (isolate), so that
none of those imports another upward.
"""
from __future__ import annotations

from derivcheck.check.loading import model_convention, target_spec
from derivcheck.run.isolate import forks_here, importable, verify_isolated
from derivcheck.present.report import text
from derivcheck.check.targets import rule_for, variants_for
from derivcheck.check.verify import verify


def assert_backward(layer, rule=None, rule_dirs=(), **options):
    """For hand-written tests: verify ``layer`` (a class, a function or a target string), or a network.

    A model class at a module's top level (book 1 or 2, see :mod:`derivcheck.check.network`)
    with no ``rule`` is checked as a network, layer by layer.

    ``rule`` is a rule name or a loaded rule (default: guessed from the layer's
    name), looked up in ``rule_dirs`` and the catalog; ``options`` are
    :class:`Verifier`'s (hyper, style, dtype, seed, trials, steps, shape, strict) and
    ``timeout`` (seconds; the check runs in a worker process, see isolate.py).
    Raises AssertionError with the full report when the layer is wrong; returns
    the report otherwise.
    """
    if rule is None and importable(layer) and model_convention(target_spec(layer)):  # a whole network
        report = verify_isolated(target_spec(layer), None, timeout=options.pop("timeout", None),
                                 rule_dirs=[str(d) for d in rule_dirs], **options)
        if report.verdict != "pass":
            raise AssertionError("\n" + text(report))
        return report
    if rule is None or isinstance(rule, str):
        options.setdefault("variants", variants_for(rule, rule_for(rule, target_spec(layer), rule_dirs), rule_dirs))
        rule = rule_for(rule, target_spec(layer), rule_dirs)
    timeout = options.pop("timeout", None)
    if importable(layer):
        report = verify_isolated(target_spec(layer), rule, timeout=timeout, **options)
    elif forks_here():  # a class defined inside a function: run in a fork of this process, judged apart
        report = verify_isolated(layer, rule, timeout=timeout, **options)
    else:
        report = verify(layer, rule, **options)
        report.notes.append("not isolated: the layer is defined inside a function, so it ran and was judged in this "
                            "process (define it at a module's top level to run it apart, with a time limit)")
    if report.verdict != "pass":
        raise AssertionError("\n" + text(report))
    return report
