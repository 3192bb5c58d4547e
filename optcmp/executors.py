"""Where work units run: in this process, in a pool of local processes (`--jobs N`), or as
tasks on a Ray cluster (`--executor ray`, in `ray_executor.py`).

Every executor has the same three methods, used by `runner.run_sweep`:
- `results(units)` yields `(unit, results)` as each unit finishes, in any order;
- `stop()` ends the units in flight (Ctrl-C) and returns `(unit, results so far)` for each
  that had started; the driver marks runs without a result `interrupted`;
- `close()` gives back what the executor holds (processes, a Ray instance it started).

`results` ends early once a stop signal is recorded (`stopping`): it starts no other unit,
and while it waits for workers it looks every `stopping.POLL_S`.

This module imports no torch at load time: a worker process sets its thread count first.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import optcmp.stopping as stopping
from optcmp.progress_board import Board
from optcmp.engines import preload, run_unit
from optcmp.errors import OptcmpError
from optcmp.results import NoSpace, Status
from optcmp.stats import warm_up
from optcmp.units import Events, Execution, Unit, stand_in

STOP_GRACE_S = 15.0  # how long a stopped worker may take to close its run's logs

Outcome = tuple[Unit, list[dict[str, Any]]]


def make_executor(execution: Execution, exp_dir: Path, base_dir: Path | None, events: Events):
    if execution.executor == "ray":
        from optcmp.ray_executor import RayExecutor

        return RayExecutor(exp_dir, base_dir, execution.threads, execution.address, execution.gpus_per_run)
    if execution.jobs > 1:
        return ProcessExecutor(exp_dir, base_dir, execution.threads, execution.jobs, events)
    return InProcessExecutor(exp_dir, base_dir, execution.threads, events)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class InProcessExecutor:
    """One unit after another in this process, with per-step progress. A stop signal ends
    the unit in flight at its next step (its runs `interrupted`) and starts no other."""

    def __init__(self, exp_dir: Path, base_dir: Path | None, threads: int, events: Events) -> None:
        self.exp_dir, self.base_dir, self.threads, self.events = exp_dir, base_dir, threads, events
        self._current: Unit | None = None
        self._threads_before: int | None = None

    def results(self, units: list[Unit]) -> Iterator[Outcome]:
        import torch

        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        warm_up()  # the summary's import, beside the first unit
        for unit in units:
            if stopping.requested():
                return
            self._current = unit
            self.events.unit_start(unit)
            out = run_unit(unit, self.exp_dir, self.base_dir, lambda s, t, l, unit=unit: self.events.step(unit, s, t, l))
            self._current = None
            yield unit, out

    def stop(self) -> list[Outcome]:
        unit, self._current = self._current, None
        return [(unit, [])] if unit else []

    def close(self) -> None:
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)


# --- local processes -------------------------------------------------------------------

_worker: dict[str, Any] = {"board": None}  # the progress board, in a worker process


def _init_worker(threads: int, board: Board | None = None) -> None:
    """Runs first in each worker process: signals, threads before torch loads, parent watch,
    the progress board.

    Ctrl-C reaches every process of the terminal's group, and the driver forwards it too:
    a worker records the signal (`stopping`), ends the unit in flight at its next step, its
    runs `interrupted`, and starts no other."""
    stopping.record_in_worker()
    _worker["board"] = board
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    _exit_with_parent()


def _exit_with_parent() -> None:
    """A worker whose driver was killed (SIGKILL) must not go on writing into a run folder
    that the next `optcmp run` redoes."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="optcmp-parent-watch").start()


def _work(unit: Unit, exp_dir: Path, base_dir: Path | None, index: int | None = None) -> list[dict[str, Any]] | None:
    """A worker's job: run one unit (the board's unit `index`); None when a stop came before it began."""
    if stopping.requested():
        return None
    board = _worker["board"] if index is not None else None
    try:
        if board is None:
            return run_unit(unit, exp_dir, base_dir)
        board.start(index, len(unit))
        try:
            return run_unit(unit, exp_dir, base_dir, board.reporter(index))
        finally:
            board.finish(index)
    except KeyboardInterrupt:  # raised by the user's code outside a step
        return [stand_in(exp_dir, run, Status.INTERRUPTED, "interrupted by the user") for run in unit.runs]
    except OptcmpError as e:
        error = type(e)(str(e)) if type(e) in (OptcmpError, NoSpace) else OptcmpError(str(e))
        raise error from None  # subclasses of other signatures cannot unpickle; the message is all


def start_method(units: list[Unit], threads: int) -> str:
    """How worker processes start: forked from this one where that is safe, else spawned.

    A fork starts a worker in milliseconds with torch already imported; a spawned worker
    imports it again (about a second of CPU each). Forking is safe when the workers run one
    torch thread (an OpenMP pool the parent started does not survive a fork, and with one
    thread none is entered) and no CUDA device is in play (CUDA cannot be used in a child
    forked after the parent touched it)."""
    import multiprocessing
    import sys

    if threads != 1 or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "spawn"
    devices = {spec.config.device for unit in units for spec in unit}
    if devices - {"cpu", "auto"}:
        return "spawn"
    if "auto" in devices:
        from optcmp.resolve import resolve_device

        if resolve_device("auto").type != "cpu":
            return "spawn"
    return "fork"


class ProcessExecutor:
    """`--jobs N`: N worker processes (see `start_method`), each with `threads` torch
    threads. Workers write their run folders themselves, and their units' progress to a
    `board.Board` that `events.board` hands to the display."""

    def __init__(self, exp_dir: Path, base_dir: Path | None, threads: int, jobs: int, events: Events | None = None) -> None:
        self.exp_dir, self.base_dir, self.threads, self.jobs = exp_dir, base_dir, threads, jobs
        self.events = events or Events()
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Any, Unit] = {}

    def results(self, units: list[Unit]) -> Iterator[Outcome]:
        import multiprocessing

        method = start_method(units, self.threads)
        if method == "fork":
            preload(units)
        context = multiprocessing.get_context(method)
        board = Board(len(units), context)  # the workers' progress, for the display
        self.events.board(board, list(units))
        self._pool = ProcessPoolExecutor(
            max_workers=min(self.jobs, len(units)), mp_context=context,
            initializer=_init_worker, initargs=(self.threads, board),
        )
        self._futures = {self._pool.submit(_work, unit, self.exp_dir, self.base_dir, i): unit
                         for i, unit in enumerate(units)}
        warm_up()  # the summary's import, while the workers train (they are forked by now)
        pending = set(self._futures)
        while pending and not stopping.requested():
            done, pending = wait(pending, timeout=stopping.POLL_S, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=list(self._futures).index):
                unit = self._futures.pop(future)
                try:
                    out = future.result()
                except BrokenProcessPool as e:
                    out = [stand_in(self.exp_dir, run, Status.FAILED, f"its worker process died ({e}); run again to retry")
                           for run in unit.runs]
                if out is not None:
                    yield unit, out

    def stop(self) -> list[Outcome]:
        if self._pool is None:
            return []
        started = [f for f in self._futures if f.running() or f.done()]
        # the pool has no public way to reach its workers; shutdown() forgets them, so look first
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            _send(p.pid, signal.SIGINT)
        wait(started, timeout=STOP_GRACE_S)
        for p in processes:  # one that did not stop in time is killed; its runs count as interrupted
            if p.is_alive():
                p.kill()  # SIGTERM would only be recorded, as SIGINT was
            p.join(timeout=5)
        out = []
        for future in started:
            try:
                results = future.result(timeout=0)
            except BaseException:  # noqa: BLE001 - killed, broken or cancelled: no results
                results = []
            if results is not None:
                out.append((self._futures[future], results))
        self._futures = {}
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
