"""The trust model: import paths run code.

A config's `package.module:Name` values are imported — and so run code from that
module — like a script's imports (Hydra's `_target_` does the same). `import_paths`
lists every one a config would import, `optcmp plan` prints them, and `--no-imports`
(`load_config(..., imports=False)`) refuses a config naming any, before anything is
imported: for configs from elsewhere.
"""
from __future__ import annotations

from typing import Any

from optcmp.schema import ExperimentConfig
from optcmp.schema_checks import target_of

# The keys whose values optcmp imports (variants' and sweeps' included).
IMPORT_KEYS = ("model.kind", "data.kind", "optimizer.name", "scheduler.name", "scheduler.lr_lambda", "scheduler.scale_fn")


def _scan(key: str, value: Any, at: str, out: list[tuple[str, str]]) -> None:
    """Collect `package.module:Name` strings found at run key `at` (or below it)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _scan(f"{key}.{k}", v, f"{at}.{k}", out)
    elif isinstance(value, list) and at in IMPORT_KEYS:
        for i, v in enumerate(value):
            _scan(f"{key}[{i}]", v, at, out)
    elif isinstance(value, str) and at in IMPORT_KEYS and ":" in value:
        out.append((key, value))


def import_paths(config: ExperimentConfig) -> list[tuple[str, str]]:
    """Every (dotted key, `package.module:Name`) the config would import — and so run code
    from: model and data kinds, optimizer and scheduler names, scheduler functions
    (lr_lambda, scale_fn), in variants, sweep values and search spaces alike."""
    out: list[tuple[str, str]] = []
    dump = config.model_dump(mode="python")
    for section in ("model", "data", "optimizer", "scheduler"):
        _scan(section, dump[section], section, out)
    for name, variant in dump["optimizers"].items():
        _scan(f"optimizers.{name}", {k: v for k, v in variant.items() if k not in ("scheduler", "space")}, "optimizer", out)
        _scan(f"optimizers.{name}.scheduler", variant["scheduler"], "scheduler", out)
    for key, values in config.sweep.items():
        for i, value in enumerate(values):
            _scan(f"sweep.{key}[{i}]", value, target_of(key), out)
    spaces = [("tune.space", config.tune.space if config.tune else {})]
    spaces += [(f"optimizers.{n}.space", v.space) for n, v in config.optimizers.items()]
    for where, space in spaces:
        for key, dist in space.items():
            for i, value in enumerate(dist.values or []):
                _scan(f"{where}.{key}[{i}]", value, target_of(key), out)
    return list(dict.fromkeys(out))


def refuse_imports(loaded: Any) -> None:
    """`--no-imports`: a config naming any import path is refused, naming the first.
    `loaded`: a config.LoadedConfig."""
    found = import_paths(loaded.config)
    if found:
        key, path = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise loaded.source.error(key, f"`{path}` is an import path: it would import and run code from "
                                       f"`{path.partition(':')[0]}`{more}; --no-imports refuses import paths")
