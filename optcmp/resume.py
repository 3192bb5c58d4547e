"""Resume: which results on disk a sweep keeps, and which it refuses to mix with."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from optcmp.errors import OptcmpError
from optcmp.results import FINISHED, read_result
from optcmp.sweep import RunSpec
from optcmp.yamlio import read_yaml_file

OWN_FILES = ("runs.csv", "summary.csv", "summary.md", "summary.json", "plan.json")


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
    plan.json) and nothing else (compare.csv, report.html and foreign files stay)."""
    for path in Path(exp_dir).iterdir():
        if path.is_dir() and ((path / "result.json").exists() or (path / "config.yaml").exists()):
            shutil.rmtree(path)
    for name in OWN_FILES:
        (Path(exp_dir) / name).unlink(missing_ok=True)
