"""Preflight's dry step: what a run's first forward, backward, optimizer and scheduler step
would raise is a one-line error naming the key (exit 2, no traceback, no folder), found
once per distinct config, without changing torch's random state or building a
torch.optim optimizer for an optimizer the vectorized engine batches."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.config import load_config
from optcmp.errors import OptcmpError
from optcmp.runner import preflight
from optcmp.sweep import expand

BASE = """\
name: dry
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic}
train: {steps: 20}
"""


def three_outputs(in_features: int) -> nn.Module:
    """A model with a fixed width of three outputs, whatever the data wants."""
    return nn.Linear(in_features, 3)


def one_output(in_features: int) -> nn.Module:
    return nn.Linear(in_features, 1)


def broken_forward(in_features: int, out_features: int) -> nn.Module:
    class Broken(nn.Linear):
        def forward(self, x):
            raise RuntimeError("no forward today")

    return Broken(in_features, out_features)


def line_of(text: str, key: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.lstrip().startswith(f"{key}:"))


CASES = {
    "step_size 0": (
        "optimizer: {name: adam, lr: 0.01}\nscheduler:\n  name: steplr\n  step_size: 0\n",
        "step_size", "scheduler.step_size: `StepLR` divides by it in its first step "
                     "(ZeroDivisionError: integer modulo by zero); give a value other than 0"),
    "T_max 0": (
        "optimizer: {name: sgd, lr: 0.01}\nscheduler:\n  name: cosineannealinglr\n  T_max: 0\n",
        "T_max", "scheduler.T_max: `CosineAnnealingLR` divides by it in its first step "
                 "(ZeroDivisionError: integer modulo by zero); give a value other than 0"),
    "group weight_decay string, batched": (
        "optimizer:\n  name: adam\n  groups:\n    - params: bias\n      weight_decay: big\n",
        "weight_decay", "optimizer.groups[0].weight_decay: expected a number ≥ 0, got 'big' (a string)"),
    "group weight_decay string, torch.optim": (
        "optimizer:\n  name: rmsprop\n  groups:\n    - params: bias\n      weight_decay: big\n",
        "weight_decay", "optimizer.groups[0].weight_decay: expected a number ≥ 0, got 'big' (a string)"),
    "betas of one": (
        "optimizer:\n  name: adam\n  betas: [0.9]\n",
        "betas", "optimizer.betas: expected a list of 2 numbers (`Adam`'s betas), got [0.9]"),
    "regression output of three": (
        "model:\n  kind: tests.test_preflight:three_outputs\noptimizer: {name: adam}\n",
        "model", "model: output shape (20, 3) does not fit the target's (20,) for mse; the model needs 1 output per "
                 "sample (passed as out_features to a factory that takes it)"),
    "one output for three classes": (
        "model:\n  kind: tests.test_preflight:one_output\n"
        "data: {kind: random_classification, samples: 30, classes: 3}\noptimizer: {name: adam}\n",
        "model", "model: output shape (30, 1) does not fit the target's (30,) with 3 classes for cross_entropy; "
                 "the model needs an output of shape (30, 3) (out_features=3)"),
    "forward raises": (
        "model:\n  kind: tests.test_preflight:broken_forward\noptimizer: {name: adam}\n",
        "kind", "model.kind: raised RuntimeError in its forward pass on a batch of shape (20, 2): no forward today"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_first_step_error_is_one_line_naming_the_key(write_config, tmp_path, case):
    extra, key, message = CASES[case]
    text = BASE.replace("model: {kind: mlp, hidden: [8], norm: layernorm}\n", "") if extra.startswith("model") else BASE
    if "data:" in extra:
        text = text.replace("data: {kind: quadratic}\n", "")
    path = write_config(text + extra)
    line = line_of(text + extra, key)
    for command in ("run", "plan"):
        result = CliRunner().invoke(app, [command, str(path), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        said = result.output.splitlines()
        # `plan` first lists the import paths the config names (before importing them)
        assert said[:-1] == ([f"import paths (they run code; --no-imports refuses them): model.kind = {extra.split()[2]}"]
                             if command == "plan" and ":" in extra.split()[2] else [])
        assert said[-1] == f"error: {path}:{line}: {message}"
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(OptcmpError) as raised:  # and from the API (loading refuses what it can tell already)
        loaded = load_config(path)
        preflight(loaded, expand(loaded.config))
    assert str(raised.value) == f"{path}:{line}: {message}"


def test_a_swept_value_is_named_by_its_sweep_key(write_config):
    path = write_config(BASE + "optimizer: {name: sgd, lr: 0.01}\nscheduler: {name: steplr, step_size: 2}\n"
                               "sweep:\n  scheduler.step_size: [2, 0]\n")
    loaded = load_config(path)
    with pytest.raises(OptcmpError) as raised:
        preflight(loaded, expand(loaded.config))
    assert str(raised.value) == (f"{path}:10: sweep.scheduler.step_size: 0: `StepLR` divides by it in its first step "
                                 "(ZeroDivisionError: integer modulo by zero); give a value other than 0")


def test_one_dry_step_per_distinct_config_and_the_random_state_is_kept(write_config, monkeypatch):
    from optcmp import resolve

    calls = []
    real = resolve.dry_step
    monkeypatch.setattr(resolve, "dry_step", lambda *a, **k: calls.append(a[0].optimizer.name) or real(*a, **k))
    path = write_config(BASE + "optimizer: {name: adam}\nsweep:\n  optimizer.name: [adam, adamw, rmsprop]\n")
    loaded = load_config(path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    runs = preflight(loaded, expand(loaded.config))
    # 3 configs × 2 seeds and a chaos probe each (summary.chaos auto): one dry step per config, not
    # once per seed nor per probe (a probe has its first seed's config)
    assert len(runs) == 9 and calls == ["adam", "adamw", "rmsprop"]
    assert torch.equal(torch.get_rng_state(), before)


def test_a_batched_optimizer_takes_its_dry_step_without_torch_optim(write_config, monkeypatch):
    """The vectorized engine's saving: no torch.optim construction at preflight (its first
    one imports torch._dynamo, about a second)."""
    from optcmp import dry

    def refuse(*args, **kwargs):
        raise AssertionError("a torch.optim optimizer was built")

    monkeypatch.setattr(dry, "build_optimizer", refuse)
    path = write_config(BASE + "optimizer: {name: adamw, lr: 0.01}\nscheduler: {name: cosineannealinglr, warmup_steps: 5}\n"
                               "sweep:\n  optimizer.weight_decay: [0.0, 0.1]\n")
    loaded = load_config(path)
    assert len(preflight(loaded, expand(loaded.config))) == 6  # 2 configs × 2 seeds + 2 chaos probes
