"""Optimizers: every torch.optim class on test functions, parameter groups, no_decay,
decay semantics, closures, imported optimizers and their errors."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.config import OptimizerConfig
from optcmp.errors import ConfigError
from optcmp.optimizers import (build_optimizer, decay_semantics, group_names, needs_closure, optimizer_class,
                               param_groups, torch_optimizers)
from tests.helpers import train_config
from tests.userlib import TwoLayer

# --- every torch.optim optimizer on a parabola and on the Rosenbrock function ---------

# name → (lr on the parabola, lr on Rosenbrock): each optimizer's scale differs by 1000×.
LEARNING_RATES = {
    "asgd": (0.1, 0.001), "adadelta": (3.0, 1.0), "adafactor": (0.3, 1.0), "adagrad": (0.3, 1.0),
    "adam": (0.1, 0.3), "adamw": (0.1, 0.3), "adamax": (0.1, 1.0), "lbfgs": (1.0, 1.0), "muon": (0.1, 0.03),
    "nadam": (0.1, 0.3), "radam": (0.1, 0.001), "rmsprop": (0.03, 0.01), "rprop": (0.01, 0.01),
    "sgd": (0.1, 0.001), "sparseadam": (0.1, 0.3),
}
STEPS = 200


def parabola(v: torch.Tensor) -> torch.Tensor:
    """Σ (v − c)², minimum 0 at c."""
    return ((v - torch.linspace(-1, 1, v.numel()).reshape(v.shape)) ** 2).sum()


def rosenbrock(v: torch.Tensor) -> torch.Tensor:
    """(1 − x)² + 100·(y − x²)², minimum 0 at (1, 1), 24.2 at the classic start (−1.2, 1)."""
    x, y = v[0, 0], v[0, 1]
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def minimize(name: str, f, start: torch.Tensor, lr: float) -> tuple[float, float]:
    """(first, last) value of f over STEPS steps of the optimizer, built as optcmp builds it."""
    param = nn.Parameter(start.clone())  # 2-D, as Muon requires
    holder = nn.Module()
    holder.register_parameter("v", param)
    opt = build_optimizer(holder, OptimizerConfig(name=name, lr=lr))
    # SparseAdam takes sparse gradients only: read the parameter as an embedding table
    rows = torch.arange(param.shape[0])
    value = (lambda: nn.functional.embedding(rows, param, sparse=True)) if name == "sparseadam" else (lambda: param)

    def closure():
        opt.zero_grad()
        loss = f(value())
        loss.backward()
        return loss

    first = f(value()).item()
    for _ in range(STEPS):
        if needs_closure(opt):
            opt.step(closure)
        else:
            closure()
            opt.step()
    return first, f(value()).item()


def test_table_names_every_torch_optimizer():
    assert set(LEARNING_RATES) == set(torch_optimizers())


@pytest.mark.parametrize("name", sorted(torch_optimizers()))
def test_every_torch_optimizer_minimizes_a_parabola(name):
    first, last = minimize(name, parabola, torch.zeros(3, 4), LEARNING_RATES.get(name, (0.01, 0.001))[0])
    assert last < 0.01 * first, (first, last)


@pytest.mark.parametrize("name", sorted(torch_optimizers()))
def test_every_torch_optimizer_descends_rosenbrock(name):
    first, last = minimize(name, rosenbrock, torch.tensor([[-1.2, 1.0]]), LEARNING_RATES.get(name, (0.01, 0.001))[1])
    assert first == pytest.approx(24.2)
    assert last < 0.25 * first, (first, last)


def test_names_are_case_insensitive_and_typos_suggest():
    assert optimizer_class("AdamW") is torch.optim.AdamW
    with pytest.raises(ConfigError, match=r"^optimizer.name: unknown optimizer `adamww` \(did you mean `adamw`\?\); "
                                          r"allowed: adadelta, adafactor"):
        optimizer_class("adamww")


# --- parameter groups --------------------------------------------------------------


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.Linear(4, 1))


def test_no_decay_bias_and_norm_get_weight_decay_zero():
    cfg = OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5, no_decay=["bias", "norm"])
    groups = group_names(mlp(), cfg)
    assert groups == [
        {"params": ["0.weight", "2.weight"], "lr": 0.1, "weight_decay": 0.5},
        {"params": ["0.bias", "1.weight", "1.bias", "2.bias"], "lr": 0.1, "weight_decay": 0.0},
    ]


def test_no_decay_exactly_with_zero_gradients():
    """AdamW with zero gradients has m = v = 0, so a step is only the decoupled decay:
    decayed weights shrink by exactly 1 − lr·λ per step; biases and norms do not move."""
    lr, wd, steps = 0.1, 0.5, 5
    model = mlp()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimizerConfig(name="adamw", lr=lr, weight_decay=wd, no_decay=["bias", "norm"]))
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for name, p in model.named_parameters():
        if name in ("0.weight", "2.weight"):
            expected = start[name].clone()
            for _ in range(steps):
                expected.mul_(1 - lr * wd)
            assert torch.equal(p.detach(), expected), name
            assert torch.allclose(p.detach(), start[name] * (1 - lr * wd) ** steps, rtol=1e-6, atol=0)
        else:
            assert torch.equal(p.detach(), start[name]), name


def test_groups_override_per_module_first_match_wins_and_keep_no_decay():
    cfg = OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.1, no_decay=["bias", "norm"],
                          groups=[{"params": "head", "lr": 0.001}, {"params": ["body", "head"], "lr": 0.5}])
    assert group_names(TwoLayer(3, 2), cfg) == [
        {"params": ["head.weight"], "lr": 0.001, "weight_decay": 0.1},
        {"params": ["head.bias"], "lr": 0.001, "weight_decay": 0.0},
        {"params": ["body.weight"], "lr": 0.5, "weight_decay": 0.1},
        {"params": ["body.bias"], "lr": 0.5, "weight_decay": 0.0},
        {"params": ["norm.gain"], "lr": 0.01, "weight_decay": 0.0},  # ScaleNorm: a norm by its class name
    ]
    opt = build_optimizer(TwoLayer(3, 2), cfg)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [
        (0.001, 0.1, 1), (0.001, 0.0, 1), (0.5, 0.1, 1), (0.5, 0.0, 1), (0.01, 0.0, 1)]


@pytest.mark.parametrize("pattern, selected", [
    ("head", ["head.weight", "head.bias"]),  # a module prefix
    ("*.weight", ["body.weight", "head.weight"]),  # a glob on the whole name
    ("weight", ["body.weight", "head.weight"]),  # a final part
    ("norm.gain", ["norm.gain"]),  # the whole name
])
def test_patterns(pattern, selected):
    cfg = OptimizerConfig(name="sgd", lr=0.1, groups=[{"params": pattern, "momentum": 0.9}])
    assert group_names(TwoLayer(3, 2), cfg)[0]["params"] == selected


def test_one_plain_group_is_passed_as_a_plain_list():
    opt = build_optimizer(mlp(), OptimizerConfig(name="adam", lr=0.01))
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 6


def test_no_decay_does_nothing_for_an_optimizer_without_weight_decay():
    groups = param_groups(mlp(), OptimizerConfig(name="lbfgs", no_decay=["bias", "norm"]))
    assert len(groups) == 1  # LBFGS takes one group only, and decays nothing anyway


@pytest.mark.parametrize("cfg, key, message", [
    (dict(groups=[{"params": "haed", "lr": 0.1}]), "optimizer.groups[0].params",
     "`haed` matches no parameter (did you mean `head`?); parameters: body.weight, body.bias, norm.gain, head.weight, head.bias"),
    (dict(groups=[{"params": "head", "lr": 0.1}, {"params": "head.bias", "lr": 0.2}]), "optimizer.groups[1].params",
     "every parameter it matches belongs to an earlier group"),
    (dict(groups=[{"lr": 0.1}]), "optimizer.groups[0].params",
     "give a parameter-name pattern such as `head` or `0.*`, or a list of them"),
    (dict(groups=[{"params": "head", "lr": 0.1, "momentun": 0.9}]), "optimizer.groups[0].momentun",
     "`SGD` takes no argument `momentun` (did you mean `momentum`?)"),
    (dict(no_decay=["bias", "embed*"]), "optimizer.no_decay", "`embed*` matches no parameter"),
])
def test_group_mistakes_name_the_key(cfg, key, message):
    with pytest.raises(ConfigError) as e:
        build_optimizer(TwoLayer(3, 2), OptimizerConfig(name="sgd", lr=0.1, **cfg))
    assert e.value.key == key
    assert e.value.message.startswith(message)


# --- decay semantics ---------------------------------------------------------------


@pytest.mark.parametrize("cfg, semantics", [
    (dict(name="adam", weight_decay=0.01), "coupled"),
    (dict(name="adam"), "none"),  # Adam's default weight_decay is 0
    (dict(name="adam", weight_decay=0.01, decoupled_weight_decay=True), "decoupled"),
    (dict(name="adamw"), "decoupled"),  # AdamW's default is 0.01
    (dict(name="adamw", weight_decay=0.0), "none"),
    (dict(name="adam", weight_decay=0.0, groups=[{"params": "head", "weight_decay": 0.1}]), "coupled"),
    (dict(name="sgd", weight_decay=0.1), "coupled"),
    (dict(name="rmsprop", weight_decay=0.1), "coupled"),
    (dict(name="adagrad", weight_decay=0.1), "coupled"),
    (dict(name="nadam", weight_decay=0.1, decoupled_weight_decay=True), "decoupled"),
    (dict(name="muon"), "decoupled"),
    (dict(name="adafactor", weight_decay=0.1), "decoupled"),
    (dict(name="lbfgs"), "none"),
    (dict(name="rprop"), "none"),
    (dict(name="pytorch_optimizer:Lion", weight_decay=0.1), "unknown"),  # decoupled by default, but undeclared
    (dict(name="pytorch_optimizer:Lion"), "none"),
    (dict(name="tests.userlib:SignSGD", weight_decay=0.1), "decoupled"),  # declared by the class
    (dict(name="tests.userlib:UndeclaredSGD", weight_decay=0.1), "unknown"),
])
def test_decay_semantics(cfg, semantics):
    assert decay_semantics(OptimizerConfig(**cfg)) == semantics


# --- closures, imports, the record -------------------------------------------------

CONFIG = """\
name: opt
seeds: [0]
device: cpu
model: {{kind: linear}}
data: {{kind: sklearn, name: breast_cancer, standardize: true}}
train: {{steps: {steps}}}
optimizer: {optimizer}
log: {{every: 1, histograms: {{every: 0}}}}
"""


def losses(run_dir) -> list[float]:
    import pandas as pd

    return pd.read_csv(run_dir / "metrics.csv")["train/loss"].tolist()


@pytest.mark.parametrize("optimizer", [
    "{name: lbfgs, lr: 0.5}",
    "{name: 'tests.userlib:LineSearchGD'}",  # step(closure) with no default, returns None
    "{name: 'pytorch_optimizer:Lion', lr: 0.003, weight_decay: 0.01}",
    "{name: 'tests.userlib:SignSGD', lr: 0.01}",
])
def test_closure_and_imported_optimizers_train(write_config, tmp_path, optimizer):
    (result,) = train_config(write_config(CONFIG.format(steps=10, optimizer=optimizer)), tmp_path / "out")
    assert result["status"] == "ok", result["error"]
    curve = losses(tmp_path / "out" / result["run_id"])
    assert len(curve) == 10
    assert curve[-1] < 0.7 * curve[0]
    assert result["metrics"]["train_loss"] < curve[0]


def test_needs_closure():
    p = [nn.Parameter(torch.zeros(1))]
    assert needs_closure(torch.optim.LBFGS(p))
    assert not needs_closure(torch.optim.Adam(p))
    assert needs_closure(optimizer_class("tests.userlib:LineSearchGD")(p))


def test_result_json_holds_the_resolved_groups_and_decay(write_config, tmp_path):
    optimizer = "{name: adamw, lr: 0.01, weight_decay: 0.1, no_decay: [bias]}"
    (result,) = train_config(write_config(CONFIG.format(steps=2, optimizer=optimizer)), tmp_path / "out")
    saved = json.loads((tmp_path / "out" / result["run_id"] / "result.json").read_text())
    assert saved["param_groups"] == [
        {"params": ["weight"], "lr": 0.01, "weight_decay": 0.1},
        {"params": ["bias"], "lr": 0.01, "weight_decay": 0.0},
    ]
    assert saved["decay"] == "decoupled"


PLAN = """\
name: groups
seeds: [0, 1]
device: cpu
model: {kind: mlp, hidden: [4], norm: layernorm}
data: {kind: quadratic}
train: {steps: 10}
optimizer:
  name: adamw
  lr: 0.01
  weight_decay: 0.1
  no_decay: [bias, norm]
  groups:
    - {params: "2", lr: 0.001}
sweep:
  optimizer.name: [adamw, sgd]
"""


def test_plan_prints_the_resolved_groups(write_config, tmp_path):
    result = CliRunner().invoke(app, ["plan", str(write_config(PLAN)), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("adamw: AdamW, decay decoupled")
    assert lines[start:start + 10] == [
        "adamw: AdamW, decay decoupled",
        "  group 0: lr=0.001, weight_decay=0.1; 1 tensor: 2.weight",
        "  group 1: lr=0.001, weight_decay=0.0; 1 tensor: 2.bias",
        "  group 2: lr=0.01, weight_decay=0.1; 1 tensor: 0.weight",
        "  group 3: lr=0.01, weight_decay=0.0; 3 tensors: 0.bias, 1.weight, 1.bias",
        "sgd: SGD, decay coupled",
        "  group 0: lr=0.001, weight_decay=0.1; 1 tensor: 2.weight",
        "  group 1: lr=0.001, weight_decay=0.0; 1 tensor: 2.bias",
        "  group 2: lr=0.01, weight_decay=0.1; 1 tensor: 0.weight",
        "  group 3: lr=0.01, weight_decay=0.0; 3 tensors: 0.bias, 1.weight, 1.bias",
    ]


@pytest.mark.parametrize("optimizer, message", [
    ("{name: adamw, weight_decy: 0.1}",
     ":7: optimizer.weight_decy: `AdamW` takes no argument `weight_decy` (did you mean `weight_decay`?)"),
    ("{name: 'nosuch.module:Opt'}",
     ":7: optimizer.name: cannot import module `nosuch` (from `nosuch.module:Opt`): not installed and not on the Python path"),
    ("{name: 'tests.userlib:SignSDG'}",
     ":7: optimizer.name: module `tests.userlib` has no `SignSDG` (did you mean `SignSGD`?)"),
    ("{name: adamw, groups: [{params: nope, lr: 0.1}]}",
     ":7: optimizer.groups[0].params: `nope` matches no parameter; parameters: weight, bias"),
])
def test_optimizer_mistakes_exit_2_with_file_and_line(write_config, tmp_path, optimizer, message):
    path = write_config(CONFIG.format(steps=2, optimizer=optimizer))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}{message}"), result.output
    assert "Traceback" not in result.output
