"""The vocabulary the runner, the executors and the engines share: a work unit, how the
runs execute (`Execution`), the callbacks for the CLI (`Events`) and the engines' hooks,
and result.json's fields known before training.

Below the runner and the executors, so neither imports the other for it; no torch at load
time (a worker process sets its thread count before torch loads).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optcmp.errors import OptcmpError
from optcmp.results import Status, write_result

if TYPE_CHECKING:
    from optcmp.progress_board import Board
    from optcmp.resolve import ResolvedRun
    from optcmp.sweep import RunSpec

ENGINES = ("auto", "sequential", "vectorized")
EXECUTORS = ("local", "ray")
# At each log point: (steps done, total steps, the train/loss of each member still training).
Progress = Callable[[int, int, Sequence[float]], None]
# At each evaluation point, for the whole unit at once: (step, {member index in its unit:
# its values}) for every member still training → the members to stop, recorded `pruned`.
# A member's values: the scalars just logged by tag, and `train_loss`, the whole training
# set's loss there (what `best_train_loss` and `train_loss_tail` are made of). Group-level,
# so a decision may weigh every member's value at the step (a study judges a trial on the
# mean of its seeds, and successive halving ranks trials against each other).
ShouldStop = Callable[[int, dict[int, dict[str, float]]], Iterable[int]]


@dataclass(frozen=True, eq=False)
class Unit:
    """Runs executed together, as planned (`planning.plan_units`): one run for the
    sequential engine, or the members of one vectorized group, memory-sized. Iterating or
    indexing a unit gives its runs' specs."""

    runs: tuple[ResolvedRun, ...]
    engine: str  # "sequential" | "vectorized"
    reason: str | None = None  # why a sequential run trains on its own (for `plan`)

    @property
    def specs(self) -> list[RunSpec]:
        return [r.spec for r in self.runs]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[RunSpec]:
        return iter(self.specs)

    def __getitem__(self, i):
        return self.specs[i]


@dataclass
class Events:
    """Callbacks the CLI uses for its messages and progress display; all optional.

    The in-process executor calls `unit_start` and `step` (with `Progress`'s arguments) on
    the training thread. Worker processes (`--jobs`) write their units' progress to a
    `board.Board` instead, which the process executor hands over once, with the units in
    the board's order, before they start (`board`); the display reads it. Ray tasks report
    nothing before their results (`run_end`)."""

    plan: Callable[[list[RunSpec], list[dict[str, Any]]], None] = lambda todo, kept: None
    unit_start: Callable[[Unit], None] = lambda unit: None
    step: Callable[[Unit, int, int, Sequence[float]], None] = lambda unit, step, total, losses: None
    run_end: Callable[[dict[str, Any]], None] = lambda result: None
    board: Callable[[Board, list[Unit]], None] = lambda board, units: None


@dataclass(frozen=True)
class Execution:
    """How and where the runs execute (the `run` command's options)."""

    engine: str = "auto"  # auto | sequential | vectorized
    executor: str = "local"  # local | ray
    jobs: int = 1  # local processes; 1 trains in this process
    # Torch threads per run, the same under every executor: some CPU kernels (LayerNorm's
    # backward) split their sums by thread, so the thread count, unlike --jobs, changes the
    # last bits of the numbers. One thread is also the fastest for small models.
    threads: int = 1
    address: str | None = None  # Ray cluster address; None starts (or reuses) a local instance
    gpus_per_run: float | None = None  # Ray GPU request per run; None: from the config's device

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise OptcmpError(f"--engine {self.engine}: allowed: {', '.join(ENGINES)}")
        if self.executor not in EXECUTORS:
            raise OptcmpError(f"--executor {self.executor}: allowed: {', '.join(EXECUTORS)}")
        if self.jobs < 1:
            raise OptcmpError(f"--jobs {self.jobs}: must be at least 1")
        if self.threads < 1:
            raise OptcmpError(f"--threads {self.threads}: must be at least 1")
        if self.executor == "ray":
            if self.jobs != 1:
                raise OptcmpError("--jobs applies to the local executor; Ray runs as many runs at once as the cluster has CPUs")
            if importlib.util.find_spec("ray") is None:
                raise OptcmpError("the ray executor needs ray: pip install 'optcmp[ray]'")
        elif self.address is not None or self.gpus_per_run is not None:
            raise OptcmpError("--address and --gpus-per-run need --executor ray")
        if self.gpus_per_run is not None and self.gpus_per_run < 0:
            raise OptcmpError(f"--gpus-per-run {self.gpus_per_run}: must be ≥ 0")


def base_result(run: ResolvedRun, engine: str = "sequential", device: str | None = None) -> dict[str, Any]:
    """The fields of result.json known before training."""
    spec = run.spec
    return {
        "run_id": spec.run_id,
        "config_id": spec.config_id,
        "variant": getattr(spec, "variant", None),  # a named optimizer variant (issue 13)
        "role": getattr(spec, "role", "run"),  # run | ulp (the chaos probe) | trial | final
        "seed": spec.seed,
        "status": None,
        "params": spec.params,
        "decay": run.decay,
        "engine": engine,
        "device": device,
        "config_hash": spec.config_hash,
        "error": None,
        "diverged_step": None,
        "pruned_step": None,
        "optimizer": run.options,
        "metrics": {},
    }


def stand_in(exp_dir: Path, run: ResolvedRun, status: Status, error: str) -> dict[str, Any]:
    """Write and return the result of a run that could not report one itself (stopped
    before it finished, or its worker died), so the folder says what became of it."""
    result = {**base_result(run), "status": status, "error": error}
    write_result(Path(exp_dir) / run.spec.run_id, result)
    return result

