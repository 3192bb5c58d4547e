"""Aggregation over seeds, checked against scipy on fixed numbers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from optcmp.errors import OptcmpError
from optcmp.summary import aggregate, mean_ci

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
    assert aggregate(RUNS, "train_loss").column("config_id") == ["b", "a"]
    assert aggregate(RUNS, "val_accuracy").column("config_id") == ["a", "b"]


def test_unknown_primary_is_a_user_error():
    with pytest.raises(OptcmpError) as exc:
        aggregate(RUNS, "loss")
    assert str(exc.value) == "summary.primary: unknown metric `loss`; allowed: train_loss, val_loss, val_accuracy"
