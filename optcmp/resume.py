"""Resume: which results on disk a sweep keeps, and which it refuses to mix with.

A run is kept when it finished (ok, diverged, pruned), its result.json is whole
(`results.read_result`), its folder has the files a finished run has (config.yaml,
metrics.csv, a non-empty event file, and for `ok` a readable weights.npz), and its config is
this plan's. "This plan's" is first asked of the config hash; where the hashes differ the
run's config.yaml is compared with the plan's config, both with every default filled in:
a folder written by an earlier release, whose config.yaml lacks the keys added since, is
kept when those keys are at their defaults here. A run whose result or files are damaged
is not kept: the sweep redoes it (its folder is emptied first).

Results of another config under the same name are refused, before anything is written.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

from optcmp.errors import OptcmpError
from optcmp.results import FINISHED, Status, read_result
from optcmp.sweep import RunSpec
from optcmp.yamlio import read_yaml_file

OWN_FILES = ("runs.csv", "summary.csv", "summary.md", "summary.json", "plan.json", "rounds.json")
EVENTS_GLOB = "events.out.tfevents.*"


def kept_results(exp_dir: Path, specs: list[RunSpec]) -> dict[str, dict[str, Any]]:
    """The results on disk this plan keeps (see the module's docstring), by run id.
    Refuses a folder holding results of another config under the same name."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return {}
    by_id = {s.run_id: s for s in specs}
    swept = set(specs[0].params) if specs else set()
    kept: dict[str, dict[str, Any]] = {}
    conflicts: dict[str, tuple[Any, Any]] = {}
    conflicting_runs: list[str] = []
    for run_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir() and not p.is_symlink()):
        result = read_result(run_dir)
        if result is None or result["status"] not in FINISHED:  # no numbers to keep or to mix up
            continue
        spec = by_id.get(run_dir.name)
        if spec is not None and result["run_id"] != spec.run_id:
            continue  # another run's result.json copied here: damaged, redone
        if not whole(run_dir, result["status"]):
            continue
        if spec is not None and result.get("config_hash") == spec.config_hash:
            kept[spec.run_id] = result
            continue
        # Another plan's run (other seeds or sweep values of this config are fine), a run
        # whose config changed, or one written before the config gained keys: compare.
        ignore = {"seeds"} if spec is not None else {"seeds", *swept, *result["params"]}
        diff = _config_differences(run_dir, (spec or specs[0]).config.model_dump(mode="json"), ignore)
        if diff is None:  # config.yaml damaged: nothing to compare, the run is redone if planned
            continue
        if diff:
            conflicting_runs.append(run_dir.name)
            for key, values in diff.items():
                conflicts.setdefault(key, values)
        elif spec is not None and _same_role(result, spec):
            kept[spec.run_id] = result
    if conflicts:
        raise OptcmpError(_conflict_message(exp_dir, conflicts, conflicting_runs))
    return kept


def whole(run_dir: Path, status: str) -> bool:
    """Whether a finished run's folder has its files: a deleted event file or weights.npz
    makes the run one to redo, not one to keep."""
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "metrics.csv").is_file():
        return False
    if not any(p.is_file() and p.stat().st_size > 0 for p in run_dir.glob(EVENTS_GLOB)):
        return False
    return status != Status.OK or zipfile.is_zipfile(run_dir / "weights.npz")


def _same_role(result: dict[str, Any], spec: RunSpec) -> bool:
    """A result from before roles and variants existed is an ordinary run."""
    return result.get("role", "run") == spec.role and result.get("variant") == spec.variant


def _config_differences(run_dir: Path, new: dict[str, Any], ignore: set[str]) -> dict[str, tuple[Any, Any]] | None:
    """Dotted key → (there, here) where the run's config.yaml differs from `new`, defaults
    filled in on both sides; None when config.yaml is missing or damaged."""
    try:
        old, _ = read_yaml_file(run_dir / "config.yaml")
    except (OptcmpError, OSError, ValueError):
        return None
    if not isinstance(old, dict):
        return None
    return {k: v for k, v in _differences(_with_defaults(old), new).items()
            if not any(k == i or k.startswith(i + ".") for i in ignore)}


def _with_defaults(old: dict[str, Any]) -> dict[str, Any]:
    """The config as this release reads it (every key it has, defaults where it is
    silent); as written where this release would not accept it."""
    from pydantic import ValidationError

    from optcmp.schema import ExperimentConfig

    try:
        return ExperimentConfig.model_validate(old).model_dump(mode="json")
    except (ValidationError, ValueError, TypeError):
        return old


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
        if path.is_dir() and not path.is_symlink() and \
                ((path / "result.json").exists() or (path / "config.yaml").exists()):
            shutil.rmtree(path)
    for name in OWN_FILES:
        path = Path(exp_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
