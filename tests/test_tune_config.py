"""The `tune:` section's schema (issue 13.2–3): distributions, samplers, budgets, tuning
and final seeds, per-variant spaces — and one line with file, key and what is allowed for
each mistake, before anything trains. The study engine itself lives elsewhere."""
from __future__ import annotations

import pytest

from optcmp.config import Distribution, load_config
from optcmp.errors import OptcmpError
from optcmp.tuning import check_space_keywords, resolve, variant_spaces
from tests.refusals import refused

STUDY = """\
data: {kind: random_classification, val_fraction: 0.2}
optimizers:
  adam:  {name: adam, lr: 1.0e-3}
  sgdm:  {name: sgd, lr: 0.1, momentum: 0.9,
          space: {optimizer.lr: {log_uniform: [1.0e-3, 1.0]}}}
tune:
  space:
    optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
    optimizer.weight_decay: {choice: [0.0, 0.01, 0.1]}
  sampler: random
  budget: 16
  seeds: [0]
  metric: val_loss
  final_seeds: 10
  prune: none
"""
FORMS = ("{log_uniform: [low, high]}, {uniform: [low, high]}, {int: [low, high]}, {choice: [values]} or a list of "
         "values (a grid axis)")


def error_of(path, sets=()) -> str:
    with pytest.raises(OptcmpError) as exc:
        load_config(path, list(sets))
    return str(exc.value)


def test_the_spec_example_validates(write_config):
    config = load_config(write_config(STUDY)).config
    tune = config.tune
    assert (tune.sampler, tune.budget, tune.seeds, tune.metric, tune.prune, tune.seed) == ("random", 16, [0], "val_loss", "none", 0)
    assert tune.final_seeds == list(range(1, 11))  # a count: the seeds after the largest tuning seed
    spaces = variant_spaces(config)
    assert spaces["adam"] == tune.space
    assert spaces["sgdm"]["optimizer.lr"] == Distribution.model_validate({"log_uniform": [1e-3, 1.0]})  # its own
    assert spaces["sgdm"]["optimizer.weight_decay"] is tune.space["optimizer.weight_decay"]  # shared
    lr = tune.space["optimizer.lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("log_uniform", 1e-4, 1e-1, True)
    assert config.model_dump(mode="json")["tune"]["space"] == {
        "optimizer.lr": {"log_uniform": [1e-4, 1e-1]}, "optimizer.weight_decay": {"choice": [0.0, 0.01, 0.1]}}


def test_a_resolved_config_round_trips(write_config, tmp_path):
    import yaml

    config = load_config(write_config(STUDY)).config
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(again).config == config


def test_distributions_say_what_they_hold():
    int_log = Distribution.model_validate({"int": [1, 8], "log": True})
    assert (int_log.points(), int_log.contains(4), int_log.contains(4.0), int_log.contains(9)) == (
        list(range(1, 9)), True, False, False)
    grid = Distribution.model_validate([0.1, 0.01])
    assert (grid.kind, grid.points(), grid.contains(0.1), grid.model_dump()) == ("grid", [0.1, 0.01], True, [0.1, 0.01])
    uniform = Distribution.model_validate({"uniform": [0, 1]})
    assert (uniform.points(), uniform.continuous, uniform.endpoints()) == (None, True, [0, 1])


def test_final_seeds_as_a_list_and_as_a_count(write_config):
    path = write_config("tune:\n  space: {optimizer.lr: [0.1, 0.01]}\n  budget: 2\n  seeds: 3\n  final_seeds: 4\n")
    assert load_config(path).config.tune.final_seeds == [3, 4, 5, 6]
    path = write_config("tune:\n  space: {optimizer.lr: [0.1, 0.01]}\n  budget: 2\n  seeds: [5, 9]\n  final_seeds: [0, 1]\n")
    assert load_config(path).config.tune.final_seeds == [0, 1]


@pytest.mark.parametrize("tune, message", [
    ("space: {optimizer.lr: {loguniform: [1.0e-4, 0.1]}}\n  budget: 4",
     f"2: tune.space.optimizer.lr: unknown distribution `loguniform` (did you mean `log_uniform`?); allowed: {FORMS}"),
    ("space: {optimizer.lr: {uniform: [0.1, 0.1]}}\n  budget: 4",
     "2: tune.space.optimizer.lr: uniform: empty range [0.1, 0.1]; allowed: low < high"),
    ("space: {optimizer.lr: {uniform: [0.2, 0.1]}}\n  budget: 4",
     "2: tune.space.optimizer.lr: uniform: low 0.2 is above high 0.1; allowed: low < high"),
    ("space: {optimizer.lr: {log_uniform: [0, 0.1]}}\n  budget: 4",
     "2: tune.space.optimizer.lr: log_uniform: a log scale needs low > 0, got [0, 0.1]; allowed: 0 < low < high"),
    ("space: {train.steps: {int: [0, 100], log: true}}\n  budget: 4",
     "2: tune.space.train.steps: int with log: a log scale needs low > 0, got [0, 100]; allowed: 0 < low < high"),
    ("space: {optimizer.lr: {int: [1, 2.5]}}\n  budget: 4",
     "2: tune.space.optimizer.lr: int: expected [low, high], two integers, got [1, 2.5]"),
    ("space: {optimizer.lr: {uniform: [0.1]}}\n  budget: 4",
     "2: tune.space.optimizer.lr: uniform: expected [low, high], two numbers, got [0.1]"),
    ("space: {optimizer.lr: {uniform: [0.1, 0.2], int: [1, 2]}}\n  budget: 4",
     f"2: tune.space.optimizer.lr: give one distribution, got uniform and int; allowed: {FORMS}"),
    ("space: {optimizer.lr: {choice: [0.1, 0.1]}}\n  budget: 4",
     "2: tune.space.optimizer.lr: choice: 0.1 is given twice; allowed: distinct values"),
    ("space: {optimizer.lr: 0.1}\n  budget: 4", f"2: tune.space.optimizer.lr: expected a distribution, got 0.1; allowed: {FORMS}"),
    ("space: {optimizer.lr: {uniform: [-1, 0.1]}}\n  budget: 4",
     "2: tune.space.optimizer.lr: expected a number > 0 or null, got -1"),
    ("space: {optimizer.lr: [0.1, 0.01]}\n  budget: 0", "3: tune.budget: expected an integer ≥ 1 or null, got 0"),
    ("space: {optimizer.lr: [0.1, 0.01]}",
     "1: tune.budget: give the trials per variant, an integer ≥ 1 (only sampler: grid may leave it out, for the whole grid)"),
    ("space: {model.widht: [1, 2]}\n  budget: 2",
     "2: tune.space.model.widht: addresses no config value; allowed: model.kind, model.hidden, model.norm, "
     "model.activation, model.channels, model.kwargs"),
    ("space: {optimizer.grups: [1, 2]}\n  budget: 2", None),  # an optimizer keyword: checked against the class later
    ("space: {log.every: [1, 2]}\n  budget: 2",
     "2: tune.space.log.every: a search space tunes keys of model, data, train, optimizer, scheduler; `log` is not one of them"),
    ("space: {model: [1, 2]}\n  budget: 2", "2: tune.space.model: `model` is a whole section; give a key inside it"),
    ("space: {optimizer.lr: [0.1, 0.01]}\n  seeds: [0, 1]\n  final_seeds: [1, 2]\n  budget: 2",
     "4: tune.final_seeds: seed 1 is also a tuning seed (tune.seeds: [0, 1]); allowed: seeds that played no part in "
     "the tuning (or a count: fresh ones are chosen)"),
    ("space: {optimizer.lr: [0.1, 0.01]}\n  sampler: gird\n  budget: 2",
     "3: tune.sampler: expected one of grid, random, tpe, qmc, got 'gird' (a string) (did you mean `grid`?)"),
    ("space: {optimizer.lr: {log_uniform: [1.0e-4, 0.1]}}\n  sampler: grid",
     "2: tune.space.optimizer.lr: sampler grid needs a finite set of values, got a log_uniform range; allowed with "
     "grid: a list of values, {choice: [...]} or {int: [low, high]} of at most 100,000 values"),
    ("space: {train.steps: {int: [1, 1000000]}}\n  sampler: grid",
     "2: tune.space.train.steps: sampler grid needs a finite set of values, got an int range of 1,000,000 values; "
     "allowed with grid: a list of values, {choice: [...]} or {int: [low, high]} of at most 100,000 values"),
    ("space: {optimizer.lr: [0.1, 0.01, 0.001]}\n  sampler: grid\n  budget: 5",
     "4: tune.budget: 5 trials, but the grid has 3 points; allowed: at most 3 (a grid point is not tried twice), or "
     "leave budget out for the whole grid"),
    ("space: {optimizer.lr: [0.1, 0.01]}\n  prune: asha\n  budget: 2",
     "3: tune.prune: expected one of none, halving, got 'asha' (a string)"),
    ("space: {optimizer.lr: [0.1, 0.01]}\n  metric: val_accurcy\n  budget: 2",
     "3: tune.metric: unknown metric `val_accurcy` (did you mean `val_accuracy`?); allowed: train_loss, val_loss, "
     "val_accuracy, train_accuracy, best_train_loss, best_val_loss, best_val_accuracy, train_loss_tail, val_loss_tail, "
     "val_accuracy_tail, weight_norm, near_zero_frac, steps, seconds, steps_per_second"),
    ("space: {optimizer.lr: [0.1, 0.01]}\n  metric: val_loss\n  budget: 2",
     "3: tune.metric: `val_loss` needs a validation split; allowed: set data.val_fraction > 0, or a training metric "
     "(train_loss)"),
    ("budget: 2", "1: tune.space: nothing to tune: give tune.space, or a space for every variant"),
])
def test_bad_tune_sections(write_config, tune, message):
    path = write_config(f"tune:\n  {tune}\n")
    if message is None:
        load_config(path)
    else:
        assert error_of(path) == f"{path}:{message}"


def test_a_study_error_exits_2_before_anything_is_written(write_config, tmp_path):
    path = write_config("tune:\n  space: {optimizer.lr: {log_uniform: [0, 0.1]}}\n  budget: 4\n")
    assert refused(path, tmp_path / "out") == (f"{path}:2: tune.space.optimizer.lr: log_uniform: a log scale needs "
                                              "low > 0, got [0, 0.1]; allowed: 0 < low < high")


def test_a_grid_budget_is_equal_for_every_variant(write_config):
    path = write_config("optimizers:\n  a: {name: adam}\n  b: {name: adam, space: {optimizer.lr: [0.1, 0.2, 0.3]}}\n"
                        "tune:\n  sampler: grid\n  space: {optimizer.lr: [0.1, 0.2]}\n")
    assert error_of(path) == (f"{path}:4: tune: the variants' grids differ in size (a 2, b 3), so the whole grid is "
                              "no equal budget; allowed: tune.budget ≤ 2")
    assert load_config(path, ["tune.budget=2"]).config.tune.budget == 2
    assert error_of(path, ["tune.budget=3"]) == (
        "--set tune.budget=3: tune.budget: 3 trials, but variant a's grid has 2 points; allowed: at most 2 (a grid "
        "point is not tried twice), or leave budget out for the whole grid")


def test_a_study_is_not_a_sweep(write_config):
    path = write_config("tune:\n  space: {optimizer.lr: [0.1, 0.01]}\n  budget: 2\nsweep: {optimizer.weight_decay: [0, 0.1]}\n")
    assert error_of(path) == (f"{path}:4: sweep: a study (tune:) searches tune.space instead of a sweep; put the "
                              "swept keys into tune.space as lists (grid axes)")


def test_a_study_counts_its_runs_against_the_cap(write_config):
    path = write_config("tune:\n  space: {optimizer.lr: {log_uniform: [1.0e-4, 0.1]}}\n  budget: 5000\n  seeds: 3\n")
    assert error_of(path) == (
        f"{path}:3: tune.budget: the study trains 15,010 runs (1 variant × (5,000 trials × 3 seeds + 10 final seeds)), "
        "more than max_runs (10,000); allowed: at most max_runs (raise it with `max_runs: N` in the config or --set max_runs=N)")


def test_space_keywords_are_checked_against_each_variant_class(write_config):
    path = write_config("optimizers:\n  adam: {name: adam}\n  sgdm: {name: sgd, lr: 0.1}\n"
                        "tune:\n  space: {optimizer.momentum: {uniform: [0.5, 0.9]}}\n  budget: 2\n")
    with pytest.raises(OptcmpError) as exc:
        check_space_keywords(load_config(path))
    assert str(exc.value) == (
        f"{path}:5: tune.space.optimizer.momentum: `Adam` (variant adam) takes no argument `momentum`; allowed: "
        "amsgrad, betas, capturable, decoupled_weight_decay, differentiable, eps, foreach, fused, lr, maximize, weight_decay")
    path = write_config("optimizer: {name: sgd, lr: 0.1}\n"
                        "tune:\n  space: {optimizer.nesterov: [true, 'no'], optimizer.momentum: {uniform: [0, 0.9]}}\n"
                        "  budget: 2\n")
    with pytest.raises(OptcmpError) as exc:
        check_space_keywords(load_config(path))
    assert str(exc.value) == (f"{path}:3: tune.space.optimizer.nesterov: expected true or false (`SGD`'s nesterov), "
                              "got 'no' (a string)")
    path = write_config("scheduler: {name: steplr, step_size: 3}\n"
                        "tune:\n  space: {scheduler.step_size: {int: [1, 10]}, optimizer.lr: [0.1]}\n  budget: 1\n")
    check_space_keywords(load_config(path))


def test_a_trial_config_is_resolved_per_variant(write_config):
    config = load_config(write_config(STUDY)).config
    trial = resolve(config, "sgdm", {"optimizer.lr": 0.02, "optimizer.weight_decay": 0.1}, seed=4)
    assert (trial.optimizer.name, trial.optimizer.lr, trial.optimizer.weight_decay) == ("sgd", 0.02, 0.1)
    assert trial.optimizer.kwargs()["momentum"] == 0.9
    assert (trial.seeds, trial.tune, trial.optimizers) == ([4], None, {})
