"""compare.py: t-tests against scipy on fixed numbers, Holm by hand, the sentences, the errors."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from optcmp.compare import compare_configs, compare_notes, describe, holm, write_compare
from optcmp.summary import read_runs
from optcmp.errors import OptcmpError

FIXTURE = Path(__file__).parent / "fixtures" / "sweep"

A = [1.00, 1.20, 0.90, 1.10, 1.05]
B = [1.30, 1.40, 1.25, 1.50, 1.32]


def runs_frame(values: dict[str, dict[int, float]], metric: str = "val_loss",
               params: dict[str, dict[str, object]] | None = None,
               status: dict[str, str] | None = None) -> pd.DataFrame:
    """A runs.csv-shaped table: config -> {seed: final metric}; params by config; all `ok` unless named."""
    rows = []
    for config, by_seed in values.items():
        for seed, value in by_seed.items():
            run_id = f"{config}-s{seed}"
            rows.append({"run_id": run_id, "config_id": config, "seed": seed,
                         "status": (status or {}).get(run_id, "ok"), "decay": "coupled",
                         "engine": "sequential", "device": "cpu", "error": None, "diverged_step": None,
                         **(params or {}).get(config, {"optimizer.name": config}),
                         "train_loss": value, metric: value})
    return pd.DataFrame(rows)


def test_shared_seeds_use_a_paired_t_test_equal_to_scipy():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B))})
    row = compare_configs(runs, "val_loss", None).iloc[0]
    ref = stats.ttest_rel(A, B)
    d = np.subtract(A, B)
    assert (row["config_a"], row["config_b"], row["test"]) == ("a", "b", "paired t")
    assert (row["n_a"], row["n_b"], row["n_pairs"]) == (5, 5, 5)
    assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert row["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-12)
    assert row["diff"] == pytest.approx(np.mean(A) - np.mean(B))
    assert row["rel_diff"] == pytest.approx((np.mean(A) - np.mean(B)) / np.mean(B))
    ci = ref.confidence_interval(0.95)
    assert (row["diff_ci95_low"], row["diff_ci95_high"]) == pytest.approx((ci.low, ci.high))


def test_disjoint_seeds_use_welch_with_pooled_cohens_d():
    b_seeds = {10 + i: v for i, v in enumerate(B[:4])}
    runs = runs_frame({"a": dict(enumerate(A)), "b": b_seeds})
    row = compare_configs(runs, "val_loss", None).iloc[0]
    ref = stats.ttest_ind(A, B[:4], equal_var=False)
    pooled = math.sqrt((4 * np.var(A, ddof=1) + 3 * np.var(B[:4], ddof=1)) / 7)
    assert (row["test"], row["n_a"], row["n_b"], row["n_pairs"]) == ("Welch t", 5, 4, 0)
    assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert row["effect_size"] == pytest.approx((np.mean(A) - np.mean(B[:4])) / pooled, rel=1e-12)


def test_configs_with_different_models_are_not_paired_even_on_equal_seeds():
    # Seed s builds different initial weights for a different architecture: nothing to pair.
    params = {"small": {"model.hidden": "[20]"}, "big": {"model.hidden": "[64]"}}
    runs = runs_frame({"small": dict(enumerate(A)), "big": dict(enumerate(B))}, params=params)
    assert compare_configs(runs, "val_loss", None).iloc[0]["test"] == "Welch t"


def test_pairing_uses_only_the_common_seeds():
    runs = runs_frame({"a": dict(enumerate(A)), "b": {0: B[0], 1: B[1], 2: B[2], 7: B[3]}})
    row = compare_configs(runs, "val_loss", None).iloc[0]
    assert (row["test"], row["n_pairs"]) == ("paired t", 3)
    assert row["p_value"] == pytest.approx(stats.ttest_rel(A[:3], B[:3]).pvalue, rel=1e-12)
    assert row["mean_a"] == pytest.approx(np.mean(A[:3]))


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> raised to 0.06.
    adjusted = holm([0.01, 0.04, 0.03, np.nan, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, np.nan, 0.02])
    assert holm([0.5, 0.9])[1] == 1.0  # capped at 1


def test_holm_is_applied_across_all_pairs():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B)),
                       "c": dict(enumerate(np.add(A, [0.01, -0.02, 0.03, 0.0, 0.02])))})
    frame = compare_configs(runs, "val_loss", None)
    np.testing.assert_allclose(frame["p_holm"], holm(frame["p_value"]))
    assert set(frame["n_comparisons"]) == {3}


def _sweep(rng: np.random.Generator, shift: float, n_seeds: int = 8) -> pd.DataFrame:
    """Two configs on shared seeds; the seed moves both alike, as shared initial weights do."""
    seed_effect = rng.normal(1.0, 0.1, n_seeds)
    a = seed_effect + rng.normal(0, 0.01, n_seeds)
    b = seed_effect + shift + rng.normal(0, 0.01, n_seeds)
    params = {"a": {"optimizer.lr": 0.01, "log.every": 1}, "b": {"optimizer.lr": 0.01, "log.every": 5}}
    return runs_frame({"a": dict(enumerate(a)), "b": dict(enumerate(b))}, params=params)


def test_a_large_real_effect_is_significant():
    row = compare_configs(_sweep(np.random.default_rng(0), shift=0.05), "val_loss", None).iloc[0]
    assert row["significant"] and row["p_value"] < 1e-4


def test_a_null_difference_is_not_significant_and_the_test_is_calibrated():
    # Configs that differ only in an irrelevant value: about 5% of sweeps may look significant
    # at 0.05, no more; a test that ignored the pairing or the seeds would be far off.
    rng = np.random.default_rng(1)
    p = np.array([compare_configs(_sweep(rng, shift=0.0), "val_loss", None).iloc[0]["p_value"]
                  for _ in range(300)])
    assert 0.02 <= np.mean(p < 0.05) <= 0.09
    row = compare_configs(_sweep(np.random.default_rng(2), shift=0.0), "val_loss", None).iloc[0]
    assert not row["significant"]
    assert row["sentence"].startswith("no significant difference between a and b in val_loss (")


def test_sentences_on_the_fixture_sweep():
    # adamw-wd0.1 diverged on seed 3: that is an outcome (ranked worst), not a dropped seed, so
    # its 12% lower val_loss on the 3 survivors is no longer called significant, and it comes last.
    frame = compare_configs(read_runs(FIXTURE), "val_loss", None)
    assert list(frame["sentence"]) == [
        "no significant difference between adam-wd0.1 and adam-wd0.01 in val_loss "
        "(adam-wd0.1 0.7% lower, p=1 (Holm), 4 paired seeds)",
        "no significant difference between adam-wd0.1 and adamw-wd0.1 in val_loss (adamw-wd0.1 ranks lower, "
        "p=1 (Holm), Wilcoxon signed-rank with diverged runs ranked worst, 4 paired seeds); diverged: adam-wd0.1 "
        "0 of 4, adamw-wd0.1 1 of 4 (Fisher's exact test p=1 (Holm): not a significant difference)",
        "no significant difference between adam-wd0.01 and adamw-wd0.1 in val_loss (adamw-wd0.1 ranks lower, "
        "p=1 (Holm), Wilcoxon signed-rank with diverged runs ranked worst, 4 paired seeds); diverged: adam-wd0.01 "
        "0 of 4, adamw-wd0.1 1 of 4 (Fisher's exact test p=1 (Holm): not a significant difference)",
    ]
    assert list(frame["power_sentence"]) == [
        "n=4 paired seeds cannot tell apart differences below 3.2 % of adam-wd0.01's val_loss (power 0.8, alpha 0.05)",
        "n=4 paired seeds: a Wilcoxon signed-rank test cannot reach p<0.05 whatever the difference "
        "(smallest possible p 0.125); add seeds",
        "n=4 paired seeds: a Wilcoxon signed-rank test cannot reach p<0.05 whatever the difference "
        "(smallest possible p 0.125); add seeds",
    ]


def test_sentence_names_the_winner_first_when_higher_is_better():
    runs = runs_frame({"a": dict(enumerate(np.multiply(B, 0.5))), "b": dict(enumerate(np.multiply(A, 0.5)))},
                      metric="val_accuracy")
    row = compare_configs(runs, "val_accuracy", None).iloc[0]
    assert describe(row) == "a has 29% higher val_accuracy than b, p<0.001, 5 paired seeds"


def test_welch_sentence_counts_both_sides():
    runs = runs_frame({"a": dict(enumerate(A)), "b": {10 + i: v for i, v in enumerate(B)}})
    assert compare_configs(runs, "val_loss", None).iloc[0]["sentence"] == (
        "a has 22% lower val_loss than b, p=0.0019, 5 vs 5 seeds (Welch)")


def test_too_few_seeds_gives_no_p_value_and_says_so():
    runs = runs_frame({"a": dict(enumerate(A)), "b": {0: B[0], 1: B[1]}},
                      status={"b-s1": "failed"})
    row = compare_configs(runs, "val_loss", None).iloc[0]
    assert math.isnan(row["p_value"]) and not row["significant"] and row["n_comparisons"] == 0
    assert row["sentence"] == ("too few seeds to compare a and b in val_loss "
                               "(5 vs 1 ok runs with a value; a test needs at least 2 each)")


def test_identical_results_are_no_difference_not_a_nan():
    # Deterministic runs that differ in an irrelevant value give the same numbers bit for bit.
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(A))})
    row = compare_configs(runs, "val_loss", None).iloc[0]
    assert (row["p_value"], row["effect_size"], row["significant"]) == (1.0, 0.0, False)
    assert row["sentence"] == "no difference between a and b in val_loss: identical values over 5 paired seeds"


def test_baseline_compares_each_config_against_it():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B)), "c": dict(enumerate(np.add(A, 0.5)))})
    frame = compare_configs(runs, "val_loss", "b")
    assert list(zip(frame["config_a"], frame["config_b"])) == [("a", "b"), ("c", "b")]


def test_default_metric_is_val_loss_where_there_is_one():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B))})
    assert compare_configs(runs)["metric"].tolist() == ["val_loss"]
    runs["val_loss"] = np.nan
    assert compare_configs(runs)["metric"].tolist() == ["train_loss"]


def test_default_metric_is_best_so_far_where_runs_report_it():
    # Best-so-far is the least chaotic loss on the reference MLP (benchmarks/chaos_probe.py).
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B))})
    runs["best_train_loss"] = runs["train_loss"]
    assert compare_configs(runs)["metric"].tolist() == ["val_loss"]
    runs["best_val_loss"] = runs["val_loss"]
    assert compare_configs(runs)["metric"].tolist() == ["best_val_loss"]
    runs[["val_loss", "best_val_loss"]] = np.nan
    assert compare_configs(runs)["metric"].tolist() == ["best_train_loss"]


def test_bad_metric_names_what_is_allowed():
    with pytest.raises(OptcmpError) as e:
        compare_configs(read_runs(FIXTURE), "val_los", None)
    assert str(e.value) == (
        "--metric: unknown metric `val_los`; allowed: train_loss, best_train_loss, val_loss, "
        "best_val_loss, weight_norm, near_zero_frac, steps, seconds, steps_per_second")


def test_bad_baseline_names_what_is_allowed():
    with pytest.raises(OptcmpError) as e:
        compare_configs(read_runs(FIXTURE), None, "adam")
    assert str(e.value) == "--baseline: unknown config `adam`; allowed: adam-wd0.1, adam-wd0.01, adamw-wd0.1"


def test_a_folder_without_runs_csv_says_what_to_do(tmp_path):
    with pytest.raises(OptcmpError) as e:
        write_compare(tmp_path)
    assert str(e.value) == f"{tmp_path}: no runs.csv here; run `optcmp run CONFIG` first"


def test_no_ok_run_is_an_error_that_counts_the_statuses():
    runs = runs_frame({"a": {0: 1.0, 1: 2.0}}, status={"a-s0": "failed", "a-s1": "diverged"})
    with pytest.raises(OptcmpError, match=r"^no runs with status `ok` to compare \(runs: failed 1, diverged 1\)$"):
        compare_configs(runs, None, None)


def test_write_compare_writes_compare_csv(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "sweep")
    frame = write_compare(tmp_path / "sweep", "train_loss", "adam-wd0.01")
    on_disk = pd.read_csv(tmp_path / "sweep" / "compare.csv")
    assert list(on_disk["config_a"]) == ["adam-wd0.1", "adamw-wd0.1"]  # the one with a diverged run last
    assert (on_disk["config_b"] == "adam-wd0.01").all() and (on_disk["metric"] == "train_loss").all()
    np.testing.assert_allclose(on_disk["p_holm"], frame["p_holm"])
    assert list(on_disk["sentence"]) == list(frame["sentence"])
    assert not list((tmp_path / "sweep").glob(".*tmp"))


def test_a_constant_difference_has_no_p_value_and_says_why():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(np.add(A, 0.1)))})
    row = compare_configs(runs, "val_loss", None).iloc[0]
    assert math.isnan(row["p_value"]) and not row["significant"]
    assert row["sentence"] == ("a has 8.7% lower val_loss than b on every one of 5 paired seeds, "
                               "with no seed-to-seed variation, so there is no p-value")


def test_only_runs_and_finals_are_compared():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B))})
    runs["role"] = "run"
    extra = runs.iloc[[0, 5]].assign(role=["ulp", "trial"], val_loss=[100.0, -100.0],
                                     run_id=["a-s0-ulp", "b-t0"])
    row = compare_configs(pd.concat([runs, extra]), "val_loss", None).iloc[0]
    assert row["p_value"] == pytest.approx(stats.ttest_rel(A, B).pvalue, rel=1e-12) and row["n_pairs"] == 5


def two_of_four_diverged(paired: bool = True) -> pd.DataFrame:
    a = {0: 0.50, 1: 0.52, 2: 0.49, 3: 0.55}
    b = {0: 0.45, 1: 0.60, 2: 0.47, 3: 0.70} if paired else {10: 0.45, 11: 0.60, 12: 0.47, 13: 0.70}
    ids = ("b-s1", "b-s3") if paired else ("b-s11", "b-s13")
    return runs_frame({"a": a, "b": b}, status={i: "diverged" for i in ids})


def test_two_of_four_seeds_diverged_are_reported_and_tested_paired():
    runs = two_of_four_diverged()
    row = compare_configs(runs, "val_loss", None).iloc[0]
    assert (row["config_a"], row["config_b"]) == ("a", "b")  # b diverged: it ranks last
    assert (row["test"], row["n_pairs"], row["diverged_a"], row["diverged_b"]) == ("Wilcoxon signed-rank", 4, 0, 2)
    # diverged = +inf: differences a - b are 0.05, -inf, 0.02, -inf
    d = np.array([0.50 - 0.45, -np.inf, 0.49 - 0.47, -np.inf])
    # Exact over the 16 sign patterns of the ranks (2, 1, 3.5, 3.5): 4 have W+ <= 3, p = 2 * 4/16.
    assert row["p_value"] == pytest.approx(stats.wilcoxon(d).pvalue) == pytest.approx(0.5)
    assert row["rank_biserial"] == pytest.approx((1 + 2 - 3.5 - 3.5) / 10)  # |d| ranks 2, 1, 3.5, 3.5
    assert row["mean_b"] == pytest.approx(0.46) and np.isnan(row["diff"]) and np.isnan(row["effect_size"])
    assert row["p_diverged"] == pytest.approx(stats.fisher_exact([[0, 4], [2, 2]]).pvalue) == pytest.approx(3 / 7)
    assert row["sentence"] == (
        "no significant difference between a and b in val_loss (a ranks lower, p=0.5, Wilcoxon signed-rank with "
        "diverged runs ranked worst, 4 paired seeds); diverged: a 0 of 4, b 2 of 4 "
        "(Fisher's exact test p=0.43 (Holm): not a significant difference)")


def test_two_of_four_seeds_diverged_unpaired_use_mann_whitney():
    row = compare_configs(two_of_four_diverged(paired=False), "val_loss", None).iloc[0]
    xb = [0.45, np.inf, 0.47, np.inf]
    ref = stats.mannwhitneyu([0.50, 0.52, 0.49, 0.55], xb, alternative="two-sided")
    assert (row["test"], row["n_pairs"], row["diverged_b"]) == ("Mann-Whitney U", 0, 2)
    assert row["p_value"] == pytest.approx(ref.pvalue)
    assert row["rank_biserial"] == pytest.approx(2 * ref.statistic / 16 - 1)
    assert row["sentence"].endswith("with diverged runs ranked worst, 4 vs 4 seeds); diverged: a 0 of 4, b 2 of 4 "
                                    "(Fisher's exact test p=0.43 (Holm): not a significant difference)")


def test_a_config_that_always_diverges_loses_the_rank_test():
    a = {i: 1.0 + 0.01 * i for i in range(6)}
    runs = runs_frame({"a": a, "b": {i: 0.0 for i in range(6)}}, status={f"b-s{i}": "diverged" for i in range(6)})
    row = compare_configs(runs, "val_loss", None).iloc[0]
    assert row["p_value"] == pytest.approx(stats.wilcoxon(np.full(6, -np.inf)).pvalue) == pytest.approx(2 / 64)
    assert row["significant"] and row["rank_biserial"] == -1.0
    assert row["sentence"].startswith("a has lower val_loss than b (p=0.031, Wilcoxon signed-rank with diverged "
                                      "runs ranked worst, 6 paired seeds); diverged: a 0 of 6, b 6 of 6 "
                                      "(Fisher's exact test p=0.0022 (Holm): a significant difference)")


def test_diverged_accuracy_runs_rank_worst_too():
    runs = runs_frame({"a": {0: 0.9, 1: 0.8, 2: 0.85}, "b": {0: 0.95, 1: 0.9, 2: 0.99}},
                      metric="val_accuracy", status={"b-s2": "diverged"})
    row = compare_configs(runs, "val_accuracy", None).iloc[0]
    d = np.array([0.9 - 0.95, 0.8 - 0.9, np.inf])  # a - b, b's diverged seed as -inf
    assert row["p_value"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert row["rank_biserial"] == pytest.approx((3 - 1 - 2) / 6)


def test_divergence_and_metric_tests_are_holm_corrected_as_separate_families():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B)), "c": dict(enumerate(np.add(A, 0.3)))},
                      status={"c-s0": "diverged", "c-s1": "diverged"})
    frame = compare_configs(runs, "val_loss", None)
    np.testing.assert_allclose(frame["p_holm"], holm(frame["p_value"]))
    np.testing.assert_allclose(frame["p_diverged_holm"], holm(frame["p_diverged"]))
    assert frame["p_diverged"].notna().sum() == 2  # a-b had no divergence: no test


def test_detectable_difference_of_a_paired_test_has_power_0_8():
    row = compare_configs(runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B))}), "val_loss").iloc[0]
    n, sd = 5, np.subtract(A, B).std(ddof=1)
    nc = row["detectable_diff"] * math.sqrt(n) / sd
    crit = stats.t.ppf(0.975, n - 1)
    assert stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) == pytest.approx(0.8, abs=1e-9)
    assert row["detectable_rel"] == pytest.approx(row["detectable_diff"] / np.mean(B))
    assert row["power_sentence"] == (f"n=5 paired seeds cannot tell apart differences below "
                                     f"{row['detectable_rel'] * 100:.2g} % of b's val_loss (power 0.8, alpha 0.05)")


def test_detectable_difference_of_a_welch_test_has_power_0_8():
    runs = runs_frame({"a": dict(enumerate(A)), "b": {10 + i: v for i, v in enumerate(B[:3])}})
    row = compare_configs(runs, "val_loss").iloc[0]
    va, vb = np.var(A, ddof=1) / 5, np.var(B[:3], ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 2)
    nc = row["detectable_diff"] / math.sqrt(va + vb)
    crit = stats.t.ppf(0.975, df)
    assert stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) == pytest.approx(0.8, abs=1e-9)
    assert row["power_sentence"].startswith("n=5 vs 3 seeds (Welch) cannot tell apart differences below ")


def test_one_seed_each_is_said_plainly():
    runs = runs_frame({"a": {0: 1.0}, "b": {0: 2.0}})
    row = compare_configs(runs, "val_loss").iloc[0]
    assert row["note"] == "too few seeds" and row["power_sentence"] == ""
    assert compare_notes(runs, "val_loss") == ["one seed: no noise estimate, configs are not ranked"]
    assert compare_notes(runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B))})) == []


def test_compare_notes_say_when_the_metric_is_chaotic():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B))})
    probe = runs.iloc[[0]].assign(run_id="a-s0-ulp", role="ulp", val_loss=A[0] + 0.05, train_loss=A[0])
    runs = pd.concat([runs.assign(role="run"), probe])
    ratio = 0.05 / np.std(A, ddof=1)
    assert compare_notes(runs, "val_loss") == [
        f"val_loss is chaotic in a: a 1-ulp perturbation of seed 0 moved it by {ratio * 100:.0f} % of the "
        "seed-to-seed spread; single runs do not reproduce; compare means over many seeds, not single seeds"]
    assert compare_notes(runs, "train_loss") == [
        "also chaotic (a 1-ulp perturbation moves them by >= 1 % of the seed-to-seed spread): val_loss"]
