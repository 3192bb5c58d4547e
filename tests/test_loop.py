"""The one training loop: scalar order declared once, divergence checks, and a member that
leaves a running group (pruned by the caller's hook) while the others go on unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from optcmp.config import load_config
from optcmp.engines import run_unit
from optcmp.loop import Watch, ordered
from optcmp.resolve import resolve_runs
from optcmp.results import Status
from optcmp.runner import kept_results
from optcmp.sweep import expand
from optcmp.units import Unit

GROUP = """\
name: prune
seeds: 3
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm, activation: tanh}
data: {kind: random_classification, samples: 60, batch_size: 20, val_fraction: 0.25}
train: {steps: 30}
optimizer: {name: adam, lr: 0.01}
log: {every: 5, histograms: {every: 10}}
summary: {chaos: off}  # the units are built from expand's specs here: no chaos probe among the members
"""


def test_scalars_are_ordered_as_declared_and_starred_tags_keep_their_order():
    tags = ("weight_norm/1", "lr/group1", "epoch", "train/loss", "weight_norm/0", "weight_norm", "lr/group0",
            "update_ratio", "val/loss")
    assert ordered(tags) == ("train/loss", "val/loss", "lr/group1", "lr/group0", "weight_norm", "weight_norm/1",
                             "weight_norm/0", "update_ratio", "epoch")
    with pytest.raises(KeyError, match="scalar `mystery` is not declared in loop.SCALARS"):
        ordered(("train/loss", "mystery"))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_watch_reports_each_members_first_bad_step(as_tensor):
    steps = [[1.0, 2.0, 3.0], [1.0, float("nan"), 50.0], [float("inf"), 1.0, 60.0]]
    watch = Watch(threshold=40.0, check_every=2)
    watch.add(torch.tensor(steps[0]) if as_tensor else steps[0])
    assert not watch.due() and watch.check([0, 1, 2]) == []
    for losses in steps[1:]:
        watch.add(torch.tensor(losses) if as_tensor else losses)
    assert watch.due()
    found = watch.check([0, 1, 2])
    assert [(m, step) for m, step, _ in found] == [(0, 3 - 1), (1, 1), (2, 1)]
    assert found[2][2] == 50.0 and np.isnan(found[1][2]) and found[0][2] == float("inf")
    assert watch.check([0, 1, 2]) == []  # nothing new since


def train(write_config, tmp_path, engine: str, should_stop=None, name: str = "out"):
    """GROUP's runs in one vectorized unit, or one sequential unit each; `should_stop`
    is asked with the run's id in place of its index in the unit."""
    specs = expand(load_config(write_config(GROUP)).config)
    runs = resolve_runs(specs)
    units = [Unit(tuple(runs), "vectorized")] if engine == "vectorized" else [Unit((r,), "sequential") for r in runs]
    results = []
    for unit in units:
        hook = None if should_stop is None else (
            lambda step, values, unit=unit: {m for m, v in values.items() if should_stop(unit[m].run_id, step, v)})
        results += run_unit(unit, tmp_path / name, should_stop=hook)
    return specs, results


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
def test_a_pruned_member_leaves_and_the_others_are_unchanged(write_config, tmp_path, engine):
    asked = []

    def should_stop(run_id: str, step: int, values: dict[str, float]) -> bool:
        asked.append((run_id, step))
        assert set(values) >= {"train/loss", "val/loss", "val/accuracy", "weight_norm", "grad_norm", "train_loss"}
        return run_id == "adam-s1" and step == 10

    specs, plain = train(write_config, tmp_path, engine, name="plain")
    _, pruned = train(write_config, tmp_path, engine, should_stop, name="pruned")
    assert [r["status"] for r in pruned] == ["ok", "pruned", "ok"]
    assert ("adam-s1", 10) in asked and ("adam-s1", 15) not in asked  # a member that left is not asked again
    assert ("adam-s0", 15) in asked and ("adam-s2", 29) in asked
    assert pruned[1]["pruned_step"] == 10 and pruned[1]["metrics"]["seconds"] >= 0
    run_dir = tmp_path / "pruned" / "adam-s1"
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["status"] == "pruned" and on_disk["pruned_step"] == 10
    assert not (run_dir / "weights.npz").exists()
    assert [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]] == ["0", "5", "10"]
    for i in (0, 2):  # the others: bit for bit what they are without the hook
        a, b = (np.load(tmp_path / d / specs[i].run_id / "weights.npz") for d in ("plain", "pruned"))
        assert all(a[n].tobytes() == b[n].tobytes() for n in a.files)
        assert (tmp_path / "plain" / specs[i].run_id / "metrics.csv").read_bytes() == \
            (tmp_path / "pruned" / specs[i].run_id / "metrics.csv").read_bytes()


def test_pruned_runs_are_kept_on_resume(write_config, tmp_path):
    specs, results = train(write_config, tmp_path, "vectorized", lambda run_id, step, values: run_id == "adam-s0" and step == 5, name="exp")
    assert results[0]["status"] == Status.PRUNED
    assert set(kept_results(tmp_path / "exp", specs)) == {s.run_id for s in specs}
