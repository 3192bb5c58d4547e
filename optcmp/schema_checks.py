"""The checks that look at a whole experiment config, called by its validators in
`schema`: variants inheriting the `optimizer:` defaults, the run cap (counted from the raw
lengths, before anything is expanded), sweep keys, and a study's space and budget.

Each raises `values.keyed(key, message)`, so the loader names the key and its line.
"""
from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

from optcmp.autoseeds import is_auto, max_seeds
from optcmp.space import MAX_GRID, space_key_problem
from optcmp.values import did_you_mean, keyed, shown

DEFAULT_MAX_RUNS = 10_000  # runs a sweep may expand to unless `max_runs` says more
VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,39}$")  # a variant's name is part of every run id
UNSWEPT = ("name", "seeds", "sweep", "tune", "max_runs", "optimizers")  # whole keys that no sweep may set
VALIDATION_METRICS = ("val_loss", "val_accuracy", "best_val_loss", "best_val_accuracy", "val_loss_tail", "val_accuracy_tail")


def target_of(key: str) -> str:
    """The run-config key a sweep (or space) key sets: optimizers.V.K → optimizer.K,
    optimizers.V.scheduler.K → scheduler.K, any other key itself."""
    parts = key.split(".")
    if parts[0] == "optimizers" and len(parts) > 2:
        return ".".join(parts[2:]) if parts[2] == "scheduler" else "optimizer." + ".".join(parts[2:])
    return key


# --- before validation: the raw dict -------------------------------------------------


def inherit_defaults(data: Any) -> Any:
    """Refuse a sweep past the run cap, then give each variant the `optimizer:` keys it does
    not set itself, and the top-level `scheduler:` unless it has its own."""
    if not isinstance(data, dict):
        return data
    check_run_count(data)
    data = _workloads_inherit(data)
    variants = data.get("optimizers")
    if not isinstance(variants, dict) or not variants:
        return data
    defaults = data.get("optimizer") if isinstance(data.get("optimizer"), dict) else {}
    merged: dict[str, Any] = {}
    for name, own in variants.items():
        if not isinstance(own, dict):
            merged[name] = own  # the model says it must be a mapping
            continue
        if "name" not in own and "name" not in defaults:
            raise keyed(f"optimizers.{name}", "give the variant's optimizer `name` (e.g. adam, sgd or "
                        "package.module:Class), or one `optimizer.name` every variant inherits")
        section = {k: copy.deepcopy(v) for k, v in defaults.items() if k not in own}
        section.update(own)
        if "scheduler" not in own:
            section["scheduler"] = copy.deepcopy(data.get("scheduler"))
        merged[name] = section
    return {**data, "optimizers": merged}


def _workloads_inherit(data: dict[str, Any]) -> dict[str, Any]:
    """Each workload's model, data and train sections: the top-level section's keys, with the
    workload's own in their place."""
    workloads = data.get("workloads")
    if not isinstance(workloads, dict) or not workloads:
        return data
    merged: dict[str, Any] = {}
    for name, own in workloads.items():
        if not isinstance(own, dict):
            merged[name] = own  # the model says it must be a mapping
            continue
        section = dict(own)
        for key in ("model", "data", "train"):
            top = data.get(key) if isinstance(data.get(key), dict) else {}
            if isinstance(own.get(key, {}), dict):
                section[key] = {**copy.deepcopy(top), **own.get(key, {})}
        merged[name] = section
    return {**data, "workloads": merged}


def _length(values: Any) -> int:
    return len(values) if isinstance(values, list) else 1


def run_count(data: dict[str, Any]) -> tuple[int, int, int]:
    """(runs, configs, seeds) a raw config expands to: the product of the sweep axes' lengths
    (per variant: the shared axes and the variant's own) × seeds, plus the chaos probes.
    Nothing is expanded; malformed parts count as one (their own errors come later)."""
    seeds = data.get("seeds", [0])
    n_seeds = seeds if isinstance(seeds, int) and not isinstance(seeds, bool) else \
        max_seeds(seeds) if is_auto(seeds) else _length(seeds)  # seeds: auto counts the most it may train
    sweep = data.get("sweep") if isinstance(data.get("sweep"), dict) else {}
    shared = math.prod(_length(v) for k, v in sweep.items() if not str(k).startswith("optimizers.") and k != "variant")
    variants = data.get("optimizers") if isinstance(data.get("optimizers"), dict) else {}
    if variants:
        chosen = sweep.get("variant") if isinstance(sweep.get("variant"), list) else list(variants)
        configs = sum(shared * math.prod(_length(v) for k, v in sweep.items() if str(k).startswith(f"optimizers.{name}."))
                      for name in chosen if isinstance(name, str))
    else:
        configs = shared
    summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
    probes = configs if n_seeds >= 2 and probes_wanted(summary.get("chaos", "auto")) else 0
    return configs * n_seeds + probes, configs, n_seeds


def probes_wanted(chaos: Any) -> bool:
    """Whether `summary.chaos` may ask for a chaos probe per config (given ≥ 2 seeds): `on`,
    and `auto`, whose probes the planner keeps only where they are cheap
    (`planning.cheap_probes`); the run cap counts them all."""
    return chaos in ("on", "auto", True)


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def check_run_count(data: dict[str, Any]) -> None:
    cap = data.get("max_runs", DEFAULT_MAX_RUNS)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        return  # the field's own error
    runs, configs, seeds = run_count(data)
    if runs > cap:
        key = "sweep" if isinstance(data.get("sweep"), dict) and data["sweep"] else "seeds"
        probes = f" + {_count(runs - configs * seeds, 'chaos probe')}" if runs > configs * seeds else ""
        how = f"{_count(configs, 'config')} × {_count(seeds, 'seed')}{probes}"
        raise keyed(key, f"expands to {runs:,} runs ({how}), more than max_runs ({cap:,}); allowed: at most "
                         "max_runs runs (raise it with `max_runs: N` in the config or --set max_runs=N)")


# --- after validation: the models ------------------------------------------------------


def check_experiment(config: Any) -> None:
    """Variant names, sweep keys over variants, validation metrics, and a study's space."""
    for name in config.optimizers:
        if not VARIANT_RE.match(name):
            raise keyed(f"optimizers.{name}", "a variant's name is part of its run ids: letters, digits, '.', '_', "
                        "'+' or '-', at most 40, starting with a letter or digit")
    for name in config.workloads:
        if not VARIANT_RE.match(name):
            raise keyed(f"workloads.{name}", "a workload's name is part of its run ids: letters, digits, '.', '_', "
                        "'+' or '-', at most 40, starting with a letter or digit")
    if config.workloads and config.tune is None:
        raise keyed("workloads", "several workloads are a study's: give a tune: section (without one, sweep "
                                 "model, data or train keys instead)")
    _check_sweep_keys(config)
    _check_metric(config, "summary.primary", config.summary.primary)
    if config.tune is not None:
        for data in [w.data for w in config.workloads.values()] or [config.data]:
            _check_metric(config, "tune.metric", config.tune.metric, data)
        check_study(config)


def _check_sweep_keys(config: Any) -> None:
    names = list(config.optimizers)
    for key, values in config.sweep.items():
        where = f"sweep.{key}"
        if not values:
            raise keyed(where, "an empty list; allowed: a list of at least one value")
        texts = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(texts)) != len(texts):
            twice = next(v for v, t in zip(values, texts) if texts.count(t) > 1)
            raise keyed(where, f"{shown(twice)} is given twice; allowed: distinct values")
        head = key.split(".")[0]
        if key in UNSWEPT or head in ("sweep", "tune") or (head == "optimizers" and key.count(".") < 2):
            hint = {"seeds": " (every config runs all of `seeds` already)",
                    "optimizers": " (sweep a variant's key, e.g. optimizers.NAME.lr)"}
            raise keyed(where, f"`{key}` cannot be swept{hint.get(head, '')}")
        if key == "variant":
            if not names:
                raise keyed(where, "a sweep over `variant` needs named variants (optimizers:)")
            for v in values:
                if v not in names:
                    raise keyed(where, f"no variant {shown(v)}{did_you_mean(v, names)}; allowed: {', '.join(names)}")
        if head == "optimizers":
            variant, rest = key.split(".", 2)[1:]
            if variant not in names:
                allowed = ", ".join(names) or "none (there is no optimizers: section)"
                raise keyed(where, f"no variant `{variant}`{did_you_mean(variant, names)}; allowed: {allowed}")
            if rest.split(".")[0] == "space":
                raise keyed(where, "a variant's search space cannot be swept")
            target = rest if rest.split(".")[0] == "scheduler" else f"optimizer.{rest}"
            if target in config.sweep:
                raise keyed(where, f"sweep.{target} sets it for every variant already; keep one of the two")


def _check_metric(config: Any, key: str, metric: str | None, data: Any = None) -> None:
    """A validation metric needs a validation split (imported data sets may bring their own)."""
    data = config.data if data is None else data
    if metric in VALIDATION_METRICS and data.val_fraction == 0 and ":" not in data.kind and \
            not any(k == "data.val_fraction" or k == "data" for k in config.sweep):
        raise keyed(key, f"`{metric}` needs a validation split; allowed: set data.val_fraction > 0, "
                         f"or a training metric ({metric.replace('val_', 'train_', 1)})")


# --- studies -----------------------------------------------------------------------------


def variant_spaces(config: Any) -> dict[str | None, dict[str, Any]]:
    """Each variant's search space: the shared `tune.space` with the variant's own entries
    in place of the shared ones for their keys. Without variants, one entry, None."""
    shared = dict(config.tune.space) if config.tune is not None else {}
    if not config.optimizers:
        return {None: shared}
    return {name: {**shared, **v.space} for name, v in config.optimizers.items()}


def check_study(config: Any) -> None:
    tune = config.tune
    if config.sweep:
        raise keyed("sweep", "a study (tune:) searches tune.space instead of a sweep; put the swept keys "
                             "into tune.space as lists (grid axes)")
    root = type(config)
    for where, space in [("tune.space", tune.space),
                         *((f"optimizers.{n}.space", v.space) for n, v in config.optimizers.items())]:
        for key in space:
            problem = space_key_problem(root, key)
            if problem:
                raise keyed(f"{where}.{key}", problem)
    spaces = variant_spaces(config)
    for name, space in spaces.items():
        if not space:
            where = "tune.space" if name is None else f"optimizers.{name}"
            raise keyed(where, "nothing to tune: give tune.space, or a space for every variant")
    if tune.sampler == "grid":
        sizes = {name: _grid_size(config, name, space) for name, space in spaces.items()}
        smallest = min(sizes.values())
        if tune.budget is None and len(set(sizes.values())) > 1:
            shown_sizes = ", ".join(f"{n} {s:,}" for n, s in sizes.items())
            raise keyed("tune", f"the variants' grids differ in size ({shown_sizes}), so the whole grid is no equal "
                                f"budget; allowed: tune.budget ≤ {smallest:,}")
        if tune.budget is not None and tune.budget > smallest:
            which = min(sizes, key=sizes.get)
            whose = "the grid" if which is None else f"variant {which}'s grid"
            raise keyed("tune.budget", f"{tune.budget:,} trials, but {whose} has {smallest:,} points; allowed: at "
                                       f"most {smallest:,} (a grid point is not tried twice), or leave budget out "
                                       "for the whole grid")
    elif tune.budget is None:
        raise keyed("tune.budget", "give the trials per variant, an integer ≥ 1 (only sampler: grid may leave it "
                                   "out, for the whole grid)")
    budget = tune.budget or min(_grid_size(config, n, s) for n, s in spaces.items())
    arms = len(spaces) * max(1, len(config.workloads))
    runs = arms * (budget * len(tune.seeds) + len(tune.final_seeds))
    if runs > config.max_runs:
        workloads = f" × {_count(len(config.workloads), 'workload')}" if config.workloads else ""
        how = (f"{_count(len(spaces), 'variant')}{workloads} × ({_count(budget, 'trial')} × {_count(len(tune.seeds), 'seed')} "
               f"+ {_count(len(tune.final_seeds), 'final seed')})")
        raise keyed("tune.budget", f"the study trains {runs:,} runs ({how}), more than "
                                   f"max_runs ({config.max_runs:,}); allowed: at most max_runs (raise it with "
                                   "`max_runs: N` in the config or --set max_runs=N)")


def _grid_size(config: Any, variant: str | None, space: dict[str, Any]) -> int:
    size = 1
    for key, dist in space.items():
        points = dist.points()
        if points is None:
            own = variant is not None and key in config.optimizers[variant].space
            where = f"optimizers.{variant}.space.{key}" if own else f"tune.space.{key}"
            what = f"an int range of {dist.high - dist.low + 1:,} values" if dist.kind == "int" else \
                f"a {dist.kind} range"
            raise keyed(where, f"sampler grid needs a finite set of values, got {what}; allowed with grid: a list of "
                               f"values, {{choice: [...]}} or {{int: [low, high]}} of at most {MAX_GRID:,} values")
        size *= len(points)
    return size
