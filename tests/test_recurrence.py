"""Recurrences: a formula's loop over the steps of a sequence (book 2's Time layers, CS231n's rnn_forward).

The loop's forward is the loop run step by step, its refusals name the rule file's line, and the
unrolled tier's running error bounds are the same numbers whether compiled from ``magnitude`` or
walked at the values. (The stepped reference that serves recurrences: test_stepped.py.)
"""
import textwrap

import numpy as np
import pytest

from derivcheck.engine import reference
from derivcheck import RuleError
from derivcheck.engine.derive import _NUMPY, _lambdify
from derivcheck.engine.rounding import bounds_at, magnitude
from derivcheck.engine.rules import load_rule, load_rule_file
from derivcheck.check.targets import guess_rule

HEAD = 'name = "r"\nsummary = "a test rule"\n'


def rule_from(tmp_path, formula, inputs, extra="", name="r"):
    body = HEAD.replace('"r"', f'"{name}"') + f'formula = """\n{textwrap.dedent(formula).strip()}\n"""\n' + extra
    for n, shape in inputs.items():
        body += f"[inputs.{n}]\nshape = {shape}\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(body)
    return load_rule_file(path)


def _numpy_rnn(xs, Wx, Wh, b, h):
    hs = []
    for t in range(xs.shape[1]):
        h = np.tanh(h @ Wh + xs[:, t, :] @ Wx + b)
        hs.append(h)
    return np.stack(hs, axis=1)


def test_a_loop_runs_its_body_once_per_step_and_stacks_along_the_steps_axis():
    rule = load_rule("time_rnn")
    dims = {"N": 2, "T": 4, "D": 3, "H": 5}
    rng = np.random.default_rng(0)
    v = {n: rng.normal(size=rule.shape_of(i.shape, dims)) for n, i in rule.inputs.items()}
    out = rule.formula.evaluate(rule.environment(dims, {}, v), backend="numeric")
    np.testing.assert_allclose(out, _numpy_rnn(v["xs"], v["Wx"], v["Wh"], v["b"], np.zeros((2, 5))), rtol=1e-13)
    # the reference at those sizes (the loop unrolled symbolically) agrees
    np.testing.assert_allclose(reference.at(rule, {}, dims).forward(**v), out, rtol=1e-13)


def test_a_reversed_loop_runs_its_steps_from_the_last(tmp_path):
    rule = rule_from(tmp_path, """
        s = zeros([N])
        for t in reversed(range(T)):
            s = s + x[:, t]
            out[:, t] = s
        out
        """, {"x": '["N", "T"]'})
    x = np.random.default_rng(1).normal(size=(3, 4))
    got = rule.formula.evaluate({"N": 3, "T": 4, "x": x}, backend="numeric")
    np.testing.assert_allclose(got, np.cumsum(x[:, ::-1], axis=1)[:, ::-1])


def test_the_state_after_the_loop_is_its_last_value(tmp_path):
    rule = rule_from(tmp_path, """
        h = h0
        for t in range(T):
            h = h * x[:, t]
        h
        """, {"x": '["N", "T"]', "h0": '["N"]'})
    x, h0 = np.arange(1.0, 7.0).reshape(2, 3), np.array([2.0, 3.0])
    np.testing.assert_allclose(rule.formula.evaluate({"N": 2, "T": 3, "x": x, "h0": h0}, backend="numeric"), h0 * x.prod(axis=1))


LOOP = "h = h0\nfor t in range(T):\n    h = tanh(h + x[:, t])\n    hs[:, t] = h\nhs\n"
INPUTS = {"x": '["N", "T"]', "h0": '["N"]'}
REFUSED = [
    # (formula, formula line, text in the message)
    ("h = h0\nfor t in T:\n    h = h + x[:, t]\nh", 2, "a loop is 'for t in range(T):'"),
    ("h = h0\nfor t in range(T, 2):\n    h = h + x[:, t]\nh", 2, "a loop is 'for t in range(T):'"),
    ("h = h0\nfor h0 in range(T):\n    h = h + x[:, h0]\nh", 2, "the step 'h0' is already a name of the formula"),
    ("h = h0\nfor t in range(T):\n    for u in range(T):\n        h = h + x[:, u]\nh", 3, "loops cannot nest"),
    ("h = h0\nfor t in range(T):\n    h = h * t\nh", 3, "the step 't' can only index an array"),
    ("h = h0\nfor t in range(T):\n    h = h + x[:, t]\n    x[:, t] = h\nh", 4, "'x' is already a name"),
    ("h = h0\nfor t in range(T):\n    h = h + x[:, t]\n    hs[:, t] = h\n    hs[:, t] = h\nhs", 5, "'hs' is already a name"),
    ("h = h0\nfor t in range(T):\n    h = h + x[:, t]\n    hs[0:1, t] = h\nhs", 4, "one step of a stacked name with 't' and ':' only"),
    ("h = h0\nfor t in range(T):\n    h = h + x[:, t]\n    hs[t, t] = h\nhs", 4, "one step of a stacked name"),
    ("h = h0\nfor t in range(T):\n    h = h + hs[:, t]\n    hs[:, t] = h\nhs", 3, "undefined name 'hs'"),
    ("h = h0\nfor t in range(T):\n    h = h + x[:, t]\n    hs[:, t] = h\n    hs = h\nhs", 5, "'hs' is stacked over the steps here"),
    ("h = h0\nfor t in range(T):\n    h = h + x[:, t]", 2, "the formula's last line must be the output expression"),
    ("h = h0\nfor t in range(N):\n    h = h + x[:, t]\nh", 3, "axis 1 has 3 elements, the loop runs 2 steps"),
]


@pytest.mark.parametrize("formula,line,text", REFUSED)
def test_a_malformed_loop_is_refused_at_its_line(tmp_path, formula, line, text):
    with pytest.raises(RuleError) as info:
        rule_from(tmp_path, formula, INPUTS, extra="[dims.N]\nmin = 2\nmax = 2\n[dims.T]\nmin = 3\nmax = 3\n")
    assert text in info.value.message, info.value.message
    assert info.value.line == 3 + line, (info.value.line, info.value.message)  # the formula starts on the file's line 4


def test_a_good_loop_loads(tmp_path):
    rule = rule_from(tmp_path, LOOP, INPUTS)
    assert rule.output_shape(rule.example_dims(), {}) == (2, 3)


SMALL_LOOP = [{"N": 2, "T": 2, "D": 1, "H": 2}]  # compiling magnitude() for a longer unrolled loop takes minutes


@pytest.mark.parametrize("name", ["time_rnn", "time_gru", "rnn_sequence", "relu", "max_pool", "softmax_with_loss",
                                  "layernorm", "clip", "leaky_relu", "pow", "log_softmax"])
def test_error_bounds_walked_at_the_values_equal_the_compiled_ones(name):
    """The concrete tier's bounds (rounding.bounds_at) are magnitude()'s expressions, only evaluated
    without building them: the same numbers, node kind by node kind (log, exp, powers, max, where)."""
    rule = load_rule(name)
    hyper = rule.resolve_hyper()
    for k, dims in enumerate(SMALL_LOOP if rule.formula.loop else [rule.planned_dims(0, 0), rule.planned_dims(2, 0)]):
        d = rule.at(hyper=hyper, **dims)
        shapes = {n: rule.shape_of(i.shape, dims) for n, i in rule.inputs.items()}
        labels = {n: rule.shape_of(lab.shape, dims) for n, lab in rule.labels.items()}
        _, ref = reference.draw(rule, shapes, labels, dims, np.random.default_rng(k))
        args = d._args(ref)
        memo: dict = {}
        compiled = _lambdify(d._lambda_args(), [magnitude(e, memo) for e in (*d._out, *d._entries)], _NUMPY)
        with np.errstate(all="ignore"):
            want = np.asarray(compiled(*args), dtype=np.float64)
        values = {s: v for syms, vals in zip(d._lambda_args(), args) for s, v in zip(syms, np.ravel(vals))}
        np.testing.assert_allclose(bounds_at([*d._out, *d._entries], values), want, rtol=1e-12)


@pytest.mark.parametrize("target,rule", [("TimeRNN", "time_rnn"), ("TimeLSTM", "time_lstm"), ("TimeGRU", "time_gru"),
                                         ("TimeBiLSTM", "time_bi_lstm"), ("rnn_forward", "rnn_sequence"),
                                         ("lstm_forward", "lstm_sequence"), ("rnn_step_forward", "rnn"), ("RNN", "rnn")])
def test_the_books_and_cs231ns_recurrences_guess_their_rule(target, rule):
    assert guess_rule(f"layers.py:{target}") == rule


CELL = HEAD.replace('"r"', '"{name}"') + 'formula = "tanh(h_prev + x)"\n[inputs.x]\nshape = ["N", "H"]\n[inputs.h_prev]\nshape = ["N", "H"]\n'


@pytest.mark.parametrize("cell,target,message", [
    ("mycell", "TimeMycell",
     "TimeMycell runs the mycell cell over the T steps of its input, carrying h_prev from step to step: a recurrence, "
     "and no rule time_mycell writes it. Check the cell class each of its steps runs, with rule mycell, or write rule "
     "time_mycell with a loop over the steps (docs/rules.md)"),
    ("mycell_step", "mycell_forward",
     "mycell_forward runs mycell_step over the T steps of its input, carrying the hidden state from h0: a recurrence, "
     "and no rule mycell_sequence writes it. Check mycell_step_forward, the cell each step runs, with rule mycell_step, "
     "or write rule mycell_sequence with a loop over the steps (docs/rules.md)"),
])
def test_a_recurrence_over_a_cell_with_no_loop_rule_is_refused_for_what_it_is(tmp_path, cell, target, message):
    """Book 2's Time<Cell> and CS231n's <cell>_forward over a cell rule that has no loop rule written for it."""
    from derivcheck import DerivcheckError

    (tmp_path / f"{cell}.toml").write_text(CELL.format(name=cell))
    with pytest.raises(DerivcheckError) as info:
        guess_rule(f"layers.py:{target}", extra=[tmp_path])
    assert str(info.value) == message


STATE_RULE = ('formula = """\nh = h0\nfor t in range(T):\n    h = tanh(h + x[:, t])\n    hs[:, t] = h\nhs\n"""\n'
              '[inputs.x]\nshape = ["N", "T"]\n[inputs.h0]\nshape = ["N"]\n[labels.c0]\nkind = "real"\nshape = ["N"]\n')


@pytest.mark.parametrize("table,text", [
    ('[state]\ninputs = ["h0"]\ngrads = {h0 = "dh"}\n', 'state needs set = "METHOD"'),
    ('[state]\nset = "set state"\ninputs = ["h0"]\ngrads = {h0 = "dh"}\n', 'state needs set = "METHOD"'),
    ('[state]\nset = "set_state"\ninputs = []\n', "state inputs must list the inputs and labels"),
    ('[state]\nset = "set_state"\ninputs = ["h1"]\n', "state inputs must list the inputs and labels"),
    ('[state]\nset = "set_state"\ninputs = ["h0", "h0"]\ngrads = {h0 = "dh"}\n', "state inputs must list"),
    ('[state]\nset = "set_state"\ninputs = ["h0"]\n', "state input 'h0' has a gradient: name the attribute"),
    ('[state]\nset = "set_state"\ninputs = ["h0", "c0"]\ngrads = {h0 = "dh", c0 = "dc"}\n', "state grads: 'c0' must be a state input"),
    ('[state]\nset = "set_state"\ninputs = ["h0"]\ngrads = {h0 = "dh"}\nget = "h"\n', "unknown key 'get' in [state]"),
])
def test_a_malformed_state_table_is_refused(tmp_path, table, text):
    (tmp_path / "r.toml").write_text(HEAD + STATE_RULE + table)
    with pytest.raises(RuleError) as info:
        load_rule_file(tmp_path / "r.toml")
    assert text in info.value.message, info.value.message


def test_a_stateful_layer_is_checked_through_its_set_method_and_state_gradient():
    from derivcheck.check.verify import verify

    rep = verify("examples/dlfs2/layers.py:TimeRNN", load_rule("time_rnn_stateful"), trials=2, steps=1)
    assert rep.verdict == "pass", rep
    assert [c.where for c in rep.checks if c.name == "grad h0"][0] == "TimeRNN.dh"


def test_a_layer_without_the_set_method_is_refused_with_what_the_rule_needs(tmp_path):
    from derivcheck import DerivcheckError
    from derivcheck.check.verify import verify

    (tmp_path / "t.py").write_text("import numpy as np\n\n\nclass TimeRNN:\n    def __init__(self, Wx, Wh, b, stateful=False):\n"
                                   "        self.params, self.grads = [Wx, Wh, b], [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]\n\n"
                                   "    def forward(self, xs):\n        return xs\n\n    def backward(self, dhs):\n        return dhs\n")
    with pytest.raises(DerivcheckError) as info:
        verify(f"{tmp_path / 't.py'}:TimeRNN", load_rule("time_rnn_stateful"), trials=1, steps=1)
    assert str(info.value) == ("TimeRNN has no method set_state: rule 'time_rnn_stateful' sets its state (h0) with "
                               "set_state(h0) before each forward")


def test_a_state_set_by_a_method_is_refused_for_functions(tmp_path):
    from derivcheck import DerivcheckError
    from derivcheck.check.verify import verify

    with pytest.raises(DerivcheckError) as info:
        verify("examples/functional/layers.py:rnn_forward", load_rule("time_rnn_stateful"), trials=1, steps=1)
    assert "sets a layer's state through its method set_state (a book-2 layer class); 'rnn_forward' is functional style" in str(info.value)
