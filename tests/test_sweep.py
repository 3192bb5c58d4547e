"""Grid expansion, run ids and config hashes."""
from __future__ import annotations

from optcmp.config import load_config
from optcmp.sweep import expand


def test_grid_times_seeds_with_readable_ids(write_config):
    path = write_config(
        "name: wd\nseeds: 2\nsweep:\n  optimizer.name: [adam, adamw]\n  optimizer.weight_decay: [0.01, 0.1]\n"
    )
    specs = expand(load_config(path).config)
    assert [s.run_id for s in specs] == [
        "adam-wd0.01-s0", "adam-wd0.01-s1", "adam-wd0.1-s0", "adam-wd0.1-s1",
        "adamw-wd0.01-s0", "adamw-wd0.01-s1", "adamw-wd0.1-s0", "adamw-wd0.1-s1",
    ]
    first = specs[0]
    assert first.config_id == "adam-wd0.01" and first.seed == 0
    assert first.params == {"optimizer.name": "adam", "optimizer.weight_decay": 0.01}
    assert first.config.optimizer.name == "adam" and first.config.optimizer.weight_decay == 0.01
    assert first.config.seeds == [0] and first.config.sweep == {}
    assert len({s.config_hash for s in specs}) == 8


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
