"""The verdict over several workloads: per-workload rankings and comparisons, and Dolan–Moré
performance profiles across them (known values by hand); trial scores and ranks."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from optcmp.config import load_config
from optcmp.study_run import run_study
from optcmp.trials import Outcome, rank_key, ranks, score
from optcmp.verdict import profiles, ranking


def test_performance_profiles_by_hand():
    scores = {"w1": {"a": 1.0, "b": 2.0, "c": math.inf},
              "w2": {"a": 3.0, "b": 1.5, "c": 1.5},
              "w3": {"a": 4.0, "b": 5.0, "c": 8.0}}
    p = profiles(scores, maximize=False)
    assert p["ratios"] == {"w1": {"a": 1.0, "b": 2.0, "c": None}, "w2": {"a": 2.0, "b": 1.0, "c": 1.0},
                           "w3": {"a": 1.0, "b": 1.25, "c": 2.0}}
    assert p["taus"] == [1.0, 1.25, 2.0]
    assert p["profiles"] == {"a": [2 / 3, 2 / 3, 1.0], "b": [1 / 3, 2 / 3, 1.0], "c": [1 / 3, 1 / 3, 2 / 3]}
    accuracy = profiles({"w": {"a": 0.8, "b": 0.4}}, maximize=True)
    assert accuracy["ratios"] == {"w": {"a": 1.0, "b": 2.0}} and accuracy["profiles"] == {"a": [1.0, 1.0], "b": [0.0, 1.0]}


def test_ranking_puts_divergence_first_then_the_mean():
    stats = {"a": {"n": 5, "diverged": 1, "mean": 0.1}, "b": {"n": 5, "diverged": 0, "mean": 0.9},
             "c": {"n": 5, "diverged": 0, "mean": 0.5}, "d": {"n": 5, "diverged": 5, "mean": None}}
    assert ranking(stats, maximize=False) == ["c", "b", "a", "d"]
    assert ranking(stats, maximize=True) == ["b", "c", "a", "d"]


def result(status, value=None, pruned_step=None):
    return {"status": status, "metrics": {} if value is None else {"m": value}, "pruned_step": pruned_step}


def test_trial_scores_and_ranks():
    assert score([result("ok", 1.0), result("ok", 3.0)], "m", False) == Outcome("ok", 2.0, 2)
    assert score([result("ok", 1.0), result("diverged")], "m", False) == Outcome("diverged", math.inf, 2, 1)
    assert score([result("diverged")], "m", True) == Outcome("diverged", -math.inf, 1, 1)
    assert score([result("pruned", pruned_step=6), result("pruned", pruned_step=6)], "m", False) == \
        Outcome("pruned", None, 2, 0, 6)
    assert score([result("ok", 1.0), None], "m", False).status == "running"
    assert score([result("failed"), result("ok", 1.0)], "m", False).status == "failed"
    outcomes = [Outcome("diverged", math.inf, 2, 2), Outcome("ok", 3.0, 2), Outcome("pruned", None, 2, 0, 6),
                Outcome("ok", 1.0, 2), Outcome("pruned", None, 2, 0, 18), Outcome("diverged", math.inf, 2, 1),
                Outcome("running", None, 2)]
    keys = [rank_key(o, k, False, last_value=0.5) for k, o in enumerate(outcomes)]
    assert ranks(keys) == [6, 2, 4, 1, 3, 5, None]  # ok by score, pruned (later first), diverged last


WORKLOADS = """\
name: two
device: cpu
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 40}
log: {every: 5, histograms: {every: 0}}
optimizers:
  adam: {name: adam}
  sgdm: {name: sgd, momentum: 0.9, space: {optimizer.lr: [1.0e-5, 1.0e-4]}}
workloads:
  quad: {}
  blobs: {data: {kind: random_classification, samples: 100, features: 5}, train: {steps: 30}}
tune:
  space: {optimizer.lr: [1.0e-3, 1.0e-2]}
  sampler: grid
  final_seeds: 3
"""


def test_a_study_over_workloads_ranks_per_workload_and_across(write_config, tmp_path):
    outcome = run_study(load_config(write_config(WORKLOADS)), tmp_path / "two")
    v = outcome.verdict
    assert list(v["workloads"]) == ["quad", "blobs"]
    runs = pd.read_csv(tmp_path / "two" / "runs.csv")
    blobs = runs[runs.workload == "blobs"]
    assert set(blobs.steps) == {30} and set(runs[runs.workload == "quad"].steps) == {40}
    assert sorted(runs[runs.role == "final"].config_id.unique()) == ["blobs-adam", "blobs-sgdm", "quad-adam", "quad-sgdm"]
    scores = {}
    for w, section in v["workloads"].items():
        finals = {n: section["variants"][n]["final"] for n in ("adam", "sgdm")}
        for name, final in finals.items():
            ids = runs[(runs.config_id == f"{w}-{name}") & (runs.role == "final")]
            assert final["values"] == pytest.approx(ids.best_train_loss.tolist())
        scores[w] = {n: (f["mean"] if not f["diverged"] else math.inf) for n, f in finals.items()}
        assert section["ranking"] == ranking(finals, maximize=False)
        (pair,) = section["comparisons"]
        assert (pair["a"], pair["b"]) in (("adam", "sgdm"), ("sgdm", "adam"))
    assert v["profiles"] == json.loads(json.dumps(profiles(scores, maximize=False), default=str).replace("Infinity", "null"))
    mean_rank = {n: (v["workloads"]["quad"]["variants"][n]["rank"] + v["workloads"]["blobs"]["variants"][n]["rank"]) / 2
                 for n in ("adam", "sgdm")}
    assert {n: v["variants"][n]["mean_rank"] for n in mean_rank} == mean_rank
    assert [c["workload"] for c in v["comparisons"]] == ["quad", "blobs"]
    assert v["variants"]["adam"]["best_params"]["quad"]["optimizer.lr"] in (1e-3, 1e-2)
    trials = pd.read_csv(tmp_path / "two" / "trials.csv")
    assert trials.groupby(["workload", "variant"]).size().to_dict() == {
        ("blobs", "adam"): 2, ("blobs", "sgdm"): 2, ("quad", "adam"): 2, ("quad", "sgdm"): 2}
    assert "## Across workloads (performance profiles)" in (tmp_path / "two" / "verdict.md").read_text()
