"""Learning-rate schedules: torch schedulers by name, warmup, per-step and per-epoch
stepping, the logged learning rate, imported schedulers, and the mistakes."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.config import SchedulerConfig
from optcmp.errors import ConfigError
from optcmp.optimizers import WarmupThenPlateau, build_scheduler, step_scheduler
from tests.helpers import train_config


def lr_sequence(steps: int, length: int | None = None, metric: float = 1.0, **cfg) -> list[float]:
    """The learning rate used at each of `steps` steps (SGD with lr 1, so factors show)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, SchedulerConfig(**cfg), length)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        step_scheduler(sched, metric)
    return out


def test_any_torch_scheduler_by_name_with_its_arguments():
    assert lr_sequence(6, name="StepLR", step_size=2, gamma=0.5) == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert lr_sequence(4, name="exponentiallr", gamma=0.5) == [1, 0.5, 0.25, 0.125]


def test_warmup_then_cosine_fills_t_max_with_the_rest_of_the_run():
    got = lr_sequence(10, length=10, name="cosineannealinglr", warmup_steps=4, warmup_start_factor=0.2)
    cosine = [0.5 * (1 + math.cos(math.pi * j / 6)) for j in range(1, 6)]
    assert got == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, *cosine])


def test_warmup_alone_then_constant():
    assert lr_sequence(7, warmup_steps=4, warmup_start_factor=0.2) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1, 1, 1])
    assert lr_sequence(7, name="constant", warmup_steps=4, warmup_start_factor=0.2) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1, 1, 1])
    assert SchedulerConfig(name="Constant").name is None


def test_one_cycle_gets_total_steps_and_lasts_the_run():
    got = lr_sequence(20, length=20, name="OneCycleLR", max_lr=1.0)
    assert max(got) == pytest.approx(1.0, rel=0.05)
    assert got[0] < 0.1 and got[-1] < 0.01


def test_plateau_gets_the_metric_and_can_follow_a_warmup():
    assert lr_sequence(4, name="ReduceLROnPlateau", factor=0.5, patience=0) == [1, 1, 0.5, 0.25]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, SchedulerConfig(name="ReduceLROnPlateau", factor=0.5, patience=0, warmup_steps=2,
                                                 warmup_start_factor=0.5), 10)
    assert isinstance(sched, WarmupThenPlateau)
    got = []
    for _ in range(6):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        step_scheduler(sched, 1.0)
    assert got == [0.5, 0.75, 1.0, 1.0, 0.5, 0.25]


def test_imported_schedulers_and_lr_lambda():
    assert lr_sequence(5, name="tests.userlib:HalvingLR", every=3) == [1, 1, 1, 0.5, 0.5]
    assert lr_sequence(5, name="lambdalr", lr_lambda="tests.userlib:halve_every_two") == [1, 1, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("cfg, key, message", [
    (dict(name="cosineanealinglr"), "scheduler.name",
     "unknown scheduler `cosineanealinglr` (did you mean `cosineannealinglr`?); allowed: constantlr, "),
    (dict(name="StepLR"), "scheduler.step_size", "`StepLR` needs `step_size`"),
    (dict(name="StepLR", step_size=2, gama=0.5), "scheduler.gama", "`StepLR` takes no argument `gama` (did you mean `gamma`?)"),
    (dict(name="StepLR", step_size=2, warmup_step=3), "scheduler.warmup_step",
     "`StepLR` takes no argument `warmup_step` (did you mean `warmup_steps`?)"),
    (dict(name="SequentialLR"), "scheduler.name", "`SequentialLR` chains other schedulers and cannot be given in YAML"),
    (dict(name="cosineannealinglr", warmup_steps=10), "scheduler.warmup_steps",
     "a warmup of 10 leaves nothing of the run's 10 scheduler steps"),
    (dict(name="lambdalr", lr_lambda="tests.userlib:nope"), "scheduler.lr_lambda", "module `tests.userlib` has no `nope`"),
])
def test_scheduler_mistakes_name_the_key(cfg, key, message):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError) as e:
        build_scheduler(opt, SchedulerConfig(**cfg), 10)
    assert e.value.key == key
    assert e.value.message.startswith(message)


# --- in a run: the stepping interval and the logged learning rate ------------------

RUN = """\
name: sched
seeds: [0]
device: cpu
model: {{kind: linear}}
data: {{kind: quadratic, batch_size: 5, standardize: true}}
train: {train}
optimizer: {{name: sgd, lr: 0.01}}
scheduler: {scheduler}
log: {{every: 1, histograms: {{every: 0}}}}
"""


def logged_lr(out, result) -> list[float]:
    return pd.read_csv(out / result["run_id"] / "metrics.csv")["lr/group0"].tolist()


def test_per_step_warmup_logs_the_rate_each_step_used(write_config, tmp_path):
    text = RUN.format(train="{steps: 6}", scheduler="{warmup_steps: 3, warmup_start_factor: 0.25}")
    (result,) = train_config(write_config(text), tmp_path / "out")
    assert result["status"] == "ok", result["error"]
    assert logged_lr(tmp_path / "out", result) == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])


def test_per_epoch_scheduler_steps_once_an_epoch(write_config, tmp_path):
    # 20 samples in batches of 5: 4 steps an epoch, one rate per epoch
    text = RUN.format(train="{epochs: 4}", scheduler="{name: steplr, step_size: 1, gamma: 0.5, interval: epoch}")
    (result,) = train_config(write_config(text), tmp_path / "out")
    assert result["status"] == "ok", result["error"]
    assert result["metrics"]["steps"] == 16
    assert logged_lr(tmp_path / "out", result) == pytest.approx([0.01, 0.005, 0.0025, 0.00125])


def test_plateau_per_epoch_watches_the_validation_loss(write_config, tmp_path):
    text = RUN.format(train="{epochs: 6}", scheduler="{name: reducelronplateau, interval: epoch, factor: 0.5, patience: 0, "
                      "threshold: 10.0, warmup_epochs: 1, warmup_start_factor: 0.5}")
    text = text.replace("batch_size: 5,", "batch_size: 5, val_fraction: 0.25,")
    (result,) = train_config(write_config(text), tmp_path / "out")
    assert result["status"] == "ok", result["error"]
    # warmup epoch at 0.005, then 0.01; a relative threshold of 1000 % never counts as
    # improvement, so every later epoch halves the rate
    assert logged_lr(tmp_path / "out", result) == pytest.approx([0.005, 0.01, 0.005, 0.0025, 0.00125, 0.000625])


def test_plan_prints_the_resolved_schedule(write_config, tmp_path):
    text = RUN.format(train="{steps: 100}", scheduler="{name: cosineannealinglr, warmup_steps: 10}")
    result = CliRunner().invoke(app, ["plan", str(write_config(text)), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert ("  schedule: linear warmup over 10 steps from lr×0.01, then CosineAnnealingLR(T_max=90); stepped every step"
            in result.output.splitlines())


@pytest.mark.parametrize("scheduler, message", [
    ("{name: steplr}", ":8: scheduler.step_size: `StepLR` needs `step_size`"),
    ("{name: cosineannealinglr, warmup_epochs: 2}",
     ":8: scheduler: warmup_epochs needs interval: epoch; with interval: step give warmup_steps"),
    ("{name: 'nosuch.sched:Cosine'}",
     ":8: scheduler.name: cannot import module `nosuch` (from `nosuch.sched:Cosine`): not installed and not on the Python path"),
])
def test_scheduler_mistakes_exit_2_with_file_and_line(write_config, tmp_path, scheduler, message):
    path = write_config(RUN.format(train="{steps: 4}", scheduler=scheduler))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}{message}"), result.output
