"""Config → list of runs: the grid over `sweep` keys × seeds, with readable ids. No torch.

Named variants (`optimizers:`) are an axis `variant`, in the file's order (or in the
order of a `sweep: {variant: [...]}` axis, which may also pick some of them). A run of
variant V gets V's section as its `optimizer` (the shared `optimizer:` defaults merged
in) and V's schedule as its `scheduler`; then the sweep axes apply:
- `optimizers.V.K` (and `optimizers.V.scheduler.K`): V's runs only — the other variants
  are not multiplied by it;
- every other axis, `optimizer.K` and `scheduler.K` included, applies to every variant's
  runs, over the variant's own value (`optimizer.lr: [0.1, 0.01]` tries every variant at
  both rates).

Ids: the variant's name (without variants, the optimizer's short name: `adam`, `Lion` for
`pytorch_optimizer:Lion`), then one label per axis with more than one value, then the
seed: `sgdm-lr0.1-s0`. Each run's config is its own deep copy: no value is shared
between runs, so what a run records is what it was trained with.

Chaos probes (issue 14): with `summary.chaos: on` or `auto` (the default), each config
with two seeds or more gets one more run, role "ulp", of its first seed
(`sgdm-lr0.1-s0-ulp`), which the engine starts from the initial weights moved one ulp up;
under auto the planner then drops the probes of configs that train one by one
(`planning.cheap_probes`).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from optcmp.config import ExperimentConfig, set_dotted
from optcmp.errors import OptcmpError
from optcmp.schema_checks import check_run_count, probes_wanted, target_of
from optcmp.values import split_keyed

ROLES = ("run", "ulp", "trial", "final")
# Short names for the swept keys people sweep most; other keys use their last part.
ABBREVIATIONS = {
    "optimizer": "",
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
    params: dict[str, Any]  # the swept values by the run-config key they set, and `variant`
    config: ExperimentConfig  # fully resolved: seeds == [seed], no sweep, the variant's optimizer
    config_hash: str  # identifies the resolved config (and variant and role), for resume
    variant: str | None = None  # the named optimizer variant, or None without `optimizers:`
    role: str = "run"  # run | ulp (the chaos probe) | trial, final (a study's)

    @property
    def name(self) -> str:
        return self.config.name


def short_name(name: str) -> str:
    """An optimizer's or model's name for ids: an import path's last name (`Lion` for
    `pytorch_optimizer:Lion`), else the name as given."""
    return name.rsplit(":", 1)[-1] if ":" in name else name


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    if isinstance(value, dict):
        return "_".join(f"{k}{_format_value(v)}" for k, v in value.items())
    return str(value)


def _label(key: str, value: Any) -> str:
    if isinstance(value, dict) and key in ("optimizer", "scheduler"):  # a whole section: its name, then its options
        head = [short_name(str(value["name"]))] if value.get("name") is not None else []
        return "_".join([*head, *(_label(f"{key}.{k}", v) for k, v in value.items() if k != "name")])
    prefix = ABBREVIATIONS.get(key, key.rsplit(".", 1)[-1])
    text = _format_value(value)
    if prefix == "":
        text = short_name(text)
    return f"{prefix}{text}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text).strip("._-") or "run"


def config_hash(config: ExperimentConfig, variant: str | None = None, role: str = "run") -> str:
    payload: Any = config.model_dump(mode="json")
    if variant is not None or role != "run":
        payload = {"config": payload, "variant": variant, "role": role}
    blob = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def variant_names(config: ExperimentConfig) -> list[str]:
    """The variants a sweep trains, in order ([] without `optimizers:`)."""
    return list(config.sweep.get("variant") or config.optimizers)


def run_base(config: ExperimentConfig, variant: str | None = None) -> dict[str, Any]:
    """The run config of `variant` (or of the plain config) before any sweep value is set,
    as a dict: the variant's section as `optimizer`, its schedule as `scheduler`."""
    base = config.model_dump(mode="python")
    base.update(sweep={}, optimizers={}, tune=None, workloads={}, seeds=[config.seeds[0]])
    if variant is not None:
        chosen = config.optimizers[variant]
        base["optimizer"] = chosen.section()
        base["scheduler"] = None if chosen.scheduler is None else chosen.scheduler.model_dump(mode="python")
    return base


def resolve(config: ExperimentConfig, variant: str | None = None, values: dict[str, Any] | None = None,
            seed: int | None = None) -> ExperimentConfig:
    """One run's config: `variant`'s, with `values` (run-config key → value, e.g. a study's
    trial {"optimizer.lr": 0.01}) set, for `seed` (default: the first seed)."""
    point = run_base(config, variant)
    for key, value in (values or {}).items():
        set_dotted(point, key, value, key)
    point["seeds"] = [config.seeds[0] if seed is None else seed]
    return ExperimentConfig.model_validate(point)


def expand(config: ExperimentConfig) -> list[RunSpec]:
    """The runs of an experiment, config-major (all seeds of a config together, then its
    chaos probe), variant by variant."""
    if config.tune is not None:
        raise OptcmpError("tune: this config is a study; its trials come from the study engine, not from a sweep "
                          "(without tune:, the variants are a sweep axis)")
    try:
        check_run_count(config.model_dump(mode="python"))
    except ValueError as e:
        key, message = split_keyed(str(e))
        raise OptcmpError(f"{key}: {message}") from None
    specs: list[RunSpec] = []
    used: set[str] = set()
    for variant in variant_names(config) or [None]:
        base = run_base(config, variant)
        axes = [(key, target_of(key), values) for key, values in config.sweep.items()
                if key != "variant" and (not key.startswith("optimizers.") or key.startswith(f"optimizers.{variant}."))]
        for values in itertools.product(*(values for _, _, values in axes)):
            point = copy.deepcopy(base)
            params: dict[str, Any] = {"variant": variant} if variant is not None else {}
            for (key, target, _), value in zip(axes, values):
                set_dotted(point, target, value, f"sweep.{key}")
                params[target] = copy.deepcopy(value)
            labels = [_label(target, value) for (_, target, choices), value in zip(axes, values) if len(choices) > 1]
            named = any(t in ("optimizer", "optimizer.name") and len(c) > 1 for _, t, c in axes)
            if variant is not None:
                labels.insert(0, variant)
            elif not named:
                labels.insert(0, _label("optimizer.name", point["optimizer"]["name"]))
            config_id = _unique(_safe("-".join(x for x in labels if x)), used)
            specs += _seed_runs(config, config_id, point, params, variant)
    return specs


def _seed_runs(config: ExperimentConfig, config_id: str, point: dict[str, Any], params: dict[str, Any],
               variant: str | None) -> list[RunSpec]:
    """The runs of one config: one per seed, then its chaos probe."""
    out = []
    first = ExperimentConfig.model_validate({**point, "seeds": [config.seeds[0]]})  # `point` is this config's own copy
    for seed in config.seeds:
        resolved = first if seed == config.seeds[0] else first.model_copy(update={"seeds": [seed]}, deep=True)
        out.append(RunSpec(f"{config_id}-s{seed}", config_id, seed, params, resolved,
                           config_hash(resolved, variant), variant))
    if len(config.seeds) >= 2 and probes_wanted(config.summary.chaos):
        first = out[0]
        out.append(RunSpec(f"{first.run_id}-ulp", config_id, first.seed, params, first.config.model_copy(deep=True),
                           config_hash(first.config, variant, "ulp"), variant, "ulp"))
    return out


def _unique(config_id: str, used: set[str]) -> str:
    candidate, i = config_id, 2
    while candidate in used:
        candidate = f"{config_id}-{i}"
        i += 1
    used.add(candidate)
    return candidate
