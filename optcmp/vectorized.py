"""The vectorized engine: runs that share an architecture and data config, and differ only
in seed and optimizer hyperparameters, train together as one stacked model.

A sweep of small runs spends its time on per-step Python and dispatch overhead, not on
arithmetic; one forward and backward pass for all members (`batched_model.py`) and one
update with per-member hyperparameters (`batched_optim.py`) cost about what one run's
step costs. Nothing else changes: each member is built with its own seed as the seeding
contract says (`torch.manual_seed(seed)` right before `build_model`), has its own data and
its own shuffle order, and gets its own run folder — the same scalars at the same steps,
histograms, hparams, weights.npz and result.json as the sequential trainer writes, with
`engine: vectorized`. A member that diverges is recorded and left out from then on; the
others go on.

`group_specs(specs)` says which runs train together; `execute_group(specs, exp_dir)` trains
one group (in memory-sized chunks) and writes its members' folders.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optcmp.batched_model import StackedModel, member_losses, unsupported_layer
from optcmp.batched_optim import (STRUCTURAL, VARYING, BatchedOptimizer, Segment, family_of, invalid_value,
                                  unsupported_option)
from optcmp.config import OptimizerConfig, SchedulerConfig
from optcmp.data import Dataset, batch_size_of, build_data, epoch_batches, shuffle_generator, steps_per_epoch
from optcmp.errors import ConfigError, OptcmpError
from optcmp.models import build_model
from optcmp.optimizers import (build_scheduler, group_names, optimizer_class, param_groups, resolved_kwargs,
                               schedule_length, step_scheduler)
from optcmp.sweep import RunSpec
from optcmp.tblog import log_histograms
from optcmp.trainer import (
    Bests, Diverged, Progress, _check, base_result, final_metrics, finish_run, histogram_tensors, layer_of,
    loss_function, open_logger, prepare_run_dir, resolve_device, save_weights,
)

MAX_MEMBERS = 512  # members per chunk at most: beyond this a step is arithmetic-bound anyway
MIN_SPLIT = 8  # members per piece at least when --jobs splits a group across processes
MEMORY_SHARE = 0.5  # share of the free device memory (CPU: available RAM) one chunk may use
IO_THREADS = 4  # threads writing run folders at the start and end of a chunk
CHECK_EVERY = 256  # steps between divergence checks at the latest (each is a device→host sync)
# Keys of the optimizer section that may differ between the members of a group.
PER_MEMBER_KEYS = ("name", *dict.fromkeys(key for keys in VARYING.values() for key in keys))


# --- which runs train together ---------------------------------------------------------


def why_not(spec: RunSpec, base_dir: Path | None = None) -> str | None:
    """Why this run cannot join a vectorized group (it then trains sequentially), or None.
    `base_dir`: where the config's relative paths start (an imported model is built once
    to see its layers, on the config's data)."""
    cfg = spec.config
    if cfg.model.kind not in ("mlp", "linear"):
        reason = _imported_model_reason(spec, base_dir)
        if reason:
            return f"model `{cfg.model.kind}`: {reason}"
    if cfg.scheduler is not None:
        reason = _unscheduled(cfg.scheduler)
        if reason:
            return reason
    try:
        options = resolved_kwargs(cfg.optimizer)
    except ConfigError as e:
        return f"optimizer: {e.message}"
    reason = unsupported_option(cfg.optimizer.name, options)
    for i, group in enumerate(cfg.optimizer.groups):
        reason = reason or unsupported_option(cfg.optimizer.name, {k: v for k, v in group.items() if k != "params"}, group=True)
    return reason


_MODEL_CHECKS: dict[str, str | None] = {}  # (model, data, base_dir) → why the model does not stack


def _imported_model_reason(spec: RunSpec, base_dir: Path | None) -> str | None:
    """Why the user's model does not stack (`unsupported_layer`), or None: an nn.Sequential
    of Linear, LayerNorm, BatchNorm1d and activation layers, or a bare Linear, does. The
    model is built once per model and data config, leaving torch's random state as it was."""
    cfg = spec.config
    key = json.dumps([cfg.model.model_dump(mode="json"), cfg.data.model_dump(mode="json"), str(base_dir)],
                     sort_keys=True, default=str)
    if key not in _MODEL_CHECKS:
        try:
            with torch.random.fork_rng(devices=[]):
                data = build_data(cfg.data, spec.seed, base_dir)
                _MODEL_CHECKS[key] = unsupported_layer(build_model(cfg.model, data.n_features, data.n_outputs))
        except Exception as e:  # noqa: BLE001 - the run itself will report what is wrong
            _MODEL_CHECKS[key] = f"it could not be built to look at its layers ({type(e).__name__}: {e})"
    return _MODEL_CHECKS[key]


def _unscheduled(cfg: SchedulerConfig) -> str | None:
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


def rates_only_optimizer(model: torch.nn.Module, cfg: OptimizerConfig, scheduler: SchedulerConfig) -> torch.optim.Optimizer | None:
    """An optimizer holding only the learning rates of `model`'s parameter groups, enough to
    build and check `scheduler` on, where that is all the scheduler touches (a torch
    scheduler the vectorized engine can step ahead); else None."""
    if _unscheduled(scheduler) or (scheduler.name is not None and ":" in scheduler.name):
        return None
    base = resolved_kwargs(cfg)["lr"]
    return _LrOnly([g.get("lr", base) for g in group_names(model, cfg)])


class _LrOnly(torch.optim.Optimizer):
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


class _Schedule:
    """One schedule's learning rates, stepped ahead of training on demand."""

    def __init__(self, config, lrs: list[float], n_train: int) -> None:
        self.by_step = config.scheduler is None or config.scheduler.interval == "step"
        self.per_epoch = steps_per_epoch(config.data, n_train)
        self.length = max(schedule_length(config, n_train), 1)
        self.opt = _LrOnly(list(lrs))
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


class _Schedules:
    """The learning rate of every member and parameter group at every optimizer step.

    Each member's scheduler is built as the sequential trainer builds it (`build_scheduler`,
    warmup included) on an optimizer with the member's group learning rates, and stepped
    ahead of training, as often as the run will have stepped it by then: its values are
    the ones torch.optim's groups would hold. Members may have different schedules (or
    none); members with the same schedule and learning rates share one."""

    def __init__(self, specs: list[RunSpec], member_lrs: list[list[float]], n_train: int) -> None:
        distinct: dict[str, int] = {}
        self.schedules: list[_Schedule] = []
        which = []
        for spec, lrs in zip(specs, member_lrs):
            scheduler = spec.config.scheduler
            key = json.dumps([None if scheduler is None else scheduler.model_dump(mode="json"), lrs])
            if key not in distinct:
                distinct[key] = len(self.schedules)
                self.schedules.append(_Schedule(spec.config, lrs, n_train))
            which.append(distinct[key])
        self.which = np.array(which)

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        """`[len(steps), M, groups]`."""
        return np.stack([s.at(steps) for s in self.schedules])[self.which].transpose(1, 0, 2)


def check_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> bool:
    """Check the optimizer section as `optimizers.build_optimizer` does (arguments against
    the signature, parameter-group patterns, the constructor's value checks), without
    building a torch.optim optimizer. Returns False when only building one can tell
    (an optimizer or option this engine does not batch); raises ConfigError like it."""
    options = resolved_kwargs(cfg)
    if unsupported_option(cfg.name, options) or not isinstance(options.get("betas", ()), (list, tuple)) \
            or len(options.get("betas", (0, 0))) != 2:
        return False
    param_groups(model, cfg)
    problem = invalid_value(family_of(cfg.name), options)
    if problem:
        raise ConfigError("optimizer", f"`{optimizer_class(cfg.name).__name__}` refused its arguments: {problem}")
    return True


def group_key(spec: RunSpec) -> str:
    """Runs with equal keys can train together: everything but the seed, the per-member
    optimizer hyperparameters and the learning-rate schedule is equal."""
    config = spec.config.model_dump(mode="json")
    config.pop("seeds")
    config.pop("scheduler")
    optimizer = config.pop("optimizer")
    family = family_of(optimizer["name"])
    options = resolved_kwargs(spec.config.optimizer)
    structural = {k: options.get(k) for k in STRUCTURAL[family]}
    groups = [{k: v for k, v in g.items() if k not in PER_MEMBER_KEYS} for g in optimizer.get("groups", [])]
    return json.dumps([config, family, structural, optimizer.get("no_decay"), groups], sort_keys=True, default=str)


def group_specs(specs: list[RunSpec], max_members: int = MAX_MEMBERS, parts: int = 1,
                base_dir: Path | None = None) -> list[list[RunSpec]]:
    """Partition runs into work units in plan order: each vectorizable group (cut into
    pieces of at most `max_members`), and every other run on its own. A unit of one run
    trains sequentially.

    With `parts` > 1 (`--jobs`), a group is also cut into up to `parts` pieces of at least
    `MIN_SPLIT` members, so that that many processes train it side by side."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        key = spec.run_id if why_not(spec, base_dir) else group_key(spec)
        groups.setdefault(key, []).append(spec)
    units = []
    for members in groups.values():
        size = max_members
        split = min(parts, len(members) // MIN_SPLIT)
        if split > 1:
            size = min(size, math.ceil(len(members) / split))
        units += _pieces(members, size)
    order = {s.run_id: i for i, s in enumerate(specs)}
    return sorted(units, key=lambda unit: order[unit[0].run_id])


def _pieces(members: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """`members` cut into the fewest near-equal consecutive pieces of at most `size`."""
    n = math.ceil(len(members) / max(size, 1))
    return [members[i * len(members) // n:(i + 1) * len(members) // n] for i in range(n)]


def describe_units(units: list[list[RunSpec]], base_dir: Path | None = None) -> list[str]:
    """One line per unit for `optcmp plan`: which runs train together, or why one trains alone."""
    lines = []
    for unit in units:
        if len(unit) > 1:
            ids = ", ".join(s.run_id for s in unit[:3]) + (f", … {unit[-1].run_id}" if len(unit) > 3 else "")
            lines.append(f"vectorized group of {len(unit)}: {ids}")
        else:
            reason = why_not(unit[0], base_dir) or "no other run shares its architecture, data and training config"
            lines.append(f"sequential: {unit[0].run_id} ({reason})")
    return lines


# --- one group ----------------------------------------------------------------------


def execute_group(specs: list[RunSpec], exp_dir: Path, base_dir: Path | None = None,
                  progress: Progress | None = None, max_members: int = MAX_MEMBERS) -> list[dict[str, Any]]:
    """Train the runs of one group together and write each run's folder, as
    `trainer.execute` does for one run. Returns one result per run that was started, in
    order; after Ctrl-C the runs of later chunks are not started (and not returned)."""
    from optcmp.trainer import execute

    units = group_specs(list(specs), max_members, base_dir=base_dir)
    results: list[dict[str, Any]] = []
    for unit in units:
        if len(unit) == 1 and why_not(unit[0], base_dir):
            results.append(execute(unit[0], exp_dir, base_dir, progress))
        else:
            device = resolve_device(unit[0].config.device)
            for chunk in _chunks(unit, device, base_dir, max_members):
                results += _Group(chunk, Path(exp_dir), base_dir, device, progress).run()
                if any(r["status"] == "interrupted" for r in results):
                    break
        if any(r["status"] == "interrupted" for r in results):
            break
    order = {s.run_id: i for i, s in enumerate(specs)}
    return sorted(results, key=lambda r: order[r["run_id"]])


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_SHARE)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * MEMORY_SHARE)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def member_bytes(spec: RunSpec, n_features: int, n_outputs: int, n_rows: int, own_data: bool) -> int:
    """A generous estimate of one member's memory in a chunk: about ten copies of its
    parameters (weights, gradients, optimizer state, temporaries) and four of each
    layer's activations for `n_rows` samples, plus its data when it has its own."""
    model = build_model(spec.config.model, n_features, n_outputs)
    n_params = sum(p.numel() for p in model.parameters())
    widths = sum(m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    data = n_rows * (n_features + 1) if own_data else 0
    return 4 * (10 * n_params + 4 * n_rows * (widths * 2 + n_features) + data)


def _chunks(unit: list[RunSpec], device: torch.device, base_dir: Path | None, max_members: int) -> list[list[RunSpec]]:
    """The unit cut into near-equal chunks that fit the device's memory."""
    first = unit[0]
    data = build_data(first.config.data, first.seed, base_dir)
    rows = len(data.x_train) + (len(data.x_val) if data.x_val is not None else 0)
    own = first.config.data.kind != "quadratic"
    per_member = member_bytes(first, data.n_features, data.n_outputs, rows, own)
    return _pieces(unit, min(max_members, _memory_budget(device) // per_member))


def _in_threads(fn: Callable, items) -> list:
    """`[fn(x) for x in items]` on a few threads: writing run folders mostly waits on
    fsync, which needs no core, so members' folders are written side by side."""
    items = list(items)
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


class _Member:
    """One run of a group: its spec, folder, logger, result and running bests."""

    def __init__(self, index: int, spec: RunSpec, exp_dir: Path, device: torch.device) -> None:
        self.index = index  # row in the group's stacked tensors
        self.spec = spec
        self.run_dir = exp_dir / spec.run_id
        self.result = base_result(spec)
        self.result["engine"] = "vectorized"
        self.result["device"] = str(device)
        yaml_text = prepare_run_dir(self.run_dir, spec)
        self.logger = open_logger(self.run_dir, spec, yaml_text)
        self.best = Bests()
        self.done = False

    def log(self, step: int, tags: tuple[str, ...], values: list[float]) -> None:
        self.best.update(dict(zip(tags, values)))
        self.logger.scalar_row(step, tags, values)

    def finish(self, seconds: float, **fields: Any) -> None:
        """Record the outcome (`status` and any other result fields) and write the folder."""
        self.result.update(fields)
        finish_run(self.run_dir, self.spec, self.logger, self.result, seconds)
        self.done = True


class _Group:
    """One chunk of a group: builds the members, trains them, writes their folders."""

    def __init__(self, specs: list[RunSpec], exp_dir: Path, base_dir: Path | None, device: torch.device,
                 progress: Progress | None) -> None:
        self.specs, self.exp_dir, self.base_dir, self.device, self.progress = specs, exp_dir, base_dir, device, progress
        self.config = specs[0].config
        self.members: list[_Member] = []

    def run(self) -> list[dict[str, Any]]:
        from optcmp.trainer import execute

        start = time.perf_counter()
        try:
            self._setup()
        except OptcmpError:
            raise
        except Exception:  # noqa: BLE001 - models or data that do not stack, or do not build: each
            # run then trains (or fails, with its own error.txt) in the sequential trainer
            return [execute(s, self.exp_dir, self.base_dir, self.progress) for s in self.specs]
        try:
            self.members = _in_threads(lambda i: _Member(i, self.specs[i], self.exp_dir, self.device), range(len(self.specs)))
            for member, own in zip(self.members, self.param_groups):
                member.result["param_groups"] = own
            self._train()
        except KeyboardInterrupt:
            for m in self._open():
                m.finish(self._share(start), status="interrupted", error="interrupted by the user")
        except OptcmpError:
            for m in self._open():
                m.logger.close()
            raise
        except Exception as e:  # noqa: BLE001 - a group that raises must not stop the sweep
            text = traceback.format_exc()
            for m in self._open():
                (m.run_dir / "error.txt").write_text(text)
                m.finish(self._share(start), status="failed", error=f"{type(e).__name__}: {e}")
        return [m.result for m in self.members]

    def _open(self) -> list[_Member]:
        return [m for m in self.members if not m.done]

    def _share(self, start: float) -> float:
        """A member's share of the chunk's wall time: what `seconds` sums to over a sweep."""
        return (time.perf_counter() - start) / len(self.specs)

    # --- setup ---

    def _setup(self) -> None:
        """Data, stacked parameters and optimizer, before any run folder is touched."""
        cfg, dev = self.config, self.device
        datas = [build_data(cfg.data, s.seed, self.base_dir) for s in self.specs]
        first = datas[0]
        self.task = first.task
        self.loss_fn = loss_function(cfg, first.task)
        models = []
        for spec in self.specs:
            torch.manual_seed(spec.seed)  # the seeding contract: right before the model is built
            models.append(build_model(cfg.model, first.n_features, first.n_outputs))
        template = models[0]
        if unsupported_layer(template):
            raise _CannotStack(unsupported_layer(template))
        groups = group_names(template, cfg.optimizer)
        shapes = dict((n, p.shape) for n, p in template.named_parameters())
        # The flat buffer holds the optimizer groups one after another, so that each group
        # is a column range with its own hyperparameters.
        layout = [name for g in groups for name in g["params"]]
        offsets, at = {}, 0
        for name in layout:
            offsets[name] = at
            at += shapes[name].numel()
        M = len(self.specs)
        dtype = next(template.parameters()).dtype  # the default dtype, as in the sequential trainer
        self.data = _StackedData(datas, dev, dtype)
        flat = torch.empty(M, at, dtype=dtype)
        for m, model in enumerate(models):
            for name, p in model.named_parameters():
                flat[m, offsets[name]:offsets[name] + p.numel()] = p.detach().reshape(-1)
        self.flat = flat.to(dev)
        self.layout = layout
        self.names = list(shapes)  # model order, as the sequential trainer logs and saves them
        self.grads = torch.empty_like(self.flat)  # each step's gradients, laid out like the weights
        views = lambda buf: {n: buf[:, offsets[n]:offsets[n] + shapes[n].numel()].view(M, *shapes[n]) for n in shapes}  # noqa: E731
        self.views = views(self.flat)
        grad_views = views(self.grads)
        # BatchNorm's running statistics, each member's own, outside the optimizer's buffer
        buffers = {name: torch.stack([dict(model.named_buffers())[name] for model in models]).to(dev)
                   for name, b in template.named_buffers() if b.dim() > 0}
        self.model = StackedModel(template, self.views, buffers)
        # each member's weights and gradients by name (in model order), and the tensors it
        # histograms: views into the stacked buffers, valid for the whole training
        self.named = [[(n, self.views[n][m]) for n in self.names] for m in range(M)]
        self.histogram_tensors = [histogram_tensors(self.named[m], cfg, [grad_views[n][m] for n in self.names])
                                  for m in range(M)]
        self.param_groups = member_groups = [group_names(template, s.config.optimizer) for s in self.specs]
        segments, col = [], 0
        for i, g in enumerate(groups):
            width = sum(shapes[n].numel() for n in g["params"])
            per_member = [{**resolved_kwargs(s.config.optimizer), **{k: v for k, v in own[i].items() if k != "params"}}
                          for s, own in zip(self.specs, member_groups)]
            decoupled = [s.config.optimizer.name.lower() == "adamw" or bool(o.get("decoupled_weight_decay"))
                         for s, o in zip(self.specs, per_member)]
            segments.append(Segment(col, col + width, per_member, decoupled))
            col += width
        schedule = None
        if any(s.config.scheduler is not None for s in self.specs):
            member_lrs = [[seg.options[m]["lr"] for seg in segments] for m in range(M)]
            schedule = _Schedules(self.specs, member_lrs, self.data.n_train)
        self.opt = BatchedOptimizer(family_of(cfg.optimizer.name), self.flat, segments, lr_at=schedule)
        self.scheduled = schedule is not None
        self.lrs = torch.tensor(self.opt.lrs(), dtype=torch.float64, device=dev)  # [M, groups]
        # `weight_norm` and `weight_norm/<layer>` of every member in one matmul: a [P, 1 + layers]
        # 0/1 matrix sums the squared weights of everything, then of each layer
        layers = list(dict.fromkeys(layer_of(n) for n in self.names))
        self.norm_tags = ["weight_norm", *(f"weight_norm/{layer}" for layer in layers)]
        norm_matrix = torch.zeros(at, 1 + len(layers), dtype=torch.float64)
        norm_matrix[:, 0] = 1
        for n in self.names:
            norm_matrix[offsets[n]:offsets[n] + shapes[n].numel(), 1 + layers.index(layer_of(n))] = 1
        self.norm_matrix = norm_matrix.to(dev)

    # --- training ---

    def _train(self) -> None:
        cfg, members = self.config, self.members
        n_train = self.data.n_train
        bs = batch_size_of(cfg.data, n_train)
        by_epoch = cfg.train.epochs is not None
        total = cfg.train.epochs * steps_per_epoch(cfg.data, n_train) if by_epoch else cfg.train.steps
        every, hist_every = cfg.log.every, cfg.log.histograms.every
        # each member its own shuffle stream, as in the sequential trainer
        gens = [shuffle_generator(s.seed, self.device if self.device.type == "cuda" else "cpu") for s in self.specs]
        self.pending: list[torch.Tensor] = []  # per-step member losses not yet checked for divergence
        self.checked = 0  # first step not yet checked
        self.start = time.perf_counter()
        step = epoch = 0
        while step < total and self._open():
            batches = [list(epoch_batches(n_train, bs, g)) for g in gens]
            epoch_sum = torch.zeros(len(members), dtype=torch.float64, device=self.device)
            for k in range(len(batches[0])):
                if step >= total or not self._open():
                    break
                idx = None if batches[0][k] is None else torch.stack([b[k] for b in batches])
                xb, yb = self.data.batch(idx)
                log_step = not by_epoch and (step % every == 0 or step == total - 1)
                hist_step = hist_every > 0 and not by_epoch and step % hist_every == 0

                out, saved = self.model.forward(xb, keep=True, train=True)
                losses, grad_out = member_losses(self.loss_fn, out, yb, self.task, grad=True)
                named_grads = self.model.backward(saved, grad_out)
                grads = torch.cat([named_grads[n].reshape(len(members), -1) for n in self.layout], 1, out=self.grads)
                self.pending.append(losses)
                if by_epoch:
                    epoch_sum += losses.double() * yb.shape[1]
                if log_step or hist_step or len(self.pending) >= CHECK_EVERY:
                    self._check_divergence()
                grad_norm = before = None
                if log_step:
                    grad_norm = grads.double().square().sum(1).sqrt()
                    before = self.flat.clone()
                if hist_step:
                    self._histograms(step)
                self.opt.step(grads)
                if log_step:
                    loss = self._log_point(step, losses, grad_norm, before, {})
                    if self.progress is not None and loss is not None:
                        self.progress(step + 1, total, loss)
                step += 1
            epoch += 1
            if by_epoch:
                self._check_divergence()
                if epoch % every == 0 or step >= total:
                    loss = self._log_point(epoch, epoch_sum / n_train, None, None, {"epoch": epoch})
                    if self.progress is not None and loss is not None:
                        self.progress(step, total, loss)
                if hist_every > 0 and (epoch % hist_every == 0 or epoch == 1):
                    self._histograms(epoch)
        self._check_divergence()
        self._finish(step)

    def _check_divergence(self) -> None:
        """Stop the members whose loss became NaN, inf or too large at any step since the
        last check: one device→host sync for all members and all those steps."""
        if not self.pending:
            return
        window = torch.stack(self.pending)  # [steps, M]
        first, self.checked = self.checked, self.checked + len(self.pending)
        self.pending = []
        threshold = self.config.train.diverge_threshold
        bad = ~torch.isfinite(window)
        if threshold is not None:
            bad |= window > threshold
        if not bool(bad.any()):
            return
        for m, member in enumerate(self.members):
            rows = bad[:, m].nonzero()
            if member.done or not len(rows):
                continue
            row = int(rows[0])
            stop = Diverged(first + row, float(window[row, m]))
            member.finish(self._share(self.start), **stop.record())

    def _evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each member's loss `[M]` (and accuracy) on its own train or validation set."""
        x, y = self.data.full(split)
        with torch.no_grad():
            out, _ = self.model.forward(x)
            losses, _ = member_losses(self.loss_fn, out, y, self.task)
        acc = (out.argmax(-1) == y).double().mean(1) if self.task == "classification" else None
        return losses, acc

    def _log_point(self, x: int, losses: torch.Tensor, grad_norm: torch.Tensor | None, before: torch.Tensor | None,
                   extra: dict[str, float]) -> float | None:
        """Log the sequential trainer's scalars, with its tags in its order, for every open
        member: computed for all of them by a few batched ops and one transfer. Returns
        the median training loss."""
        open_members = self._open()
        if not open_members:
            return None
        keys, columns = ["train/loss"], [losses.double().unsqueeze(1)]
        if self.data.x_val is not None:
            val_loss, val_acc = self._evaluate("val")
            keys.append("val/loss")
            columns.append(val_loss.double().unsqueeze(1))
            if val_acc is not None:
                keys.append("val/accuracy")
                columns.append(val_acc.unsqueeze(1))
        keys += [f"lr/group{i}" for i in range(self.lrs.shape[1])]
        if self.scheduled:  # the rates of the latest step
            self.lrs = torch.tensor(self.opt.lrs(), dtype=torch.float64, device=self.device)
        columns.append(self.lrs)
        if grad_norm is not None:
            keys.append("grad_norm")
            columns.append(grad_norm.unsqueeze(1))
        flat64 = self.flat.double()
        keys += self.norm_tags
        columns.append((flat64.square() @ self.norm_matrix).sqrt())
        if before is not None:
            before64 = before.double()
            delta = (flat64 - before64).square().sum(1).sqrt()
            keys.append("update_ratio")
            columns.append((delta / before64.square().sum(1).sqrt().clamp_min(1e-12)).unsqueeze(1))
        for key, value in extra.items():
            keys.append(key)
            columns.append(torch.full_like(self.lrs[:, :1], value))
        table = torch.cat(columns, 1).tolist()
        tags = tuple(keys)
        for member in open_members:
            member.log(x, tags, table[member.index])
        return statistics.median(table[member.index][0] for member in open_members)

    def _histograms(self, step: int) -> None:
        """Every open member's weight and gradient histograms, summarized in one batch."""
        log_histograms(step, [(member.logger, self.histogram_tensors[member.index]) for member in self._open()])

    def _finish(self, steps: int) -> None:
        """Final metrics of every member still open, as `trainer.train` computes them."""
        open_members = self._open()
        if not open_members:
            return
        seconds = self._share(self.start)
        train_loss, train_acc = (t.tolist() if t is not None else None for t in self._evaluate("train"))
        val_loss = val_acc = None
        if self.data.x_val is not None:
            val_loss, val_acc = (t.tolist() if t is not None else None for t in self._evaluate("val"))
        threshold = self.config.train.diverge_threshold
        near_zero = self.config.summary.near_zero
        finished = []
        for member in open_members:
            m = member.index
            try:
                _check(train_loss[m], steps, threshold)
            except Diverged as stop:
                member.finish(seconds, **stop.record())
                continue
            train = (train_loss[m], train_acc[m] if train_acc is not None else None)
            val = None if val_loss is None else (val_loss[m], val_acc[m] if val_acc is not None else None)
            named = self.named[m]
            member.result["metrics"] = final_metrics(member.best, train, val, named, near_zero, steps, seconds)
            finished.append((member, named))

        def write(item: tuple[_Member, list]) -> None:
            member, named = item
            save_weights(member.run_dir, named)
            member.finish(seconds, status="ok")

        _in_threads(write, finished)


class _CannotStack(Exception):
    """The group's models or data sets turn out not to stack: its runs train sequentially."""


class _StackedData:
    """The members' data sets on the device: one copy when they are all equal (the
    quadratic data, or any data set that does not depend on the seed), else one per member."""

    def __init__(self, datas: list[Dataset], device: torch.device, dtype: torch.dtype) -> None:
        first = datas[0]
        self.members = len(datas)
        self.shared = all(_same_data(d, first) for d in datas[1:])
        kept = datas[:1] if self.shared else datas
        for d in kept:
            if d.x_train.shape != first.x_train.shape or (d.x_val is None) != (first.x_val is None) or \
                    (d.x_val is not None and d.x_val.shape != first.x_val.shape):
                raise _CannotStack("the members' data sets differ in size")
        def stack(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
            if tensors[0] is None:
                return None
            out = torch.stack(tensors).to(device)
            return out.to(dtype) if out.is_floating_point() else out

        self.x_train, self.y_train = stack([d.x_train for d in kept]), stack([d.y_train for d in kept])
        self.x_val, self.y_val = stack([d.x_val for d in kept]), stack([d.y_val for d in kept])
        self.n_train = first.x_train.shape[0]
        self._rows = torch.arange(self.members, device=device).unsqueeze(1)

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
