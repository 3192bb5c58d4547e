"""Where worker processes (`--jobs`) say how far their units are, for the driver's progress
display: one row of numbers per planned unit, in shared memory.

A worker writes its unit's row (it is the only writer of that row); the driver only reads.
No lock and no pipe: a worker that is stopped or killed mid-write holds nothing that the
others or the driver would wait on, and nothing is pickled per step. A read may mix two
updates of a row (a step count with the previous loss): it is a display.

No torch at load time (a worker process sets its thread count before torch loads).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A row's fields, in order.
FIELDS = ("state", "pid", "step", "total", "median", "best", "members")
PENDING, RUNNING, DONE = 0, 1, 2
_WIDTH = len(FIELDS)
_AT = {name: i for i, name in enumerate(FIELDS)}


@dataclass(frozen=True)
class Row:
    """What the board holds about one unit."""

    state: int  # PENDING, RUNNING or DONE
    pid: int  # the worker process training it (0 before it starts)
    step: int  # optimizer steps done at its latest log point
    total: int  # its steps in all (0 before its first log point)
    median: float  # the median, over its members still training, of their loss at that point
    best: float  # the lowest of those losses (NaN where none is finite)
    members: int  # its members still training at that point


def loss_summary(losses: Sequence[float]) -> tuple[float, float]:
    """(median, lowest) of the finite losses; NaN, NaN where none is finite."""
    finite = [x for x in losses if math.isfinite(x)]
    if not finite:
        return math.nan, math.nan
    return statistics.median(finite), min(finite)


class Board:
    """One row per unit of a sweep (`units` rows, in the order the executor lists them)."""

    def __init__(self, units: int, context=None) -> None:
        self.units = units
        self._array = (context or multiprocessing).RawArray("d", max(1, units * _WIDTH))

    def rows(self) -> list[Row]:
        """Every unit's row, as it stands."""
        flat = self._array[:]
        return [Row(int(flat[i]), int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]), flat[i + 4], flat[i + 5],
                    int(flat[i + 6])) for i in range(0, self.units * _WIDTH, _WIDTH)]

    def _write(self, index: int, **values: float) -> None:
        base = index * _WIDTH
        for name, value in values.items():
            self._array[base + _AT[name]] = value

    def start(self, index: int, members: int) -> None:
        """In the worker, before unit `index` trains."""
        self._write(index, pid=os.getpid(), step=0, total=0, median=math.nan, best=math.nan, members=members)
        self._write(index, state=RUNNING)  # last, so a running row has its pid

    def finish(self, index: int) -> None:
        """In the worker, once unit `index` returned (whatever became of it)."""
        self._write(index, state=DONE)

    def reporter(self, index: int) -> Callable[[int, int, Sequence[float]], None]:
        """The engines' progress callback (`units.Progress`) for unit `index`."""

        def report(step: int, total: int, losses: Sequence[float]) -> None:
            median, best = loss_summary(losses)
            self._write(index, step=step, total=total, median=median, best=best, members=len(losses))

        return report
