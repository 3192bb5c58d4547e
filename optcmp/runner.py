"""A sweep: check every config before training, keep what an earlier attempt finished, run
the rest on an executor, and keep runs.csv (and, every few seconds, the summary) up to date
so a stopped or killed sweep is readable and resumable.

The driver (this module) alone writes plan.json, runs.csv and the summary; workers write
their run folders (or, on Ray, hand the folder's files back for the driver to write).
Runs are resolved once (`preflight`), planned into work units once (`planning.plan_units`:
one run for the sequential engine, or a vectorized group) and executed as planned.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optcmp.stopping as stopping
from optcmp.config import LoadedConfig
from optcmp.errors import ConfigError, OptcmpError
from optcmp.locking import check_writable, experiment_lock
from optcmp.results import Status, atomic_write_text, no_space, read_result, write_runs_csv
from optcmp.resume import clear_experiment, kept_results  # noqa: F401 - kept_results: tests take it from here
from optcmp.sweep import RunSpec
from optcmp.units import Events, Execution, Unit, stand_in  # noqa: F401 - Events and Execution: the CLI takes them from here

if TYPE_CHECKING:
    from optcmp.resolve import ResolvedRun

SUMMARY_EVERY_S = 10.0  # the summary costs ~30 ms for 200 runs: refresh it now and then, not per run


@dataclass
class SweepOutcome:
    results: list[dict[str, Any]]  # in plan order: kept from earlier attempts, then this one's
    kept: set[str]  # the run ids among them that an earlier attempt had finished
    interrupted: bool = False
    todo: int = 0  # runs this attempt set out to do
    seconds: float = 0.0  # wall time of this attempt
    summary: Any = None  # the summary table written last (summary.Summary), for the CLI to print


def experiment_dir(out_root: Path, name: str) -> Path:
    """`<out>/<name>`, refusing any name that would resolve outside the output root."""
    root = Path(out_root).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise OptcmpError(f"name: `{name}` would write outside the output root {root}")
    return path


def preflight(loaded: LoadedConfig, specs: list[RunSpec]) -> list[ResolvedRun]:
    """Resolve every run (`resolve.resolve_runs`: data, model, optimizer and scheduler of
    each config built once, no training), so a bad value stops the sweep before the first
    run, with its file and line. Returns the runs, resolved, in order."""
    from optcmp.resolve import Resolver

    resolver = Resolver(loaded.base_dir)
    out = []
    for spec in specs:
        try:
            out.append(resolver(spec))
        except ConfigError as e:
            raise loaded.locate(e, spec.params, spec.variant) from None
    return out


def plan_units(runs: list[ResolvedRun], engine: str = "auto", jobs: int = 1) -> list[Unit]:
    """The work units of `runs` (see `planning.plan_units`)."""
    import optcmp.planning as planning

    return planning.plan_units(runs, engine, jobs)


def write_plan(exp_dir: Path, specs: list[RunSpec]) -> None:
    plan = [{"run_id": s.run_id, "config_id": s.config_id, "seed": s.seed, "params": s.params,
             "config_hash": s.config_hash} for s in specs]
    atomic_write_text(exp_dir / "plan.json", json.dumps(plan, indent=2) + "\n")


# --- the sweep -----------------------------------------------------------------------


def run_sweep(loaded: LoadedConfig, specs: list[RunSpec], exp_dir: Path, events: Events | None = None,
              execution: Execution | None = None, fresh: bool = False,
              runs: list[ResolvedRun] | None = None) -> SweepOutcome:
    """Run every spec that has no kept result, on the chosen executor; results in plan order.
    `runs`: the specs as `preflight` resolved them (resolved here when not given).

    Whatever refuses the sweep (results of another config, an executor that cannot start,
    a folder that cannot be written) does so before anything is written. A stop signal
    (Ctrl-C, SIGTERM; see `stopping`) at any moment stops the runs in flight, which are
    marked `interrupted`, and returns normally with `interrupted=True`, after runs.csv and
    the summary are written; so does a KeyboardInterrupt a run raised itself."""
    events = events or Events()
    execution = execution or Execution()
    jobs = execution.jobs if execution.executor == "local" else 1
    from optcmp.planning import cheap_probes

    runs = runs if runs is not None else preflight(loaded, specs)
    runs = cheap_probes(runs, execution.engine)  # as api.prepare plans them (there, already done)
    planned = {run.spec.run_id for run in runs}
    specs = [s for s in specs if s.run_id in planned]
    # --engine vectorized may refuse: before anything is written
    all_units = plan_units(runs, execution.engine, jobs) if execution.engine == "vectorized" else None
    exp_dir = Path(exp_dir)
    with stopping.deferred():
        check_writable(exp_dir)  # these refuse before anything is written: a bad folder,
        kept = {} if fresh else kept_results(exp_dir, specs)  # results of another config,
        executor = None
        try:
            if len(kept) < len(specs) and not stopping.requested():  # an executor that cannot start
                from optcmp.executors import make_executor

                executor = make_executor(execution, exp_dir, loaded.base_dir, events)  # may refuse (no cluster)
            with experiment_lock(exp_dir):
                if fresh:
                    clear_experiment(exp_dir)
                kept = kept_results(exp_dir, specs)  # again: another writer may have finished runs meanwhile
                write_plan(exp_dir, specs)
                handed, executor = executor, None  # _execute closes it
                outcome = _execute(loaded, specs, exp_dir, events, execution, kept, handed,
                                   {run.spec.run_id: run for run in runs}, all_units, jobs)
        except BaseException as e:
            if executor is not None:
                executor.close()
            full = no_space(e)
            if full is not None:
                raise full from None
            raise
        outcome.interrupted |= stopping.requested()  # also a signal that came as the last folders were finished
    return outcome


def _execute(loaded: LoadedConfig, specs: list[RunSpec], exp_dir: Path, events: Events, execution: Execution,
             kept: dict[str, dict[str, Any]], executor, by_id: dict[str, ResolvedRun], all_units: list[Unit] | None,
             jobs: int) -> SweepOutcome:
    """The sweep under the lock: the runs not kept, unit by unit, each unit's results taken
    in from their files as it ends; runs.csv after each, the summary now and then and last."""
    from optcmp.summary import write_summary

    todo = [s for s in specs if s.run_id not in kept]
    events.plan(todo, list(kept.values()))
    order = {s.run_id: i for i, s in enumerate(specs)}
    results = dict(kept)
    outcome = SweepOutcome([], set(kept), todo=len(todo))
    last_summary = time.monotonic()

    def record(unit: Unit, unit_results: list[dict[str, Any]], stopped: bool = False) -> None:
        """Take in a unit's results; after a stop, its runs without one were cut off."""
        reported = {r["run_id"] for r in unit_results}
        for run in unit.runs:
            run_id = run.spec.run_id
            # what is on disk is what runs.csv shows (non-finite metrics are null there)
            result = read_result(exp_dir / run_id) if run_id in reported else None
            if result is None and stopped:
                result = stand_in(exp_dir, run, Status.INTERRUPTED, "interrupted by the user")
            if result is None:  # never started: still to do
                continue
            results[run_id] = result
            outcome.interrupted |= result["status"] == Status.INTERRUPTED
            events.run_end(result)

    def save(summary: bool) -> None:
        write_runs_csv(exp_dir, sorted(results.values(), key=lambda r: order[r["run_id"]]))
        if summary:
            outcome.summary = write_summary(exp_dir, loaded.config.summary.primary)

    units = all_units if all_units is not None and not kept else \
        plan_units([by_id[s.run_id] for s in todo], execution.engine, jobs)
    if not units and executor is not None:
        executor.close()
        executor = None
    start = time.perf_counter()
    try:
        if executor is not None and not stopping.requested():
            try:
                for unit, unit_results in executor.results(units):
                    record(unit, unit_results)
                    if outcome.interrupted or stopping.requested():
                        break
                    due = time.monotonic() - last_summary > SUMMARY_EVERY_S
                    save(summary=due)
                    last_summary = time.monotonic() if due else last_summary
            except KeyboardInterrupt:  # raised by a run itself (user code), not by a signal
                outcome.interrupted = True
            except BaseException:  # e.g. a config error a worker met: do not wait for the others
                executor.stop()
                raise
            if outcome.interrupted or stopping.requested():
                outcome.interrupted = True
                for unit, unit_results in executor.stop():
                    record(unit, unit_results, stopped=True)
    finally:
        if executor is not None:
            executor.close()
        outcome.seconds = time.perf_counter() - start
        if results:
            save(summary=True)
    outcome.results = sorted(results.values(), key=lambda r: order[r["run_id"]])
    return outcome
