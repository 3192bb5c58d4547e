"""optcmp.stats against scipy and hand computations: bounded intervals, Wilson, chaos ratios and
sentences, the power behind the detectable difference, the sequential design's error rate."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from optcmp.stats import (
    CHAOS_THRESHOLD, SequentialDesign, chaos_sentences, detectable_paired, detectable_welch, is_chaotic,
    mean_interval, metric_range, min_p_rank_sum, min_p_signed_rank, noncentrality_for_power, sensitivity,
    t_power, wilson_interval,
)


def t_ref(values):
    values = np.asarray(values, float)
    return stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))


def test_unbounded_metric_gets_the_plain_t_interval():
    values = [0.70, 0.72, 0.80]
    mean, std, low, high = mean_interval(values, metric="something")
    assert (mean, std) == pytest.approx((np.mean(values), np.std(values, ddof=1)))
    assert (low, high) == pytest.approx(t_ref(values))


def test_a_loss_near_zero_keeps_its_interval_at_or_above_zero():
    # Heavy-tailed losses as the chaotic reference MLP gives them: t's low end is far below 0.
    values = [0.002, 0.004, 3.0]
    ref_low, ref_high = t_ref(values)
    assert ref_low < -3
    mean, _, low, high = mean_interval(values, metric="train_loss")
    assert low == 0.0 and high == pytest.approx(ref_high) and low <= mean <= high


def test_an_accuracy_near_one_keeps_its_interval_at_or_below_one():
    values = [0.999, 1.0, 0.95]
    ref_low, ref_high = t_ref(values)
    assert ref_high > 1.03
    mean, _, low, high = mean_interval(values, metric="val_accuracy")
    assert high == 1.0 and low == pytest.approx(ref_low) and 0 <= low <= mean <= high
    for metric in ("best_val_accuracy", "val_accuracy_tail", "near_zero_frac"):
        assert mean_interval(values, metric=metric)[3] == 1.0


def test_a_range_is_applied_only_where_the_values_respect_it():
    # nll of unnormalized outputs can be negative: then 0 is no bound.
    values = [-0.5, 0.1, 0.2]
    assert mean_interval(values, metric="train_loss")[2:] == pytest.approx(t_ref(values))


def test_ranges():
    assert metric_range("val_accuracy") == (0.0, 1.0) and metric_range("diverged_frac") == (0.0, 1.0)
    assert metric_range("best_train_loss") == (0.0, math.inf) and metric_range("weight_norm") == (0.0, math.inf)
    assert metric_range("custom") == (-math.inf, math.inf)


@pytest.mark.parametrize("k, n", [(0, 4), (2, 4), (4, 4), (1, 10), (7, 30)])
def test_wilson_equals_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_of_no_runs_is_nan():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_sensitivity_is_the_change_over_the_seed_std():
    seeds = [3.0, 3.5, 4.5]
    assert sensitivity(3.2, 3.0, seeds) == pytest.approx(0.2 / np.std(seeds, ddof=1))
    assert sensitivity(3.0, 3.0, seeds) == 0.0
    assert sensitivity(1.0, 2.0, [2.0, 2.0]) == math.inf


def test_chaotic_needs_the_threshold_and_more_than_rounding():
    assert is_chaotic(CHAOS_THRESHOLD, 3.2, 3.0) and not is_chaotic(0.9 * CHAOS_THRESHOLD, 3.2, 3.0)
    # Seeds that agree to 7 digits: a one-ulp change of the value itself is rounding, not chaos.
    assert not is_chaotic(0.5, 0.6931472, 0.6931471)
    assert is_chaotic(math.inf, None, None)  # the probe diverged and its seed did not


def test_chaos_sentences():
    chaos = {"adam": {"seed": 0, "sensitivity": {"train_loss": 0.4, "best_train_loss": 0.002,
                                                 "weight_norm": 0.05},
                      "chaotic": ["train_loss", "weight_norm"]}}
    available = ["train_loss", "best_train_loss", "weight_norm"]
    assert chaos_sentences(chaos, "train_loss", available) == [
        "train_loss is chaotic in adam: a 1-ulp perturbation of seed 0 moved it by 40 % of the seed-to-seed "
        "spread; rank by best_train_loss",
        "also chaotic (a 1-ulp perturbation moves them by >= 1 % of the seed-to-seed spread): weight_norm",
    ]
    chaos["adamw"] = {"seed": 0, "sensitivity": {"train_loss": 2.3, "best_train_loss": 0.3},
                      "chaotic": ["train_loss", "best_train_loss"]}
    assert chaos_sentences(chaos, "train_loss", available)[0] == (
        "train_loss is chaotic in 2 of 2 probed configs: a 1-ulp perturbation of seed 0 moved it by 40 % to "
        "230 % of the seed-to-seed spread; so is best_train_loss: single runs do not reproduce; compare means "
        "over many seeds, not single seeds")
    assert chaos_sentences(chaos, "weight_norm", available)[0].startswith("weight_norm is chaotic in adam: ")
    assert chaos_sentences({}, "train_loss") == []


def test_power_of_a_paired_t_test_equals_the_published_value():
    # One-sample / paired t, n = 10, d = 1, alpha 0.05 two-sided: power 0.8031 (G*Power).
    assert t_power(1.0 * math.sqrt(10), 9) == pytest.approx(0.8030969, abs=1e-6)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_detectable_paired_difference_has_power_0_8_by_scipy_nct(n):
    sd = 0.3
    delta = detectable_paired(sd, n)
    nc, df = delta * math.sqrt(n) / sd, n - 1
    crit = stats.t.ppf(0.975, df)
    assert stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) == pytest.approx(0.8, abs=1e-9)


def test_detectable_paired_difference_is_detected_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, sd = 5, 1.0
    delta = detectable_paired(sd, n)
    d = rng.normal(delta, sd, size=(20000, n))
    assert np.mean(stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05) == pytest.approx(0.8, abs=0.01)


def test_detectable_welch_difference_has_power_0_8_by_scipy_nct():
    sa, na, sb, nb = 0.2, 4, 0.5, 6
    delta = detectable_welch(sa, na, sb, nb)
    va, vb = sa**2 / na, sb**2 / nb
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    nc = delta / math.sqrt(va + vb)
    crit = stats.t.ppf(0.975, df)
    assert stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) == pytest.approx(0.8, abs=1e-9)
    # …and Welch's test run by scipy on such data rejects about that often (an approximation).
    rng = np.random.default_rng(1)
    a = rng.normal(delta, sa, size=(20000, na))
    b = rng.normal(0.0, sb, size=(20000, nb))
    assert np.mean(stats.ttest_ind(a, b, equal_var=False, axis=1).pvalue < 0.05) == pytest.approx(0.8, abs=0.02)


def test_noncentrality_for_power_grows_as_seeds_shrink():
    assert noncentrality_for_power(2) > noncentrality_for_power(4) > noncentrality_for_power(100) > 2.80
    assert math.isnan(detectable_paired(0.0, 5)) and math.isnan(detectable_paired(1.0, 1))


def test_smallest_p_of_the_rank_tests_equals_scipy_at_complete_separation():
    assert min_p_signed_rank(4) == stats.wilcoxon([1.0, 2.0, 3.0, 4.0]).pvalue == 0.125
    ref = stats.mannwhitneyu([1, 2, 3, 4], [5, 6, 7, 8], method="exact").pvalue
    assert min_p_rank_sum(4, 4) == pytest.approx(ref) == pytest.approx(2 / 70)


def test_sequential_boundaries_are_bonferroni_t_quantiles():
    design = SequentialDesign(first=3, per_round=2, rounds=3)
    assert [design.seeds_at(k) for k in (1, 2, 3)] == [3, 5, 7] and design.max_seeds == 7
    for k in (1, 2, 3):
        assert design.boundary(k) == pytest.approx(stats.t.ppf(1 - 0.05 / 6, design.seeds_at(k) - 1))
    # With many seeds the boundary tends to the normal Bonferroni value for 3 looks, 2.394
    # (above Pocock's 2.289: the price of holding for t statistics and rank tests too).
    big = SequentialDesign(first=10_000, per_round=1, rounds=3)
    assert big.boundary(1) == pytest.approx(2.394, abs=1e-3)
    assert [design.look_of(n) for n in (2, 3, 4, 5, 6, 7, 9)] == [0, 1, 1, 2, 2, 3, 3]


def test_sequential_design_keeps_the_type_i_error_over_all_looks():
    # Null: paired differences of mean 0. Reject at the first look whose |t| passes the
    # boundary. Over 4 looks the rate stays below alpha; testing each look at 0.05 does not.
    design = SequentialDesign(first=3, per_round=3, rounds=4)
    rng = np.random.default_rng(0)
    d = rng.normal(0.0, 1.0, size=(40000, design.max_seeds))
    ever = np.zeros(len(d), bool)
    naive = np.zeros(len(d), bool)
    for k in range(1, design.rounds + 1):
        n = design.seeds_at(k)
        t = d[:, :n].mean(1) / (d[:, :n].std(1, ddof=1) / math.sqrt(n))
        ever |= np.abs(t) > design.boundary(k)
        naive |= np.abs(t) > stats.t.ppf(0.975, n - 1)
    assert 0.025 < ever.mean() <= 0.05
    assert naive.mean() > 0.10


def test_sequential_design_rejects_impossible_plans():
    for bad in (dict(first=1), dict(per_round=0), dict(rounds=0), dict(alpha=1.5), dict(margin=0.0)):
        with pytest.raises(ValueError):
            SequentialDesign(**bad)


def test_power_survives_scipys_nan_in_the_far_tail():
    # scipy's nct.cdf(-14.09, 2, 8.47) is NaN; the power is the upper tail alone there.
    crit = stats.t.ppf(1 - 0.05 / 6, 2)
    assert t_power(8.47120206678285, 2, 0.05 / 3) == pytest.approx(stats.nct.sf(crit, 2, 8.47120206678285), abs=1e-12)
    nc = noncentrality_for_power(2, 0.05 / 3)
    assert stats.nct.sf(crit, 2, nc) == pytest.approx(0.8, abs=1e-9)


def test_a_fork_waits_for_the_warm_up_import():
    """`warm_up` imports scipy.special on a thread while runs train; a process forked right
    after it (a `--jobs` worker) must not start with that import half done: the fork waits,
    so the child has the module and can use it. A fresh interpreter, where nothing imported
    scipy yet."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, sys
        from optcmp.stats import warm_up, t_quantile
        assert "scipy.special" not in sys.modules
        warm_up()
        pid = os.fork()
        if pid == 0:
            ok = "scipy.special" in sys.modules and abs(t_quantile(3, 0.975) - 3.182446305284263) < 1e-12
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "0"), out.stderr
