"""Where work units run: in this process, in a pool of local processes (`--jobs N`), or as
tasks on a Ray cluster (`--executor ray`).

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
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from optcmp import stopping
from optcmp.engines import run_unit
from optcmp.errors import OptcmpError
from optcmp.results import NoSpace, Status, atomic_write_bytes
from optcmp.units import Events, Execution, Unit, stand_in

STOP_GRACE_S = 15.0  # how long a stopped worker may take to close its run's logs
RAY_MAX_RETRIES = 2  # a Ray task whose worker or node died is retried this often, then reported failed
REACH_TIMEOUT_S = 5.0  # how long to try a cluster's address before giving up

Outcome = tuple[Unit, list[dict[str, Any]]]


def make_executor(execution: Execution, exp_dir: Path, base_dir: Path | None, events: Events):
    if execution.executor == "ray":
        return RayExecutor(exp_dir, base_dir, execution.threads, execution.address, execution.gpus_per_run)
    if execution.jobs > 1:
        return ProcessExecutor(exp_dir, base_dir, execution.threads, execution.jobs)
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

def _init_worker(threads: int) -> None:
    """Runs first in each worker process: signals, threads before torch loads, parent watch.

    Ctrl-C reaches every process of the terminal's group, and the driver forwards it too:
    a worker records the signal (`stopping`), ends the unit in flight at its next step, its
    runs `interrupted`, and starts no other."""
    stopping.record_in_worker()
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


def _work(unit: Unit, exp_dir: Path, base_dir: Path | None) -> list[dict[str, Any]] | None:
    """A worker's job: run one unit; None when a stop came before it began."""
    if stopping.requested():
        return None
    try:
        return run_unit(unit, exp_dir, base_dir)
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
    threads. Workers write their run folders themselves."""

    def __init__(self, exp_dir: Path, base_dir: Path | None, threads: int, jobs: int) -> None:
        self.exp_dir, self.base_dir, self.threads, self.jobs = exp_dir, base_dir, threads, jobs
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Any, Unit] = {}

    def results(self, units: list[Unit]) -> Iterator[Outcome]:
        import multiprocessing

        self._pool = ProcessPoolExecutor(
            max_workers=min(self.jobs, len(units)), mp_context=multiprocessing.get_context(start_method(units, self.threads)),
            initializer=_init_worker, initargs=(self.threads,),
        )
        self._futures = {self._pool.submit(_work, unit, self.exp_dir, self.base_dir): unit for unit in units}
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


# --- Ray -------------------------------------------------------------------------------


def _ray_work(unit: Unit, base_dir: str | None, threads: int) -> dict[str, Any]:
    """A Ray task: train into a local temporary folder (a cluster need not share a file
    system) and return the results with every file of each run folder, as bytes."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="optcmp-") as tmp:
        try:
            results = run_unit(unit, Path(tmp), Path(base_dir) if base_dir else None)
        except OptcmpError as e:  # the user's mistake: report it, do not retry it
            return {"error": str(e)}
        files = {s.run_id: _read_folder(Path(tmp) / s.run_id) for s in unit}
    return {"results": results, "files": files}


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def install_run(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write a run folder returned by a worker: clean first (a redone run never mixes with
    an old attempt), result.json last, each file atomically."""
    if run_dir.is_dir() and not run_dir.is_symlink():
        shutil.rmtree(run_dir)
    elif run_dir.is_symlink() or run_dir.exists():  # a file in the run folder's place
        run_dir.unlink()
    for name in sorted(files, key=lambda n: n == "result.json"):
        atomic_write_bytes(run_dir / name, files[name])


def _check_reachable(address: str | None) -> None:
    """Fail in seconds where `ray.init` would wait minutes for a cluster that is not there."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # none (a local instance), or `auto`: Ray finds it or says so
        return
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as e:
        raise OptcmpError(f"--address {address}: no Ray cluster answers at {host}:{port} ({e.strerror or e})") from None


class RayExecutor:
    """`--executor ray`: each unit is a Ray task with a CPU (and GPU) request; results and
    run folders come back to this driver, which writes them. Only as many tasks as the
    cluster can run at once are submitted, so a stop interrupts just the running ones."""

    def __init__(self, exp_dir: Path, base_dir: Path | None, threads: int, address: str | None,
                 gpus_per_run: float | None) -> None:
        import ray

        self.exp_dir, self.base_dir, self.threads, self.gpus_per_run = exp_dir, base_dir, threads, gpus_per_run
        self._owned = not ray.is_initialized()
        if self._owned:
            _check_reachable(address)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise OptcmpError(f"--address {address}: cannot reach a Ray cluster: {e}") from None
        self._in_flight: dict[Any, Unit] = {}

    def _gpus(self, unit: Unit) -> float:
        import ray

        if self.gpus_per_run is not None:
            return self.gpus_per_run
        device = unit[0].config.device
        if device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0):
            return 1
        return 0

    def _capacity(self) -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1) // self.threads))

    def results(self, units: list[Unit]) -> Iterator[Outcome]:
        import ray

        task = ray.remote(_ray_work)
        pending = list(reversed(units))
        base_dir = str(self.base_dir) if self.base_dir else None
        while (pending or self._in_flight) and not stopping.requested():
            while pending and len(self._in_flight) < self._capacity():
                unit = pending.pop()
                ref = task.options(num_cpus=self.threads, num_gpus=self._gpus(unit), max_retries=RAY_MAX_RETRIES,
                                   retry_exceptions=True).remote(unit, base_dir, self.threads)
                self._in_flight[ref] = unit
            ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=stopping.POLL_S)
            for ref in ready:
                unit = self._in_flight.pop(ref)
                yield unit, self._collect(ref, unit)

    def _collect(self, ref, unit: Unit) -> list[dict[str, Any]]:
        import ray

        try:
            payload = ray.get(ref)
        except ray.exceptions.RayError as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            error = f"Ray task failed after {RAY_MAX_RETRIES} retries: {type(e).__name__}: {message}"
            return [stand_in(self.exp_dir, run, Status.FAILED, error) for run in unit.runs]
        if "error" in payload:
            raise OptcmpError(payload["error"])
        for result in payload["results"]:
            install_run(self.exp_dir / result["run_id"], payload["files"][result["run_id"]])
        return payload["results"]

    def stop(self) -> list[Outcome]:
        import ray

        for ref in self._in_flight:
            ray.cancel(ref, force=True)
        out = [(unit, []) for unit in self._in_flight.values()]
        self._in_flight = {}
        return out

    def close(self) -> None:
        import ray

        if self._owned and ray.is_initialized():
            ray.shutdown()
