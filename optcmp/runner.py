"""A sweep on one machine: check every config before training, run each run, keep
runs.csv and the summary up to date after every run so an interrupted sweep is readable."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optcmp.config import LoadedConfig
from optcmp.errors import ConfigError, OptcmpError
from optcmp.results import atomic_write_text, collect_results, write_runs_csv
from optcmp.sweep import RunSpec


@dataclass
class Events:
    """Callbacks the CLI uses for its progress display; all optional."""

    run_start: Callable[[RunSpec, int, int], None] = lambda spec, i, total: None
    step: Callable[[RunSpec, int, int, float], None] = lambda spec, step, total, loss: None
    run_end: Callable[[dict[str, Any]], None] = lambda result: None


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
            opt = build_optimizer(model, cfg.optimizer)
            build_scheduler(opt, cfg.scheduler, schedule_length(cfg, len(data.x_train)))
        except ConfigError as e:
            swept = next((k for k in spec.params if e.key == k or e.key.startswith(k + ".")), None)
            key = f"sweep.{swept}" if swept else e.key
            raise loaded.source.error(key, e.message if not swept else f"{spec.params[swept]!r}: {e.message}") from None


def write_plan(exp_dir: Path, specs: list[RunSpec]) -> None:
    plan = [{"run_id": s.run_id, "config_id": s.config_id, "seed": s.seed, "params": s.params,
             "config_hash": s.config_hash} for s in specs]
    atomic_write_text(exp_dir / "plan.json", json.dumps(plan, indent=2) + "\n")


def run_sweep(loaded: LoadedConfig, specs: list[RunSpec], exp_dir: Path, events: Events | None = None) -> list[dict[str, Any]]:
    """Run every spec one after another; return the results in plan order."""
    from optcmp.summary import write_summary
    from optcmp.trainer import execute

    events = events or Events()
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_plan(exp_dir, specs)
    results: list[dict[str, Any]] = []
    try:
        for i, spec in enumerate(specs):
            events.run_start(spec, i, len(specs))
            result = execute(spec, exp_dir, loaded.base_dir, progress=lambda s, t, l, spec=spec: events.step(spec, s, t, l))
            results.append(result)
            events.run_end(result)
            write_runs_csv(exp_dir, collect_results(exp_dir, [s.run_id for s in specs]))
            if result["status"] == "interrupted":
                break
    finally:
        if results:
            write_runs_csv(exp_dir, collect_results(exp_dir, [s.run_id for s in specs]))
            write_summary(exp_dir, loaded.config.summary.primary)
    return results
