"""The trainer against plain PyTorch scripts that follow the seeding contract."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from optcmp.config import load_config
from optcmp.errors import ConfigError
from optcmp.sweep import expand
from optcmp.resolve import resolve_device
from optcmp.trainer import execute


def reference_mlp() -> nn.Sequential:
    """The reference regression model, written out as a user would."""
    return nn.Sequential(
        nn.Linear(2, 20), nn.LayerNorm(20),
        nn.Linear(20, 20), nn.LayerNorm(20),
        nn.Linear(20, 20), nn.LayerNorm(20),
        nn.Linear(20, 20), nn.LayerNorm(20),
        nn.Linear(20, 1),
    )


def plain_regression(seed: int, steps: int, wd: float):
    """Per-step losses, final weights, and per-step (grad_norm, weight_norm, update_ratio)."""
    x1 = torch.arange(-10, 10).float()
    x2 = torch.arange(0, 20).float()
    x = torch.stack([x1, x2], dim=1)
    y = 2 * x1 - x2**2 + 1
    torch.manual_seed(seed)
    model = reference_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=wd)
    losses, extras = [], []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        losses.append(loss.item())
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        extras.append((grad_norm, after.norm().item(), ((after - before).norm() / before.norm()).item()))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, extras


def run_one(write_config, tmp_path, text: str):
    loaded = load_config(write_config(text))
    (spec,) = expand(loaded.config)
    result = execute(spec, tmp_path / "out", loaded.base_dir)
    return result, tmp_path / "out" / spec.run_id


REGRESSION = """\
name: ref
seeds: [{seed}]
device: cpu
data: {{kind: quadratic}}
train: {{steps: {steps}, loss: mse}}
optimizer: {{name: adam, lr: 0.01, weight_decay: {wd}}}
log: {{every: 1, histograms: {{every: 0}}}}
"""


@pytest.mark.parametrize("seed,wd", [(0, 0.1), (3, 0.01)])
def test_full_batch_run_reproduces_plain_script(write_config, tmp_path, seed, wd):
    steps = 150
    losses, state, extras = plain_regression(seed, steps, wd)
    result, run_dir = run_one(write_config, tmp_path, REGRESSION.format(seed=seed, steps=steps, wd=wd))
    assert result["status"] == "ok"
    logged = pd.read_csv(run_dir / "metrics.csv")
    assert logged["step"].tolist() == list(range(steps))
    np.testing.assert_allclose(logged["train/loss"].to_numpy(), losses, rtol=1e-6)
    grad_norm, weight_norm, update_ratio = np.array(extras).T
    np.testing.assert_allclose(logged["grad_norm"].to_numpy(), grad_norm, rtol=1e-5)
    np.testing.assert_allclose(logged["weight_norm"].to_numpy(), weight_norm, rtol=1e-5)
    np.testing.assert_allclose(logged["update_ratio"].to_numpy(), update_ratio, rtol=1e-4)
    weights = np.load(run_dir / "weights.npz")
    assert sorted(weights.files) == sorted(state)
    for name, tensor in state.items():
        np.testing.assert_allclose(weights[name], tensor.numpy(), rtol=1e-6, atol=1e-7)
    # final metrics are those of the final weights, recomputed like a user would
    model = reference_mlp()
    model.load_state_dict(state)
    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    with torch.no_grad():
        final = nn.functional.mse_loss(model(torch.stack([x1, x2], 1)).squeeze(-1), 2 * x1 - x2**2 + 1).item()
    assert result["metrics"]["train_loss"] == pytest.approx(final, rel=1e-6)
    norm = torch.cat([t.reshape(-1) for t in state.values()]).double().norm().item()
    assert result["metrics"]["weight_norm"] == pytest.approx(norm, rel=1e-6)
    assert result["metrics"]["steps"] == steps
    assert result["decay"] == "coupled"


def test_minibatch_epochs_reproduce_plain_script(write_config, tmp_path):
    seed, epochs = 2, 3
    text = f"""\
seeds: [{seed}]
device: cpu
model: {{kind: linear}}
data: {{kind: random_classification, samples: 100, features: 10, classes: 2, batch_size: 32}}
train: {{epochs: {epochs}, loss: cross_entropy}}
optimizer: {{name: adamw, lr: 0.001, weight_decay: 0.01}}
log: {{every: 1, histograms: {{every: 0}}}}
"""
    result, run_dir = run_one(write_config, tmp_path, text)
    # the plain script: data from a generator seeded with s, shuffling from its own stream
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(100, 10, generator=g)
    y = torch.randint(0, 2, (100,), generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(10, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.001, weight_decay=0.01)
    shuffle = torch.Generator().manual_seed(seed + 0x5EED)
    epoch_losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(100, generator=shuffle).split(32):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        epoch_losses.append(total / 100)
    logged = pd.read_csv(run_dir / "metrics.csv")
    assert logged["epoch"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(logged["train/loss"].to_numpy(), epoch_losses, rtol=1e-6)
    np.testing.assert_allclose(np.load(run_dir / "weights.npz")["weight"], model.weight.detach().numpy(), rtol=1e-6)
    assert result["metrics"]["steps"] == 3 * 4
    assert result["decay"] == "decoupled"
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert result["metrics"]["train_accuracy"] == pytest.approx(acc)


def test_validation_split_and_metrics(write_config, tmp_path):
    text = """\
device: cpu
model: {kind: linear}
data: {kind: random_classification, samples: 200, val_fraction: 0.25}
train: {steps: 30}
optimizer: {name: sgd, lr: 0.1}
log: {every: 10, histograms: {every: 0}}
"""
    result, run_dir = run_one(write_config, tmp_path, text)
    m = result["metrics"]
    assert 0 <= m["val_accuracy"] <= 1 and m["val_loss"] > 0
    assert m["best_val_loss"] <= m["val_loss"]
    logged = pd.read_csv(run_dir / "metrics.csv")
    assert logged["step"].tolist() == [0, 10, 20, 29]
    assert {"val/loss", "val/accuracy", "lr/group0", "grad_norm", "weight_norm", "update_ratio"} <= set(logged.columns)


def test_nan_loss_marks_diverged_with_step(write_config, tmp_path):
    text = """\
device: cpu
data: {kind: quadratic}
train: {steps: 200}
optimizer: {name: sgd, lr: 10.0}
log: {every: 1, histograms: {every: 0}}
"""
    result, run_dir = run_one(write_config, tmp_path, text)
    assert result["status"] == "diverged"
    step = result["diverged_step"]
    assert isinstance(step, int) and 0 < step < 200
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["status"] == "diverged" and on_disk["diverged_step"] == step


def test_divergence_threshold(write_config, tmp_path):
    text = """\
device: cpu
data: {kind: quadratic}
train: {steps: 50, diverge_threshold: 100.0}
optimizer: {name: adam, lr: 0.01}
log: {histograms: {every: 0}}
"""
    result, _ = run_one(write_config, tmp_path, text)
    assert result["status"] == "diverged" and result["diverged_step"] == 0
    assert "at step 0" in result["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        resolve_device("cuda")
    assert exc.value.key == "device"
    assert exc.value.message == "`cuda` asked for, but this machine has no CUDA device; allowed here: auto, cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_cpu(write_config, tmp_path):
    cpu, _ = run_one(write_config, tmp_path / "a", REGRESSION.format(seed=0, steps=50, wd=0.1))
    gpu, _ = run_one(write_config, tmp_path / "b", REGRESSION.format(seed=0, steps=50, wd=0.1).replace("device: cpu", "device: cuda"))
    assert gpu["device"].startswith("cuda")
    assert gpu["metrics"]["train_loss"] == pytest.approx(cpu["metrics"]["train_loss"], rel=1e-3)
