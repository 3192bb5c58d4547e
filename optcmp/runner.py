"""A sweep: check every config before training, keep what an earlier attempt finished, run
the rest on an executor, and keep runs.csv (and, every few seconds, the summary) up to date
so a stopped or killed sweep is readable and resumable.

The driver (this module) alone writes plan.json, runs.csv and the summary; workers write
their run folders (or, on Ray, hand the folder's files back for the driver to write).
Runs are executed in *work units*: one RunSpec (the sequential trainer), or several trained
together by the vectorized engine.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optcmp.config import LoadedConfig
from optcmp.errors import ConfigError, OptcmpError
from optcmp.locking import experiment_lock
from optcmp.results import atomic_write_text, read_result, write_result, write_runs_csv
from optcmp.sweep import RunSpec
from optcmp.yamlio import read_yaml_file

Unit = list[RunSpec]  # runs executed together: one, or a vectorized group
KEPT = ("ok", "diverged")  # finished results a rerun keeps; failed and interrupted runs are redone
ENGINES = ("auto", "sequential", "vectorized")
EXECUTORS = ("local", "ray")
SUMMARY_EVERY_S = 10.0  # the summary costs ~30 ms for 200 runs: refresh it now and then, not per run
OWN_FILES = ("runs.csv", "summary.csv", "summary.md", "summary.json", "plan.json")


@dataclass
class Events:
    """Callbacks the CLI uses for its messages and progress display; all optional."""

    plan: Callable[[list[RunSpec], list[dict[str, Any]]], None] = lambda todo, kept: None
    unit_start: Callable[[Unit], None] = lambda unit: None  # in-process executor only
    step: Callable[[Unit, int, int, float], None] = lambda unit, step, total, loss: None  # in-process only
    run_end: Callable[[dict[str, Any]], None] = lambda result: None


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


def preflight(loaded: LoadedConfig, specs: list[RunSpec]) -> None:
    """Build data, model, optimizer and scheduler of each config once (no training), so a
    bad value stops the sweep before the first run, with its file and line."""
    from optcmp.data import build_data
    from optcmp.models import build_model
    from optcmp.optimizers import build_optimizer, build_scheduler, schedule_length
    from optcmp.trainer import loss_function, resolve_device
    from optcmp.vectorized import check_optimizer, rates_only_optimizer

    seen: set[str] = set()
    for spec in specs:
        if spec.config_id in seen:
            continue
        seen.add(spec.config_id)
        cfg = spec.config
        try:
            resolve_device(cfg.device)
            data = build_data(cfg.data, spec.seed, loaded.base_dir)
            loss_function(cfg, data.task)
            model = build_model(cfg.model, data.n_features, data.n_outputs)
            # the vectorized engine's checks spare a sweep it trains the first torch.optim
            # construction, which imports torch._dynamo (about a second)
            batched = check_optimizer(model, cfg.optimizer)
            if cfg.scheduler is not None or not batched:
                opt = rates_only_optimizer(model, cfg.optimizer, cfg.scheduler) if batched else None
                build_scheduler(opt or build_optimizer(model, cfg.optimizer), cfg.scheduler,
                                schedule_length(cfg, len(data.x_train)))
        except ConfigError as e:
            raise loaded.locate(e, spec.params, spec.variant) from None


# --- work units: the seam for the vectorized engine ------------------------------------


def plan_units(specs: list[RunSpec], engine: str = "auto", jobs: int = 1, base_dir: Path | None = None) -> list[Unit]:
    """Partition runs into work units: `[spec]` for the sequential trainer, or a group that
    `vectorized.group_specs(specs)` found can train as one vectorized model (split in up to
    `jobs` pieces, one per local process). `base_dir`: the config's folder."""
    if engine == "sequential":
        return [[spec] for spec in specs]
    from optcmp import vectorized

    units = vectorized.group_specs(specs, parts=jobs, base_dir=base_dir)
    if engine == "vectorized":  # insist: say which runs cannot be, rather than train them one by one
        refused = [(u[0].run_id, why) for u in units if len(u) == 1 and (why := vectorized.why_not(u[0], base_dir))]
        if refused:
            shown = "; ".join(f"{run_id}: {why}" for run_id, why in refused[:3])
            more = f"; and {len(refused) - 3} more" if len(refused) > 3 else ""
            raise OptcmpError(f"--engine vectorized: {len(refused)} of {len(specs)} runs cannot be vectorized "
                              f"({shown}{more}); --engine auto trains them one by one")
    return units


def run_unit(unit: Unit, exp_dir: Path, base_dir: Path | None = None, progress=None) -> list[dict[str, Any]]:
    """Train one work unit into `exp_dir/<run_id>/` and return its results (one per run).
    What every executor runs, in this process, a worker process or a Ray task."""
    if len(unit) == 1:
        from optcmp.trainer import execute

        return [execute(unit[0], exp_dir, base_dir, progress)]
    from optcmp import vectorized

    return vectorized.execute_group(unit, exp_dir, base_dir, progress=progress)


def stand_in(exp_dir: Path, spec: RunSpec, status: str, error: str) -> dict[str, Any]:
    """Write and return the result of a run that could not report one itself (stopped
    before it finished, or its worker died), so the folder says what became of it."""
    from optcmp.trainer import base_result

    result = {**base_result(spec), "status": status, "error": error}
    write_result(Path(exp_dir) / spec.run_id, result)
    return result


# --- resume --------------------------------------------------------------------------


def kept_results(exp_dir: Path, specs: list[RunSpec]) -> dict[str, dict[str, Any]]:
    """The results on disk this plan keeps: finished (ok or diverged) with the same resolved
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
        if result.get("status") not in KEPT:  # failed or interrupted: no numbers to keep or to mix up
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
    plan.json) and nothing else (compare.csv, report.html and foreign files stay)."""
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
              execution: Execution | None = None, fresh: bool = False) -> SweepOutcome:
    """Run every spec that has no kept result, on the chosen executor; results in plan order.

    Ctrl-C (KeyboardInterrupt) stops the runs in flight, marks them `interrupted` and
    returns normally with `interrupted=True`, after runs.csv and the summary are written."""
    from optcmp.executors import make_executor
    from optcmp.summary import write_summary

    events = events or Events()
    execution = execution or Execution()
    jobs = execution.jobs if execution.executor == "local" else 1
    # --engine vectorized may refuse: before anything is written
    all_units = plan_units(specs, execution.engine, jobs, loaded.base_dir) if execution.engine == "vectorized" else None
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
            for spec in unit:
                # what is on disk is what runs.csv shows (non-finite metrics are null there)
                result = read_result(exp_dir / spec.run_id) if spec.run_id in reported else None
                if result is None and stopped:
                    result = stand_in(exp_dir, spec, "interrupted", "interrupted by the user")
                if result is None:  # never started (a group stopped early): still to do
                    continue
                results[spec.run_id] = result
                outcome.interrupted |= result["status"] == "interrupted"
                events.run_end(result)

        def save(summary: bool) -> None:
            write_runs_csv(exp_dir, sorted(results.values(), key=lambda r: order[r["run_id"]]))
            if summary:
                write_summary(exp_dir, loaded.config.summary.primary)

        units = all_units if all_units is not None and not kept else plan_units(todo, execution.engine, jobs, loaded.base_dir)
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
