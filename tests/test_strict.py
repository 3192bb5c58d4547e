"""Strict values (issue 12.1): booleans are not numbers, strings are not booleans, numbers
in strings are not numbers, in the config models and in every keyword that reaches an
optimizer, scheduler, model or data factory. Each refusal: one line, exit 2, nothing written."""
from __future__ import annotations

import pytest

from optcmp.config import MAX_SEED, load_config
from optcmp.data import SHUFFLE_STREAM
from optcmp.errors import OptcmpError
from tests.refusals import BASE, refused


def error_of(path) -> str:
    with pytest.raises(OptcmpError) as exc:
        load_config(path)
    return str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("optimizer: {lr: yes}", "5: optimizer.lr: expected a number > 0 or null, got yes (a YAML boolean)"),
    ("optimizer: {lr: '0.1'}", "5: optimizer.lr: expected a number > 0 or null, got '0.1' (a string)"),
    ("seeds: [1, true]", "5: seeds[1]: expected an integer in [0, 9223372036854751506], got true (a YAML boolean)"),
    ("seeds: yes", "5: seeds: expected a list of integers in [0, 9223372036854751506] or a count in [1, 1,000,000], "
                    "got yes (a YAML boolean)"),
    ("train: {steps: true}", "5: train.steps: expected an integer ≥ 1 or null, got true (a YAML boolean)"),
    ("data: {standardize: 'false'}", "5: data.standardize: expected true or false, got 'false' (a string)"),
    ("data: {batch_size: fulll}", "5: data.batch_size: expected `full` or an integer ≥ 1, got 'fulll' (a string)"),
    ("data: {batch_size: 2.5}", "5: data.batch_size: expected `full` or an integer ≥ 1, got 2.5"),
    ("data: {samples: 100.0}", "5: data.samples: expected an integer ≥ 2, got 100.0"),
    ("optimizer: {groups: [{params: '0', lr: -0.1}]}", "5: optimizer.groups[0].lr: expected a number > 0, got -0.1"),
    ("optimizer: {groups: [{params: '0', lr: yes}]}",
     "5: optimizer.groups[0].lr: expected a number > 0, got true (a YAML boolean)"),
    ("optimizer: {name: sgd, groups: [{params: '0', weight_decay: big}]}",
     "5: optimizer.groups[0].weight_decay: expected a number ≥ 0, got 'big' (a string)"),
    ("optimizer: {name: sgd, momentum: 1.0}", "5: optimizer.momentum: expected a number in [0, 1), got 1.0"),
    ("optimizer: {name: sgd, groups: [{params: '0', momentum: -0.5}]}",
     "5: optimizer.groups[0].momentum: expected a number in [0, 1), got -0.5"),
    ("optimizer: {betas: [0.9, 1.0]}", "5: optimizer.betas: expected a list of numbers in [0, 1), got [0.9, 1.0]"),
    ("optimizer: {eps: -1.0e-8}", "5: optimizer.eps: expected a number ≥ 0, got -1e-08"),
    ("optimizer: {weight_decay: -0.1}", "5: optimizer.weight_decay: expected a number ≥ 0 or null, got -0.1"),
    ("summary: {tail: 0}", "5: summary.tail: expected a number in (0, 1], got 0"),
    ("train: {diverge_threshold: .inf}", "5: train.diverge_threshold: expected a number > 0 or null, got .inf"),
    ("model: {hidden: 8}", "5: model.hidden: expected a list of integers ≥ 1, got 8"),
    ("model: {hidden: [8, 0]}", "5: model.hidden[1]: expected an integer ≥ 1, got 0"),
    ("name: 3", "5: name: expected a string, got 3"),
])
def test_config_values_are_strict(write_config, text, message):
    path = write_config(BASE + text + "\n")
    assert error_of(path) == f"{path}:{message}"


def test_seeds_true_false_are_not_zero_and_one(write_config):
    path = write_config("seeds: [true, false]\n")
    assert error_of(path) == f"{path}:1: seeds[0]: expected an integer in [0, {MAX_SEED}], got true (a YAML boolean)"


def test_seed_bounds_leave_room_for_the_shuffle_stream(write_config):
    assert MAX_SEED == 2**63 - 1 - SHUFFLE_STREAM
    assert load_config(write_config(f"seeds: [0, {MAX_SEED}]\n")).config.seeds == [0, MAX_SEED]
    for seed in (MAX_SEED + 1, 2**64 - 1, 2**64):
        path = write_config(f"seeds: [{seed}]\n")
        assert error_of(path) == (f"{path}:1: seeds[0]: expected an integer in [0, {MAX_SEED}], got {seed} (the largest "
                                  "seed is 2**63 − 1 − 0x5EED: the shuffle generator gets seed + 0x5EED)")
    path = write_config("seeds: [-1]\n")
    assert error_of(path) == f"{path}:1: seeds[0]: expected an integer in [0, {MAX_SEED}], got -1"


def test_the_largest_seed_trains(write_config, tmp_path):
    from tests.helpers import train_config

    path = write_config(f"seeds: [{MAX_SEED}]\ndevice: cpu\ntrain: {{steps: 3}}\ndata: {{kind: quadratic, batch_size: 5}}\n")
    [result] = train_config(path, tmp_path / "out")
    assert result["status"] == "ok" and result["seed"] == MAX_SEED


def test_set_values_are_strict_too(write_config):
    path = write_config(BASE)
    with pytest.raises(OptcmpError) as exc:
        load_config(path, ["optimizer.lr=yes"])
    assert str(exc.value) == "--set optimizer.lr=yes: optimizer.lr: expected a number > 0 or null, got yes (a YAML boolean)"
    with pytest.raises(OptcmpError) as exc:
        load_config(path, ["optimizer.lr="])
    assert str(exc.value) == ("--set optimizer.lr=: nothing after `=`; allowed: a value (null for the default), "
                              "e.g. --set optimizer.lr=0.001")
    with pytest.raises(OptcmpError) as exc:
        load_config(path, sweeps=["optimizer.lr="])
    assert str(exc.value) == ("--sweep optimizer.lr=: nothing after `=`; allowed: at least one value, "
                              "e.g. --sweep optimizer.lr=0.01,0.1")
    with pytest.raises(OptcmpError) as exc:
        load_config(path, sweeps=["optimizer.lr=0.1,on"])
    assert str(exc.value) == ("--sweep optimizer.lr=0.1,on: sweep.optimizer.lr: expected a number > 0 or null, "
                              "got on (a YAML boolean)")


def test_chaos_reads_yaml_on_and_off(write_config):
    assert load_config(write_config("summary: {chaos: off}\n")).config.summary.chaos == "off"
    assert load_config(write_config("summary: {chaos: on}\n")).config.summary.chaos == "on"


# --- keywords checked against the callee, at preflight -----------------------------


@pytest.mark.parametrize("text, message", [
    ("optimizer: {name: adam, amsgrad: 'false'}",
     "5: optimizer.amsgrad: expected true or false (`Adam`'s amsgrad), got 'false' (a string)"),
    ("optimizer: {name: adam, betas: [0.9]}",
     "5: optimizer.betas: expected a list of 2 numbers (`Adam`'s betas), got [0.9]"),
    ("optimizer: {name: adam, betas: [0.9, '0.99']}",
     "5: optimizer.betas: expected a list of numbers in [0, 1), got [0.9, '0.99']"),
    ("optimizer: {name: sgd, lr: 0.1, nesterov: 1}",
     "5: optimizer.nesterov: expected true or false (`SGD`'s nesterov), got 1"),
    ("optimizer: {name: lbfgs, max_iter: 2.5}",
     "5: optimizer.max_iter: expected an integer (`LBFGS`'s max_iter), got 2.5"),
    ("optimizer: {name: sgd, lr: 0.1, groups: [{params: '0', nesterov: 'yes'}]}",
     "5: optimizer.groups[0].nesterov: expected true or false (`SGD`'s nesterov), got 'yes' (a string)"),
    ("scheduler: {name: steplr, step_size: ten}",
     "5: scheduler.step_size: expected an integer (`StepLR`'s step_size), got 'ten' (a string)"),
    ("scheduler: {name: steplr, step_size: 2, gamma: true}",
     "5: scheduler.gamma: expected a number (`StepLR`'s gamma), got true (a YAML boolean)"),
    ("scheduler: {name: onecyclelr, max_lr: 0.1, anneal_strategy: cosine}",
     "5: scheduler.anneal_strategy: expected one of cos, linear (`OneCycleLR`'s anneal_strategy), got 'cosine' (a string)"),
    ("model: {kind: 'tests.userlib:make_model', kwargs: {width: 8.5}}",
     "5: model.kwargs.width: expected an integer (`make_model`'s width), got 8.5"),
    ("data: {kind: 'tests.userlib:regression_data', kwargs: {samples: '40'}}",
     "5: data.kwargs.samples: expected an integer (`regression_data`'s samples), got '40' (a string)"),
])
def test_keywords_are_checked_against_the_callee(write_config, tmp_path, text, message):
    path = write_config(BASE + text + "\n")
    assert refused(path, tmp_path / "out") == f"{path}:{message}"
