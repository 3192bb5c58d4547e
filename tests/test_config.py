"""Config loading: defaults, overrides, and one exact message per kind of mistake."""
from __future__ import annotations

import pytest

from optcmp.config import load_config
from optcmp.errors import OptcmpError


def error_of(path, sets=(), sweeps=()) -> str:
    with pytest.raises(OptcmpError) as exc:
        load_config(path, list(sets), list(sweeps))
    return str(exc.value)


def test_defaults_and_seed_count(write_config):
    path = write_config("name: x\nseeds: 3\n")
    cfg = load_config(path).config
    assert cfg.seeds == [0, 1, 2]
    assert cfg.model.hidden == [20, 20, 20, 20] and cfg.model.norm == "layernorm"
    assert cfg.train.steps == 1000 and cfg.train.epochs is None
    assert cfg.optimizer.lr is None and cfg.optimizer.kwargs() == {}


def test_name_defaults_to_file_stem(write_config):
    assert load_config(write_config("seeds: [1]\n", name="my exp.yaml")).config.name == "my_exp"


def test_exponent_without_dot_is_a_float(write_config):
    cfg = load_config(write_config("optimizer: {name: adam, lr: 1e-3, eps: 1e-8}\n")).config
    assert cfg.optimizer.lr == 0.001
    assert cfg.optimizer.kwargs()["eps"] == 1e-8


def test_set_overrides_are_yaml_and_validated(write_config):
    path = write_config("optimizer: {name: adam, lr: 0.1}\n")
    cfg = load_config(path, ["optimizer.lr=1e-3", "seeds=[0,1]", "optimizer.betas=[0.8, 0.9]"]).config
    assert cfg.optimizer.lr == 0.001
    assert cfg.seeds == [0, 1]
    assert cfg.optimizer.kwargs()["betas"] == [0.8, 0.9]


def test_sweep_option_replaces_axis(write_config):
    path = write_config("sweep:\n  optimizer.weight_decay: [0.5]\n  optimizer.lr: [0.1]\n")
    cfg = load_config(path, sweeps=["optimizer.weight_decay=0.01,0.1", "optimizer.betas=[0.9,0.99],[0.9,0.999]"]).config
    assert cfg.sweep == {
        "optimizer.weight_decay": [0.01, 0.1],
        "optimizer.lr": [0.1],
        "optimizer.betas": [[0.9, 0.99], [0.9, 0.999]],
    }


def test_set_of_a_swept_key_fixes_it(write_config):
    path = write_config("sweep:\n  optimizer.name: [adam, adamw]\n")
    cfg = load_config(path, ["optimizer.name=sgd"]).config
    assert cfg.sweep == {} and cfg.optimizer.name == "sgd"


def test_unknown_key_names_file_line_and_suggestion(write_config):
    path = write_config("name: x\nmodel:\n  kind: mlp\n  hiden: [4]\n")
    assert error_of(path) == (
        f"{path}:4: model.hiden: unknown key (did you mean `hidden`?); allowed: kind, hidden, norm, activation, channels, kwargs"
    )


def test_unknown_top_level_key(write_config):
    path = write_config("name: x\nseed: 3\n")
    assert error_of(path).startswith(f"{path}:2: seed: unknown key (did you mean `seeds`?); allowed: name, seeds,")


def test_duplicate_key(write_config):
    path = write_config("name: x\noptimizer:\n  lr: 0.1\n  lr: 0.2\n")
    assert error_of(path) == f"{path}:4: optimizer.lr: duplicate key (first given on line 3); each key may appear once"


def test_python_tag_refused(write_config):
    path = write_config("name: !!python/object/apply:os.system ['true']\n")
    msg = error_of(path)
    assert msg == (f"{path}:1: the tag !!python/object/apply:os.system is not allowed; allowed: plain YAML "
                   "(mappings, lists, strings, numbers, booleans, null)")


def test_bad_yaml_syntax(write_config):
    path = write_config("name: x\nmodel: [unclosed\n")
    assert error_of(path).startswith(f"{path}:")


def test_wrong_type(write_config):
    path = write_config("train:\n  steps: many\n")
    assert error_of(path) == f"{path}:2: train.steps: expected an integer ≥ 1 or null, got 'many' (a string)"


def test_out_of_range(write_config):
    path = write_config("data:\n  val_fraction: 1.5\n")
    assert error_of(path) == f"{path}:2: data.val_fraction: expected a number in [0, 1), got 1.5"


def test_literal_choices(write_config):
    path = write_config("model:\n  norm: groupnorm\n")
    assert error_of(path) == (f"{path}:2: model.norm: expected one of none, layernorm, batchnorm, got 'groupnorm' "
                              "(a string)")


def test_bad_activation_suggests(write_config):
    path = write_config("model:\n  activation: rleu\n")
    assert error_of(path) == (
        f"{path}:2: model.activation: unknown activation `rleu` (did you mean `relu`?); "
        "allowed: none, relu, gelu, tanh, sigmoid, silu, elu, leaky_relu, softplus"
    )


def test_steps_and_epochs_exclusive(write_config):
    path = write_config("train:\n  steps: 10\n  epochs: 2\n")
    assert error_of(path) == f"{path}:1: train: give either steps or epochs, not both"


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such file"


def test_unsafe_name(write_config):
    path = write_config("name: ../../etc\n")
    assert error_of(path).startswith(f"{path}:1: name: must be letters, digits")


def test_bad_device(write_config):
    path = write_config("device: gpu\n")
    assert error_of(path) == f"{path}:1: device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"


def test_bad_sweep_value_names_sweep_key(write_config):
    path = write_config("sweep:\n  data.val_fraction: [0.1, 2]\n")
    assert error_of(path) == f"{path}:2: sweep.data.val_fraction: expected a number in [0, 1), got 2"


def test_unknown_sweep_key(write_config):
    path = write_config("sweep:\n  model.widht: [1, 2]\n")
    assert error_of(path) == (
        f"{path}:2: sweep.model.widht: unknown key; allowed: kind, hidden, norm, activation, channels, kwargs"
    )


def test_bad_set_syntax_and_value(write_config):
    path = write_config("name: x\n")
    assert error_of(path, ["optimizer.lr"]) == (
        "--set 'optimizer.lr': expected KEY=VALUE with a dotted key, e.g. --set optimizer.lr=0.001"
    )
    assert error_of(path, ["optimizer.lr=-1"]) == "--set optimizer.lr=-1: optimizer.lr: expected a number > 0 or null, got -1"


def test_seeds_must_be_distinct(write_config):
    path = write_config("seeds: [1, 1]\n")
    assert error_of(path) == f"{path}:1: seeds: seed 1 is given twice; seeds must be distinct"
