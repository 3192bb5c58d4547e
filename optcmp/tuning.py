"""What the study engine (issue 13) gets from the config side: each variant's search space,
a trial's resolved run config, and the check of a space's optimizer and scheduler keywords
against the classes, which needs torch and so waits for preflight.

    loaded = load_config(path)                      # tune: validated (schema, space)
    for variant, space in variant_spaces(loaded.config).items():
        ...                                         # Optuna distributions from `space`
    check_space_keywords(loaded)                    # at preflight, before anything trains
    config = resolve(loaded.config, variant, {"optimizer.lr": 0.01}, seed=0)  # one trial's run
"""
from __future__ import annotations

from typing import Any

from optcmp.errors import ConfigError
from optcmp.imports import check_value, display_name, signature_of
from optcmp.schema import OptimizerConfig, SchedulerConfig
from optcmp.schema_checks import variant_spaces
from optcmp.sweep import resolve, variant_names
from optcmp.values import did_you_mean

__all__ = ["check_space_keywords", "resolve", "variant_names", "variant_spaces"]


def check_space_keywords(loaded: Any) -> None:
    """For the study engine, at preflight (this imports torch): every optimizer or scheduler
    keyword a space tunes must be one the variant's class takes, and both ends of its range
    (every listed value) of the kind the class's signature wants. `loaded`: a LoadedConfig."""
    from optcmp.optimizers import optimizer_class, scheduler_class  # torch

    config = loaded.config
    for variant, space in variant_spaces(config).items():
        section = config.optimizers[variant] if variant is not None else config.optimizer
        schedule = section.scheduler if variant is not None else config.scheduler
        for key, dist in space.items():
            own = variant is not None and key in config.optimizers[variant].space
            where = f"optimizers.{variant}.space.{key}" if own else f"tune.space.{key}"
            head, _, word = key.partition(".")
            try:
                if head == "optimizer" and word not in OptimizerConfig.model_fields:
                    cls = optimizer_class(section.name)
                elif head == "scheduler" and word not in SchedulerConfig.model_fields:
                    if schedule is None or schedule.name is None:
                        whose = f"variant {variant} has" if variant is not None else "the config has"
                        raise ConfigError(where, f"tunes a scheduler keyword, but {whose} no scheduler (scheduler.name)")
                    cls = scheduler_class(schedule.name)
                else:
                    continue
                sig = signature_of(cls)
                if sig is None or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
                    continue
                params = {n: p for n, p in sig.parameters.items() if n not in ("self", "params", "optimizer")}
                if word not in params:
                    whose = f" (variant {variant})" if variant is not None else ""
                    raise ConfigError(where, f"`{display_name(cls)}`{whose} takes no argument `{word}`"
                                             f"{did_you_mean(word, params)}; allowed: {', '.join(sorted(params))}")
                for value in dist.endpoints():
                    check_value(where, params[word], value, cls)
            except ConfigError as e:
                raise (loaded.source.error(e.key, e.message) if e.key == where else loaded.locate(e, {}, variant)) from None
