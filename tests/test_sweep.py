"""Grid expansion, run ids and config hashes."""
from __future__ import annotations

from optcmp.config import load_config
from optcmp.sweep import expand


def test_grid_times_seeds_with_readable_ids(write_config):
    path = write_config(
        "name: wd\nseeds: 2\nsweep:\n  optimizer.name: [adam, adamw]\n  optimizer.weight_decay: [0.01, 0.1]\n"
    )
    specs = expand(load_config(path).config)
    # summary.chaos auto: each config's probe follows its seeds (the planner drops those that are not cheap)
    assert [s.run_id for s in specs] == [
        "adam-wd0.01-s0", "adam-wd0.01-s1", "adam-wd0.01-s0-ulp", "adam-wd0.1-s0", "adam-wd0.1-s1", "adam-wd0.1-s0-ulp",
        "adamw-wd0.01-s0", "adamw-wd0.01-s1", "adamw-wd0.01-s0-ulp", "adamw-wd0.1-s0", "adamw-wd0.1-s1",
        "adamw-wd0.1-s0-ulp",
    ]
    first = specs[0]
    assert first.config_id == "adam-wd0.01" and first.seed == 0
    assert first.params == {"optimizer.name": "adam", "optimizer.weight_decay": 0.01}
    assert first.config.optimizer.name == "adam" and first.config.optimizer.weight_decay == 0.01
    assert first.config.seeds == [0] and first.config.sweep == {}
    assert len({s.config_hash for s in specs}) == 12


def test_unswept_optimizer_name_leads_the_id(write_config):
    specs = expand(load_config(write_config("optimizer: {name: SGD}\nsweep:\n  optimizer.lr: [0.1, 1e-3]\n")).config)
    assert [s.run_id for s in specs] == ["SGD-lr0.1-s0", "SGD-lr0.001-s0"]


def test_ids_are_filesystem_safe_and_unique(write_config):
    path = write_config(
        "sweep:\n  optimizer.betas: [[0.9, 0.99], [0.9, 0.999]]\n  model.kind: ['tests.m:f/x', 'tests.m:f x']\n"
    )
    specs = expand(load_config(path).config)
    ids = [s.run_id for s in specs]
    assert len(set(ids)) == len(ids)
    assert all("/" not in i and " " not in i for i in ids)
    assert ids[0] == "adam-b0.9x0.99-f_x-s0"
    assert ids[1] == "adam-b0.9x0.99-f_x-2-s0"


def test_hash_is_stable_and_seed_sensitive(write_config):
    path = write_config("seeds: [0, 1]\n")
    a = expand(load_config(path).config)
    b = expand(load_config(path).config)
    assert [s.config_hash for s in a] == [s.config_hash for s in b]
    assert a[0].config_hash != a[1].config_hash


WHOLE_DICTS = """\
name: dicts
seeds: [0]
device: cpu
model: {kind: mlp, hidden: [4], norm: none}
train: {steps: 3}
sweep:
  optimizer: [{name: sgd, momentum: 0.9}, {name: adam}]
  optimizer.lr: [0.01, 0.001]
"""


def test_sweeps_copy_what_they_set(write_config):
    """A whole-dict sweep value and an axis that sets a key inside it: every run gets its
    own copy (one shared dict used to carry the last lr into every run's params)."""
    specs = expand(load_config(write_config(WHOLE_DICTS)).config)
    assert [s.run_id for s in specs] == ["sgd_mom0.9-lr0.01-s0", "sgd_mom0.9-lr0.001-s0", "adam-lr0.01-s0", "adam-lr0.001-s0"]
    assert [s.params for s in specs] == [
        {"optimizer": {"name": "sgd", "momentum": 0.9}, "optimizer.lr": 0.01},
        {"optimizer": {"name": "sgd", "momentum": 0.9}, "optimizer.lr": 0.001},
        {"optimizer": {"name": "adam"}, "optimizer.lr": 0.01},
        {"optimizer": {"name": "adam"}, "optimizer.lr": 0.001},
    ]
    assert [(s.config.optimizer.name, s.config.optimizer.lr) for s in specs] == [
        ("sgd", 0.01), ("sgd", 0.001), ("adam", 0.01), ("adam", 0.001)]
    assert specs[0].config.optimizer.kwargs() == {"momentum": 0.9, "lr": 0.01}


def test_results_record_the_values_each_run_trained_with(write_config, tmp_path):
    import json

    import pandas as pd
    import yaml

    from tests.helpers import train_config

    path = write_config(WHOLE_DICTS)
    results = train_config(path, tmp_path / "out")
    assert [(r["params"]["optimizer"], r["params"]["optimizer.lr"], r["optimizer"]["lr"]) for r in results] == [
        ({"name": "sgd", "momentum": 0.9}, 0.01, 0.01), ({"name": "sgd", "momentum": 0.9}, 0.001, 0.001),
        ({"name": "adam"}, 0.01, 0.01), ({"name": "adam"}, 0.001, 0.001)]
    for r in results:
        saved = json.loads((tmp_path / "out" / r["run_id"] / "result.json").read_text())
        resolved = yaml.safe_load((tmp_path / "out" / r["run_id"] / "config.yaml").read_text())
        assert saved["params"] == r["params"]
        assert resolved["optimizer"]["lr"] == r["params"]["optimizer.lr"]
        assert resolved["optimizer"]["name"] == r["params"]["optimizer"]["name"]
    from optcmp.results import write_runs_csv

    write_runs_csv(tmp_path / "out", results)
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs["optimizer.lr"].tolist() == [0.01, 0.001, 0.01, 0.001]
    assert runs["optimizer"].tolist() == ['{"name": "sgd", "momentum": 0.9}'] * 2 + ['{"name": "adam"}'] * 2


def test_seeds_of_a_config_share_no_mutable_value(write_config):
    specs = expand(load_config(write_config("seeds: 2\noptimizer: {betas: [0.9, 0.99]}\n")).config)
    a, b, probe = (s.config.optimizer.kwargs()["betas"] for s in specs)  # two seeds and the chaos probe
    assert a == b == probe and a is not b and probe is not a


def test_imported_optimizers_have_readable_ids(write_config):
    path = write_config("sweep:\n  optimizer.name: ['pytorch_optimizer:Lion', adam]\n  optimizer.lr: [0.001, 0.01]\n")
    assert [s.run_id for s in expand(load_config(path).config)] == [
        "Lion-lr0.001-s0", "Lion-lr0.01-s0", "adam-lr0.001-s0", "adam-lr0.01-s0"]
    path = write_config("optimizer: {name: 'pytorch_optimizer:Lion'}\nsweep: {optimizer.lr: [0.001, 0.01]}\n")
    assert [s.run_id for s in expand(load_config(path).config)] == ["Lion-lr0.001-s0", "Lion-lr0.01-s0"]


def test_an_axis_of_one_value_is_set_but_not_in_the_id(write_config):
    path = write_config("sweep:\n  optimizer.momentum: [0.9]\n  optimizer.lr: [0.1, 0.01]\noptimizer: {name: sgd}\n")
    specs = expand(load_config(path).config)
    assert [s.run_id for s in specs] == ["sgd-lr0.1-s0", "sgd-lr0.01-s0"]
    assert specs[0].params == {"optimizer.momentum": 0.9, "optimizer.lr": 0.1}
    assert specs[0].config.optimizer.kwargs()["momentum"] == 0.9


def test_chaos_probes(write_config):
    path = write_config("seeds: [3, 5]\nsummary: {chaos: on}\nsweep: {optimizer.lr: [0.1, 0.01]}\n")
    specs = expand(load_config(path).config)
    assert [(s.run_id, s.config_id, s.seed, s.role) for s in specs] == [
        ("adam-lr0.1-s3", "adam-lr0.1", 3, "run"), ("adam-lr0.1-s5", "adam-lr0.1", 5, "run"),
        ("adam-lr0.1-s3-ulp", "adam-lr0.1", 3, "ulp"),
        ("adam-lr0.01-s3", "adam-lr0.01", 3, "run"), ("adam-lr0.01-s5", "adam-lr0.01", 5, "run"),
        ("adam-lr0.01-s3-ulp", "adam-lr0.01", 3, "ulp")]
    probe, first = specs[2], specs[0]
    assert probe.config == first.config and probe.config is not first.config
    assert probe.params == first.params and probe.config_hash != first.config_hash
    one_seed = write_config("seeds: [0]\nsummary: {chaos: on}\n", name="one.yaml")
    assert [s.role for s in expand(load_config(one_seed).config)] == ["run"]  # a single seed has no spread to compare
    assert "ulp" not in [s.role for s in expand(load_config(path, ["summary.chaos=off"]).config)]
    auto = load_config(path, ["summary.chaos=auto"]).config  # the planner drops the probes that are not cheap
    assert [s.run_id for s in expand(auto)] == [s.run_id for s in specs]


def test_plain_runs_have_no_variant_and_role_run(write_config):
    [spec] = expand(load_config(write_config("seeds: [0]\n")).config)
    assert (spec.variant, spec.role) == (None, "run")
