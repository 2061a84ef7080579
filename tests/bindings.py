"""The bundled examples: which layer is checked against which rule (shared by tests)."""
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

def _reference():
    """(target under examples/, rule, hyperparameters) of each reference layer examples/derivcheck.toml lists;
    a binding without a rule gets the rule guessed from the layer's name and style, as `derivcheck check` does."""
    from derivcheck.check.conventions.registry import detect_style
    from derivcheck.check.loading import load_target
    from derivcheck.run.config import load_config
    from derivcheck.check.targets import rule_for, variants_for

    def guessed(target):  # the rule guessed from the name, in the layer's convention's form if it has one
        rule = rule_for(None, target)
        variants = variants_for(None, rule)
        style = detect_style(*load_target(target)) if variants else None
        return Path(variants[style]).stem if style in variants else rule.name

    out = []  # (target, rule, hyperparameters, dtype): a binding is listed once per dtype
    for b in load_config(EXAMPLES / "derivcheck.toml").bindings:
        if b.expect == "fail" or "/networks/" in b.target:
            continue
        entry = (str(Path(b.target).relative_to(EXAMPLES)), b.rule or guessed(b.target), dict(b.hyper), b.dtype)
        if entry not in out:
            out.append(entry)
    return out


REFERENCE = _reference()  # (target, rule, hyperparameters, dtype), in the dtypes the catalogue checks each in


def _broken():
    """The broken examples as examples/derivcheck.toml catalogues them (the one source of truth)."""
    from derivcheck.run.config import load_config

    layers, networks, bound = [], [], []
    for b in load_config(EXAMPLES / "derivcheck.toml").bindings:
        if b.expect != "fail":
            continue
        if "/networks/" in b.target:
            networks.append((str(Path(b.target).relative_to(EXAMPLES)), b.caught_by, b.diagnosis))
        else:
            layers.append((b.target.rpartition(":")[2], b.rule, dict(b.hyper), b.dtype,
                           ",".join(b.caught_by), b.diagnosis, b.strict))
            bound.append(b)
    return layers, networks, bound


# (target in broken/layers.py, rule, hyperparameters, dtype, the checks that must fail (comma-separated) or
#  the warning kind, the diagnosis kind that must name the bug, whether it is checked with --strict)
BROKEN, BROKEN_NETWORKS, BROKEN_BINDINGS = _broken()  # networks: (target under examples/, the checks that fail, the diagnosis kind)
# BROKEN_BINDINGS: the catalogue's own Binding of each broken layer (each entry of BROKEN is read from one)
