"""Learning-rate schedules of a vectorized group, stepped ahead of training.

A group's members may each have their own schedule. Each is the very torch scheduler the
sequential engine builds (`optimizers.build_scheduler`, warmup included), driven on an
optimizer that holds only learning rates and stepped as often as the run will have
stepped it by then: the batched optimizer reads every member's rate of every step from
tables built a block of steps at a time. So a schedule may depend on the step count only
(`unscheduled` says which cannot).
"""
from __future__ import annotations

import json

import numpy as np
import torch

from optcmp.config import ExperimentConfig, SchedulerConfig
from optcmp.data import steps_per_epoch
from optcmp.optimizers import build_scheduler, step_scheduler


def unscheduled(cfg: SchedulerConfig) -> str | None:
    """Why this schedule cannot drive a vectorized group, or None. A group's schedules are
    stepped ahead of training, so they may depend on the step count alone: not on a metric
    (ReduceLROnPlateau), and changing nothing but the learning rate (CyclicLR and OneCycleLR
    also cycle the momentum, unless told not to)."""
    name = (cfg.name or "").lower()
    if name == "reducelronplateau":
        return "ReduceLROnPlateau watches a metric; its schedule is not vectorized"
    if name in ("cycliclr", "onecyclelr") and (cfg.model_extra or {}).get("cycle_momentum", True):
        return f"{cfg.name} cycles the momentum too (set cycle_momentum: false to vectorize it)"
    return None


class LrOnly(torch.optim.Optimizer):
    """Just enough of an optimizer for a learning-rate scheduler to drive: parameter groups
    holding a learning rate. (A real torch.optim optimizer would cost a second of importing
    torch._dynamo on its first construction, and hold state it does not need.)"""

    def __init__(self, lrs: list[float]) -> None:  # Optimizer.__init__ is what this class avoids
        self.defaults = {"lr": lrs[0]}
        self.state: dict = {}
        self.param_groups = [{"params": [], "lr": lr} for lr in lrs]
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    def step(self, closure=None) -> None:
        return None


def rates_only_optimizer(lrs: list[float], scheduler: SchedulerConfig | None) -> LrOnly | None:
    """An optimizer holding only the parameter groups' learning rates `lrs`, enough to build
    and check `scheduler` on, where that is all the scheduler touches (a torch scheduler
    the vectorized engine can step ahead); else None."""
    if scheduler is not None and (unscheduled(scheduler) or (scheduler.name is not None and ":" in scheduler.name)):
        return None
    return LrOnly(list(lrs))


class Schedule:
    """One schedule's learning rates, stepped ahead of training on demand."""

    def __init__(self, config: ExperimentConfig, length: int, n_train: int, lrs: list[float]) -> None:
        """`length`: the run's scheduler steps (`optimizers.schedule_length`)."""
        self.by_step = config.scheduler is None or config.scheduler.interval == "step"
        self.per_epoch = steps_per_epoch(config.data, n_train)
        self.length = max(length, 1)
        self.opt = LrOnly(list(lrs))
        # a warmup lowers the rates right away
        self.sched = build_scheduler(self.opt, config.scheduler, self.length) if config.scheduler is not None else None
        self.values = [[float(g["lr"]) for g in self.opt.param_groups]]  # after first + i scheduler steps
        self.first = 0

    def at(self, steps: np.ndarray) -> np.ndarray:
        """`[len(steps), groups]`: the rates optimizer steps `steps` (1-based) use. Step t
        comes after t − 1 scheduler steps (interval: step) or after its epoch's index of
        them (interval: epoch); beyond the run's last step the rates stay put."""
        k = steps - 1 if self.by_step else (steps - 1) // self.per_epoch
        k = np.minimum(k, self.length - 1) if self.sched is not None else np.zeros_like(steps)
        while self.first + len(self.values) <= k.max():
            self.opt.step()
            step_scheduler(self.sched, None)
            self.values.append([float(g["lr"]) for g in self.opt.param_groups])
        # steps are asked for in increasing blocks: what lies before this block is not needed again
        del self.values[:int(k.min()) - self.first]
        self.first = int(k.min())
        return np.array(self.values)[k - self.first]


class Schedules:
    """The learning rate of every member and parameter group at every optimizer step
    (`lr_at` of `batched_optim.BatchedOptimizer`).

    Each member's scheduler (`members`: its config and schedule length) is built on an
    optimizer with the member's group learning rates `member_lrs`; its values are the ones
    torch.optim's groups would hold. Members may have different schedules (or none);
    members with the same schedule and rates share one. `n_train`: the training set's size."""

    def __init__(self, members: list[tuple[ExperimentConfig, int]], member_lrs: list[list[float]], n_train: int) -> None:
        distinct: dict[str, int] = {}
        self.schedules: list[Schedule] = []
        which = []
        for (config, length), lrs in zip(members, member_lrs):
            scheduler = config.scheduler
            key = json.dumps([None if scheduler is None else scheduler.model_dump(mode="json"), lrs])
            if key not in distinct:
                distinct[key] = len(self.schedules)
                self.schedules.append(Schedule(config, length, n_train, lrs))
            which.append(distinct[key])
        self.which = np.array(which)

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        """`[len(steps), M, groups]`."""
        return np.stack([s.at(steps) for s in self.schedules])[self.which].transpose(1, 0, 2)
