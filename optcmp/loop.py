"""One training loop for both engines.

An engine gives the loop its runs as *members* (`Members`): the sequential engine one, a
torch.optim optimizer and an nn.Module; the vectorized engine M, stacked. The loop drives
them through steps or epochs, each member with its own shuffle order; checks divergence;
logs the scalars (their tags and order declared once, in `SCALARS`) and histograms at the
configured steps; asks the caller's `should_stop` hook at each evaluation point (once for
all open members: see `units.ShouldStop`); and ends
each member's run folder (`rundir.RunFolder`): a member that diverges or is pruned leaves,
the others go on, their numbers unchanged bit for bit (a member that left is still computed
with the others, never removed from the stacked tensors).

`execute_members` wraps it in the run-folder lifecycle: folders prepared, members built and
trained, and whatever stops them (Ctrl-C, an exception, a config error) recorded.

A *column* is one value per member: a list of floats, or a tensor `[M]` on the device (all
of a log point's tensor columns reach the host in one transfer).
"""
from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, Union

import torch

from optcmp.data import batch_size_of, epoch_batches, shuffle_generator, steps_per_epoch
from optcmp.errors import OptcmpError
from optcmp.metrics import Trajectory, final_metrics
from optcmp.resolve import ResolvedRun
from optcmp.results import Status, no_space
import optcmp.stopping as stopping
from optcmp.rundir import RunFolder, in_threads
from optcmp.tb.logger import log_histograms
from optcmp.units import Progress, ShouldStop

Column = Union[Sequence[float], torch.Tensor]

# The scalars of a log point, in this order: metrics.csv's columns and the TensorBoard tags.
# A `*` stands for several tags (one per parameter group, one per layer) in the engine's order.
SCALARS = ("train/loss", "val/loss", "val/accuracy", "lr/group*", "grad_norm", "weight_norm", "weight_norm/*",
           "update_ratio", "epoch")


class Members(Protocol):
    """What an engine gives the loop: its members' models, optimizers and data."""

    size: int  # M
    check_every: int  # steps between divergence checks at the latest (each is a device→host sync)
    wants_epoch_mean: bool  # end_epoch needs the epoch's mean training loss

    def step(self, batch: list[torch.Tensor | None], snapshot: bool) -> Column:
        """Forward and backward pass on each member's batch (sample indices, None: the whole
        training set); a closure optimizer also updates. `snapshot`: keep what `scalars`
        needs for a step's log point (the weights before the update, the gradients).
        Returns each member's loss."""

    def update(self, losses: Column) -> None:
        """The optimizer step (unless `step` did it) and a scheduler step of interval `step`."""

    def end_epoch(self, mean_losses: Column | None) -> None:
        """A scheduler step of interval `epoch`."""

    def evaluate(self, split: str) -> tuple[Column, Column | None]:
        """Each member's loss (and accuracy) on its whole `train` or `val` split, in eval mode."""

    def scalars(self, after_step: bool) -> dict[str, Column]:
        """`lr/group<i>`, `weight_norm`, `weight_norm/<layer>`, and with `after_step` (a step's
        log point, after `step(snapshot=True)` and `update`) `grad_norm` and `update_ratio`."""

    def histogram_tensors(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's tensors to histogram, by tag."""

    def named(self, m: int) -> list[tuple[str, torch.Tensor]]:
        """Member m's parameters by name, in model order."""


@lru_cache(maxsize=64)
def ordered(tags: tuple[str, ...]) -> tuple[str, ...]:
    """`tags` in the order of `SCALARS` (a stable sort: `*` tags keep their order)."""
    def rank(tag: str) -> int:
        for i, pattern in enumerate(SCALARS):
            if tag == pattern or (pattern.endswith("*") and tag.startswith(pattern[:-1])):
                return i
        raise KeyError(f"scalar `{tag}` is not declared in loop.SCALARS")

    return tuple(sorted(tags, key=rank))


def member_rows(columns: list[Column]) -> list[list[float]]:
    """The columns as one row of floats per member; tensors in one device→host transfer."""
    tensors = [c for c in columns if isinstance(c, torch.Tensor)]
    if not tensors:
        return [list(row) for row in zip(*columns)]
    like = tensors[0]
    return torch.stack([c.double() if isinstance(c, torch.Tensor) else torch.tensor(c, dtype=torch.float64, device=like.device)
                        for c in columns], 1).tolist()


def host(column: Column | None) -> list[float] | None:
    return column.tolist() if isinstance(column, torch.Tensor) else None if column is None else list(column)


def diverges(loss: float, threshold: float | None) -> bool:
    return not math.isfinite(loss) or (threshold is not None and loss > threshold)


def diverged_fields(step: int, loss: float) -> dict[str, Any]:
    """The result.json fields of a run that diverged at `step` with `loss`."""
    return {"diverged_step": step, "error": f"loss became {loss} at step {step}"}


class Watch:
    """Each member's per-step losses, checked for divergence (NaN, inf, above the threshold)
    now and then: one device→host sync for all members and all steps since the last check."""

    def __init__(self, threshold: float | None, check_every: int) -> None:
        self.threshold, self.check_every = threshold, check_every
        self.pending: list[Column] = []
        self.checked = 0  # first step not yet checked

    def add(self, losses: Column) -> None:
        self.pending.append(losses)

    def due(self) -> bool:
        return len(self.pending) >= self.check_every

    def check(self, members: list[int]) -> list[tuple[int, int, float]]:
        """(member, step, loss) of each of `members` whose loss diverged since the last check."""
        if not self.pending:
            return []
        window, first = self.pending, self.checked
        self.pending, self.checked = [], self.checked + len(window)
        if not isinstance(window[0], torch.Tensor):
            out, seen = [], set()
            for row, losses in enumerate(window):
                for m in members:
                    if m not in seen and diverges(losses[m], self.threshold):
                        seen.add(m)
                        out.append((m, first + row, losses[m]))
            return sorted(out, key=lambda found: found[0])
        stacked = torch.stack(window)  # [steps, M]
        bad = ~torch.isfinite(stacked)
        if self.threshold is not None:
            bad |= stacked > self.threshold
        if not bool(bad.any()):
            return []
        out = []
        for m in members:
            rows = bad[:, m].nonzero()
            if len(rows):
                row = int(rows[0])
                out.append((m, first + row, float(stacked[row, m])))
        return out


class Loop:
    """One pass of training over a unit's members, with their run folders."""

    def __init__(self, members: Members, folders: list[RunFolder], device: torch.device, n_train: int,
                 progress: Progress | None = None, should_stop: ShouldStop | None = None) -> None:
        self.members, self.folders, self.device = members, folders, device
        self.config = config = folders[0].run.config
        self.n_train = n_train
        self.has_val = folders[0].run.data.n_val > 0
        self.progress, self.should_stop = progress, should_stop
        self.trajectories = [Trajectory() for _ in folders]
        # a step's loss is the whole training set's, as in eval mode: no extra pass for it
        self.step_loss_is_full = folders[0].run.full_batch and folders[0].run.mode_free
        self.watch = Watch(config.train.diverge_threshold, members.check_every)
        self.by_epoch = config.train.epochs is not None
        per_epoch = steps_per_epoch(config.data, n_train)
        self.total = config.train.epochs * per_epoch if self.by_epoch else config.train.steps
        self.start = time.perf_counter()

    def open(self) -> list[int]:
        return [m for m, f in enumerate(self.folders) if not f.done]

    def any_open(self) -> bool:
        return any(not f.done for f in self.folders)  # at the first open member: once a step, for M members

    def share(self) -> float:
        """A member's share of the wall time so far: what `seconds` sums to over a sweep."""
        return (time.perf_counter() - self.start) / len(self.folders)

    def run(self) -> None:
        cfg, members, total = self.config, self.members, self.total
        bs = batch_size_of(cfg.data, self.n_train)
        every, hist_every = cfg.log.every, cfg.log.histograms.every
        where = self.device if self.device.type == "cuda" else "cpu"
        gens = [shuffle_generator(f.spec.seed, where) for f in self.folders]  # each member its own order
        self.start = time.perf_counter()
        step = epoch = 0
        whole = [[None]] * len(gens)  # a full batch draws no order
        while step < total and self.any_open():
            batches = whole if bs >= self.n_train else [list(epoch_batches(self.n_train, bs, g)) for g in gens]
            epoch_sum, epoch_n = None, 0
            for k in range(len(batches[0])):
                if step >= total or not self.any_open():
                    break
                stopping.check()  # a stop signal ends the members still training here, between two steps
                log_step = not self.by_epoch and (step % every == 0 or step == total - 1)
                # the weights after the step's update, the last step's (the final weights) too
                hist_step = hist_every > 0 and not self.by_epoch and (step % hist_every == 0 or step == total - 1)
                losses = members.step([b[k] for b in batches], snapshot=log_step)
                self.watch.add(losses)
                if self.by_epoch or members.wants_epoch_mean:
                    n = self.n_train if batches[0][k] is None else len(batches[0][k])
                    epoch_sum, epoch_n = _accumulate(epoch_sum, losses, n), epoch_n + n
                if log_step or hist_step or self.watch.due():
                    self.check_divergence()
                    if not self.any_open():
                        break
                members.update(losses)
                if hist_step:
                    self.histograms(step)
                if log_step:
                    self.log_point(step, losses, after_step=True, progress_step=step + 1)
                step += 1
            if not self.any_open():
                break
            epoch += 1
            mean = None if epoch_sum is None else _divide(epoch_sum, max(epoch_n, 1))
            members.end_epoch(mean)
            if self.by_epoch:
                self.check_divergence()
                if epoch % every == 0 or step >= total:
                    self.log_point(epoch, mean, after_step=False, progress_step=step, epoch=epoch)
                if hist_every > 0 and (epoch % hist_every == 0 or epoch == 1 or step >= total):
                    self.histograms(epoch)
        self.check_divergence()
        self.finish(step)

    def check_divergence(self) -> None:
        for m, step, loss in self.watch.check(self.open()):
            self.folders[m].finish(Status.DIVERGED, self.share(), **diverged_fields(step, loss))

    def histograms(self, step: int) -> None:
        """Every open member's weight and gradient histograms, summarized in one batch."""
        log_histograms(step, [(self.folders[m].logger, self.members.histogram_tensors(m)) for m in self.open()])

    def log_point(self, x: int, losses: Column, after_step: bool, progress_step: int, epoch: int | None = None) -> None:
        """Log the scalars of every open member at `x` (a step, or an epoch) whose weights
        have had `progress_step` optimizer steps, keep its evaluation point, then ask the
        `should_stop` hook about all of them at once."""
        open_members = self.open()
        if not open_members:
            return
        done = progress_step
        if self.step_loss_is_full:  # of the weights the (last) step started from
            full_train, train_done = losses, done - 1
        else:
            full_train, train_done = self.members.evaluate("train")[0], done
        columns: dict[str, Column] = {"train/loss": losses}
        if self.has_val:
            val_loss, val_acc = self.members.evaluate("val")
            columns["val/loss"] = val_loss
            if val_acc is not None:
                columns["val/accuracy"] = val_acc
        columns.update(self.members.scalars(after_step))
        if epoch is not None:
            columns["epoch"] = [float(epoch)] * self.members.size
        tags = ordered(tuple(columns))
        rows = member_rows([*(columns[t] for t in tags), full_train])  # the full-set loss last, not logged
        train_values = {}
        for m in open_members:
            row, trajectory = rows[m][:-1], self.trajectories[m]
            train_values[m] = rows[m][-1]
            trajectory.add("train_loss", train_done, rows[m][-1])
            for metric, tag in (("val_loss", "val/loss"), ("val_accuracy", "val/accuracy")):
                if tag in columns:
                    trajectory.add(metric, done, row[tags.index(tag)])
            self.folders[m].log(x, tags, row)
            rows[m] = row
        if self.progress is not None:
            self.progress(progress_step, self.total, [rows[m][tags.index("train/loss")] for m in open_members])
        if self.should_stop is not None:
            values = {m: {**dict(zip(tags, rows[m])), "train_loss": full} for m, full in train_values.items()}
            for m in sorted(set(self.should_stop(x, values))):
                if m in values:
                    self.folders[m].finish(Status.PRUNED, self.share(), pruned_step=x)

    def finish(self, steps: int) -> None:
        """Final metrics, weights and result of every member still open."""
        open_members = self.open()
        if not open_members:
            return
        elapsed = time.perf_counter() - self.start
        seconds = elapsed / len(self.folders)
        train_loss, train_acc = (host(c) for c in self.members.evaluate("train"))
        val_loss = val_acc = None
        if self.has_val:
            val_loss, val_acc = (host(c) for c in self.members.evaluate("val"))
        threshold = self.config.train.diverge_threshold
        finished = []
        for m in open_members:
            if diverges(train_loss[m], threshold):
                self.folders[m].finish(Status.DIVERGED, seconds, **diverged_fields(steps, train_loss[m]))
                continue
            train = (train_loss[m], None if train_acc is None else train_acc[m])
            val = None if val_loss is None else (val_loss[m], None if val_acc is None else val_acc[m])
            trajectory = self.trajectories[m]  # the final weights are the last evaluation point
            trajectory.add("train_loss", steps, train[0])
            if val is not None:
                trajectory.add("val_loss", steps, val[0])
                if val[1] is not None:
                    trajectory.add("val_accuracy", steps, val[1])
            metrics = final_metrics(trajectory, train, val, self.members.named(m), self.config, steps, elapsed,
                                    len(self.folders))
            finished.append((m, metrics))

        def write(item: tuple[int, dict[str, Any]]) -> None:
            m, metrics = item
            self.folders[m].save_weights(self.members.named(m))
            self.folders[m].finish(Status.OK, seconds, metrics=metrics)

        in_threads(write, finished)


def _accumulate(total: Column | None, losses: Column, n: int) -> Column:
    """`total + losses · n`, in float64."""
    if isinstance(losses, torch.Tensor):
        scaled = losses.double() * n
        return scaled if total is None else total.add_(scaled)
    scaled = [loss * n for loss in losses]
    return scaled if total is None else [a + b for a, b in zip(total, scaled)]


def _divide(total: Column, n: int) -> Column:
    return total / n if isinstance(total, torch.Tensor) else [t / n for t in total]


def execute_members(runs: list[ResolvedRun], exp_dir: Path, engine: str, device: torch.device,
                    build: Callable[[], tuple[Members, int]], progress: Progress | None = None,
                    should_stop: ShouldStop | None = None) -> list[dict[str, Any]]:
    """Prepare the runs' folders, build the members (`build()` → members and the training
    set's size), train them, and record how each ended; returns their results, in order.

    A stop signal (see `stopping`) is looked for once the folders are prepared, once the
    members are built and before each step: the runs still training are then recorded
    `interrupted`; ones that had finished keep their result."""
    folders = in_threads(lambda run: RunFolder(run, exp_dir, engine, device), runs)
    start = time.perf_counter()
    share = lambda: (time.perf_counter() - start) / len(runs)  # noqa: E731
    try:
        stopping.check()
        members, n_train = build()
        stopping.check()
        Loop(members, folders, device, n_train, progress, should_stop).run()
    except KeyboardInterrupt:
        seconds = share()
        in_threads(lambda f: f.interrupt(seconds), [f for f in folders if not f.done])
    except OptcmpError:
        _abandon(folders)
        raise
    except Exception as e:  # noqa: BLE001 - a run that raises must not stop the sweep
        full = no_space(e)  # ... unless the disk is full: every run after it would fail too
        if full is not None:
            _abandon(folders)
            raise full from None
        text = traceback.format_exc()
        for f in folders:
            if not f.done:
                f.fail(e, text, share())
    return [f.result for f in folders]


def _abandon(folders: list[RunFolder]) -> None:
    """No result for the runs still open (they are redone next time); closing a logger on a
    full disk may fail again, which changes nothing."""
    for f in folders:
        if not f.done:
            try:
                f.abandon()
            except Exception:  # noqa: BLE001
                pass
