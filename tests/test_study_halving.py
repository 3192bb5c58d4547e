"""`prune: halving`: Optuna's successive halving stops hopeless trials in training; a pruned
member leaves its vectorized group and the others' numbers are bit for bit those of the same
study without pruning; a trial is judged on the mean of its tuning seeds."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest

from optcmp.config import load_config
from optcmp.errors import OptcmpError
from optcmp.sampling import rung_steps
from optcmp.study_run import run_study
from optcmp.units import Execution

CONFIG = """\
name: {name}
device: cpu
model: {{kind: mlp, hidden: [8, 8], norm: layernorm, activation: tanh}}
data: {{kind: random_classification, samples: 80, features: 4}}
train: {{steps: 54}}
log: {{every: 2, histograms: {{every: 0}}}}
optimizers:
  adam: {{name: adam}}
  adamw: {{name: adamw, weight_decay: 0.1}}
tune:
  space: {{optimizer.lr: {{log_uniform: [1.0e-6, 1.0e-1]}}}}
  budget: 9
  seeds: 2
  final_seeds: 2
  prune: {prune}
"""


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("halving")
    out = {}
    for prune in ("halving", "none"):
        path = root / f"{prune}.yaml"
        path.write_text(CONFIG.format(name=prune, prune=prune))
        run_study(load_config(path), root / prune)
        out[prune] = root / prune
    return out


def test_rungs():
    assert rung_steps(54) == [2, 6, 18] and rung_steps(1000) == [37, 111, 333] and rung_steps(10) == [1, 3, 9]


def test_a_pruned_member_leaves_its_group_and_the_others_are_unchanged(studies):
    pruned, plain = studies["halving"], studies["none"]
    runs = pd.read_csv(pruned / "runs.csv")
    trial_runs = runs[runs.role == "trial"]
    assert set(trial_runs.engine) == {"vectorized"} and set(trial_runs.group_size.dropna()) == {36}
    stopped = trial_runs[trial_runs.status == "pruned"]
    assert 0 < len(stopped) < len(trial_runs)
    assert set(stopped.pruned_step) <= {2, 6, 18}  # the first evaluation point at or past each rung
    for run_id in trial_runs.run_id:
        a, b = pruned / run_id, plain / run_id
        if run_id in set(stopped.run_id):
            assert not (a / "weights.npz").exists()
            rows, full = (d.joinpath("metrics.csv").read_text().splitlines() for d in (a, b))
            step = json.loads((a / "result.json").read_text())["pruned_step"]
            assert rows[-1].split(",")[0] == str(step) and rows == full[:len(rows)]  # the same numbers until it left
            continue
        assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
        wa, wb = np.load(a / "weights.npz"), np.load(b / "weights.npz")
        assert all(wa[n].tobytes() == wb[n].tobytes() for n in wb.files)


def test_pruned_trials_in_optuna_and_in_trials_csv(studies):
    exp = studies["halving"]
    trials = pd.read_csv(exp / "trials.csv")
    runs = pd.read_csv(exp / "runs.csv").set_index("run_id")
    storage = f"sqlite:///{exp / 'study.db'}"
    for variant in ("adam", "adamw"):
        study = optuna.load_study(study_name=f"halving/{variant}", storage=storage)
        rows = trials[trials.variant == variant].set_index("trial")
        for t in study.trials:
            row = rows.loc[t.number]
            seeds = [runs.loc[f"{variant}-t{t.number}-s{s}"] for s in (0, 1)]
            if row.status == "pruned":
                assert t.state == optuna.trial.TrialState.PRUNED
                assert {r.status for r in seeds} == {"pruned"} and {r.pruned_step for r in seeds} == {row.pruned_step}
                assert row.pruned_value == t.intermediate_values[row.pruned_step] and row["rank"] > (rows.status == "ok").sum()
            else:
                assert t.state == optuna.trial.TrialState.COMPLETE and row.status == "ok"
                assert t.value == pytest.approx(np.mean([r.best_train_loss for r in seeds]), rel=1e-12)
            # judged on its seeds: the mean of their running best full-set training loss there
            for step, value in t.intermediate_values.items():
                best = [pd.read_csv(exp / f"{variant}-t{t.number}-s{s}" / "metrics.csv").query(f"step <= {step}")["train/loss"].min()
                        for s in (0, 1)]
                assert value == pytest.approx(np.mean(best), rel=1e-6)
        assert rows["rank"].min() == 1 and rows.loc[rows["rank"] == 1, "status"].item() == "ok"


def test_halving_needs_a_metric_with_values_in_training_and_this_process(write_config, tmp_path):
    path = write_config(CONFIG.format(name="bad", prune="halving") + "  metric: weight_norm\n")
    with pytest.raises(OptcmpError) as exc:
        run_study(load_config(path), tmp_path / "bad")
    assert str(exc.value) == (f"{path}:15: tune.prune: halving judges trials at the evaluation points, where "
                              "`weight_norm` has no value; allowed with halving: train_loss, best_train_loss, "
                              "train_loss_tail, val_loss, best_val_loss, val_loss_tail, val_accuracy, best_val_accuracy, "
                              "val_accuracy_tail")
    path = write_config(CONFIG.format(name="jobs", prune="halving"))
    with pytest.raises(OptcmpError) as exc:
        run_study(load_config(path), tmp_path / "jobs", execution=Execution(jobs=2))
    assert str(exc.value) == ("prune: halving decides at every evaluation point in this process; allowed with it: "
                              "the local executor with --jobs 1")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "jobs").exists()
