"""The stepped reference: a loop rule's cells derived shape-generically and run over the steps.

It must give the unrolled tier's values at any size (proven at one size when first used, and
tested here at others and at many steps), bounds of the same order, refuse a wrong composition
through its proof, fall back to unrolling what it cannot run, and say when its bound is loose.
"""
import textwrap
from pathlib import Path

import numpy as np
import pytest

from derivcheck.engine import reference, stepped
from derivcheck import DerivcheckError
from derivcheck.checks import WEAK
from derivcheck.engine.rules import list_rules, load_rule
from derivcheck.check.verify import verify

LOOP_RULES = sorted(n for n, r in list_rules().items() if r.formula.loop is not None)
STEPPED_NOTE = ("reference: the loop's cells derived shape-generically and run over the steps (proven against the "
                "unrolled element-by-element tier at two steps)")


def _at(rule, dims, seed):
    hyper = rule.resolve_hyper()
    b = reference.at(rule, hyper, dims)
    rng = np.random.default_rng(seed)
    _, ref = reference.draw(rule, b.shapes, b.label_shapes, dims, rng)
    return b, ref, rng.normal(size=b.output_shape)


@pytest.mark.parametrize("name", LOOP_RULES)
def test_every_loop_rule_is_served_by_its_cells_run_over_the_steps(name):
    rule = load_rule(name)
    assert reference.note_for(rule, rule.resolve_hyper()) == STEPPED_NOTE
    assert isinstance(reference.at(rule, rule.resolve_hyper(), rule.example_dims()), reference.SteppedBound)


@pytest.mark.parametrize("name", ["time_rnn", "time_gru", "time_bi_lstm", "lstm_sequence", "time_lstm_stateful"])
def test_the_stepped_reference_is_the_unrolled_one_at_a_size_it_was_not_proven_at(name):
    """Values to rounding; the rounding scales of the same order: the same analysis over differently
    shaped expressions (a cell's sums against the unrolled step's; measured 0.42 to 30 here)."""
    rule = load_rule(name)
    # more steps and a batch (proven at T=2, N=1); small D and H keep the unrolled derivation cheap
    # (the cells were proven at D=3, H=4)
    dims = {"N": 2, "T": 3, "D": 1, "H": 2}
    assert dims != reference.stepped_proof_dims(rule, rule.resolve_hyper(), stepped.plan(rule))
    b, ref, cot = _at(rule, dims, 5)
    conc = reference.ConcreteBound(rule, rule.resolve_hyper(), dims)
    out, grads, scales = b.evaluate(cot, **ref)
    want_out, want_grads, want_scales = conc.evaluate(cot, **ref)
    np.testing.assert_allclose(out, want_out, rtol=0, atol=1e-13 * np.abs(want_out).max())
    assert set(grads) == set(rule.inputs)
    for n in grads:
        np.testing.assert_allclose(grads[n], want_grads[n], rtol=0, atol=1e-13 * np.abs(want_grads[n]).max())
    for n, s in scales.items():
        ratio = s / want_scales[n]
        assert 0.2 < ratio.min() and ratio.max() < 50, (n, ratio.min(), ratio.max())


def test_the_stepped_reference_at_fifty_digits_is_the_unrolled_one():
    rule = load_rule("time_rnn_stateful")
    dims = {"N": 2, "T": 3, "D": 2, "H": 2}
    b, ref, cot = _at(rule, dims, 3)
    out, grads = b.exact(cot, **ref)
    want_out, want_grads = reference.ConcreteBound(rule, {}, dims).exact(cot, **ref)
    assert out.dtype == object and abs(float(max(abs(o - w) for o, w in zip(out.flat, want_out.flat)))) < 1e-45
    for n in rule.inputs:
        assert float(max(abs(g - w) for g, w in zip(grads[n].flat, want_grads[n].flat))) < 1e-45, n


def test_many_steps_agree_with_numpy_and_with_directional_differences():
    """T = 30, where unrolling is out of reach: the forward is NumPy's loop, and the VJP satisfies
    <cot, J v> = <J^T cot, v> for a random v, J v by central differences of the forward."""
    rule = load_rule("time_rnn")
    dims = {"N": 3, "T": 30, "D": 4, "H": 6}
    b, ref, cot = _at(rule, dims, 11)
    ref = {**ref, "Wh": ref["Wh"] / 4}  # a contracting recurrence, so the differences are well conditioned
    h, hs = np.zeros((3, 6)), []
    for t in range(30):
        h = np.tanh(h @ ref["Wh"] + ref["xs"][:, t, :] @ ref["Wx"] + ref["b"])
        hs.append(h)
    np.testing.assert_allclose(b.forward(**ref), np.stack(hs, axis=1), rtol=1e-12, atol=1e-14)
    grads = b.vjp(cot, **ref)
    v = {n: np.random.default_rng([11, k]).normal(size=x.shape) for k, (n, x) in enumerate(ref.items())}
    eps = 1e-6
    plus = b.forward(**{n: ref[n] + eps * v[n] for n in ref})
    minus = b.forward(**{n: ref[n] - eps * v[n] for n in ref})
    jv = float(np.sum(cot * (plus - minus) / (2 * eps)))
    vjp_v = sum(float(np.sum(grads[n] * v[n])) for n in ref)
    assert abs(jv - vjp_v) <= 1e-7 * max(1.0, abs(jv)), (jv, vjp_v)


def test_a_loop_the_steps_cannot_run_is_unrolled_and_the_note_says_why(tmp_path):
    (tmp_path / "r.toml").write_text('name = "r"\nsummary = "a test rule"\nformula = """\nh = h0\nfor t in range(T):\n'
                                     '    h = tanh(h + x[:, t])\n    hs[:, t] = h\nhs * 2\n"""\n'
                                     '[inputs.x]\nshape = ["N", "T"]\n[inputs.h0]\nshape = ["N"]\n[dims.T]\nmax = 3\n')
    from derivcheck.engine.rules import load_rule_file

    rule = load_rule_file(tmp_path / "r.toml")
    note = reference.note_for(rule, {})
    assert note.startswith("reference: the element-by-element tier, at each trial's sizes (no shape-generic form: a loop"), note
    assert note.endswith("; no stepped form: a last line 'hs * 2' other than a stacked name or concatenate([...], axis=k) of them)"), note
    assert isinstance(reference.at(rule, {}, {"N": 2, "T": 3}), reference.ConcreteBound)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache folder and no derivation in memory: the stepped reference is built and proven again."""
    monkeypatch.setenv("DERIVCHECK_CACHE_DIR", str(tmp_path / "cache"))
    reference.forget()
    return tmp_path


def test_a_wrong_composition_is_refused_by_the_proof(fresh, monkeypatch):
    """The state's gradient not handed to the step before: the unrolled tier disagrees, and nothing is served."""
    monkeypatch.setattr(stepped, "_carries", lambda step, k: False)
    rule = load_rule("time_rnn")
    with pytest.raises(DerivcheckError) as info:
        reference.stepped_for(rule, {})
    assert str(info.value).startswith("the stepped derivation of rule 'time_rnn' at N=1, T=2, D=3, H=4 disagrees with "
                                      "the element-by-element one: gradient of "), str(info.value)


def test_the_proof_is_made_once_and_remembered_on_disk(fresh, monkeypatch):
    calls = []
    real = reference._agree
    monkeypatch.setattr(reference, "_agree", lambda *a: calls.append(a[2]) or real(*a))
    rule = load_rule("time_gru")
    assert reference.stepped_for(rule, {})[0] is not None
    proofs = len(calls)
    assert proofs == 1 + len(reference.proof_dims(stepped.plan(rule).cells[0].rule, {}))  # the cell's, then the steps'
    reference.forget()
    assert reference.stepped_for(rule, {})[0] is not None
    assert len(calls) == proofs  # read back: neither the cell nor the composition proven again


def test_a_loose_bound_is_noted_and_a_tight_one_is_not(tmp_path):
    """float32 and six steps of an RNN: the worst-case bound of dxs grows with the steps past WEAK of its values."""
    rep = verify("examples/dlfs2/layers.py:TimeRNN", load_rule("time_rnn"), dtype="float32", trials=1, steps=1,
                 shape={"N": 2, "T": 6, "D": 3, "H": 5})
    assert rep.verdict == "pass" and not rep.warnings
    loose = [n for n in rep.notes if n.startswith("grad xs: the error bound lets through errors up to ")]
    assert len(loose) == 1 and "(at N=2, T=6, D=3, H=5, float32)" in loose[0], rep.notes
    assert loose[0].endswith("The bound grows with the number of steps of the recurrence: check at fewer steps (--shape) for a tight check.")
    assert float(loose[0].split("up to ")[1].split(" ")[0]) > WEAK
    tight = verify("examples/dlfs2/layers.py:TimeRNN", load_rule("time_rnn"), dtype="float64", trials=1, steps=1,
                   shape={"N": 2, "T": 3, "D": 4, "H": 5})
    assert tight.notes == [STEPPED_NOTE]
    # a layer that hands back float32 (the book's dtype='f' buffers) is judged, and noted, in float32 in a float64 run
    (tmp_path / "f32.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path("examples").resolve())!r})
        from dlfs2.layers import TimeRNN


        class TimeRNN32(TimeRNN):
            def forward(self, xs):
                return super().forward(xs).astype("f")

            def backward(self, dhs):
                return super().backward(dhs).astype("f")
    """))
    rep = verify(f"{tmp_path / 'f32.py'}:TimeRNN32", load_rule("time_rnn"), dtype="float64", trials=1, steps=1,
                 shape={"N": 2, "T": 6, "D": 3, "H": 5})
    assert rep.verdict == "pass", rep.to_json()
    assert any(n.startswith("grad xs: the error bound lets through") and "float32)" in n for n in rep.notes), rep.notes


def test_a_gradient_summed_over_steps_is_charged_as_an_add_of_its_contributions():
    """Σ M_k + (K - 1) Σ |g_k| per element, as rounding.magnitude charges an Add of K terms; an element
    that only one contribution reaches is charged that contribution's bound alone."""
    g = stepped.GradientSum((2,), stepped.Backend("numpy"), bounds=True)
    g.add(np.array([1.0, -2.0]), np.array([0.5, 0.25]))
    g.add(np.array([-3.0]), np.array([1.0]), where=(slice(0, 1),))
    np.testing.assert_array_equal(g.value, [-2.0, -2.0])
    np.testing.assert_array_equal(g.bound(), [0.5 + 1.0 + (1.0 + 3.0), 0.25])


def test_steps_alike_but_for_their_names_share_one_cell():
    """TimeBiLSTM's two directions (Wx1, Wx2) and TimeLSTM's step (Wx) are one cell rule: derived once."""
    def cells(name):
        return [c.rule.name for c in stepped.plan(load_rule(name)).cells]

    assert cells("time_bi_lstm") == cells("time_lstm") * 2
    assert cells("time_rnn") == cells("time_rnn_stateful")
