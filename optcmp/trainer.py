"""The sequential engine: one run, a torch.optim optimizer and the user's nn.Module, as a
plain PyTorch script would train it (and bit for bit what it computes).

`execute(run, exp_dir)` is what every executor calls for a run of its own: it trains
through the one loop (`loop.py`), writes the run's folder (config.yaml, events,
metrics.csv, weights.npz, result.json — the last one last, atomically) and returns the
result. A run that raises is `failed`, a NaN/inf or too-large loss is `diverged`, Ctrl-C
is `interrupted`; none of them stops a sweep.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optcmp.config import ExperimentConfig
from optcmp.data import Dataset, build_data
from optcmp.errors import ConfigError
from optcmp.loop import Column, execute_members
from optcmp.models import build_model
from optcmp.optimizers import build_scheduler, needs_closure, step_scheduler, takes_metric
from optcmp.resolve import LOSSES, ResolvedRun, Resolver, resolve_device
from optcmp.sweep import RunSpec
from optcmp.tb.tags import ParameterTags
from optcmp.units import Progress, ShouldStop


def predict(model: nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    out = model(x)
    return out.squeeze(-1) if task == "regression" and out.dim() > 1 else out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, loss_fn: Callable) -> tuple[float, float | None]:
    """(loss, accuracy or None) of the model on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    out = predict(model, x, task)
    loss = loss_fn(out, y).item()
    acc = (out.argmax(-1) == y).float().mean().item() if task == "classification" else None
    model.train(was_training)
    return loss, acc


def weight_scalars(tags: ParameterTags, squared: list[float]) -> dict[str, float]:
    """Global and per-layer L2 weight norms (`tags.norm_tags`) from each parameter's squared norm."""
    per_layer = [0.0] * (len(tags.norm_tags) - 1)
    for layer, sq in zip(tags.layers, squared):
        per_layer[layer] += sq
    return dict(zip(tags.norm_tags, [math.sqrt(sum(squared)), *(math.sqrt(v) for v in per_layer)]))


def squared_norms(tensors: list[torch.Tensor]) -> list[float]:
    """Each tensor's squared L2 norm, in one batched call and one host sync."""
    return (torch.stack(torch._foreach_norm(tensors)).double() ** 2).tolist() if tensors else []


def histogram_tensors(tags: ParameterTags, weights: list[torch.Tensor], grads: list[torch.Tensor | None],
                      config: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The tensors to histogram by tag (`weights/<label>`, `grads/<label>`), in `tags`' order;
    a gradient that is None (a parameter the loss does not reach) has no histogram."""
    h = config.log.histograms
    out = {}
    if h.weights:
        out.update(zip(tags.weights, weights))
    if h.grads:
        out.update((tag, g) for tag, g in zip(tags.grads, grads) if g is not None)
    return out


@lru_cache(maxsize=1)
def _cpu_only() -> bool:
    """Whether this process can reach no accelerator (nor a custom device backend)."""
    accelerators = [torch.cuda, getattr(torch, "xpu", None), getattr(torch, "mtia", None)]
    return (not any(a is not None and a.is_available() for a in accelerators) and not torch.backends.mps.is_available()
            and not hasattr(torch, torch._C._get_privateuse1_backend_name()))


def seed_everywhere(seed: int) -> None:
    """`torch.manual_seed(seed)`. Where no accelerator can be reached, the CPU generator's
    seeding alone, which is what torch.manual_seed does there but for queueing each absent
    accelerator's seeding with a record of the call's stack (0.4 ms a call; for 1000
    members, most of half a second)."""
    if _cpu_only():
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def build_run_model(run: ResolvedRun, data: Dataset) -> nn.Module:
    """The run's model for `data`, on the CPU, as the seeding contract builds it:
    `torch.manual_seed(seed)` (`seed_everywhere`) right before `build_model`. The `ulp` probe (role "ulp") then
    moves every parameter one ulp up (`torch.nextafter(p, +inf)`, which draws no random
    numbers), the same in both engines."""
    seed_everywhere(run.spec.seed)
    model = build_model(run.config.model, data.n_features, data.n_outputs, data.sample_shape)
    if getattr(run.spec, "role", "run") == "ulp":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.nextafter(p, torch.tensor(math.inf, dtype=p.dtype)))
    return model


def build_optimizer(run: ResolvedRun, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer on `model`'s parameters, from its resolved parameter groups."""
    by_name = dict(model.named_parameters())
    groups = [{"params": [by_name[n] for n in g.names], **g.options} for g in run.param_groups]
    # one plain group: pass the tensors as a plain script would
    params = groups[0]["params"] if len(groups) == 1 and len(groups[0]) == 1 else groups
    try:
        return run.optimizer_class(params, **run.kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError("optimizer", f"`{run.optimizer_class.__name__}` refused its arguments: {e}") from None


class OneRun:
    """The loop's `Members` for one run: its model, torch.optim optimizer and scheduler."""

    size = 1
    check_every = 1  # the loss is on the host every step anyway

    def __init__(self, run: ResolvedRun, data: Dataset, device: torch.device) -> None:
        config = self.config = run.config
        self.data, self.task, self.loss_fn = data, data.task, LOSSES[run.loss]
        self.model = model = build_run_model(run, data).to(device)
        self.opt = build_optimizer(run, model)
        self.sched = build_scheduler(self.opt, config.scheduler, run.schedule_length)
        self.by_step = config.scheduler is not None and config.scheduler.interval == "step"
        self.wants_epoch_mean = self.sched is not None and not self.by_step and takes_metric(self.sched) and data.x_val is None
        self.named_params = [(n, p) for n, p in model.named_parameters()]
        self.params = [p for _, p in self.named_params]
        self.names = [n for n, _ in self.named_params]
        self.tags = ParameterTags(model, self.names)  # made once: no per-step string work
        self.detached = [p.detach() for p in self.params]  # views of the live weights, made once
        self.closure_opt = needs_closure(self.opt)
        self.lrs = [float(g["lr"]) for g in self.opt.param_groups]  # the rates of the latest step, as logged
        self.before: list[torch.Tensor] | None = None
        self.grads: list[torch.Tensor] = []
        model.train()

    def step(self, batch: list[torch.Tensor | None], snapshot: bool) -> list[float]:
        idx, data, model, opt = batch[0], self.data, self.model, self.opt
        xb, yb = (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])
        first: list[torch.Tensor] = []  # the loss at the step's start, however often a closure runs

        @torch.enable_grad()
        def closure():
            opt.zero_grad(set_to_none=True)
            batch_loss = self.loss_fn(predict(model, xb, self.task), yb)
            batch_loss.backward()
            if not first:
                first.append(batch_loss.detach())
            return batch_loss

        self.lrs = [float(g["lr"]) for g in opt.param_groups]
        if self.closure_opt:
            self.before = list(torch._foreach_mul(self.detached, 1.0)) if snapshot else None
            opt.step(closure)
        else:
            closure()
            self.before = list(torch._foreach_mul(self.detached, 1.0)) if snapshot else None  # copies
        self.grads = [p.grad for p in self.params if p.grad is not None] if snapshot else []
        return [first[0].item()]

    def update(self, losses: list[float]) -> None:
        if not self.closure_opt:
            self.opt.step()
        if self.sched is not None and self.by_step:
            step_scheduler(self.sched, losses[0])

    def end_epoch(self, mean_losses: list[float] | None) -> None:
        if self.sched is None or self.by_step:
            return
        # ReduceLROnPlateau watches the validation loss where there is one
        metric = None
        if takes_metric(self.sched):
            metric = self.evaluate("val")[0][0] if self.data.x_val is not None else mean_losses[0]
        step_scheduler(self.sched, metric)

    def evaluate(self, split: str) -> tuple[list[float], list[float] | None]:
        data = self.data
        x, y = (data.x_train, data.y_train) if split == "train" else (data.x_val, data.y_val)
        loss, acc = evaluate(self.model, x, y, self.task, self.loss_fn)
        return [loss], None if acc is None else [acc]

    def scalars(self, after_step: bool) -> dict[str, Column]:
        out: dict[str, Column] = {f"lr/group{i}": [lr] for i, lr in enumerate(self.lrs)}
        if after_step:
            # grads, weights before and after, and the update: one batched norm, one sync
            grads, before, detached = self.grads, self.before, self.detached
            k, n = len(grads), len(self.params)
            sq = squared_norms([*grads, *before, *torch._foreach_sub(detached, before), *detached])
            out["grad_norm"] = [math.sqrt(sum(sq[:k]))]
            out["update_ratio"] = [math.sqrt(sum(sq[k + n:k + 2 * n])) / max(math.sqrt(sum(sq[k:k + n])), 1e-12)]
            weights_sq = sq[k + 2 * n:]
        else:
            weights_sq = squared_norms(self.detached)
        out.update({tag: [value] for tag, value in weight_scalars(self.tags, weights_sq).items()})
        return out

    def histogram_tensors(self, m: int) -> dict[str, torch.Tensor]:
        return histogram_tensors(self.tags, self.detached, [p.grad for p in self.params], self.config)

    def named(self, m: int) -> list[tuple[str, torch.Tensor]]:
        return self.named_params


def execute(run: ResolvedRun | RunSpec, exp_dir: Path, base_dir: Path | None = None, progress: Progress | None = None,
            should_stop: ShouldStop | None = None) -> dict[str, Any]:
    """Train one run and write its folder; always returns a result, whatever happened.
    A bare RunSpec is resolved first (for callers that did not plan)."""
    if isinstance(run, RunSpec):
        run = Resolver(base_dir)(run)
    device = resolve_device(run.config.device)

    def build() -> tuple[OneRun, int]:
        data = build_data(run.config.data, run.spec.seed, base_dir).to(device)
        return OneRun(run, data, device), len(data.x_train)

    return execute_members([run], Path(exp_dir), "sequential", device, build, progress, should_stop)[0]
