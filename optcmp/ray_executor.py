"""`--executor ray`: each work unit a Ray task, on a local Ray instance or a cluster.

A task trains into a temporary folder on its node (a cluster need not share a file
system) and returns its results with every file of its run folders; the driver writes
them (`install_run`: the folder emptied first, result.json last). A task whose worker or
node dies is retried (`RAY_MAX_RETRIES`) — on another node where its own is gone — and a
finished unit is never run twice: its results are written once, when its task returns.

A local instance this driver started (`ray.init()` without an address) ends with it: by
`ray.shutdown()` in `close()`, and if the driver is killed, by `reaper.watch`'s watcher.
The executors' vocabulary is in `executors.py`'s docstring.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optcmp.reaper as reaper
import optcmp.stopping as stopping
from optcmp.engines import run_unit
from optcmp.errors import OptcmpError
from optcmp.results import Status, atomic_write_bytes
from optcmp.units import Unit, stand_in

RAY_MAX_RETRIES = 2  # a Ray task whose worker or node died is retried this often, then reported failed
REACH_TIMEOUT_S = 5.0  # how long to try a cluster's address before giving up

Outcome = tuple[Unit, list[dict[str, Any]]]


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
        self._watcher = None
        if self._owned:
            _check_reachable(address)
            main = threading.current_thread() is threading.main_thread()
            sigterm = signal.getsignal(signal.SIGTERM) if main else None
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise OptcmpError(f"--address {address}: cannot reach a Ray cluster: {e}") from None
            finally:
                if sigterm is not None:  # ray.init makes SIGTERM a sys.exit anywhere: keep it a stop (see `stopping`)
                    signal.signal(signal.SIGTERM, sigterm)
            if address is None:  # a local instance, started here: it ends with this process (see `reaper`)
                self._watcher = reaper.watch(os.path.dirname(ray.__file__) + os.sep)
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
        reaper.stop(self._watcher)
        self._watcher = None
