"""result.json's metrics from the evaluation points: best and tail values of the whole
training set's loss (against plain PyTorch), histograms of the weights after each step's
update, the ulp probe, and a unit's throughput."""
from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from optcmp.config import load_config
from optcmp.data import build_data
from optcmp.engines import run_unit
from optcmp.metrics import Trajectory
from optcmp.resolve import resolve_runs
from optcmp.sweep import RunSpec, expand
from optcmp.trainer import build_run_model
from optcmp.units import Unit
from tests.test_trainer import REGRESSION, plain_regression, reference_mlp

CLASSIFIER = """\
name: cls
seeds: 2
device: cpu
model: {kind: linear}
data: {kind: random_classification, samples: 100, features: 10, classes: 2, batch_size: 32}
train: {epochs: 20, loss: cross_entropy}
optimizer: {name: adamw, lr: 0.01, weight_decay: 0.01}
log: {every: 1, histograms: {every: 0}}
summary: {chaos: off}  # units are built from expand's specs here: the two seeds alone
"""


def units_of(text: str, write_config, engine: str) -> list[Unit]:
    runs = resolve_runs(expand(load_config(write_config(text)).config))
    return [Unit(tuple(runs), "vectorized")] if engine == "vectorized" else [Unit((r,), "sequential") for r in runs]


def train(text: str, write_config, out, engine: str) -> list[dict]:
    return [r for unit in units_of(text, write_config, engine) for r in run_unit(unit, out)]


def test_trajectory_keeps_one_value_per_point_and_averages_the_tail():
    t = Trajectory()
    for done, value in [(0, 5.0), (10, 4.0), (20, 3.0), (30, 2.5), (40, 2.0)]:
        t.add("train_loss", done, value)
    t.add("train_loss", 40, 1.5)  # the final evaluation of the last point's weights replaces it
    assert t.points["train_loss"][-2:] == [(30, 2.5), (40, 1.5)]
    assert t.best("train_loss") == 1.5
    assert t.tail("train_loss", 40, 0.25) == statistics.fmean([2.5, 1.5])  # points at steps ≥ 30
    assert t.tail("train_loss", 40, 0.01) == 1.5  # the last point at least
    t.add("val_accuracy", 10, 0.5)
    t.add("val_accuracy", 20, 0.75)
    t.add("val_accuracy", 40, 0.625)
    assert t.best("val_accuracy") == 0.75


def plain_classifier(seed: int, epochs: int = 20) -> list[float]:
    """The plain script of CLASSIFIER: the whole training set's loss after each epoch."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(100, 10, generator=g), torch.randint(0, 2, (100,), generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(10, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    shuffle = torch.Generator().manual_seed(seed + 0x5EED)
    full = []
    for _ in range(epochs):
        for idx in torch.randperm(100, generator=shuffle).split(32):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            full.append(nn.functional.cross_entropy(model(x), y).item())
    return full


@pytest.mark.parametrize("engine,rel", [("sequential", 1e-6), ("vectorized", 1e-5)])
def test_best_and_tail_train_loss_are_of_the_whole_training_set(write_config, tmp_path, engine, rel):
    results = train(CLASSIFIER, write_config, tmp_path, engine)
    for seed, result in zip((0, 1), results):
        full = plain_classifier(seed)
        m = result["metrics"]
        assert m["train_loss"] == pytest.approx(full[-1], rel=rel)
        assert m["best_train_loss"] == pytest.approx(min(full), rel=rel)
        # 20 epochs of 4 steps: the last 10 % are the points after 72, 76 and 80 steps
        assert m["train_loss_tail"] == pytest.approx(statistics.fmean(full[-3:]), rel=rel)


def test_with_full_batches_the_steps_own_losses_are_the_points(write_config, tmp_path):
    """No extra pass where every step sees the whole training set and no layer computes
    differently in eval mode: a step's loss is the value at its point (weights before its
    update), and the final weights' loss is the last point."""
    steps = 150
    losses, state, _ = plain_regression(0, steps, 0.1)
    model = reference_mlp()
    model.load_state_dict(state)
    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    with torch.no_grad():
        final = nn.functional.mse_loss(model(torch.stack([x1, x2], 1)).squeeze(-1), 2 * x1 - x2**2 + 1).item()
    (result,) = train(REGRESSION.format(seed=0, steps=steps, wd=0.1), write_config, tmp_path, "sequential")
    m = result["metrics"]
    assert m["best_train_loss"] == pytest.approx(min([*losses, final]), rel=1e-6)
    assert m["train_loss_tail"] == pytest.approx(statistics.fmean([*losses[135:], final]), rel=1e-6)  # steps ≥ 135


def histograms(run_dir) -> dict[str, dict[int, object]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    acc.Reload()
    return {tag: {e.step: e.histogram_value for e in acc.Histograms(tag)} for tag in acc.Tags()["histograms"]}


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_histograms_are_of_the_weights_after_the_steps_update_and_end_with_the_final_ones(write_config, tmp_path, engine):
    text = """\
name: hist
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm, activation: relu}
data: {kind: random_classification, samples: 60, batch_size: 20}
train: {steps: 12}
optimizer: {name: adam, lr: 0.01}
log: {every: 1, histograms: {every: 5}}
"""
    for result in train(text, write_config, tmp_path, engine):
        run_dir = tmp_path / result["run_id"]
        hist = histograms(run_dir)
        weights = {tag: h for tag, h in hist.items() if tag.startswith("weights/")}
        assert all(sorted(h) == [0, 5, 10, 11] for h in hist.values())
        logged = pd.read_csv(run_dir / "metrics.csv").set_index("step")
        for step in (0, 5, 10, 11):  # like the weight_norm scalar of the same step
            norm = math.sqrt(sum(h[step].sum_squares for h in weights.values()))
            assert norm == pytest.approx(logged.loc[step, "weight_norm"], rel=1e-6)
        final = np.load(run_dir / "weights.npz")
        # Linear(·, 8), LayerNorm(8), ReLU, Linear(8, ·): the tags name each module's place and type
        labels = {"0.weight": "0.Linear.weight", "0.bias": "0.Linear.bias", "1.weight": "1.LayerNorm.weight",
                  "1.bias": "1.LayerNorm.bias", "3.weight": "3.Linear.weight", "3.bias": "3.Linear.bias"}
        assert sorted(final.files) == sorted(labels) and sorted(weights) == sorted(f"weights/{x}" for x in labels.values())
        for name in final.files:
            h, w = weights[f"weights/{labels[name]}"][11], final[name].astype(np.float64)
            assert (h.min, h.max, h.num) == (w.min(), w.max(), w.size)
            assert h.sum == pytest.approx(w.sum(), rel=1e-6, abs=1e-9)


def probe_of(spec: RunSpec) -> RunSpec:
    return dataclasses.replace(spec, run_id=spec.run_id + "-ulp", role="ulp")


def test_the_ulp_probe_starts_one_ulp_up_in_both_engines(write_config, tmp_path):
    (spec,) = expand(load_config(write_config(REGRESSION.format(seed=1, steps=40, wd=0.1))).config)
    plain, probe = resolve_runs([spec, probe_of(spec)])
    data = build_data(spec.config.data, spec.seed)  # the model is built for its data (2 features, 1 output)
    a, b = build_run_model(plain, data), build_run_model(probe, data)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(q, torch.nextafter(p, torch.tensor(math.inf))), name
        assert (q > p).all()
    # the plain script, perturbed the same way, trained as the sequential engine trains
    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    x, y = torch.stack([x1, x2], 1), 2 * x1 - x2**2 + 1
    torch.manual_seed(1)
    model = reference_mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.nextafter(p, torch.tensor(math.inf)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(40):
        nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
        opt.step()
        opt.zero_grad()
    (seq,) = run_unit(Unit((probe,), "sequential"), tmp_path / "seq")
    vec = run_unit(Unit((plain, probe), "vectorized"), tmp_path / "vec")
    assert seq["role"] == "ulp" and [r["role"] for r in vec] == ["run", "ulp"]
    saved = np.load(tmp_path / "seq" / probe.spec.run_id / "weights.npz")
    stacked = np.load(tmp_path / "vec" / probe.spec.run_id / "weights.npz")
    unperturbed = np.load(tmp_path / "vec" / plain.spec.run_id / "weights.npz")
    for name, p in model.named_parameters():
        np.testing.assert_allclose(saved[name], p.detach().numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(stacked[name], saved[name], rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(stacked[n], unperturbed[n]) for n in stacked.files)


def test_a_vectorized_member_reports_its_units_throughput(write_config, tmp_path):
    vec = train(CLASSIFIER, write_config, tmp_path / "vec", "vectorized")
    assert [r["metrics"]["group_size"] for r in vec] == [2, 2]
    rates = {r["metrics"]["steps_per_second"] for r in vec}
    assert len(rates) == 1  # the group's rate, the same for all members
    m = vec[0]["metrics"]
    assert m["steps_per_second"] == pytest.approx(m["steps"] / (m["seconds"] * 2), rel=1e-9)
    seq = train(CLASSIFIER, write_config, tmp_path / "seq", "sequential")
    assert [r["metrics"]["group_size"] for r in seq] == [1, 1]
    m = seq[0]["metrics"]
    assert m["steps_per_second"] == pytest.approx(m["steps"] / m["seconds"], rel=1e-9)
