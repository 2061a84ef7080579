"""From a target's name to the rule it implements: ``Affine``, ``softmax_with_loss_forward``, CS231n's
``svm_loss_naive``, book 2's ``TimeLSTM``, and the convention's own form of a rule where it has one."""
from __future__ import annotations

import re
from pathlib import Path

from derivcheck.check.loading import top_level_defs
from derivcheck.engine.rules import Rule, aliases, load_rule, load_rule_file, rule_files
from derivcheck.errors import DerivcheckError
from derivcheck.check.conventions.registry import ADAPTERS, STYLES


def guess_rule(target: str, extra=(), how: str = "pass --rule NAME") -> str:
    """The rule a target implements, from its name: Affine, SoftmaxWithLoss, affine_forward, MatMul."""
    name = target.rpartition(":")[2]
    full = re.sub(r"(_forward|_backward)$", "", name)
    base = re.sub(r"_(simple|naive|alt|fast)$", "", full)  # DeZero's linear_simple, CS231n's svm_loss_naive
    base = re.sub(r"(_forward|_backward)$", "", base)  # CS231n's conv_forward_naive, max_pool_forward_fast
    base = re.sub(r"^(?i:simple)_", "", base)  # book 2's Simple_TimeAffine (a loop of Affine layers)
    base = re.sub(r"^(?:Layer|Activation|Loss)_", "", base)  # nnfs's Layer_Dense, Activation_ReLU, Loss_MeanSquaredError
    known = {n.replace("_", ""): n for n in rule_files(extra)}  # names only: a broken file elsewhere does not matter
    by_alias = None  # alias -> rule, read from the rule files only if a name is not a rule's own
    guess = None
    # the whole name first (CS231n's svm_loss_naive(W, X, y, reg) is an alias of linear_svm_loss, where
    # svm_loss(x, y) is another operation), then without the suffix; a rule's name, then its aliases
    # (another name for its operation: DeZero's Linear is affine)
    if full == name and _names_a_pair(target, name):  # CS231n's `rnn_layers.py:lstm`: the pair lstm_forward/_backward
        name = f"{name}_forward"
    if full != name:  # CS231n's rnn_forward and lstm_forward: before the guess, which would take the cell rnn for it
        sequence = sequence_of_steps(name, full, known, extra)
        if sequence is not None:
            return sequence
    for cand in dict.fromkeys([full, base]):
        key = cand.replace("_", "").lower()
        guess = known.get(key)
        if guess is None:
            if by_alias is None:
                by_alias = aliases(extra)
            guess = by_alias.get(key)
        if guess is not None:
            break
    if guess is None:
        recurrence(name, base, known, extra)
        stem = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", base).lower()
        raise DerivcheckError(
            f"cannot tell which rule {name} implements (a rule is matched by name, ignoring case and underscores; "
            f"known: {', '.join(sorted(known.values()))}): if one fits, {how}; for another operation, write one: "
            f"`derivcheck rules affine > myrules/{stem}.toml` prints a rule to start from, docs/rules.md says what goes in it, "
            f"and --rules myrules makes it known")
    return guess


def _names_a_pair(target: str, name: str) -> bool:
    """``target`` names a functional pair by its stem: its file defines NAME_forward and nothing called NAME."""
    defs = top_level_defs(target)
    return defs is not None and f"{name}_forward" in defs and name not in defs


def sequence_of_steps(name: str, full: str, known: dict, extra=()) -> str | None:
    """The rule of CS231n's rnn_forward and lstm_forward, the sequence whose rnn_step_forward is the cell (a
    NAME_forward whose NAME_step is a rule or an alias): NAME_sequence. Without one, refused with what is true."""
    step = f"{full}step".replace("_", "").lower()
    cell = known.get(step) or aliases(extra).get(step)
    if cell is None:
        return None
    sequence = known.get(f"{full}sequence".replace("_", "").lower())
    if sequence is None:
        raise DerivcheckError(
            f"{name} runs {full}_step over the T steps of its input, carrying the hidden state from h0: a recurrence, "
            f"and no rule {full}_sequence writes it. Check {full}_step_forward, the cell each step runs, with rule {cell}, "
            f"or write rule {full}_sequence with a loop over the steps (docs/rules.md)")
    return sequence


def recurrence(name: str, base: str, known: dict, extra=()) -> None:
    """Refuse a Time layer that runs a recurrent cell over the steps (as book 2's TimeRNN runs RNN) when
    no rule writes that loop, with what is true: a recurrence, and the rules to check or write."""
    m = re.fullmatch(r"time(bi)?(.+)", base.replace("_", "").lower())
    cell = known.get(m.group(2)) if m else None
    if cell is None:
        return
    rule = load_rule(cell, extra)
    state = [n for n in rule.inputs if "prev" in n]  # the state a cell takes: h_prev, c_prev
    if not state:
        return
    loop = f"time_{'bi_' if m.group(1) else ''}{cell}"
    raise DerivcheckError(
        f"{name} runs the {cell} cell over the T steps of its input{' in both directions' if m.group(1) else ''}, carrying "
        f"{', '.join(state)} from step to step: a recurrence, and no rule {loop} writes it. Check the cell class each of "
        f"its steps runs, with rule {cell}, or write rule {loop} with a loop over the steps (docs/rules.md)")


def rule_for(name: str | None, target: str, extra=(), how: str = "pass --rule NAME") -> Rule:
    """The rule called ``name`` or, without one, the rule ``target``'s name implies."""
    if name is not None and not name.strip():
        raise DerivcheckError("--rule (or the config's rule) must name a rule; `derivcheck rules` lists them")
    return load_rule(name if name is not None else guess_rule(target, extra, how), extra)


def variants_for(name: str | None, rule: Rule, extra=()) -> dict[str, str]:
    """For a rule guessed from a target's name (``name`` None), the same operation in a convention's
    own form: ``{style: path}`` for each rule file named ``RULE_STYLE`` (mean_squared_error_dezero:
    DeZero's sum / N, where book 1's is half the sum), or in the form of another convention
    that writes it alike (``Adapter.rule_forms``). The worker picks one by the detected style."""
    if name is not None:
        return {}
    files = rule_files(extra)
    forms = {s: f"{rule.name}_{ADAPTERS[s].rule_forms.get(rule.name, s)}" for s in STYLES}
    return {s: str(files[form]) for s, form in forms.items() if form in files}


def rule_in_convention(name: str, style: str, extra=(), how: str = "pass --rule NAME") -> Rule:
    """The rule guessed from ``name``, in ``style``'s own form where it has one (a network's layers:
    CS231n's dropout_forward is dropout_functional, DeZero's MeanSquaredError mean_squared_error_dezero)."""
    rule = rule_for(None, f"{name}:{name}", extra, how)
    variants = variants_for(None, rule, extra)
    return load_rule_file(Path(variants[style])) if style in variants else rule
