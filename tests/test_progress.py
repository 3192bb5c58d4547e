"""The `run` command's progress: what it shows at 80 columns, each unit's timer, the plain
lines where the output is no terminal, a vectorized group's label, and the workers' board
(`--jobs`), read back after real worker processes wrote it."""
from __future__ import annotations

import dataclasses
import io
import os
import statistics
import sys

import pandas as pd
import pytest
from rich.console import Console
from rich.file_proxy import FileProxy

from optcmp.progress_board import DONE, Board
from optcmp.config import load_config
from optcmp.executors import ProcessExecutor, start_method
from optcmp.progress import SweepProgress, clock_text, loss_text, unit_label
from optcmp.resolve import resolve_runs
from optcmp.sweep import expand
from optcmp.units import Events, Unit

GROUP = """\
name: group
seeds: 3
device: cpu
model: {kind: mlp, hidden: [4], norm: none, activation: relu}
data: {kind: quadratic}
train: {steps: 1000}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.lr: [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008]
log: {every: 100, histograms: {every: 0}}
summary: {chaos: off}  # 24 runs, no chaos probes (summary.chaos auto adds one per config)
"""
LONG_ID = "pytorch_optimizer_Lion-lr0.001-wd0.1-b0.9x0.99-s0"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def resolved(write_config, text: str = GROUP):
    return resolve_runs(expand(load_config(write_config(text)).config))


def renamed(run, run_id: str, steps: int):
    spec = run.spec
    config = spec.config.model_copy(update={"train": spec.config.train.model_copy(update={"steps": steps})})
    return dataclasses.replace(run, spec=dataclasses.replace(spec, run_id=run_id, config=config))


def terminal(width: int = 80) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None, record=True,
                   markup=False, highlight=False)


def shown(display: SweepProgress) -> list[str]:
    """The display's lines as a terminal of its console's width shows them, after a tick."""
    display.tick()
    console = display.console
    console.print(display.progress.get_renderable())
    return console.export_text().splitlines()


def test_80_columns_two_workers_a_group_and_a_long_id(write_config):
    runs = resolved(write_config)
    assert len(runs) == 24
    single = renamed(runs[0], LONG_ID, 500)
    group, alone = Unit(tuple(runs), "vectorized"), Unit((single,), "sequential")
    clock = Clock()
    display = SweepProgress(terminal(80), [*runs, single], " in 2 processes", clock=clock)
    display.plan([r.spec for r in [*runs, single]], [])
    board = Board(2)
    display.attach(board, [group, alone])
    clock.now = 2
    board.start(0, 24)
    display.tick()
    board.reporter(0)(340, 1000, [0.12] + [0.31] * 23)
    clock.now = 3
    board.start(1, 1)
    board._write(1, pid=os.getpid() + 1)  # a second worker process
    board.reporter(1)(80, 500, [0.4213])
    display.tick()
    clock.now = 5
    lines = shown(display)
    assert all(len(line) <= 80 for line in lines), lines
    # done: 24 × 340 + 80 of 24 × 1000 + 500 steps in 5 s → 5 × 16260 / 8240 s to go
    assert lines[0].startswith("all runs in 2 processes  ━")
    assert lines[0].split()[-4:] == ["0/25", "ETA", "0:00:09", "0:00:05"]
    assert lines[1].split() == ["p1", "adam-lr0.001-s0", "+23", "340/1000", "24", "runs,", "median", "loss", "0.31,",
                                "best", "0.12", "0:00:03"]
    # only the run id gives way, with an ellipsis; its numbers and timer are whole
    label, rest = lines[2].split("…")
    assert f"p2 {LONG_ID}".startswith(label) and len(label) > len("p2 pytorch_opt")
    assert rest.split() == ["80/500", "loss", "0.4213", "0:00:02"]
    assert len(lines) == 3


def test_each_unit_has_its_own_timer(write_config):
    runs = resolved(write_config)[:2]
    units = [Unit((run,), "sequential") for run in runs]
    clock = Clock()
    display = SweepProgress(terminal(100), runs, clock=clock)
    display.plan([r.spec for r in runs], [])
    display.unit_start(units[0])
    for t, step in ((1, 100), (6, 1000)):
        clock.now = t
        display.step(units[0], step, 1000, [0.5])
    display.run_end({"run_id": runs[0].spec.run_id})
    display.unit_start(units[1])
    clock.now = 9
    display.step(units[1], 300, 1000, [0.25])
    lines = shown(display)
    # 1300 of 2000 steps in 9 s: 9 × 700 / 1300 = 4.8 s to go
    assert lines[0].split()[-4:] == ["1/2", "ETA", "0:00:04", "0:00:09"]
    assert lines[1].split() == [runs[1].spec.run_id, "300/1000", "loss", "0.25", "0:00:03"]  # not the first unit's 0:00:06


def test_plain_lines_where_the_output_is_no_terminal(write_config):
    runs = resolved(write_config)[:2]
    unit = Unit(tuple(runs), "vectorized")
    clock = Clock()
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False, color_system=None)
    display = SweepProgress(console, runs, clock=clock, plain_every=10)
    display.plan([r.spec for r in runs], [])
    display.unit_start(unit)
    for t in range(0, 31):
        clock.now = t
        if t == 5:
            display.step(unit, 250, 1000, [1.0, 2.0])
        if t == 25:
            display.run_end({"run_id": runs[0].spec.run_id})
        display.tick()
    # at 10 s: 500 of 2000 steps in 10 s, 30 s to go; at 30 s: 1250 in 30 s, 18 s to go
    assert out.getvalue().splitlines() == [
        "0/2 runs, 0:00:10 elapsed, ETA 0:00:30",
        "0/2 runs, 0:00:20 elapsed, ETA 0:01:00",
        "1/2 runs, 0:00:30 elapsed, ETA 0:00:18",
    ]


def test_a_vectorized_groups_line_says_whose_loss(write_config):
    runs = resolved(write_config)
    assert unit_label(Unit(tuple(runs), "vectorized")) == "adam-lr0.001-s0 +23"
    assert unit_label(Unit(tuple(runs[:1]), "sequential")) == "adam-lr0.001-s0"
    assert loss_text(24, 0.31, 0.12, 24) == "24 runs, median loss 0.31, best 0.12"
    assert loss_text(24, 0.3141, 0.1234, 22) == "22 of 24 runs, median loss 0.314, best 0.123"  # two left
    assert loss_text(1, 3.476123, 3.476123, 1) == "loss 3.476"
    assert (clock_text(None), clock_text(59.9), clock_text(3723)) == ("-:--:--", "0:00:59", "1:02:03")


def test_every_run_kept_from_an_earlier_attempt(write_config):
    runs = resolved(write_config)[:3]
    display = SweepProgress(terminal(80), runs, clock=Clock())
    display.plan([], [{"run_id": r.spec.run_id} for r in runs])
    display.tick()
    (line,) = shown(display)
    assert line.startswith("all runs  ━") and line.split()[-2:] == ["3/3", "0:00:00"]


SMALL = """\
name: small
seeds: 2
device: cpu
model: {kind: mlp, hidden: [4], norm: none, activation: relu}
data: {kind: quadratic}
train: {steps: 20}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.lr: [0.01, 0.02]
log: {every: 5, histograms: {every: 0}}
"""


@pytest.mark.parametrize("threads", [1, 2])  # forked workers; spawned ones (more than one thread each)
def test_worker_processes_write_their_units_progress(write_config, tmp_path, threads):
    runs = resolved(write_config, SMALL)
    units = [Unit(tuple(runs[:2]), "vectorized"), Unit((runs[2],), "sequential"), Unit((runs[3],), "sequential")]
    assert start_method(units, threads) == ("fork" if threads == 1 else "spawn")
    handed = []
    executor = ProcessExecutor(tmp_path, None, threads, 2, Events(board=lambda board, listed: handed.append((board, listed))))
    try:
        finished = {u[0].run_id: results for u, results in executor.results(units)}
    finally:
        executor.close()
    assert all(r["status"] == "ok" for results in finished.values() for r in results)
    (board, listed), = handed
    assert listed == units
    rows = board.rows()
    assert [(row.state, row.step, row.total, row.members) for row in rows] == [(DONE, 20, 20, 2), (DONE, 20, 20, 1),
                                                                             (DONE, 20, 20, 1)]
    assert os.getpid() not in {row.pid for row in rows} and len({row.pid for row in rows}) <= 2
    for row, unit in zip(rows, units):  # the train/loss of the last log point, as metrics.csv has it
        last = [pd.read_csv(tmp_path / spec.run_id / "metrics.csv")["train/loss"].iloc[-1] for spec in unit]
        assert row.median == pytest.approx(statistics.median(last), rel=1e-12) and row.best == pytest.approx(min(last), rel=1e-12)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_forked_while_the_display_draws_holds_none_of_its_locks(write_config):
    runs = resolved(write_config)[:2]
    display = SweepProgress(terminal(80), runs)
    with display:
        assert isinstance(sys.stderr, FileProxy)  # the display redirects the output of this process
        for _ in range(10):
            display.tick()
            pid = os.fork()
            if pid == 0:  # the child: every lock free, the real stderr
                free = all(lock.acquire(blocking=False) for lock in
                           (display.lock, display.progress.live._lock, display.console._lock))
                os._exit(0 if free and not isinstance(sys.stderr, FileProxy) else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    assert not isinstance(sys.stderr, FileProxy)
