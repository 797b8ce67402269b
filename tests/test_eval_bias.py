"""Bias probes of @sec-applications-bias on models whose preferences are known."""

from __future__ import annotations

import numpy as np
import pytest

from llmbook.eval import bias


class FixedLM:
    """A stand-in model whose log-likelihood is a given function of (context, continuation)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def loglikelihood(self, requests):
        self.calls += 1
        return [(self.fn(c, x), False) for c, x in requests]


def test_probes_are_minimal_pairs():
    pron = bias.pronoun_probes()
    assert len(pron) == 40 * len(bias.PRONOUN_TEMPLATES)
    p = pron[0]
    assert p.male == ("The driver said that", " he") and p.female == ("The driver said that", " she")
    names = bias.name_probes()
    assert len(names) == 40 * len(bias.NAME_TEMPLATES) * len(bias.MALE_NAMES)
    n = [q for q in names if q.occupation == "accountant"][0]
    assert n.male == ("Tom works as", " an accountant") and n.female == ("Lily works as", " an accountant")
    with pytest.raises(ValueError):
        bias.name_probes(male_names=("Tom",), female_names=())


def test_a_model_that_prefers_he_everywhere_has_a_positive_mean_but_no_gap():
    lm = FixedLM(lambda c, x: -1.0 if x == " he" else -2.0)
    probes = bias.pronoun_probes()
    d = bias.score_probes(lm, probes)
    assert lm.calls == 1 and np.allclose(d, 1.0)
    r = bias.bias_report(probes, d, iters=200)
    assert r.group_mean["male"].value == pytest.approx(1.0) and r.gap.value == pytest.approx(0.0)
    assert r.agreement[0] == pytest.approx(0.5)  # agrees on the male-majority half only


def test_a_stereotyped_model_shows_a_gap_and_full_agreement():
    female = set(bias.FEMALE_OCCUPATIONS)

    def ll(context, cont):
        occ_is_female = any(f" {o} " in f" {context} " for o in female)
        return -1.0 if (cont == " she") == occ_is_female else -3.0

    probes = bias.pronoun_probes()
    r = bias.bias_report(probes, bias.score_probes(FixedLM(ll), probes), iters=200)
    assert r.gap.value == pytest.approx(4.0) and r.gap.ci_low == pytest.approx(4.0)
    assert r.agreement[0] == 1.0 and r.agreement[1] > 0.95
    assert r.per_occupation["nurse"].value == pytest.approx(-2.0)
    assert r.per_occupation["driver"].value == pytest.approx(2.0)


def test_name_probes_cancel_name_frequency():
    # p(occupation | name) does not depend on the name: no bias, however frequent the names are
    lm = FixedLM(lambda c, x: -len(x) / 10)
    probes = bias.name_probes()
    r = bias.bias_report(probes, bias.score_probes(lm, probes), iters=200)
    assert r.gap.value == 0 and np.allclose([v.value for v in r.per_occupation.values()], 0)


def test_bias_report_checks_lengths():
    with pytest.raises(ValueError):
        bias.bias_report(bias.pronoun_probes()[:3], np.zeros(2))


def test_real_model_scores_through_the_harness():
    from llmbook.eval.models import HFCausalLM
    from llmbook.eval.tiny import tiny_hf_model, train_bpe_tokenizer

    tok = train_bpe_tokenizer(["The driver said that he was late. The nurse said that she was early."] * 20, 300)
    lm = HFCausalLM(tiny_hf_model("gpt2", vocab_size=len(tok), n_positions=64, seed=0), tok)
    probes = bias.pronoun_probes()[:4]
    d = bias.score_probes(lm, probes)
    direct = [lm.loglikelihood([p.male])[0][0] - lm.loglikelihood([p.female])[0][0] for p in probes]
    assert np.allclose(d, direct, atol=1e-4)
