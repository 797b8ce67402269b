"""Elo, Bradley-Terry MLE, bootstrap intervals and judges, on simulated and real (HH-RLHF) pairwise verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmbook.eval import ratings as R


def _simulate(true: dict[str, float], n: int, seed: int = 0) -> list[R.Comparison]:
    rng = np.random.default_rng(seed)
    names = list(true)
    out = []
    for _ in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        p = R.win_probability(true[names[a]], true[names[b]])
        out.append(R.Comparison(names[a], names[b], "a" if rng.random() < p else "b"))
    return out


TRUE = {"m1": 1200.0, "m2": 1100.0, "m3": 1000.0, "m4": 700.0}


def test_bradley_terry_matches_scipy_logistic_mle():
    scipy_opt = pytest.importorskip("scipy.optimize")
    comps = _simulate(TRUE, 600, seed=1) + [R.Comparison("m1", "m4", "tie")] * 5
    ours = R.bradley_terry(comps, l2=0.0)
    players = sorted(TRUE)
    ia = np.array([players.index(c.a) for c in comps])
    ib = np.array([players.index(c.b) for c in comps])
    y = np.array([{"a": 1.0, "b": 0.0, "tie": 0.5}[c.winner] for c in comps])

    def nll(beta):  # independent formulation: binary cross-entropy of sigma(beta_a - beta_b)
        z = beta[ia] - beta[ib]
        return float(np.sum(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)))

    res = scipy_opt.minimize(nll, np.zeros(len(players)), method="BFGS", options={"gtol": 1e-10})
    beta = res.x - res.x.mean()
    for i, p in enumerate(players):
        assert ours[p] == pytest.approx(1000 + 400 / math.log(10) * beta[i], abs=1e-3)


def test_bradley_terry_recovers_true_gaps_and_bootstrap_covers():
    comps = _simulate(TRUE, 4000, seed=2)
    fit = R.bradley_terry(comps)
    true_centred = {p: r - np.mean(list(TRUE.values())) + 1000 for p, r in TRUE.items()}
    for p in TRUE:
        assert abs(fit[p] - true_centred[p]) < 30
    ci = R.bootstrap_ratings(comps, "bt", n_boot=50, seed=0)
    assert all(ci[p].low <= fit[p] <= ci[p].high for p in TRUE)
    assert ci["m4"].high < ci["m3"].low  # a 300-point gap is resolved with 4000 games


def test_bradley_terry_finite_for_undefeated_player():
    comps = [R.Comparison("a", "b", "a")] * 10 + [R.Comparison("b", "c", "a"), R.Comparison("c", "b", "a")]
    assert R.unbounded_players(comps) == {"a": "above"}
    with pytest.warns(RuntimeWarning, match=r"no finite maximum-likelihood rating for a \(unbounded above\)"):
        fit = R.bradley_terry(comps)
    assert all(math.isfinite(v) for v in fit.values())
    assert fit["b"] == pytest.approx(fit["c"], abs=0.01)  # b and c split their games: (nearly) equal
    # a's lead over b is set by the prior alone: finite, huge, and shrinking as the prior tightens
    gaps = []
    for l2 in (1e-6, 1e-2, 1.0):
        with pytest.warns(RuntimeWarning, match="unbounded above"):
            f = R.bradley_terry(comps, l2=l2)
        gaps.append(f["a"] - f["b"])
    assert gaps[0] > gaps[1] > gaps[2] > 0 and gaps[0] > 1000
    with pytest.warns(RuntimeWarning, match="did not converge in 2 Newton steps"):
        R.bradley_terry(_simulate(TRUE, 400), max_iter=2)


def test_bradley_terry_needs_a_connected_graph_and_bootstrap_counts_resamples():
    comps = [R.Comparison("a", "b", "a"), R.Comparison("b", "a", "a"), R.Comparison("c", "d", "a"),
             R.Comparison("d", "c", "a")]
    with pytest.raises(ValueError, match=r"groups never met: a, b \| c, d"):
        R.bradley_terry(comps)
    sparse = comps + [R.Comparison("b", "c", "a"), R.Comparison("c", "b", "a")]
    ci = R.bootstrap_ratings(sparse, "bt", n_boot=100, seed=0)
    # resamples that lose both b-c games are disconnected and skipped (or miss a player), and the count says so
    assert all(0 < iv.n_resamples < 100 for iv in ci.values())
    elo_ci = R.bootstrap_ratings(sparse, "elo", n_boot=30, seed=0)
    assert all(iv.n_resamples <= 30 for iv in elo_ci.values())


def test_elo_update_rule_and_order_dependence():
    one = R.elo([R.Comparison("x", "y", "a")], k=32)
    assert one == {"x": 1016.0, "y": 984.0}
    comps = [R.Comparison("x", "y", "a")] * 5 + [R.Comparison("x", "y", "b")] * 5
    fwd, rev = R.elo(comps, k=32), R.elo(comps[::-1], k=32)
    assert fwd["x"] < 1000 < rev["x"]  # same games, opposite conclusions: why arenas moved to BT
    assert sum(fwd.values()) == pytest.approx(2000)


def test_comparison_validation():
    with pytest.raises(ValueError, match="winner"):
        R.Comparison("a", "b", "A")
    with pytest.raises(ValueError, match="itself"):
        R.Comparison("a", "a", "tie")
    with pytest.raises(ValueError, match="method"):
        R.bootstrap_ratings([R.Comparison("a", "b", "a")], method="glicko")


def test_judges_and_position_debiasing():
    judge = R.LengthJudge()
    assert judge("q", "a long answer here", "short") == "a"
    assert R.judge_both_orders(judge, "q", "one two", "three four") == "tie"

    class FirstJudge:  # maximal position bias
        def __call__(self, prompt, a, b):
            return "a"

    assert R.judge_both_orders(FirstJudge(), "q", "x", "y") == "tie"

    class FakeModel:
        def loglikelihood(self, requests):
            assert requests[0][0].endswith("Verdict:") and "hello" in requests[0][0]
            return [(-1.0, True), (-2.0, False)]

    assert R.LogLikelihoodJudge(FakeModel())("hello", "x", "y") == "a"


def test_hh_rlhf_real_verdicts(data_file):
    pairs = R.load_hh_rlhf(data_file("hh-rlhf/harmless-base_test.jsonl.gz"), limit=400)
    assert len(pairs) == 400 and all(p.endswith("Assistant:") for p, _, _ in pairs[:5])
    comps = R.style_comparisons(pairs)
    assert 50 < len(comps) < 400
    fit = R.bradley_terry(comps)
    assert set(fit) <= {"refusal", "question", "short", "medium", "long"}
    agreement = np.mean([R.LengthJudge()(p, c, r) == "a" for p, c, r in pairs])
    assert 0.2 < agreement < 0.8  # a length-preferring judge is far from the human labels


def test_load_hh_rlhf_names_bad_line(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: no"}\n{"chosen": 1\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: malformed"):
        R.load_hh_rlhf(bad)
