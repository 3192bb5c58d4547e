"""A study's trials: what a trial scored (from its runs' results), how trials rank, the rows
of trials.csv, and the successive-halving hook that stops hopeless trials in training.

A trial is scored on its tuning seeds: the mean of the tuning metric over its runs. Divergence
is an outcome: a trial with a diverged run (or a metric that is not finite) scores the worst
value, ±inf, which Optuna is told, and ranks below every other trial; it is never dropped.
Ranks within an arm: trials that trained to the end by score, then pruned ones (the later the
step they were stopped at, the better), then diverged ones (fewer diverged seeds first); ties
by trial number. Rank 1 is the best trial, the one rerun on the final seeds.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from optcmp.results import Status
from optcmp.units import ShouldStop, Unit

# The value at an evaluation point that stands in for each tuning metric while a trial
# trains (halving judges trials by it): the loop's full-set values there.
INTERMEDIATE = {
    "train_loss": "train_loss", "best_train_loss": "train_loss", "train_loss_tail": "train_loss",
    "val_loss": "val/loss", "best_val_loss": "val/loss", "val_loss_tail": "val/loss",
    "val_accuracy": "val/accuracy", "best_val_accuracy": "val/accuracy", "val_accuracy_tail": "val/accuracy",
}


@dataclass(frozen=True)
class Outcome:
    """What one trial came to."""

    status: str  # ok | diverged | pruned | running (not all its runs finished) | failed | interrupted
    value: float | None  # the score: the metric's mean over the seeds, ±inf when diverged; None otherwise
    n: int  # tuning seeds
    n_diverged: int = 0
    pruned_step: int | None = None

    @property
    def told(self) -> bool:
        """Whether the trial is finished, so Optuna may be told."""
        return self.status in ("ok", "diverged", "pruned")


def score(results: list[dict[str, Any] | None], metric: str, maximize: bool) -> Outcome:
    """A trial's outcome from the results of its runs (None: no result yet)."""
    n = len(results)
    statuses = [None if r is None else r["status"] for r in results]
    for status in (Status.INTERRUPTED, Status.FAILED, None):
        if status in statuses:
            return Outcome("running" if status is None else str(status), None, n)
    if Status.PRUNED in statuses:
        steps = [r["pruned_step"] for r in results if r["status"] == Status.PRUNED]
        return Outcome("pruned", None, n, statuses.count(Status.DIVERGED), min(steps))
    worst = -math.inf if maximize else math.inf
    diverged = statuses.count(Status.DIVERGED)
    if diverged:
        return Outcome("diverged", worst, n, diverged)
    values = [r["metrics"].get(metric) for r in results]
    if any(v is None or not math.isfinite(v) for v in values):  # a value JSON could not hold
        return Outcome("ok", worst, n)
    return Outcome("ok", statistics.fmean(values), n)


def rank_key(outcome: Outcome, k: int, maximize: bool, last_value: float | None = None) -> tuple | None:
    """The order of trials within an arm (smaller is better); None for unfinished ones."""
    sign = -1 if maximize else 1
    if outcome.status == "ok":
        return (0, sign * outcome.value, k)
    if outcome.status == "pruned":
        value = sign * last_value if last_value is not None and math.isfinite(last_value) else math.inf
        return (1, -outcome.pruned_step, value, k)
    if outcome.status == "diverged":
        return (2, outcome.n_diverged, k)
    return None


def ranks(keys: list[tuple | None]) -> list[int | None]:
    """1 for the best key, 2 for the next …; None stays None."""
    order = sorted((key, i) for i, key in enumerate(keys) if key is not None)
    out: list[int | None] = [None] * len(keys)
    for r, (_, i) in enumerate(order, start=1):
        out[i] = r
    return out


def trial_row(variant: str | None, workload: str | None, k: int, outcome: Outcome, values: dict[str, Any],
              metric: str, rank: int | None, config_id: str, pruned_value: float | None) -> dict[str, Any]:
    """One row of trials.csv."""
    row: dict[str, Any] = {"variant": variant}
    if workload is not None:
        row["workload"] = workload
    row.update(trial=k, status=outcome.status)
    row.update({key: json_cell(v) for key, v in values.items()})
    row.update({metric: outcome.value, "rank": rank, "best": rank == 1, "n_seeds": outcome.n,
                "n_diverged": outcome.n_diverged, "pruned_step": outcome.pruned_step,
                "pruned_value": pruned_value if outcome.status == "pruned" else None, "config_id": config_id})
    return row


def json_cell(value: Any) -> Any:
    import json

    return json.dumps(value) if isinstance(value, (list, dict)) else value


class Halving:
    """The group-level `should_stop` of a batch under `prune: halving`. At each evaluation
    point at or past a trial's next rung (`sampling.rung_steps`), the trial's value there —
    the mean over its members still training of the tuning metric's running value (the best
    so far for a best_* metric) — is reported to its Optuna trial, and Optuna's pruner
    decides; trials in trial-number order, so the decisions do not depend on how the
    planner grouped the members. A pruned trial's members leave; members of it that train
    in a later unit leave at the first evaluation point at or past its pruned step. A trial
    with a diverged member is no longer judged: it scores worst anyway."""

    def __init__(self, metric: str, maximize: bool) -> None:
        self.tag, self.best = INTERMEDIATE[metric], metric.startswith("best_")
        self.maximize = maximize
        self.key_of: dict[str, Any] = {}  # run id → its trial's key
        self.trials: dict[Any, Any] = {}  # trial key → optuna.Trial
        self.members: dict[Any, list[str]] = {}  # trial key → its run ids
        self.rungs: dict[Any, list[int]] = {}  # trial key → the steps of its rungs
        self.reported: dict[Any, set[int]] = {}  # trial key → steps Optuna holds a value for
        self.running: dict[str, float] = {}  # run id → running best
        self.judged: dict[Any, int] = {}  # trial key → last step judged
        self.pruned: dict[Any, int] = {}  # trial key → its pruned step

    def add(self, key: Any, trial: Any, run_ids: list[str], rungs: list[int], reported: Iterable[int]) -> None:
        """A trial of the batch: its optuna.Trial, its runs, the steps of its rungs, and the
        steps it reported a value at already (in an earlier attempt)."""
        self.trials[key], self.members[key], self.rungs[key] = trial, run_ids, rungs
        self.reported[key] = set(reported)
        self.key_of.update(dict.fromkeys(run_ids, key))

    def _value(self, run_id: str, values: dict[str, float]) -> float:
        value = values[self.tag]
        if self.best and run_id in self.running:
            value = (max if self.maximize else min)(value, self.running[run_id])
        self.running[run_id] = value
        return value

    def for_unit(self, unit: Unit) -> ShouldStop:
        ids = [s.run_id for s in unit]

        def should_stop(step: int, values: dict[int, dict[str, float]]) -> Iterable[int]:
            by_trial: dict[Any, list[tuple[int, float]]] = {}
            for m, v in values.items():
                key = self.key_of[ids[m]]
                by_trial.setdefault(key, []).append((m, self._value(ids[m], v)))
            stop: set[int] = set()
            for key in sorted(by_trial):
                present = by_trial[key]
                if key in self.pruned:
                    stop.update(m for m, _ in present if step >= self.pruned[key])
                    continue
                in_unit = [i for i, rid in enumerate(ids) if rid in self.members[key]]
                if len(present) < len(in_unit) or not self._due(key, step):
                    continue  # a member diverged, or no rung here
                trial = self.trials[key]
                if step not in self.reported[key]:  # a resumed trial holds the values it reported
                    trial.report(statistics.fmean(v for _, v in present), step)
                    self.reported[key].add(step)
                self.judged[key] = step
                if trial.should_prune():
                    self.pruned[key] = step
                    stop.update(m for m, _ in present)
            return stop

        return should_stop

    def _due(self, key: Any, step: int) -> bool:
        """Whether `step` is at or past a rung the trial has not been judged at."""
        last = self.judged.get(key, -1)
        return any(last < r <= step for r in self.rungs[key])
