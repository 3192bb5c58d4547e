"""Aggregation over seeds, checked against scipy on fixed numbers."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from optcmp.errors import OptcmpError
from optcmp.display import markdown
from optcmp.summary import aggregate, mean_ci, write_summary

RUNS = pd.DataFrame(
    {
        "run_id": ["a-s0", "a-s1", "a-s2", "b-s0", "b-s1", "b-s2"],
        "config_id": ["a", "a", "a", "b", "b", "b"],
        "seed": [0, 1, 2, 0, 1, 2],
        "status": ["ok", "ok", "ok", "ok", "ok", "diverged"],
        "decay": ["coupled"] * 3 + ["decoupled"] * 3,
        "optimizer.name": ["adam"] * 3 + ["adamw"] * 3,
        "train_loss": [0.50, 0.55, 0.62, 0.40, 0.44, np.nan],
        "val_loss": [0.70, 0.72, 0.80, 0.90, 0.95, np.nan],
        "val_accuracy": [0.81, 0.80, 0.78, 0.70, 0.72, np.nan],
    }
)


def test_mean_std_ci_match_scipy():
    values = np.array([0.70, 0.72, 0.80])
    mean, std, low, high = mean_ci(values)
    assert mean == pytest.approx(values.mean())
    assert std == pytest.approx(values.std(ddof=1))
    ref = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
    assert (low, high) == pytest.approx(ref)


def test_single_value_has_no_spread():
    mean, std, low, high = mean_ci(np.array([1.5]))
    assert mean == 1.5 and np.isnan(std) and np.isnan(low) and np.isnan(high)


def test_aggregate_ranks_by_val_loss_and_counts_ok_runs():
    table = aggregate(RUNS)
    assert table.primary == "val_loss"
    assert table.column("config_id") == ["a", "b"]
    assert table.column("rank") == [1, 2]
    b = table.row("b")
    assert b["n"] == 2 and b["runs"] == 3 and b["status"] == "2 ok, 1 diverged"
    assert b["train_loss_mean"] == pytest.approx(0.42)
    assert b["train_loss_std"] == pytest.approx(np.std([0.40, 0.44], ddof=1))
    low, high = stats.t.interval(0.95, 1, loc=0.42, scale=stats.sem([0.40, 0.44]))
    assert (b["train_loss_ci95_low"], b["train_loss_ci95_high"]) == pytest.approx((low, high))
    assert b["decay"] == "decoupled" and b["optimizer.name"] == "adamw"


def test_primary_metric_direction():
    no_divergence = RUNS[RUNS["status"] == "ok"]
    assert aggregate(no_divergence, "train_loss").column("config_id") == ["b", "a"]
    assert aggregate(no_divergence, "val_accuracy").column("config_id") == ["a", "b"]


def test_a_config_with_diverged_runs_ranks_after_those_without():
    # b's surviving seeds have the lower train_loss, but one of its three runs diverged.
    table = aggregate(RUNS, "train_loss")
    assert table.column("config_id") == ["a", "b"] and table.column("rank") == [1, 2]
    assert table.row("b")["diverged"] == 1 and table.row("b")["diverged_frac"] == pytest.approx(1 / 3)
    assert table.notes == ["configs with diverged runs rank after those without, by their diverged share "
                           "(divergence is the worst outcome); train_loss_mean is over the runs that finished ok"]


def test_unknown_primary_is_a_user_error():
    with pytest.raises(OptcmpError) as exc:
        aggregate(RUNS, "loss")
    assert str(exc.value) == "summary.primary: unknown metric `loss`; allowed: train_loss, val_loss, val_accuracy"



def rows(values: dict[str, dict[int, float]], status: dict[str, str] | None = None, metric: str = "train_loss",
         probes: dict[str, float] | None = None, role: bool = True) -> list[dict]:
    """runs.csv rows: config -> {seed: metric}; `probes`: config -> the ulp probe's value (first seed)."""
    out = []
    for config, by_seed in values.items():
        for seed, value in by_seed.items():
            run_id = f"{config}-s{seed}"
            st = (status or {}).get(run_id, "ok")
            out.append({"run_id": run_id, "config_id": config, "seed": seed, "status": st, "decay": "coupled",
                        "optimizer.name": config, metric: None if st == "diverged" else value,
                        **({"role": "run"} if role else {})})
        if probes and config in probes:
            seed = min(by_seed)
            out.append({"run_id": f"{config}-s{seed}-ulp", "config_id": config, "seed": seed, "status": "ok",
                        "decay": "coupled", "optimizer.name": config, metric: probes[config], "role": "ulp"})
    return out


def test_only_runs_and_finals_are_aggregated_and_old_rows_count_as_runs():
    table = rows({"a": {0: 1.0, 1: 2.0, 2: 3.0}}, probes={"a": 50.0})
    table += [{"run_id": "a-t0", "config_id": "a", "seed": 0, "status": "ok", "decay": "coupled",
               "optimizer.name": "a", "train_loss": 100.0, "role": "trial"},
              {"run_id": "a-s9", "config_id": "a", "seed": 9, "status": "ok", "decay": "coupled",
               "optimizer.name": "a", "train_loss": 4.0, "role": "final"}]
    row = aggregate(table).row("a")
    assert row["n"] == 4 and row["runs"] == 4 and row["train_loss_mean"] == pytest.approx(2.5)
    old = aggregate(rows({"a": {0: 1.0, 1: 2.0}}, role=False)).row("a")  # no role column at all
    assert old["n"] == 2 and old["train_loss_mean"] == pytest.approx(1.5)


def test_intervals_of_a_loss_near_zero_and_an_accuracy_near_one_stay_in_bounds():
    table = rows({"a": {0: 0.002, 1: 0.004, 2: 3.0}})
    for r, acc in zip(table, (0.999, 1.0, 0.95)):
        r["val_accuracy"] = acc
    row = aggregate(table, "train_loss").row("a")
    assert row["train_loss_ci95_low"] == 0.0
    assert row["train_loss_ci95_high"] == pytest.approx(stats.t.interval(0.95, 2, loc=np.mean([0.002, 0.004, 3.0]),
                                                                         scale=stats.sem([0.002, 0.004, 3.0]))[1])
    assert row["val_accuracy_ci95_high"] == 1.0
    assert 0.0 <= row["val_accuracy_ci95_low"] <= row["val_accuracy_mean"] <= 1.0


def test_a_config_with_two_of_four_seeds_diverged_is_reported_as_such():
    table = rows({"a": {0: 1.0, 1: 1.1, 2: 1.2, 3: 1.3}, "b": {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8}},
                 status={"b-s1": "diverged", "b-s3": "diverged"})
    summary = aggregate(table, "train_loss")
    b = summary.row("b")
    assert (b["n"], b["runs"], b["status"], b["diverged"], b["diverged_frac"]) == (2, 4, "2 ok, 2 diverged", 2, 0.5)
    ref = stats.binomtest(2, 4).proportion_ci(0.95, method="wilson")
    assert (b["diverged_frac_ci95_low"], b["diverged_frac_ci95_high"]) == pytest.approx((ref.low, ref.high))
    assert summary.row("a")["diverged_frac"] == 0.0
    assert summary.column("config_id") == ["a", "b"]  # b's survivors are lower, but half of it diverged


def test_one_seed_ranks_nothing_and_says_so(tmp_path):
    summary = aggregate(rows({"a": {0: 1.0}, "b": {0: 2.0}}), "train_loss")
    assert summary.column("rank") == [None, None] and summary.ranked_by is None and summary.primary == "train_loss"
    assert summary.notes == ["one seed: no noise estimate, configs are not ranked"]
    lines = markdown(summary).splitlines()
    assert lines[2].startswith("| – | a |")
    assert "Not ranked; ± is the standard deviation over seeds" in lines[-3]
    assert lines[-1] == "One seed: no noise estimate, configs are not ranked."


def test_a_config_with_one_seed_among_others_is_not_ranked():
    summary = aggregate(rows({"a": {0: 1.0, 1: 1.2}, "b": {0: 0.1}, "c": {0: 2.0, 1: 2.2}}), "train_loss")
    assert summary.column("config_id") == ["a", "c", "b"] and summary.column("rank") == [1, 2, None]
    assert summary.notes == ["not ranked, fewer than two seeds with a train_loss: b"]


def test_chaos_ratio_and_list_per_config():
    seeds = {0: 3.0, 1: 3.5, 2: 4.5}
    summary = aggregate(rows({"chaotic": seeds, "smooth": seeds, "unprobed": seeds},
                             probes={"chaotic": 3.4, "smooth": 3.0 + 1e-9}), "train_loss")
    sd = np.std(list(seeds.values()), ddof=1)
    chaotic, smooth, unprobed = (summary.row(c) for c in ("chaotic", "smooth", "unprobed"))
    assert chaotic["train_loss_sensitivity"] == pytest.approx(0.4 / sd)
    assert summary.chaos["chaotic"] == {"seed": 0, "sensitivity": {"train_loss": pytest.approx(0.4 / sd)},
                                        "chaotic": ["train_loss"]}
    assert summary.chaos["smooth"]["chaotic"] == [] and unprobed["train_loss_sensitivity"] is None
    assert summary.notes == [
        f"train_loss is chaotic in chaotic: a 1-ulp perturbation of seed 0 moved it by "
        f"{0.4 / sd * 100:.0f} % of the seed-to-seed spread; single runs do not reproduce; compare means over "
        "many seeds, not single seeds"]
    records = {r["config_id"]: r for r in summary.records(nested=True)}
    assert records["chaotic"]["chaotic"] == ["train_loss"] and records["unprobed"]["chaotic"] is None
    assert records["smooth"]["sensitivity"] == {"train_loss": pytest.approx(1e-9 / sd)}
    assert "train_loss_sensitivity" not in records["smooth"]


def test_a_probe_that_diverges_where_its_seed_did_not_makes_every_metric_chaotic():
    table = rows({"a": {0: 3.0, 1: 3.5, 2: 4.5}}, probes={"a": 0.0})
    table[-1].update(status="diverged", train_loss=None)
    info = aggregate(table, "train_loss").chaos["a"]
    assert info == {"seed": 0, "sensitivity": {"train_loss": math.inf}, "chaotic": ["train_loss"]}


def test_summary_json_carries_ranking_notes_and_chaos(tmp_path):
    table = rows({"a": {0: 3.0, 1: 3.5, 2: 4.5}, "b": {0: 1.0, 1: 1.2, 2: 1.1}}, probes={"a": 3.4})
    columns = list(dict.fromkeys(k for r in table for k in r))
    with (tmp_path / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(table)
    write_summary(tmp_path)
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert (doc["primary"], doc["ranked_by"]) == ("train_loss", "train_loss")
    assert [c["config_id"] for c in doc["configs"]] == ["b", "a"] and [c["rank"] for c in doc["configs"]] == [1, 2]
    assert doc["configs"][1]["chaotic"] == ["train_loss"] and doc["configs"][0]["chaotic"] is None
    assert doc["notes"][0].startswith("train_loss is chaotic in a: a 1-ulp perturbation of seed 0")
    on_disk = pd.read_csv(tmp_path / "summary.csv").set_index("config_id")
    assert on_disk.loc["a", "chaotic"] == "train_loss" and on_disk.loc["a", "diverged"] == 0
    assert on_disk.loc["a", "train_loss_sensitivity"] == pytest.approx(0.4 / np.std([3.0, 3.5, 4.5], ddof=1))


def test_write_summary_imports_neither_pandas_nor_scipy_stats(tmp_path):
    # The summary is written at the end of every `optcmp run`: scipy.special only, for the t quantile.
    import shutil
    import subprocess
    import sys

    shutil.copytree(Path(__file__).parent / "fixtures" / "sweep", tmp_path / "sweep")
    code = (f"import sys; from optcmp.summary import write_summary; write_summary({str(tmp_path / 'sweep')!r}); "
            "print(sorted(m for m in ('pandas', 'scipy.stats', 'scipy.special', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['scipy.special']"
