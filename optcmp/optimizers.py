"""Name → optimizer and scheduler factories, parameter groups, and decay semantics.

Every `torch.optim` optimizer is available by case-insensitive name (`adamw`, `SGD`…);
`package.module:Class` imports any other. Keyword arguments are checked against the
class's signature before a run starts, so a typo is an error, not a silent default.
"""
from __future__ import annotations

import fnmatch
import inspect
from typing import Any

import torch
from torch import nn

from optcmp.config import OptimizerConfig, SchedulerConfig, _did_you_mean
from optcmp.errors import ConfigError
from optcmp.imports import is_import_path, load_object

# Keys of the optimizer section that optcmp consumes itself.
OWN_KEYS = ("name", "no_decay", "groups")
# Optimizers whose weight_decay is added to the gradient (L2), against decoupled ones
# that shrink the weights directly (Loshchilov & Hutter).
COUPLED = {"adam", "sgd", "rmsprop", "adagrad", "adamax", "nadam", "radam", "asgd", "adadelta", "sparseadam"}
DECOUPLED = {"adamw"}
# Optimizers that take a variant flag which switches their decay to decoupled.
DECOUPLED_FLAGS = ("decoupled_weight_decay",)
NORM_TYPES = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d,
              nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm)


def torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class in torch.optim by lower-case name."""
    out = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            out[name.lower()] = obj
    return out


def optimizer_class(name: str) -> type:
    if is_import_path(name):
        cls = load_object(name, "optimizer.name")
        if not (isinstance(cls, type) or callable(cls)):
            raise ConfigError("optimizer.name", f"`{name}` is not an optimizer class")
        return cls
    table = torch_optimizers()
    cls = table.get(name.lower())
    if cls is None:
        raise ConfigError(
            "optimizer.name",
            f"unknown optimizer `{name}`{_did_you_mean(name.lower(), table)}; allowed: {', '.join(sorted(table))} "
            "or package.module:Class",
        )
    return cls


def _accepted(cls: type) -> tuple[set[str], bool]:
    params = inspect.signature(cls).parameters
    names = {p for p in params if p not in ("self", "params")}
    return names, any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_kwargs(section: str, cls: type, kwargs: dict[str, Any]) -> None:
    """Every keyword must be a parameter of `cls` (unless it takes **kwargs)."""
    names, var_kw = _accepted(cls)
    if var_kw:
        return
    for key in kwargs:
        if key not in names:
            raise ConfigError(
                f"{section}.{key}",
                f"`{cls.__name__}` takes no argument `{key}`{_did_you_mean(key, names)}; allowed: {', '.join(sorted(names))}",
            )


def resolved_kwargs(cfg: OptimizerConfig) -> dict[str, Any]:
    """The optimizer's keyword arguments with its own defaults filled in, for the record."""
    cls = optimizer_class(cfg.name)
    kwargs = cfg.kwargs()
    check_kwargs("optimizer", cls, kwargs)
    out = {}
    for name, p in inspect.signature(cls).parameters.items():
        if name in ("self", "params") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if name in kwargs:
            out[name] = kwargs[name]
        elif p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float, bool, str, tuple, type(None))):
            out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    out.update({k: v for k, v in kwargs.items() if k not in out})
    return out


def decay_semantics(cfg: OptimizerConfig) -> str:
    """`decoupled`, `coupled` (L2 through the gradient), `none` (zero decay) or `unknown`."""
    cls = optimizer_class(cfg.name)
    kwargs = resolved_kwargs(cfg)
    wd = kwargs.get("weight_decay", 0) or 0
    declared = getattr(cls, "decay_semantics", None)
    if wd == 0 and "weight_decay" in kwargs:
        return "none"
    if declared in ("coupled", "decoupled"):
        return declared
    if is_import_path(cfg.name) or cls.__module__.split(".")[0] != "torch":
        return "unknown"
    if "weight_decay" not in kwargs:
        return "none"
    if any(kwargs.get(flag) for flag in DECOUPLED_FLAGS):
        return "decoupled"
    lname = cls.__name__.lower()
    return "decoupled" if lname in DECOUPLED else "coupled" if lname in COUPLED else "unknown"


def _matches(name: str, module: nn.Module | None, pattern: str) -> bool:
    """`norm` and `bias` are shorthands; anything else is a glob on the parameter name."""
    if pattern == "bias":
        return name == "bias" or name.endswith(".bias")
    if pattern == "norm":
        return isinstance(module, NORM_TYPES)
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"{pattern}.*") or name.startswith(f"{pattern}.")


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """Parameter groups: user `groups` (matched by name pattern, first match wins), then
    `no_decay` parameters with weight_decay 0, then the rest. Empty groups are dropped."""
    owner = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    groups: list[dict[str, Any]] = []
    for i, spec in enumerate(cfg.groups):
        if "params" not in spec:
            raise ConfigError(f"optimizer.groups[{i}]", "needs `params`: a parameter-name pattern such as `0.*` or `head`")
        groups.append({"pattern": spec["params"], "options": {k: v for k, v in spec.items() if k != "params"}, "params": [], "names": []})
    no_decay = {"options": {"weight_decay": 0.0}, "params": [], "names": []}
    rest = {"options": {}, "params": [], "names": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        target = next((g for g in groups if _matches(name, owner.get(name), g["pattern"])), None)
        if target is None:
            nd = any(_matches(name, owner.get(name), pat) for pat in cfg.no_decay)
            target = no_decay if nd else rest
        target["params"].append(p)
        target["names"].append(name)
    out = []
    for g in [*groups, no_decay, rest]:
        if g["params"]:
            out.append({"params": g["params"], "names": g["names"], **g["options"]})
    return out


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    cls = optimizer_class(cfg.name)
    kwargs = cfg.kwargs()
    check_kwargs("optimizer", cls, kwargs)
    groups = param_groups(model, cfg)
    for i, g in enumerate(groups):
        check_kwargs(f"optimizer.groups[{i}]", cls, {k: v for k, v in g.items() if k not in ("params", "names")})
    torch_groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if len(torch_groups) == 1 and set(torch_groups[0]) == {"params"}:
        # one plain group: pass the list as a plain script would
        return cls(torch_groups[0]["params"], **kwargs)
    try:
        return cls(torch_groups, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError("optimizer", f"`{cls.__name__}` refused its arguments: {e}") from None


def group_names(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """The resolved parameter groups as plain data: names and options, for plan and records."""
    return [{"params": g["names"], **{k: v for k, v in g.items() if k not in ("params", "names")}} for g in param_groups(model, cfg)]


def needs_closure(opt: torch.optim.Optimizer) -> bool:
    """LBFGS (and optimizers that say so) re-evaluate the loss inside `step`."""
    return isinstance(opt, torch.optim.LBFGS) or bool(getattr(opt, "requires_closure", False))


def build_scheduler(opt: torch.optim.Optimizer, cfg: SchedulerConfig | None):
    if cfg is None:
        return None
    if is_import_path(cfg.name):
        cls = load_object(cfg.name, "scheduler.name")
    else:
        table = {n.lower(): getattr(torch.optim.lr_scheduler, n) for n in dir(torch.optim.lr_scheduler)
                 if isinstance(getattr(torch.optim.lr_scheduler, n), type)
                 and issubclass(getattr(torch.optim.lr_scheduler, n), torch.optim.lr_scheduler.LRScheduler)
                 and n not in ("LRScheduler", "_LRScheduler")}
        cls = table.get(cfg.name.lower())
        if cls is None:
            raise ConfigError("scheduler.name", f"unknown scheduler `{cfg.name}`{_did_you_mean(cfg.name.lower(), table)}; "
                              f"allowed: {', '.join(sorted(table))} or package.module:Class")
    kwargs = cfg.kwargs()
    check_kwargs("scheduler", cls, kwargs)
    try:
        return cls(opt, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError("scheduler", f"`{cls.__name__}` refused its arguments: {e}") from None
