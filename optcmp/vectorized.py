"""The vectorized engine: the runs of one planned unit — sharing an architecture and data
config, differing only in seed and optimizer hyperparameters — train together as one
stacked model, through the one loop (`loop.py`).

A sweep of small runs spends its time on per-step Python and dispatch overhead, not on
arithmetic; one forward and backward pass for all members (`batched_model.py`) and one
update with per-member hyperparameters (`batched_optim.py`) cost about what one run's
step costs. Nothing else changes: each member is built with its own seed as the seeding
contract says (`torch.manual_seed(seed)` right before `build_model`), has its own data and
its own shuffle order, and gets its own run folder — the same scalars at the same steps,
histograms, hparams, weights.npz and result.json as the sequential engine writes, with
`engine: vectorized`.

`execute_unit(unit, exp_dir)` trains one unit that `planning.plan_units` made.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from optcmp.batched_model import StackedModel, member_losses
from optcmp.batched_optim import BatchedOptimizer, Segment
from optcmp.data import Dataset, build_data
from optcmp.functional import FunctionalStack, member_generator
from optcmp.loop import Column, execute_members
from optcmp.resolve import LOSSES, ResolvedRun, resolve_device
from optcmp.schedules import Schedules
from optcmp.stacked_eval import PlainEval, PlainStack, cross_entropy_losses, plain_layers
from optcmp.tb.tags import ParameterTags
from optcmp.trainer import build_run_model, histogram_tensors
from optcmp.units import Progress, ShouldStop, Unit

CHECK_EVERY = 256  # steps between divergence checks at the latest (each is a device→host sync)
EVAL_VALUES = 1 << 22  # values one piece of an evaluation pass may allocate (torch.func stacks, CPU)
EVAL_MIN_ROWS = 16  # samples per piece at least


class StackedData:
    """The members' data sets on the device: one copy when they are all equal (the
    quadratic data, or any data set that does not depend on the seed), else one per member."""

    def __init__(self, datas: list[Dataset], device: torch.device, dtype: torch.dtype) -> None:
        first = datas[0]
        self.members = len(datas)
        self.shared = all(_same_data(d, first) for d in datas[1:])
        kept = datas[:1] if self.shared else datas
        for d in kept:  # the planner groups runs by the shape of their data
            if d.x_train.shape != first.x_train.shape or (d.x_val is None) != (first.x_val is None) or \
                    (d.x_val is not None and d.x_val.shape != first.x_val.shape):
                raise RuntimeError("the members' data sets differ in size, though planned together")

        def stack(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
            if tensors[0] is None:
                return None
            out = torch.stack(tensors).to(device)
            return out.to(dtype) if out.is_floating_point() else out

        self.x_train, self.y_train = stack([d.x_train for d in kept]), stack([d.y_train for d in kept])
        self.x_val, self.y_val = stack([d.x_val for d in kept]), stack([d.y_val for d in kept])
        self.n_train = first.x_train.shape[0]
        self._rows = torch.arange(self.members, device=device).unsqueeze(1)
        # the members of each distinct data set (the same Dataset: the same seed), in order
        by_data: dict[int, list[int]] = {}
        for m, d in enumerate(datas):
            by_data.setdefault(id(d), []).append(m)
        self.groups = [list(range(self.members))] if self.shared else list(by_data.values())

    def group_inputs(self, split: str) -> list[torch.Tensor]:
        """The inputs `[n, …]` of a split, one per group of `groups`."""
        x = self.x_train if split == "train" else self.x_val
        return [x[0]] if self.shared else [x[g[0]] for g in self.groups]

    def _expand(self, y: torch.Tensor) -> torch.Tensor:
        return y.expand(self.members, *y.shape[1:]) if self.shared else y

    def full(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All of a split: inputs `[n, F]` when shared (the model broadcasts them), targets `[M, n, …]`."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_val, self.y_val)
        return (x[0] if self.shared else x), self._expand(y)

    def batch(self, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's batch for sample indices `idx` `[M, B]` (None: the full training set)."""
        if idx is None:
            return self.full("train")
        if self.shared:
            return self.x_train[0][idx], self.y_train[0][idx]
        return self.x_train[self._rows, idx], self.y_train[self._rows, idx]


def _same_data(a: Dataset, b: Dataset) -> bool:
    pairs = [(a.x_train, b.x_train), (a.y_train, b.y_train), (a.x_val, b.x_val), (a.y_val, b.y_val)]
    return all((s is None and t is None) or (s is not None and t is not None and s.shape == t.shape and torch.equal(s, t))
               for s, t in pairs)


class Stack:
    """The loop's `Members` for a vectorized unit: M runs' weights in one flat `[M, P]`
    buffer the batched optimizer updates in place, and the stacked model viewing it."""

    check_every = CHECK_EVERY
    wants_epoch_mean = False

    def __init__(self, runs: list[ResolvedRun], base_dir: Path | None, device: torch.device) -> None:
        first, cfg = runs[0], runs[0].config
        self.runs, self.device, self.size = runs, device, len(runs)
        by_seed: dict[int, Dataset] = {}  # the members share their data config: one build a seed
        for r in runs:
            if r.spec.seed not in by_seed:
                by_seed[r.spec.seed] = build_data(cfg.data, r.spec.seed, base_dir)
        datas = [by_seed[r.spec.seed] for r in runs]
        self.task, self.loss_fn = first.data.task, LOSSES[first.loss]
        models, generators = [], []
        for run in runs:
            models.append(build_run_model(run, datas[0]))
            # what its Dropout draws from in the sequential engine: the state right after the build
            generators.append(member_generator(device))
        template = models[0]
        shapes = dict((n, p.shape) for n, p in template.named_parameters())
        # The flat buffer holds the optimizer groups one after another, so that each group
        # is a column range with its own hyperparameters; then the parameters no step gives a
        # gradient (not reached from the output, or frozen), which torch.optim leaves as they
        # are (no decay, no momentum): outside every group, the batched update skips them too.
        groups = [[n for n in g.names if n not in first.unreached] for g in first.param_groups]
        self.layout = layout = [name for g in groups for name in g]
        offsets, at = {}, 0
        for name in [*layout, *(n for n in shapes if n not in layout)]:
            offsets[name] = at
            at += shapes[name].numel()
        trained = sum(shapes[n].numel() for n in layout)
        M = len(runs)
        dtype = next(template.parameters()).dtype  # the default dtype, as in the sequential engine
        self.data = StackedData(datas, device, dtype)
        flat = torch.empty(M, at, dtype=dtype)
        for m, model in enumerate(models):
            for name, p in model.named_parameters():
                flat[m, offsets[name]:offsets[name] + p.numel()] = p.detach().reshape(-1)
        self.flat = flat.to(device)
        self.names = list(shapes)  # model order, as the sequential engine logs and saves them
        self.grads = self.flat.new_empty(M, trained)  # each step's gradients, laid out like the weights
        views = lambda buf, names: {n: buf[:, offsets[n]:offsets[n] + shapes[n].numel()].view(M, *shapes[n])  # noqa: E731
                                    for n in names}
        self.views = views(self.flat, shapes)
        grad_views = views(self.grads, layout)
        # BatchNorm's running statistics (and batch counts), each member's own, outside the
        # optimizer's buffer; the hand-written model keeps no counts
        handwritten = first.stacking == "hand-written"
        buffers = {name: torch.stack([dict(model.named_buffers())[name] for model in models]).to(device)
                   for name, b in template.named_buffers() if b.dim() > 0 or not handwritten}
        # a Sequential of convolutions, pools, activations and Linear layers runs without vmap
        layers = plain_layers(template) if not handwritten and device.type == "cpu" else None
        if handwritten:
            self.model = StackedModel(template, self.views, buffers)
        elif first.stacking == "plain" and layers is not None:
            self.model = PlainStack(layers, self.views)
        else:  # torch.func; also a plain stack planned on a CPU that runs on a GPU (`auto` on a Ray worker)
            self.model = FunctionalStack(template.to(device), self.views, buffers, generators,
                                         input_dims=datas[0].x_train.dim())
        self.input_dims = datas[0].x_train.dim()
        # Evaluating a torch.func stack on a whole split at once makes tensors of M × samples
        # × channels: on the CPU a pass over them in pieces of EVAL_VALUES is measurably faster.
        self.eval_rows = None
        if not handwritten and device.type == "cpu":
            self.eval_rows = max(EVAL_MIN_ROWS, EVAL_VALUES // (M * max(first.activations, 1)))
        self.plain_eval = PlainEval(layers, self.views, self.data.groups) if layers else None
        # each member's weights and gradients by name (in model order), and the tensors it
        # histograms: views into the stacked buffers, valid for the whole training; the
        # tags are the template's, as the sequential engine makes them from its model
        tags = ParameterTags(template, self.names)
        self._named = [[(n, self.views[n][m]) for n in self.names] for m in range(M)]
        self._histogram_tensors = [histogram_tensors(tags, [self.views[n][m] for n in self.names],
                                                     [grad_views[n][m] if n in grad_views else None for n in self.names],
                                                     cfg) for m in range(M)]
        self.opt = Optimizers(runs, self.flat, [sum(shapes[n].numel() for n in g) for g in groups])
        self.scheduled = self.opt.scheduled
        self.lrs = torch.tensor(self.opt.lrs(), dtype=torch.float64, device=device)  # [M, groups]
        # `weight_norm` and `weight_norm/<layer>` of every member in one matmul: a [P, 1 + layers]
        # 0/1 matrix sums the squared weights of everything, then of each layer
        self.norm_tags = list(tags.norm_tags)
        norm_matrix = torch.zeros(at, len(tags.norm_tags), dtype=torch.float64)
        norm_matrix[:, 0] = 1
        for n, layer in zip(self.names, tags.layers):
            norm_matrix[offsets[n]:offsets[n] + shapes[n].numel(), 1 + layer] = 1
        self.norm_matrix = norm_matrix.to(device)
        self.grad_norm = self.before = None

    def step(self, batch: list[torch.Tensor | None], snapshot: bool) -> torch.Tensor:
        idx = None if batch[0] is None else torch.stack(batch)
        xb, yb = self.data.batch(idx)
        out, saved = self.model.forward(xb, keep=True, train=True)
        losses, grad_out = member_losses(self.loss_fn, out, yb, self.task, grad=True)
        named_grads = self.model.backward(saved, grad_out)
        grads = torch.cat([named_grads[n].reshape(self.size, -1) for n in self.layout], 1, out=self.grads)
        if snapshot:
            self.grad_norm = grads.double().square().sum(1).sqrt()
            self.before = self.flat.clone()
        return losses

    def update(self, losses: torch.Tensor) -> None:
        self.opt.step(self.grads)

    def end_epoch(self, mean_losses: Column | None) -> None:
        return None  # the schedules are stepped ahead, in the batched optimizer

    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each member's loss `[M]` (and accuracy) on its own train or validation set."""
        x, y = self.data.full(split)
        with torch.no_grad():
            if self.plain_eval is not None:
                out = self.plain_eval.evaluate(split, self.data.group_inputs(split))
                if self.loss_fn is F.cross_entropy and self.task == "classification" and out.dim() == 3:
                    losses = cross_entropy_losses(out, y)
                    return losses, (out.argmax(-1) == y).double().mean(1)
            elif self.eval_rows is None or x.shape[-self.input_dims] <= self.eval_rows:
                out, _ = self.model.forward(x)
            else:  # a few samples at a time: what the stacked layers hold stays in the cache
                shared = x.dim() == self.input_dims
                out = torch.cat([self.model.forward(part)[0] for part in x.split(self.eval_rows, 0 if shared else 1)], 1)
            losses, _ = member_losses(self.loss_fn, out, y, self.task)
        acc = (out.argmax(-1) == y).double().mean(1) if self.task == "classification" else None
        return losses, acc

    def scalars(self, after_step: bool) -> dict[str, Column]:
        if self.scheduled:  # the rates of the latest step
            self.lrs = torch.tensor(self.opt.lrs(), dtype=torch.float64, device=self.device)
        out: dict[str, Column] = {f"lr/group{i}": self.lrs[:, i] for i in range(self.lrs.shape[1])}
        flat64 = self.flat.double()
        norms = (flat64.square() @ self.norm_matrix).sqrt()
        out.update({tag: norms[:, j] for j, tag in enumerate(self.norm_tags)})
        if after_step:
            before64 = self.before.double()
            delta = (flat64 - before64).square().sum(1).sqrt()
            out["grad_norm"] = self.grad_norm
            out["update_ratio"] = delta / before64.square().sum(1).sqrt().clamp_min(1e-12)
        return out

    def histogram_tensors(self, m: int) -> dict[str, torch.Tensor]:
        return self._histogram_tensors[m]

    def named(self, m: int) -> list[tuple[str, torch.Tensor]]:
        return self._named[m]


class Optimizers:
    """The batched optimizers of a stack: one per block of consecutive members with equal
    `block_key` (the planner puts them next to each other), each updating its rows of the
    flat buffer in place."""

    def __init__(self, runs: list[ResolvedRun], flat: torch.Tensor, group_widths: list[int]) -> None:
        self.blocks: list[tuple[slice, BatchedOptimizer]] = []
        self.scheduled = False
        start = 0
        for end in range(1, len(runs) + 1):
            if end == len(runs) or runs[end].block_key != runs[start].block_key:
                rows = slice(start, end)
                params = flat if end - start == len(runs) else flat[rows]
                opt, scheduled = _optimizer(runs[rows], params, group_widths)
                self.blocks.append((rows, opt))
                self.scheduled |= scheduled
                start = end

    def step(self, grads: torch.Tensor) -> None:
        if len(self.blocks) == 1:
            self.blocks[0][1].step(grads)
            return
        for rows, opt in self.blocks:
            opt.step(grads[rows])

    def lrs(self) -> np.ndarray:
        """Each member's learning rate of each parameter group at the latest step, `[M, groups]`."""
        return np.concatenate([opt.lrs() for _, opt in self.blocks])


def _optimizer(runs: list[ResolvedRun], flat: torch.Tensor, group_widths: list[int]) -> tuple[BatchedOptimizer, bool]:
    """The batched optimizer of one block's rows of the flat buffer: one segment per
    parameter group (the first columns, `group_widths` wide, one group after another),
    each member with its own resolved options and decay; and whether any member has a
    schedule."""
    segments, col = [], 0
    for i, width in enumerate(group_widths):
        per_member = [{**r.options, **r.param_groups[i].options} for r in runs]
        segments.append(Segment(col, col + width, per_member, [r.decoupled[i] for r in runs]))
        col += width
    schedule = None
    if any(r.config.scheduler is not None for r in runs):
        member_lrs = [[seg.options[m]["lr"] for seg in segments] for m in range(len(runs))]
        schedule = Schedules([(r.config, r.schedule_length) for r in runs], member_lrs, runs[0].data.n_train)
    return BatchedOptimizer(runs[0].family, flat, segments, lr_at=schedule), schedule is not None


def execute_unit(unit: Unit, exp_dir: Path, base_dir: Path | None = None, progress: Progress | None = None,
                 should_stop: ShouldStop | None = None) -> list[dict[str, Any]]:
    """Train a vectorized unit's runs together and write each run's folder, as
    `trainer.execute` does for one run. Returns one result per run, in order."""
    runs = list(unit.runs)
    device = resolve_device(runs[0].config.device)

    def build() -> tuple[Stack, int]:
        stack = Stack(runs, base_dir, device)
        return stack, stack.data.n_train

    return execute_members(runs, Path(exp_dir), "vectorized", device, build, progress, should_stop)
