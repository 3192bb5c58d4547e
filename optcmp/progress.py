"""The `run` command's progress display.

On a terminal, rich's progress display (`rich.progress`), redrawn a few times a second:

    runs in 2 processes ━━━━━━━━━━━━━━━━━━━━━━━━━   12/64  ETA 0:00:21   0:00:05
    p1 adam-wd0-s0 … adam-wd0.1-s2 ━━━━━━━━━━━━━━  340/1000  6 runs, median loss 0.312, best 0.123  0:00:02
    p2 sgd-lr0.1-s0 ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━   80/500  loss 0.4213  0:00:01

the sweep (runs finished of all runs, the bar and the ETA counting optimizer steps, so a
long run weighs what it takes), and one line per unit in training: in this process, or one
per worker process with `--jobs` (its number, its unit and step), or none for Ray tasks,
which report nothing before their results. A vectorized group says how many runs it
trains and whose loss it shows: the median and the lowest of its members'. Each unit's
timer starts with the unit. Only the run ids shrink (with an ellipsis) when the terminal is
narrow: the numbers and timers keep their width at 80 columns.

Elsewhere (a CI log, a pipe), a plain line every `PLAIN_EVERY_S` seconds:
`12/64 runs, 0:00:05 elapsed, ETA 0:00:21`.

One thread of this process draws (and reads the workers' `board.Board`), always under
the display's lock; the other threads take that lock too for the few numbers they change.
A worker forked from this process must not inherit that lock, or rich's, held by the
drawing thread: a fork handler takes the lock before every fork and gives it back after,
in both processes, and gives the child its real stdout and stderr back (the display
redirects them).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.file_proxy import FileProxy
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from optcmp.progress_board import DONE, PENDING, Board, loss_summary
from optcmp.units import Events, Unit

if TYPE_CHECKING:
    from optcmp.resolve import ResolvedRun

REFRESH_S = 0.25  # a terminal's redraw interval
PLAIN_EVERY_S = 10.0  # a plain line this often, where the output is no terminal


def run_with_progress(console: Console, loaded, specs: list, runs: list[ResolvedRun], exp_dir, execution, fresh: bool,
                      resuming: bool = True):
    """`runner.run_sweep` with its progress display on `console` (the `run` command's).
    `resuming=False`: a later round of `seeds: auto`, whose kept runs are its earlier rounds'."""
    from optcmp.runner import run_sweep

    in_process = execution.executor == "local" and execution.jobs == 1
    where = "" if in_process else " on Ray" if execution.executor == "ray" else f" in {execution.jobs} processes"
    display = SweepProgress(console, runs, where)
    events = display.events()
    plan = events.plan

    def plan_and_say(todo: list, kept: list) -> None:
        plan(todo, kept)
        if kept and resuming:
            display.print(f"Resuming {exp_dir}: {len(kept)} of {len(specs)} runs finished earlier and are kept; "
                          f"{len(todo)} to run (--fresh starts over)")

    events.plan = plan_and_say
    with display:
        return run_sweep(loaded, specs, exp_dir, events, execution, fresh, runs)


def total_steps(run: ResolvedRun) -> int:
    """The optimizer steps a run takes, as the training loop counts them."""
    from optcmp.data import steps_per_epoch

    train = run.config.train
    if train.epochs is not None:
        return train.epochs * steps_per_epoch(run.config.data, run.data.n_train)
    return train.steps


def clock_text(seconds: float | None) -> str:
    """`h:mm:ss`, as rich's time columns write it; `-:--:--` when unknown."""
    return "-:--:--" if seconds is None else str(timedelta(seconds=max(0, int(seconds))))


def unit_label(unit: Unit) -> str:
    """A unit's run id, or a group's first and how many more: `adam-wd0-s0 +5`."""
    ids = [spec.run_id for spec in unit]
    return ids[0] if len(ids) == 1 else f"{ids[0]} +{len(ids) - 1}"


def loss_text(size: int, losses_median: float, best: float, members: int) -> str:
    """What a unit's line says of its loss: one run's, or a group's median and lowest
    over its `members` still training (of `size`)."""
    if size == 1:
        return f"loss {losses_median:.4g}"
    runs = f"{members} runs" if members == size else f"{members} of {size} runs"
    return f"{runs}, median loss {losses_median:.3g}, best {best:.3g}"


class _Label(ProgressColumn):
    """A unit line's label: the one column that gives way, with an ellipsis, where the
    terminal is too narrow for the whole line."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=False, overflow="ellipsis"))  # wrapable: it shrinks first

    def render(self, task: Task) -> Text:
        return Text(task.description, no_wrap=True, overflow="ellipsis")


def _text(field: str, justify: str = "left") -> TextColumn:
    return TextColumn("{task.fields[%s]}" % field, markup=False, justify=justify)


class _Display(Progress):
    """rich's Progress drawn as two tables: the sweep's line (its task first, the bar filling
    the width), then the units' lines (label, steps, loss, timer) at their own widths."""

    def __init__(self, **kwargs: Any) -> None:
        self.line_columns = (_Label(), _text("count", "right"), _text("info"), TimeElapsedColumn())
        super().__init__(TextColumn("{task.description}", markup=False), BarColumn(bar_width=None, table_column=Column(ratio=1)),
                         _text("count", "right"), _text("info"), TimeElapsedColumn(),
                         transient=True, auto_refresh=False, expand=True, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        if not self.tasks:
            return
        sweep, *lines = self.tasks
        yield _table(self.columns, [sweep], expand=True)
        if any(task.visible for task in lines):
            yield _table(self.line_columns, lines, expand=False)


def _table(columns: Sequence[ProgressColumn], tasks: Sequence[Task], expand: bool) -> Table:
    """`Progress.make_tasks_table` with two spaces between columns."""
    table = Table.grid(*(column.get_table_column().copy() for column in columns), padding=(0, 2), expand=expand)
    for task in tasks:
        if task.visible:
            table.add_row(*(column(task) for column in columns))
    return table


class _Line:
    """A unit's line: its task, its unit, how far it is."""

    def __init__(self, task: TaskID) -> None:
        self.task = task
        self.unit: Unit | None = None
        self.index: int | None = None  # the unit's row on the board
        self.step = 0


class SweepProgress:
    """The display of one sweep: `events()` feeds it, `tick()` draws (the display thread
    calls it every `REFRESH_S`, or tests with a fake `clock`). A context manager: entering
    starts the display and its thread, leaving stops them."""

    def __init__(self, console: Console, runs: Sequence[ResolvedRun], where: str = "", *,
                 clock: Callable[[], float] = time.monotonic, plain_every: float = PLAIN_EVERY_S) -> None:
        self.console, self.clock, self.plain_every = console, clock, plain_every
        self.live = console.is_terminal
        self.steps = {run.spec.run_id: total_steps(run) for run in runs}
        self.n_runs = len(runs)
        self.done_runs = 0
        self.todo_work = sum(self.steps.values())  # optimizer steps of the runs to do, summed
        self.done_work = 0  # of the runs that ended
        self.ended: set[str] = set()
        self.lock = threading.RLock()
        self.start = self._last_line = clock()
        self.progress = _Display(console=console, get_time=clock)
        self.overall = self.progress.add_task(f"all runs{where}", total=max(1, self.todo_work), count="", info="")
        self.lines: dict[Any, _Line] = {}  # by worker pid; "main" for this process
        self.workers: dict[int, int] = {}  # worker pid → its number in the display, 1, 2, …
        self.board: Board | None = None
        self.board_units: list[Unit] = []
        self._rows: list = []  # the board's rows, as last read
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._update_overall()

    # --- events --------------------------------------------------------------------

    def events(self) -> Events:
        return Events(plan=self.plan, unit_start=self.unit_start, step=self.step, run_end=self.run_end,
                      board=self.attach)

    def plan(self, todo: list, kept: list) -> None:
        with self.lock:
            self.done_runs = len(kept)
            self.todo_work = sum(self.steps[spec.run_id] for spec in todo)
            self._update_overall()

    def unit_start(self, unit: Unit) -> None:
        with self.lock:
            self._begin(self._line("main"), unit, unit_label(unit))

    def step(self, unit: Unit, step: int, total: int, losses: Sequence[float]) -> None:
        with self.lock:
            line = self._line("main")
            median, best = loss_summary(losses)
            self._show(line, step, total, loss_text(len(unit), median, best, len(losses)))

    def run_end(self, result: dict[str, Any]) -> None:
        with self.lock:
            run_id = result["run_id"]
            self.done_runs += 1
            if run_id not in self.ended and run_id in self.steps:
                self.ended.add(run_id)
                self.done_work += self.steps[run_id]
            self._update_overall()

    def attach(self, board: Board, units: list[Unit]) -> None:
        """The workers' board (`--jobs`), with the units in its order."""
        with self.lock:
            self.board, self.board_units = board, units

    def print(self, text: str) -> None:
        """A message above the display (or a plain line)."""
        with self.lock:
            self.progress.console.print(text, soft_wrap=True)

    # --- drawing -------------------------------------------------------------------

    def tick(self) -> None:
        """Read the board, update the sweep's line and draw (or print a plain line when due)."""
        with self.lock:
            if self.board is not None:
                self._rows = self.board.rows()
                self._read_board()
            self._update_overall()
            if self.live:
                self.progress.refresh()
            elif self.clock() - self._last_line >= self.plain_every:
                self._last_line = self.clock()
                self.console.print(self.plain_line(), soft_wrap=True)

    def plain_line(self) -> str:
        task = self.progress.tasks[self.overall]
        eta = self._eta()
        return (f"{self.done_runs}/{self.n_runs} runs, {clock_text(self.clock() - self.start)} elapsed"
                + (f", ETA {clock_text(eta)}" if eta is not None and task.completed < task.total else ""))

    def _line(self, key: Any) -> _Line:
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = _Line(self.progress.add_task("", total=1, count="", info="", visible=False))
        return line

    def _begin(self, line: _Line, unit: Unit, label: str, index: int | None = None) -> None:
        """A new unit on `line`: its own timer from now."""
        line.unit, line.index, line.step = unit, index, 0
        total = max(self.steps.get(spec.run_id, 1) for spec in unit)
        self.progress.reset(line.task, total=total, description=label, visible=True, count=f"0/{total}", info="")

    def _show(self, line: _Line, step: int, total: int, info: str) -> None:
        line.step = step
        self.progress.update(line.task, completed=step, total=max(total, 1), count=f"{step}/{total}", info=info)

    def _read_board(self) -> None:
        running: set[int] = set()
        for index, row in enumerate(self._rows):
            if row.state == PENDING or row.state == DONE:
                continue
            unit = self.board_units[index]
            number = self.workers.setdefault(row.pid, len(self.workers) + 1)
            line = self._line(row.pid)
            running.add(row.pid)
            if line.index != index:
                self._begin(line, unit, f"p{number} {unit_label(unit)}", index)
            if row.total:
                self._show(line, row.step, row.total, loss_text(len(unit), row.median, row.best, row.members))
        for pid, line in self.lines.items():
            if pid not in running and line.unit is not None:  # its unit ended; the worker waits or has gone
                line.unit = line.index = None
                self.progress.update(line.task, visible=False)

    def _in_flight(self) -> int:
        """Optimizer steps done by the runs in training that did not end yet."""
        if self.board is not None:
            units = [(self.board_units[i], row.step) for i, row in enumerate(self._rows) if row.state != PENDING]
        else:
            units = [(line.unit, line.step) for line in self.lines.values() if line.unit is not None]
        return sum(min(step, self.steps.get(spec.run_id, 0)) for unit, step in units for spec in unit
                   if spec.run_id not in self.ended)

    def _eta(self) -> float | None:
        task = self.progress.tasks[self.overall]
        if task.completed <= 0:
            return None
        elapsed = self.clock() - self.start
        return elapsed * max(0.0, task.total - task.completed) / task.completed

    def _update_overall(self) -> None:
        completed = min(self.done_work + self._in_flight(), max(1, self.todo_work))
        if self.todo_work == 0:  # everything was kept
            completed = 1
        self.progress.update(self.overall, completed=completed, total=max(1, self.todo_work),
                             count=f"{self.done_runs}/{self.n_runs}")
        eta = self._eta()
        finished = self.progress.tasks[self.overall].finished
        self.progress.update(self.overall, info="" if finished else f"ETA {clock_text(eta)}")

    # --- the display's life --------------------------------------------------------

    def __enter__(self) -> SweepProgress:
        _ACTIVE.append(self)
        if self.live:
            self.progress.start()
        self._thread = threading.Thread(target=self._run, name="optcmp-progress", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_S if self.live else min(1.0, self.plain_every)):
            self.tick()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self.lock:
            if self.live:
                self.progress.stop()
            if self in _ACTIVE:
                _ACTIVE.remove(self)


# --- forking while a display draws -------------------------------------------------------

_ACTIVE: list[SweepProgress] = []


def _before_fork() -> None:
    for display in _ACTIVE:  # waits for a draw in progress: no lock is held mid-draw at the fork
        display.lock.acquire()


def _after_fork_in_parent() -> None:
    for display in reversed(_ACTIVE):
        display.lock.release()


def _after_fork_in_child() -> None:
    """The child has no display thread: give back the locks the fork took, forget the
    displays, and write to the real stdout and stderr, not through rich's proxies."""
    for display in reversed(_ACTIVE):
        display.lock.release()
    _ACTIVE.clear()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, FileProxy):
            setattr(sys, name, stream.rich_proxied_file)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
