"""The CI gate: verify every binding of a configuration; shared by `check` and the pytest plugin."""
from __future__ import annotations

import re

import os
from dataclasses import dataclass

from derivcheck.run.config import Binding, Config
from derivcheck.errors import DerivcheckError
from derivcheck.results import escaped


@dataclass
class Result:
    binding: Binding
    report: object | None  # results.Report, or None when it could not run
    error: str | None = None

    @property
    def verdict(self) -> str:
        return "error" if self.report is None else self.report.verdict

    @property
    def ok(self) -> bool:
        """As the configuration expects: a pass, or a failure of a layer marked expect = "fail" where it says."""
        if self.report is None:
            return False
        return self.report.verdict == self.binding.expect and self.mismatch is None

    @property
    def mismatch(self) -> str | None:
        """How an expected failure differs from its caught-by and diagnosis (None when it does not)."""
        b, rep = self.binding, self.report
        if rep is None or b.expect != "fail" or rep.verdict != "fail":
            return None
        failing = sorted(c.name for c in rep.checks if not c.passed)
        if b.caught_by is not None:
            want_checks = sorted(c for c in b.caught_by if not c.startswith("warning:"))
            want_warnings = {c.split(":", 1)[1] for c in b.caught_by if c.startswith("warning:")}
            warned = {w.kind for w in rep.warnings}
            if failing != want_checks or not want_warnings <= warned:
                got = ", ".join(failing + [f"warning:{k}" for k in sorted(warned)]) or "nothing"
                return f"caught by {got}, where the catalogue says {', '.join(b.caught_by)}"
        named = {d["kind"] for d in rep.diagnosis}
        if not set(b.diagnosis) <= named:
            return f"diagnosed as {', '.join(sorted(named)) or 'nothing'}, where the catalogue says {', '.join(b.diagnosis)}"
        return None

    @property
    def worst(self) -> float | None:
        """The largest error / tolerance over the checks (≤ 1 passes)."""
        if self.report is None:
            return None
        ratios = [c.abs_err / c.tol for c in self.report.checks if c.abs_err is not None and c.tol]
        return max(ratios, default=0.0)


def use_config(config: Config) -> None:
    if config.cache_dir and "DERIVCHECK_CACHE_DIR" not in os.environ:
        os.environ["DERIVCHECK_CACHE_DIR"] = str(config.cache_dir)


_HOW = 'add rule = "NAME" to its [[layer]] entry'  # how a configuration names a rule


def verify_arguments(binding: Binding, rule_dirs=(), seed: int | None = None) -> tuple:
    """``(target, rule, options)``: what the binding's check calls verify with (``rule`` None: a whole network).

    Raises DerivcheckError when no rule can be found for it.
    """
    from derivcheck.check.loading import model_convention
    from derivcheck.check.targets import rule_for, variants_for

    common = {"dtype": binding.dtype, "seed": binding.seed if seed is None else seed, "trials": binding.trials,
              "steps": binding.steps, "strict": binding.strict}
    if binding.rule is None and model_convention(binding.target):  # a whole network
        return binding.target, None, common | {"rule_dirs": [str(d) for d in rule_dirs]}
    rule = rule_for(binding.rule, binding.target, rule_dirs, _HOW)
    return binding.target, rule, common | {"hyper": binding.hyper, "style": binding.style,
                                           "variants": variants_for(binding.rule, rule, rule_dirs)}


def run_binding(binding: Binding, rule_dirs=(), seed: int | None = None, timeout: float | None = None, zygote=None) -> Result:
    """One binding's check, in a worker process of its own (isolate.py); never raises for the layer's sake.

    ``zygote``: an :class:`isolate.Zygote` of the target's module, to fork the worker from."""
    from derivcheck.run.isolate import verify_isolated

    try:
        target, rule, options = verify_arguments(binding, rule_dirs, seed)
        return Result(binding, verify_isolated(target, rule, timeout=timeout or binding.timeout, zygote=zygote, **options))
    except DerivcheckError as exc:
        return Result(binding, None, f"{binding.where}: layer {binding.target.rpartition(':')[2]}: {exc}")


def run_all(bindings: list[Binding], rule_dirs=(), seed: int | None = None, timeout: float | None = None,
            jobs: int = 1, done=None) -> list[Result]:
    """Every binding, ``jobs`` worker processes at a time; results in the bindings' order.

    The checks of a module that holds several of them fork their workers from one process that
    imported it (isolate.Zygote). ``done(result, finished, total)`` is called as each one finishes
    (for progress).
    """
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from derivcheck.run.isolate import Zygote

    if jobs < 1:
        raise DerivcheckError(f"-j/--jobs must be at least 1, not {jobs}")
    results: list[Result | None] = [None] * len(bindings)
    modules = Counter(map(_module_of, bindings))
    zygotes = {where: Zygote(where, _warm([b for b in bindings if _module_of(b) == where], rule_dirs))
               for where, n in modules.items() if n > 1}
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # each thread only waits on its worker process
            futures = {pool.submit(run_binding, b, rule_dirs, seed, timeout, zygotes.get(_module_of(b))): i
                       for i, b in enumerate(bindings)}
            try:
                for finished, future in enumerate(as_completed(futures), 1):
                    i = futures[future]
                    results[i] = future.result()
                    where = _module_of(bindings[i])
                    modules[where] -= 1
                    if not modules[where] and where in zygotes:  # its module's last check is done
                        zygotes[where].close()
                    if done is not None:
                        done(results[i], finished, len(bindings))
            except KeyboardInterrupt:
                from derivcheck.run.isolate import kill_all

                for f in futures:
                    f.cancel()
                kill_all()
                raise
    finally:
        for z in zygotes.values():
            z.close()
    return results


def _warm(bindings, rule_dirs) -> dict:
    """What a module's zygote loads before forking these checks (isolate.warm_up): each rule's derivation
    (rule file, hyperparameters), once; the rule catalogue if a network is checked (its layers' rules are
    looked up by name). A binding without a rule is left to report that in its own check."""
    derivations, catalogue = [], None
    for b in bindings:
        try:
            _, rule, options = verify_arguments(b, rule_dirs)
        except DerivcheckError:
            continue
        if rule is None:
            catalogue = options["rule_dirs"]
        elif (str(rule.path), options["hyper"]) not in derivations:
            derivations.append((str(rule.path), options["hyper"]))
    return {"derivations": derivations, "catalogue": catalogue}


def _module_of(binding: Binding) -> str:
    """The module part of a binding's target (``path/to/layers.py`` or ``package.module``)."""
    return binding.target.rpartition(":")[0]


def validate(bindings: list[Binding], rule_dirs=()) -> None:
    """Bad configuration is found before anything runs: missing target files, unknown rules, bad hyperparameters.

    No layer is imported here: that happens in the layer's own worker process.
    """
    from derivcheck.check.loading import check_target, model_convention
    from derivcheck.check.targets import rule_for

    for b in bindings:
        try:
            check_target(b.target)
            if b.rule is None and model_convention(b.target):
                if b.hyper or b.style:
                    raise DerivcheckError("is a network: hyper and style are for one layer")
                continue
            rule = rule_for(b.rule, b.target, rule_dirs, _HOW)
            rule.resolve_hyper(b.hyper)
        except DerivcheckError as exc:
            raise DerivcheckError(f"{b.where}: layer {b.target.rpartition(':')[2]}: {exc}") from None


def junit_xml(results: list[Result], name: str) -> str:
    """JUnit XML as CI servers read it; expected failures are reported as skipped, as pytest does for xfail."""
    import xml.etree.ElementTree as ET

    from derivcheck.present.report import text

    suite = ET.Element("testsuite", name="derivcheck", tests=str(len(results)),
                       failures=str(sum(1 for r in results if r.report is not None and not r.ok)),
                       errors=str(sum(1 for r in results if r.report is None)),
                       skipped=str(sum(1 for r in results if r.ok and r.binding.expect == "fail")))
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=name, name=r.binding.id)
        if r.report is None:
            ET.SubElement(case, "error", message=r.error or "could not run").text = r.error
        elif not r.ok:
            what = (r.mismatch or "expected to fail but passed") if r.binding.expect == "fail" else first_failure(r.report)
            ET.SubElement(case, "failure", message=what).text = text(r.report)
        elif r.binding.expect == "fail":
            ET.SubElement(case, "skipped", message=f"expected failure: {first_failure(r.report)}")
    for el in suite.iter():  # a layer's message may hold control characters, which XML 1.0 cannot carry
        el.text = _xml_safe(el.text)
        for k, v in el.attrib.items():
            el.set(k, _xml_safe(v))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


_XML_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # C0 controls but tab, newline, return


def _xml_safe(s):
    """``s`` with the characters XML 1.0 cannot hold as \\xNN."""
    return None if s is None else escaped(s, _XML_UNSAFE)


def first_failure(report) -> str:
    for c in report.checks:
        if not c.passed:
            return f"{c.name}: {c.message}" if c.message else f"{c.name}: worst abs err {c.abs_err:.3g} (tol {c.tol:.3g})"
    return "warnings under --strict: " + "; ".join(w.kind for w in report.warnings) if report.warnings else "passed"


def select(config: Config, groups=()) -> list[Binding]:
    if not groups:
        return list(config.bindings)
    known = {b.group for b in config.bindings}
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise DerivcheckError(f"no group named {', '.join(unknown)} in {config.path} (groups: {', '.join(sorted(known))})")
    return [b for b in config.bindings if b.group in groups]
