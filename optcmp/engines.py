"""`run_unit`: what every executor runs — one planned work unit, handed to its engine.

Above the engines and below the executors; no torch at load time (a worker process sets
its thread count before torch loads).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from optcmp.units import Progress, ShouldStop, Unit

ENGINE_MODULES = {"sequential": "optcmp.trainer", "vectorized": "optcmp.vectorized"}


def preload(units: list[Unit]) -> None:
    """Import the engines `units` run on, in a process about to fork its workers: imported
    once here, every forked worker shares them, instead of each importing them again (with
    tensorboardX, about 0.1 s of CPU a worker). Only where torch is loaded already."""
    import importlib

    for engine in sorted({unit.engine for unit in units}):
        importlib.import_module(ENGINE_MODULES[engine])


def run_unit(unit: Unit, exp_dir: Path, base_dir: Path | None = None, progress: Progress | None = None,
             should_stop: ShouldStop | None = None) -> list[dict[str, Any]]:
    """Train one work unit into `exp_dir/<run_id>/` and return its results (one per run),
    in this process, a worker process or a Ray task. `should_stop`: see `units.ShouldStop`."""
    if unit.engine == "sequential":  # the modules of ENGINE_MODULES
        from optcmp.trainer import execute

        return [execute(unit.runs[0], exp_dir, base_dir, progress, should_stop)]
    from optcmp.vectorized import execute_unit

    return execute_unit(unit, exp_dir, base_dir, progress, should_stop)
