"""Name → optimizer and scheduler factories, parameter groups, and decay semantics.

Every `torch.optim` optimizer is available by case-insensitive name (`adamw`, `SGD`…),
every `torch.optim.lr_scheduler` scheduler likewise (`cosineannealinglr`, `StepLR`…);
`package.module:Class` imports any other. Keyword arguments are checked against the
class's signature before a run starts, so a typo is an error, not a silent default.
"""
from __future__ import annotations

import fnmatch
import inspect
import math
import re
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from optcmp.config import ExperimentConfig, OptimizerConfig, SchedulerConfig, _did_you_mean
from optcmp.data import steps_per_epoch
from optcmp.errors import ConfigError
from optcmp.imports import check_kwargs, display_name, is_import_path, load_object, signature_of

# Keys of the optimizer and scheduler sections that optcmp consumes itself.
OWN_KEYS = ("name", "no_decay", "groups")
SCHEDULER_OWN_KEYS = ("name", "interval", "warmup_steps", "warmup_epochs", "warmup_start_factor")

# How each torch.optim optimizer applies `weight_decay`, read from its update rule:
# coupled adds λ·θ to the gradient (L2, so adaptive methods rescale it); decoupled
# shrinks θ by lr·λ·θ outside the gradient (Loshchilov & Hutter). Muon's docstring
# says "L2 penalty", but its code decays decoupled: param.mul_(1 - lr * weight_decay).
COUPLED = {"adam", "sgd", "rmsprop", "adagrad", "adamax", "nadam", "radam", "asgd", "adadelta"}
DECOUPLED = {"adamw", "adafactor", "muon"}
# Variant flags that switch a coupled optimizer to decoupled decay (Adam, NAdam, RAdam).
DECOUPLED_FLAGS = ("decoupled_weight_decay",)
SEMANTICS = ("coupled", "decoupled")

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # and subclasses under other names
NORM_NAME = re.compile(r"Norm(\d+d)?$")  # user classes named like RMSNorm, ScaleNorm, MyBatchNorm1d
SHORTHANDS = ("bias", "norm")

# Schedulers that take other schedulers; a YAML value cannot express them.
COMPOSITE_SCHEDULERS = ("sequentiallr", "chainedscheduler")
# Scheduler arguments that are functions: an import path string is loaded.
CALLABLE_ARGS = ("lr_lambda", "scale_fn")


# --- optimizers ----------------------------------------------------------------------


def _classes(module: Any, base: type, excluded: tuple[type, ...]) -> dict[str, type]:
    """The subclasses of `base` that `module` exports, by lower-case name."""
    out = {}
    for name in dir(module):
        obj = getattr(module, name)
        if isinstance(obj, type) and issubclass(obj, base) and obj not in excluded:
            out[name.lower()] = obj
    return out


def _named_class(name: str, key: str, table: dict[str, type], what: str) -> type:
    """A class from `table` by case-insensitive name, or from an import path."""
    if is_import_path(name):
        cls = load_object(name, key)
        if not callable(cls):
            raise ConfigError(key, f"`{name}` is not a class or a factory")
        return cls
    cls = table.get(name.lower())
    if cls is None:
        raise ConfigError(key, f"unknown {what} `{name}`{_did_you_mean(name.lower(), table)}; "
                          f"allowed: {', '.join(sorted(table))} or package.module:Class")
    return cls


def torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class in torch.optim by lower-case name."""
    return _classes(torch.optim, torch.optim.Optimizer, (torch.optim.Optimizer,))


def optimizer_class(name: str) -> type:
    return _named_class(name, "optimizer.name", torch_optimizers(), "optimizer")


def _takes(cls: Any, arg: str) -> bool:
    sig = signature_of(cls)
    return sig is None or arg in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def resolved_kwargs(cfg: OptimizerConfig) -> dict[str, Any]:
    """The optimizer's keyword arguments with its own defaults filled in, for the record."""
    cls = optimizer_class(cfg.name)
    kwargs = cfg.kwargs()
    check_kwargs("optimizer", cls, kwargs, own=OWN_KEYS)
    out = {}
    sig = signature_of(cls)
    for name, p in (sig.parameters.items() if sig else ()):
        if name in ("self", "params") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if name in kwargs:
            out[name] = kwargs[name]
        elif p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float, bool, str, tuple, type(None))):
            out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    out.update({k: v for k, v in kwargs.items() if k not in out})
    return out


def decay_semantics(cfg: OptimizerConfig) -> str:
    """How the run's weight decay acts: `coupled` (L2 through the gradient), `decoupled`
    (shrinks the weights directly), `none` (no decay anywhere) or `unknown`.

    An imported optimizer is `unknown` unless its class declares
    `decay_semantics = "coupled"` or `"decoupled"`: optcmp does not guess from names.
    """
    cls = optimizer_class(cfg.name)
    kwargs = resolved_kwargs(cfg)
    if "weight_decay" not in kwargs:
        return "none"  # LBFGS, Rprop, SparseAdam: no weight decay at all
    decays = [kwargs["weight_decay"], *(g["weight_decay"] for g in cfg.groups if isinstance(g, dict) and "weight_decay" in g)]
    if not any(decays):
        return "none"
    return weight_decay_kind(cls, kwargs, imported=is_import_path(cfg.name))


def weight_decay_kind(cls: type, options: dict[str, Any], imported: bool = False) -> str:
    """How a non-zero `weight_decay` acts in optimizer `cls` with these resolved options
    (the optimizer's, or one parameter group's merged into them): `coupled`, `decoupled`
    or `unknown`. `imported`: the class was named by an import path."""
    declared = getattr(cls, "decay_semantics", None)
    if declared in SEMANTICS:
        return declared
    if imported or not getattr(cls, "__module__", "").startswith("torch."):
        return "unknown"
    if any(options.get(flag) for flag in DECOUPLED_FLAGS):
        return "decoupled"
    lname = cls.__name__.lower()
    return "decoupled" if lname in DECOUPLED else "coupled" if lname in COUPLED else "unknown"


def _is_norm(module: nn.Module | None) -> bool:
    return module is not None and (isinstance(module, NORM_TYPES) or bool(NORM_NAME.search(type(module).__name__)))


def matches(name: str, module: nn.Module | None, pattern: str) -> bool:
    """Whether a `no_decay` or `groups` pattern selects the parameter `name` (owned by `module`).

    `bias` is every bias, `norm` every parameter of a normalization layer. Any other pattern
    is a glob matched against the whole name, a module prefix (`head` → head.weight,
    head.0.bias) or a final part (`LayerNorm.weight` → encoder.0.LayerNorm.weight).
    """
    if pattern == "bias":
        return name.rpartition(".")[2] == "bias"
    if pattern == "norm":
        return _is_norm(module)
    return any(fnmatch.fnmatchcase(name, p) for p in (pattern, f"{pattern}.*", f"*.{pattern}"))


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    owner = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    return owner


def _group_specs(cfg: OptimizerConfig, cls: type) -> list[tuple[list[str], dict[str, Any]]]:
    """The user's `groups` as (patterns, options), each checked."""
    out = []
    for i, spec in enumerate(cfg.groups):
        key = f"optimizer.groups[{i}]"
        patterns = spec.get("params") if isinstance(spec, dict) else None
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{key}.params", "give a parameter-name pattern such as `head` or `0.*`, or a list of them")
        options = {k: v for k, v in spec.items() if k != "params"}
        _check_group(key, cls, options)
        out.append((patterns, options))
    return out


def _check_group(key: str, cls: type, options: dict[str, Any]) -> None:
    # a group need not repeat the optimizer's required arguments: only unknown keys count
    sig = signature_of(cls)
    required = tuple(n for n, p in sig.parameters.items() if p.default is p.empty) if sig else ()
    check_kwargs(key, cls, options, supplied=("self", "params", *required), own=("params",))


def _no_match(key: str, pattern: str, names: list[str]) -> ConfigError:
    modules = sorted({n.rsplit(".", 1)[0] for n in names if "." in n})
    shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
    return ConfigError(key, f"`{pattern}` matches no parameter{_did_you_mean(pattern, [*names, *modules])}; parameters: {shown}")


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: `{"params": [...], "names": [...], **options}`.

    Each user group (first matching pattern wins) and then the remaining parameters form
    a group; within each, the `no_decay` parameters form their own group with
    weight_decay 0, placed after the decayed one. Empty groups are dropped; a pattern
    that selects nothing is an error, as it is almost always a typo.
    """
    cls = optimizer_class(cfg.name)
    specs = _group_specs(cfg, cls)
    # an optimizer without weight decay leaves every parameter undecayed already
    no_decay = cfg.no_decay if _takes(cls, "weight_decay") else []
    owner = _owners(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    if not named:
        raise ConfigError("model", "the model has no trainable parameters")
    buckets: dict[tuple[int, bool], list[tuple[str, torch.Tensor]]] = {}
    for name, p in named:
        gi = next((i for i, (pats, _) in enumerate(specs) if any(matches(name, owner.get(name), q) for q in pats)), len(specs))
        nd = any(matches(name, owner.get(name), q) for q in no_decay)
        buckets.setdefault((gi, nd), []).append((name, p))
    for i, (pats, _) in enumerate(specs):
        if not any(gi == i for gi, _ in buckets):
            for q in pats:
                if not any(matches(n, owner.get(n), q) for n in names):
                    raise _no_match(f"optimizer.groups[{i}].params", q, names)
            raise ConfigError(f"optimizer.groups[{i}].params", "every parameter it matches belongs to an earlier group")
    for q in no_decay:
        if q not in SHORTHANDS and not any(matches(n, owner.get(n), q) for n in names):
            raise _no_match("optimizer.no_decay", q, names)
    out = []
    for gi in range(len(specs) + 1):
        options = specs[gi][1] if gi < len(specs) else {}
        for nd in (False, True):
            members = buckets.get((gi, nd))
            if members:
                extra = {"weight_decay": 0.0} if nd else {}
                out.append({"params": [p for _, p in members], "names": [n for n, _ in members], **options, **extra})
    return out


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    cls = optimizer_class(cfg.name)
    kwargs = cfg.kwargs()
    check_kwargs("optimizer", cls, kwargs, own=OWN_KEYS)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg)]
    # one plain group: pass the tensors as a plain script would
    params = groups[0]["params"] if len(groups) == 1 and set(groups[0]) == {"params"} else groups
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError("optimizer", f"`{cls.__name__}` refused its arguments: {e}") from None


def group_names(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """The resolved parameter groups as plain data, for `plan` and result.json: the
    parameter names, the effective `lr` and `weight_decay`, and any other group option."""
    return describe_groups(param_groups(model, cfg), resolved_kwargs(cfg))


def describe_groups(groups: list[dict[str, Any]], resolved: dict[str, Any]) -> list[dict[str, Any]]:
    """`group_names` from `param_groups`' groups and the optimizer's `resolved_kwargs`."""
    base = {k: resolved[k] for k in ("lr", "weight_decay") if k in resolved}
    return [{"params": g["names"], **base, **{k: v for k, v in g.items() if k not in ("params", "names")}}
            for g in groups]


def needs_closure(opt: torch.optim.Optimizer) -> bool:
    """Whether `step` must get a closure that re-evaluates the loss: LBFGS, and any
    optimizer whose `step(closure)` has no default or that sets `requires_closure`."""
    if getattr(opt, "requires_closure", False):
        return True
    sig = signature_of(type(opt).step)
    closure = sig.parameters.get("closure") if sig else None
    return closure is not None and closure.default is inspect.Parameter.empty


# --- schedulers ----------------------------------------------------------------------


def torch_schedulers() -> dict[str, type]:
    """Every scheduler class in torch.optim.lr_scheduler by lower-case name, but for the
    composite ones, which take other schedulers."""
    table = _classes(lr_scheduler, lr_scheduler.LRScheduler, (lr_scheduler.LRScheduler, lr_scheduler._LRScheduler))
    return {k: v for k, v in table.items() if k not in COMPOSITE_SCHEDULERS}


def scheduler_class(name: str) -> type:
    if name.lower() in COMPOSITE_SCHEDULERS:
        raise ConfigError("scheduler.name", f"`{name}` chains other schedulers and cannot be given in YAML; "
                          "for warmup use scheduler.warmup_steps, otherwise an import path package.module:factory")
    return _named_class(name, "scheduler.name", torch_schedulers(), "scheduler")


def schedule_length(config: ExperimentConfig, n_train: int) -> int:
    """How many times the run calls scheduler.step(): once per optimizer step, or once per
    (possibly partial) epoch with `interval: epoch`."""
    per_epoch = steps_per_epoch(config.data, n_train)
    total = config.train.epochs * per_epoch if config.train.epochs is not None else config.train.steps
    if config.scheduler is not None and config.scheduler.interval == "epoch":
        return math.ceil(total / per_epoch)
    return total


class WarmupThenPlateau:
    """Linear warmup, then ReduceLROnPlateau, which SequentialLR cannot chain (its
    step needs the monitored metric)."""

    def __init__(self, warmup: lr_scheduler.LinearLR, plateau: lr_scheduler.ReduceLROnPlateau, length: int) -> None:
        self.warmup, self.plateau, self.length, self.count = warmup, plateau, length, 0

    def step(self, metrics: float) -> None:
        if self.count < self.length:
            self.warmup.step()
        else:
            self.plateau.step(metrics)
        self.count += 1

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.plateau.optimizer.param_groups]


def _scheduler_kwargs(cls: type, cfg: SchedulerConfig, length: int | None) -> dict[str, Any]:
    kwargs = cfg.kwargs()
    for key in CALLABLE_ARGS:
        if is_import_path(kwargs.get(key)):
            kwargs[key] = load_object(kwargs[key], f"scheduler.{key}")
    # The schedule's length, when left out, is the rest of the run after warmup: a cosine
    # then ends at eta_min on the last step, and OneCycleLR covers the whole run.
    if length is not None:
        params = signature_of(cls).parameters if signature_of(cls) else {}
        if "T_max" in params and "T_max" not in kwargs:
            kwargs["T_max"] = length - cfg.warmup
        if "total_steps" in params and not {"total_steps", "epochs", "steps_per_epoch"} & set(kwargs):
            kwargs["total_steps"] = length - cfg.warmup
    check_kwargs("scheduler", cls, kwargs, own=SCHEDULER_OWN_KEYS)
    return kwargs


def build_scheduler(opt: torch.optim.Optimizer, cfg: SchedulerConfig | None, length: int | None = None):
    """The run's learning-rate schedule: optional linear warmup, then the configured
    scheduler; None without one. `length` is the number of scheduler steps in the run
    (`schedule_length`), used for `T_max`/`total_steps` when the config leaves them out.
    Step it with `step_scheduler`."""
    if cfg is None or (cfg.name is None and not cfg.warmup):
        return None
    warm = cfg.warmup
    unit = "warmup_steps" if cfg.interval == "step" else "warmup_epochs"
    if cfg.name is not None and length is not None and warm >= length:
        raise ConfigError(f"scheduler.{unit}", f"a warmup of {warm} leaves nothing of the run's {length} scheduler steps")
    cls = scheduler_class(cfg.name) if cfg.name is not None else None
    kwargs = _scheduler_kwargs(cls, cfg, length) if cls is not None else {}
    warmup = lr_scheduler.LinearLR(opt, start_factor=cfg.warmup_start_factor, total_iters=warm) if warm else None
    if cls is None:
        return warmup
    try:
        main = cls(opt, **kwargs)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError("scheduler", f"`{cls.__name__}` refused its arguments: {e}") from None
    if warmup is None:
        return main
    if isinstance(main, lr_scheduler.ReduceLROnPlateau):
        return WarmupThenPlateau(warmup, main, warm)
    return lr_scheduler.SequentialLR(opt, [warmup, main], milestones=[warm])


def describe_schedule(cfg: SchedulerConfig | None, length: int) -> str | None:
    """One line for `plan`: the warmup, the scheduler with its resolved arguments, the interval."""
    if cfg is None or (cfg.name is None and not cfg.warmup):
        return None
    parts = []
    if cfg.warmup:
        unit = "steps" if cfg.interval == "step" else "epochs"
        parts.append(f"linear warmup over {cfg.warmup} {unit} from lr×{cfg.warmup_start_factor:g}")
    if cfg.name is None:
        parts.append("constant")
    else:
        cls = scheduler_class(cfg.name)
        kwargs = _scheduler_kwargs(cls, cfg, length)
        args = ", ".join(f"{k}={display_name(v) if callable(v) else v}" for k, v in kwargs.items())
        parts.append(f"{cls.__name__}({args})")
    return ", then ".join(parts) + f"; stepped every {cfg.interval}"


def takes_metric(sched: Any) -> bool:
    return isinstance(sched, (lr_scheduler.ReduceLROnPlateau, WarmupThenPlateau))


def step_scheduler(sched: Any, metric: float | None) -> None:
    """One scheduler step; ReduceLROnPlateau gets the monitored metric."""
    if sched is None:
        return
    if takes_metric(sched):
        sched.step(metric)
    else:
        sched.step()
