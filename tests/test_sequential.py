"""seeds_until: verdicts per pair over planned rounds, sticky once settled, and the boundary the
design promises (the type-I error over all rounds is simulated in test_stats)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from optcmp.sequential import guarantee, seeds_until
from optcmp.stats import SequentialDesign
from tests.test_compare import runs_frame

DESIGN = SequentialDesign(first=3, per_round=2, rounds=3)


def sweep(a, b) -> "pd.DataFrame":  # noqa: F821
    return runs_frame({"a": dict(enumerate(a)), "b": dict(enumerate(b))})


def test_before_the_first_round_it_asks_for_the_first_seeds():
    decision = seeds_until(sweep([1.0, 1.1], [2.0, 2.1]), DESIGN, "val_loss")
    assert (decision.look, decision.action, decision.add, decision.pairs) == (0, "add", 1, [])


def test_a_clear_difference_settles_in_the_first_round():
    decision = seeds_until(sweep([1.0, 1.1, 1.05], [2.0, 2.12, 2.03]), DESIGN, "val_loss")
    assert (decision.look, decision.action, decision.add) == (1, "stop", 0)
    (pair,) = decision.pairs
    assert (pair.state, pair.look, pair.seeds) == ("different", 1, 3)
    assert decision.settled() == {("a", "b"): "different"}
    assert decision.sentence == ("stop: every pair is settled; the chance of calling any two equal configs "
                                 "different is at most 0.05 over all 3 rounds (each round tests at 0.0167, "
                                 "Holm over the pairs)")


def test_an_open_pair_asks_for_the_next_round_then_stops_at_the_maximum():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 0.1, 7), rng.normal(1, 0.1, 7)
    first = seeds_until(sweep(a[:3], b[:3]), DESIGN, "val_loss")
    assert (first.action, first.add, first.pairs[0].state) == ("add", 2, "undecided")
    assert first.sentence == "add 2 seeds (round 2 of 3): 1 of 1 pair(s) undecided"
    p = first.pairs[0].p_holm
    assert first.pairs[0].sentence.startswith(f"a and b, p={p:.2g}: n=3 paired seeds cannot tell apart differences below ")
    last = seeds_until(sweep(a, b), DESIGN, "val_loss")
    assert (last.look, last.action, last.pairs[0].state) == (3, "stop", "undecided")
    assert last.sentence.startswith("stop: the planned maximum of 7 seeds is reached with 1 pair(s) undecided")


def test_the_boundary_is_the_t_quantile_at_alpha_over_rounds():
    # A paired difference whose |t| at 3 seeds lies between t(0.975) and the design's boundary:
    # significant at 0.05, not at 0.05/3, so it is not settled.
    d = np.array([0.20, 0.30, 0.45])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert stats.t.ppf(0.975, 2) < t < DESIGN.boundary(1)
    decision = seeds_until(sweep(1.0 + d, [1.0, 1.0, 1.0]), DESIGN, "val_loss")
    assert decision.pairs[0].state == "undecided"
    assert decision.pairs[0].p_holm == pytest.approx(stats.ttest_1samp(d, 0).pvalue)


def test_a_settled_verdict_stays_settled_when_later_seeds_would_blur_it():
    a = [1.0, 1.1, 1.05, 3.0, 0.0]
    b = [2.0, 2.12, 2.03, 0.0, 3.0]  # seeds 3 and 4 swap the order
    decision = seeds_until(sweep(a, b), DESIGN, "val_loss")
    assert decision.look == 2 and decision.pairs[0].state == "different" and decision.pairs[0].look == 1


def test_equivalence_with_a_margin_settles_a_null_pair():
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.2, 7)
    a, b = base + rng.normal(0, 0.001, 7), base + rng.normal(0, 0.001, 7)
    design = SequentialDesign(first=3, per_round=2, rounds=3, margin=0.05)
    decision = seeds_until(sweep(a, b), design, "val_loss")
    (pair,) = decision.pairs
    assert (pair.state, pair.look) == ("equivalent", 1)
    first, second = pair.config_a, pair.config_b
    assert pair.sentence == (f"{first} and {second} are equivalent in val_loss within ±5% of {second}'s mean "
                             "(3 seeds, two one-sided tests)")
    # the interval at 1 - 2 * 0.05/3 lies inside ±5 % of the second config's mean
    d = a[:3] - b[:3]
    half = stats.t.ppf(1 - 0.05 / 3, 2) * d.std(ddof=1) / math.sqrt(3)
    assert abs(d.mean()) + half < 0.05 * min(a[:3].mean(), b[:3].mean())
    assert "likewise for calling a pair equivalent (within ±5%)" in guarantee(design)


def test_decisions_match_the_boundary_on_simulated_null_sweeps():
    # seeds_until rejects exactly when the paired |t| passes design.boundary at some look, so the
    # error rate simulated for the boundaries in test_stats is the one of seeds_until.
    rng = np.random.default_rng(7)
    for _ in range(40):
        seed_effect = rng.normal(1.0, 0.3, DESIGN.max_seeds)
        a = seed_effect + rng.normal(0, 0.05, DESIGN.max_seeds)
        b = seed_effect + rng.normal(0, 0.05, DESIGN.max_seeds)
        expected = False
        for k in (1, 2, 3):
            d = (a - b)[: DESIGN.seeds_at(k)]
            expected |= abs(d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))) > DESIGN.boundary(k)
        decision = seeds_until(sweep(a, b), DESIGN, "val_loss")
        assert (decision.pairs[0].state == "different") == expected
