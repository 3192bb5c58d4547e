"""result.json's metrics: each member's trajectory of full-set values at the evaluation
points, and the final metrics computed from it.

An evaluation point is a log step (or a logged epoch) and the end of training. There the
training-set loss is that of the whole training set, in eval mode: a full pass over it,
except where every step already sees the whole set and no layer computes differently in
training and evaluation mode — then the step's own loss is that value, of the weights the
step started from. Each point is kept with the number of optimizer steps its weights have
had, so the tail metrics average the points in the last `summary.tail` share of training.
"""
from __future__ import annotations

import statistics
from typing import Any

import torch

DEFAULT_TAIL = 0.1  # summary.tail: the share of training the *_tail metrics average over
TRAJECTORIES = ("train_loss", "val_loss", "val_accuracy")


def tail_share(config) -> float:
    return getattr(config.summary, "tail", DEFAULT_TAIL)


class Trajectory:
    """One member's full-set values at the evaluation points: (steps done, value) per metric."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[int, float]]] = {name: [] for name in TRAJECTORIES}

    def add(self, metric: str, done: int, value: float) -> None:
        """The value at a point whose weights have had `done` optimizer steps; a second value
        at the same point (the final evaluation after the last log step) replaces the first."""
        series = self.points[metric]
        if series and series[-1][0] == done:
            series[-1] = (done, value)
        else:
            series.append((done, value))

    def best(self, metric: str) -> float:
        values = [v for _, v in self.points[metric]]
        return max(values) if metric.endswith("accuracy") else min(values)

    def tail(self, metric: str, total: int, share: float) -> float:
        """The mean over the points in the last `share` of `total` steps (the last point at least)."""
        series = self.points[metric]
        start = total - share * total
        values = [v for done, v in series if done >= start] or [series[-1][1]]
        return statistics.fmean(values)


def final_weight_stats(named: list[tuple[str, torch.Tensor]], near_zero: float) -> dict[str, float]:
    flat = torch.cat([p.detach().reshape(-1).double() for _, p in named])
    return {
        "weight_norm": flat.norm().item(),
        "near_zero_frac": (flat.abs() < near_zero).double().mean().item(),
    }


def final_metrics(trajectory: Trajectory, train: tuple[float, float | None], val: tuple[float, float | None] | None,
                  named: list[tuple[str, torch.Tensor]], config, steps: int, elapsed: float, group_size: int) -> dict[str, Any]:
    """result.json's metrics from the final (loss, accuracy) on train and validation data
    (already in `trajectory` as its last points), the final weights, and the wall time
    `elapsed` of the unit of `group_size` runs that trained together."""
    share = tail_share(config)
    train_loss, train_acc = train
    metrics: dict[str, Any] = {"train_loss": train_loss, "best_train_loss": trajectory.best("train_loss"),
                               "train_loss_tail": trajectory.tail("train_loss", steps, share)}
    if train_acc is not None:
        metrics["train_accuracy"] = train_acc
    if val is not None:
        vl, va = val
        metrics.update(val_loss=vl, best_val_loss=trajectory.best("val_loss"),
                       val_loss_tail=trajectory.tail("val_loss", steps, share))
        if va is not None:
            metrics.update(val_accuracy=va, best_val_accuracy=trajectory.best("val_accuracy"),
                           val_accuracy_tail=trajectory.tail("val_accuracy", steps, share))
    metrics.update(final_weight_stats(named, config.summary.near_zero))
    metrics.update({
        "steps": steps,
        "seconds": elapsed / group_size,  # the run's share of its unit's wall time
        "steps_per_second": steps / elapsed if elapsed > 0 else None,  # the unit's throughput
        "group_size": group_size,
    })
    return metrics
