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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optcmp.config import LoadedConfig
from optcmp.errors import ConfigError, OptcmpError
from optcmp.locking import experiment_lock
from optcmp.results import FINISHED, Status, atomic_write_text, read_result, write_runs_csv
from optcmp.sweep import RunSpec
from optcmp.units import Events, Execution, Unit, stand_in  # noqa: F401 - Events and Execution: the CLI takes them from here
from optcmp.yamlio import read_yaml_file

if TYPE_CHECKING:
    from optcmp.resolve import ResolvedRun

SUMMARY_EVERY_S = 10.0  # the summary costs ~30 ms for 200 runs: refresh it now and then, not per run
OWN_FILES = ("runs.csv", "summary.csv", "summary.md", "summary.json", "plan.json", "rounds.json")


@dataclass
class SweepOutcome:
    results: list[dict[str, Any]]  # in plan order: kept from earlier attempts, then this one's
    kept: set[str]  # the run ids among them that an earlier attempt had finished
    interrupted: bool = False
    todo: int = 0  # runs this attempt set out to do
    seconds: float = 0.0  # wall time of this attempt


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
    from optcmp import planning

    return planning.plan_units(runs, engine, jobs)


# --- resume --------------------------------------------------------------------------


def kept_results(exp_dir: Path, specs: list[RunSpec]) -> dict[str, dict[str, Any]]:
    """The results on disk this plan keeps: finished (ok, diverged or pruned) with the same resolved
    config. Refuses a folder holding results of another config under the same name."""
    by_id = {s.run_id: s for s in specs}
    swept = set(specs[0].params) if specs else set()
    kept: dict[str, dict[str, Any]] = {}
    conflicts: dict[str, tuple[Any, Any]] = {}
    conflicting_runs: list[str] = []
    for run_dir in sorted(p for p in Path(exp_dir).iterdir() if p.is_dir()):
        result = read_result(run_dir)
        if result is None:
            continue
        if result.get("status") not in FINISHED:  # failed or interrupted: no numbers to keep or to mix up
            continue
        spec = by_id.get(run_dir.name)
        if spec is not None and result.get("config_hash") == spec.config_hash:
            kept[spec.run_id] = result
            continue
        # Another plan's run (other seeds or sweep values of this config are fine), or a run
        # whose config changed: compare what is not swept.
        ignore = {"seeds"} if spec is not None else {"seeds", *swept, *result.get("params", {})}
        diff = _config_differences(run_dir, (spec or specs[0]).config.model_dump(mode="json"), ignore)
        if diff:
            conflicting_runs.append(run_dir.name)
            for key, values in diff.items():
                conflicts.setdefault(key, values)
    if conflicts:
        raise OptcmpError(_conflict_message(Path(exp_dir), conflicts, conflicting_runs))
    return kept


def _config_differences(run_dir: Path, new: dict[str, Any], ignore: set[str]) -> dict[str, tuple[Any, Any]]:
    try:
        old, _ = read_yaml_file(run_dir / "config.yaml")
    except OptcmpError:
        return {"(config.yaml)": ("unreadable", "this config")}
    return {k: v for k, v in _differences(old or {}, new).items()
            if not any(k == i or k.startswith(i + ".") for i in ignore)}


def _differences(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted key → (old value, new value) for every leaf where two nested dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in [*old, *(k for k in new if k not in old)]:
            out.update(_differences(old.get(key, "(absent)"), new.get(key, "(absent)"), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def _conflict_message(exp_dir: Path, conflicts: dict[str, tuple[Any, Any]], runs: list[str]) -> str:
    shown = "; ".join(f"{k} is {a!r} there, {b!r} here" for k, (a, b) in list(conflicts.items())[:4])
    more = f" and {len(conflicts) - 4} more keys" if len(conflicts) > 4 else ""
    where = runs[0] + (f" and {len(runs) - 1} more runs" if len(runs) > 1 else "")
    return (f"{exp_dir} holds results of another config under the name `{exp_dir.name}` ({where}): "
            f"{shown}{more}. Give this config another `name` to keep both, or run with --fresh to discard the old results")


def clear_experiment(exp_dir: Path) -> None:
    """`--fresh`: remove what `optcmp run` wrote here (run folders, runs.csv, summary.*,
    plan.json, rounds.json) and nothing else (compare.csv, report.html and foreign files stay)."""
    for path in Path(exp_dir).iterdir():
        if path.is_dir() and ((path / "result.json").exists() or (path / "config.yaml").exists()):
            shutil.rmtree(path)
    for name in OWN_FILES:
        (Path(exp_dir) / name).unlink(missing_ok=True)


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

    Ctrl-C (KeyboardInterrupt) stops the runs in flight, marks them `interrupted` and
    returns normally with `interrupted=True`, after runs.csv and the summary are written."""
    from optcmp.executors import make_executor
    from optcmp.planning import cheap_probes
    from optcmp.summary import write_summary

    events = events or Events()
    execution = execution or Execution()
    jobs = execution.jobs if execution.executor == "local" else 1
    runs = runs if runs is not None else preflight(loaded, specs)
    runs = cheap_probes(runs, execution.engine)  # as api.prepare plans them (there, already done)
    planned = {run.spec.run_id for run in runs}
    specs = [s for s in specs if s.run_id in planned]
    by_id = {run.spec.run_id: run for run in runs}
    # --engine vectorized may refuse: before anything is written
    all_units = plan_units(runs, execution.engine, jobs) if execution.engine == "vectorized" else None
    with experiment_lock(exp_dir):
        if fresh:
            clear_experiment(exp_dir)
        kept = kept_results(exp_dir, specs)
        write_plan(exp_dir, specs)
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
                write_summary(exp_dir, loaded.config.summary.primary)

        units = all_units if all_units is not None and not kept else \
            plan_units([by_id[s.run_id] for s in todo], execution.engine, jobs)
        start = time.perf_counter()
        executor = make_executor(execution, exp_dir, loaded.base_dir, events) if units else None
        try:
            if executor is not None:
                try:
                    for unit, unit_results in executor.results(units):
                        record(unit, unit_results)
                        if outcome.interrupted:
                            break
                        due = time.monotonic() - last_summary > SUMMARY_EVERY_S
                        save(summary=due)
                        last_summary = time.monotonic() if due else last_summary
                except KeyboardInterrupt:
                    outcome.interrupted = True
                except BaseException:  # e.g. a config error a worker met: do not wait for the others
                    executor.stop()
                    raise
                if outcome.interrupted:
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
