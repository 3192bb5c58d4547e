"""Config → list of runs: the grid over `sweep` keys × seeds, with readable ids. No torch."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from optcmp.config import ExperimentConfig, set_dotted

# Short names for the swept keys people sweep most; other keys use their last part.
ABBREVIATIONS = {
    "optimizer.name": "",
    "optimizer.lr": "lr",
    "optimizer.weight_decay": "wd",
    "optimizer.momentum": "mom",
    "optimizer.betas": "b",
    "optimizer.eps": "eps",
    "data.batch_size": "bs",
    "model.hidden": "h",
    "model.kind": "",
    "scheduler.name": "",
}


@dataclass(frozen=True)
class RunSpec:
    """One run: a config of the grid and one seed. Carries everything a worker needs."""

    run_id: str  # e.g. adamw-wd0.1-s0: unique, filesystem-safe
    config_id: str  # the run_id without its seed: seeds of one config share it
    seed: int
    params: dict[str, Any]  # the swept values by dotted key
    config: ExperimentConfig  # fully resolved: seeds == [seed], no sweep
    config_hash: str  # identifies the resolved config, for resume

    @property
    def name(self) -> str:
        return self.config.name


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    if isinstance(value, dict):
        return "_".join(f"{k}{_format_value(v)}" for k, v in value.items())
    return str(value)


def _label(key: str, value: Any) -> str:
    prefix = ABBREVIATIONS.get(key, key.rsplit(".", 1)[-1])
    text = _format_value(value)
    if prefix == "" and "." in text and ":" in text:  # an import path: keep its last name
        text = text.rsplit(":", 1)[-1]
    return f"{prefix}{text}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text).strip("._-") or "run"


def config_hash(config: ExperimentConfig) -> str:
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand(config: ExperimentConfig) -> list[RunSpec]:
    """The runs of an experiment, config-major (all seeds of a config together)."""
    keys = list(config.sweep)
    grid = list(itertools.product(*(config.sweep[k] for k in keys))) or [()]
    base = config.model_dump(mode="python")
    base["sweep"] = {}
    specs: list[RunSpec] = []
    used: set[str] = set()
    for values in grid:
        params = dict(zip(keys, values))
        point = copy.deepcopy(base)
        for key, value in params.items():
            set_dotted(point, key, value, f"sweep.{key}")
        labels = [_label(k, v) for k, v in params.items()]
        if not any(k == "optimizer.name" for k in keys):
            labels.insert(0, _label("optimizer.name", config.optimizer.name))
        config_id = _unique(_safe("-".join(x for x in labels if x)), used)
        for seed in config.seeds:
            point["seeds"] = [seed]
            resolved = ExperimentConfig.model_validate(point)
            specs.append(RunSpec(f"{config_id}-s{seed}", config_id, seed, params, resolved, config_hash(resolved)))
    return specs


def _unique(config_id: str, used: set[str]) -> str:
    candidate, i = config_id, 2
    while candidate in used:
        candidate = f"{config_id}-{i}"
        i += 1
    used.add(candidate)
    return candidate
