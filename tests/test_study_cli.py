"""`optcmp run` (and `optcmp tune`) of a study: every mistake one line with file, key and what
is allowed, exit 2, before anything trains or is written; a study's terminal output."""
from __future__ import annotations

import json

import optuna
import pytest
from typer.testing import CliRunner

from optcmp.cli import app
from tests.refusals import BASE, refused

FORMS = ("{log_uniform: [low, high]}, {uniform: [low, high]}, {int: [low, high]}, {choice: [values]} or a list of "
         "values (a grid axis)")
ADAM_KEYWORDS = "amsgrad, betas, capturable, decoupled_weight_decay, differentiable, eps, foreach, fused, lr, maximize, weight_decay"


@pytest.mark.parametrize("body, message", [
    ("tune: {space: {optimizer.lr: {loguniform: [1.0e-4, 0.1]}}, budget: 4}",
     f"5: tune.space.optimizer.lr: unknown distribution `loguniform` (did you mean `log_uniform`?); allowed: {FORMS}"),
    ("tune: {space: {optimizer.lr: {uniform: [0.1, 0.1]}}, budget: 4}",
     "5: tune.space.optimizer.lr: uniform: empty range [0.1, 0.1]; allowed: low < high"),
    ("tune: {space: {optimizer.lr: {uniform: [0.2, 0.1]}}, budget: 4}",
     "5: tune.space.optimizer.lr: uniform: low 0.2 is above high 0.1; allowed: low < high"),
    ("tune: {space: {optimizer.lr: {log_uniform: [0, 0.1]}}, budget: 4}",
     "5: tune.space.optimizer.lr: log_uniform: a log scale needs low > 0, got [0, 0.1]; allowed: 0 < low < high"),
    ("tune: {space: {optimizer.lr: [0.1]}, budget: 0}", "5: tune.budget: expected an integer ≥ 1 or null, got 0"),
    ("tune: {space: {model.widht: [1, 2]}, budget: 2}",
     "5: tune.space.model.widht: addresses no config value; allowed: model.kind, model.hidden, model.norm, "
     "model.activation, model.channels, model.kwargs"),
    ("optimizers: {adam: {name: adam}, sgd: {name: sgd, lr: 0.1}}\n"
     "tune: {space: {optimizer.momentum: {uniform: [0.5, 0.9]}}, budget: 2}",
     f"6: tune.space.optimizer.momentum: `Adam` (variant adam) takes no argument `momentum`; allowed: {ADAM_KEYWORDS}"),
    ("optimizers: {sgd: {name: sgd, lr: 0.1, space: {optimizer.nesterov: [true, 'no']}}}\ntune: {budget: 2}",
     "5: optimizers.sgd.space.optimizer.nesterov: expected true or false (`SGD`'s nesterov), got 'no' (a string)"),
    ("tune: {space: {optimizer.lr: [0.1, 0.01]}, budget: 2, seeds: [0, 1], final_seeds: [1, 2]}",
     "5: tune.final_seeds: seed 1 is also a tuning seed (tune.seeds: [0, 1]); allowed: seeds that played no part in "
     "the tuning (or a count: fresh ones are chosen)"),
    ("tune: {space: {optimizer.lr: [0.1, 0.01]}, budget: 2, sampler: sobol}",
     "5: tune.sampler: expected one of grid, random, tpe, qmc, got 'sobol' (a string)"),
    ("tune: {space: {model.hidden: {choice: [[8], [0]]}}, budget: 2}",
     "5: tune.space.model.hidden: value [0]: model.hidden[0]: expected an integer ≥ 1, got 0"),
    ("tune: {space: {optimizer.lr: [0.1, 0.01]}, budget: 2, metric: val_accuracy}\ndata: {val_fraction: 0.2}",
     "5: tune.metric: `val_accuracy` needs a classification data set; allowed here: a loss"),
    ("tune: {space: {optimizer.lr: [0.1, 0.01]}, budget: 2, metric: best_train_loss, direction: maximize}",
     "5: tune.direction: maximize disagrees with `best_train_loss`, which the verdict ranks lower first; allowed: auto "
     "or minimize"),
    ("tune: {space: {optimizer.lr: [0.1, 0.01]}, budget: 2, prune: halving, metric: weight_norm}",
     "5: tune.prune: halving judges trials at the evaluation points, where `weight_norm` has no value; allowed with "
     "halving: train_loss, best_train_loss, train_loss_tail, val_loss, best_val_loss, val_loss_tail, val_accuracy, "
     "best_val_accuracy, val_accuracy_tail"),
    ("tune: {space: {train.steps: {int: [10, 20]}}, budget: 2, prune: halving}",
     "5: tune.space.train.steps: halving compares trials at the same steps, so it cannot tune how long they train; "
     "allowed with halving: a space without train.steps or train.epochs (or prune: none)"),
    ("workloads: {w: {data: {kind: nosuch}}}\ntune: {space: {optimizer.lr: [0.1, 0.01]}, budget: 2}",
     "5: workloads.w.data.kind: unknown data set `nosuch`; allowed: quadratic, random_classification, sklearn, csv or "
     "package.module:factory"),
    ("optimizers: {b-c: {name: adam}, c: {name: sgd, lr: 0.1}}\nworkloads: {a: {}, a-b: {}}\n"
     "tune: {space: {optimizer.lr: [0.1, 0.01]}, budget: 2}",
     "6: workloads.a-b: workload a-b with variant c and workload a with variant b-c are both named a-b-c in run ids; "
     "give one of them another name"),
    ("workloads: {w: {}}", "5: workloads: several workloads are a study's: give a tune: section (without one, sweep "
     "model, data or train keys instead)"),
])
def test_a_bad_study_is_refused_in_one_line_before_anything_is_written(write_config, tmp_path, body, message):
    path = write_config(BASE + body + "\n")
    assert refused(path, tmp_path / "out") == f"{path}:{message}"


def test_refusals_of_the_command_line(write_config, tmp_path):
    study = write_config(BASE + "tune: {space: {optimizer.lr: [0.1, 0.01]}, budget: 2, prune: halving}\n")
    assert refused(study, tmp_path / "out", "--jobs", "2") == (
        "prune: halving decides at every evaluation point in this process; allowed with it: the local executor with --jobs 1")
    assert refused(study, tmp_path / "out", "--storage", "nosuch://x") == (
        "--storage nosuch://x: cannot open it as an Optuna storage: Can't load plugin: sqlalchemy.dialects:nosuch")
    plain = write_config(BASE + "optimizer: {name: adam}\n", name="plain.yaml")
    assert refused(plain, tmp_path / "out", command="tune") == (
        f"{plain}: `optcmp tune` runs a study, and this config has no tune: section; `optcmp run` trains its sweep")


STUDY = """\
name: cli
device: cpu
model: {hidden: [8]}
train: {steps: 20}
log: {every: 5, histograms: {every: 0}}
optimizers:
  adam: {name: adam}
  sgd: {name: sgd, momentum: 0.9}
tune:
  space: {optimizer.lr: [1.0e-4, 1.0e-3]}
  sampler: grid
  final_seeds: 2
"""


def test_a_study_prints_its_verdict_and_a_rerun_trains_nothing(write_config, tmp_path):
    path = write_config(STUDY)
    out = tmp_path / "out"
    first = CliRunner().invoke(app, ["tune", str(path), "--out", str(out)])
    assert first.exit_code == 0, first.output
    verdict = json.loads((out / "cli" / "verdict.json").read_text())
    lines = first.output.splitlines()
    assert lines[lines.index("Verdict (cli):") + 1] == (
        "Each variant tuned with 2 trials (grid sampler) on tuning seed 0, scored on best_train_loss (lower is better); "
        "the best trial of each rerun on final seeds 1, 2.")
    assert f"- {verdict['comparisons'][0]['sentence']}" in lines
    assert "8 of 8 runs finished; 8 trained in" in first.output
    assert (f"Pictures: optcmp report {out / 'cli'} (report.html); the trials in optuna-dashboard: "
            f"optcmp board --study {out / 'cli'}") in lines
    assert (out / "cli" / "verdict.md").read_text().startswith("# Verdict\n\nEach variant tuned with 2 trials")
    again = CliRunner().invoke(app, ["run", str(path), "--out", str(out)])
    assert again.exit_code == 0 and "8 of 8 runs finished (8 kept from an earlier attempt); 0 trained in" in again.output
    fresh = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--fresh"])
    assert fresh.exit_code == 0 and "8 of 8 runs finished; 8 trained in" in fresh.output
    assert json.loads((out / "cli" / "verdict.json").read_text()) == verdict


def test_a_study_in_another_storage(write_config, tmp_path):
    path = write_config(STUDY)
    out, db = tmp_path / "out", tmp_path / "shared.db"
    storage = f"sqlite:///{db}"
    first = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--storage", storage])
    assert first.exit_code == 0, first.output
    assert not (out / "cli" / "study.db").exists()
    assert sorted(optuna.get_all_study_names(storage)) == ["cli/adam", "cli/sgd"]
    again = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--storage", storage])
    assert again.exit_code == 0 and "0 trained" in again.output
    other = write_config(STUDY.replace("steps: 20", "steps: 21"), name="other.yaml")
    refused_again = CliRunner().invoke(app, ["run", str(other), "--out", str(tmp_path / "o2"), "--storage", storage])
    assert refused_again.exit_code == 2
    assert refused_again.output.strip() == (
        f"error: {storage} holds study `cli/adam` of another config (its space, sampler, seeds, metric or training "
        "differ); run with --fresh to discard it, or give this config another `name`")
