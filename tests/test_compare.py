"""compare.py: t-tests against scipy on fixed numbers, Holm by hand, the sentences, the errors."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from optcmp.compare import compare_configs, describe, holm, write_compare
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
    frame = compare_configs(read_runs(FIXTURE), None, None)
    assert list(frame["sentence"]) == [
        "adamw-wd0.1 has 12% lower val_loss than adam-wd0.1, p=0.0073 (Holm), 3 paired seeds",
        "adamw-wd0.1 has 12% lower val_loss than adam-wd0.01, p=0.0043 (Holm), 3 paired seeds",
        "no significant difference between adam-wd0.1 and adam-wd0.01 in val_loss "
        "(adam-wd0.1 0.7% lower, p=0.42 (Holm), 4 paired seeds)",
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


def test_bad_metric_names_what_is_allowed():
    with pytest.raises(OptcmpError) as e:
        compare_configs(read_runs(FIXTURE), "val_los", None)
    assert str(e.value) == (
        "--metric: unknown metric `val_los`; allowed: train_loss, best_train_loss, val_loss, "
        "best_val_loss, weight_norm, near_zero_frac, steps, seconds, steps_per_second")


def test_bad_baseline_names_what_is_allowed():
    with pytest.raises(OptcmpError) as e:
        compare_configs(read_runs(FIXTURE), None, "adam")
    assert str(e.value) == "--baseline: unknown config `adam`; allowed: adamw-wd0.1, adam-wd0.1, adam-wd0.01"


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
    assert list(on_disk["config_a"]) == ["adamw-wd0.1", "adam-wd0.1"]
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
