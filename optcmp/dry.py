"""The dry step: one forward pass, backward pass, optimizer step and scheduler step of a
config on a throwaway model, at preflight, so that what would fail in a run's first step
fails before any folder is written, as a one-line `ConfigError` naming the key.

Run once per distinct (model, data, optimizer, scheduler) combination, on the model that
preflight built anyway, with torch's random state (the CPU generator, and CUDA's where it
is in use) restored afterwards, so training is unchanged. An optimizer the vectorized
engine batches steps through the batched optimizer on a one-member stack, with the
learning rates alone driving its scheduler: a torch.optim construction would cost a
second of importing torch._dynamo the first time.

Where torch or the user's code raises, the key is found by looking at what was given:
a value whose type or length differs from the default's, or a zero that a division met.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from optcmp.batched_optim import BatchedOptimizer, Segment
from optcmp.config import ExperimentConfig
from optcmp.errors import ConfigError, OptcmpError
from optcmp.imports import is_import_path, signature_of
from optcmp.optimizers import build_optimizer, build_scheduler, needs_closure, scheduler_class, step_scheduler
from optcmp.schedules import rates_only_optimizer

_NONE = object()  # no default


@contextlib.contextmanager
def throwaway() -> Iterator[None]:
    """torch as it was before, afterwards: its random state (the CPU generator, and every
    CUDA device's where CUDA is in use already: asking an unused CUDA for its state would
    start it) and its thread count. The step runs on one thread: a batch this small gains
    nothing from more, and on a busy machine their synchronization cost 0.1 s a step
    (measured), and no OpenMP pool is started in a process that may fork its workers."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
            yield
    finally:
        torch.set_num_threads(threads)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _defaults(cls: Any) -> dict[str, Any]:
    sig = signature_of(cls)
    return {n: p.default for n, p in (sig.parameters.items() if sig else ()) if p.default is not p.empty}


def _suspect(given: dict[str, Any], defaults: dict[str, Any], error: BaseException) -> tuple[str, str | None] | None:
    """(key, what is wrong with its value) of the given value most likely to have caused
    `error`: a zero that a division met (None: nothing else to say), or one of another type
    or length than its default's."""
    for key, value in given.items():
        if isinstance(error, ZeroDivisionError) and _is_number(value) and value == 0:
            return key, None
    for key, value in given.items():
        default = defaults.get(key, _NONE)
        if default is _NONE or default is None or value is None:
            continue
        if _is_number(default) and not _is_number(value):
            return key, f"{value!r} is not a number"
        if isinstance(default, bool) and not isinstance(value, bool):
            return key, f"{value!r} is not true or false"
        if isinstance(default, (list, tuple)):
            if not isinstance(value, (list, tuple)):
                return key, f"{value!r} is not a list"
            if len(value) != len(default):
                return key, f"{list(value)!r} has {len(value)} value{'s' if len(value) != 1 else ''}, " \
                            f"{len(default)} expected (default {list(default)!r})"
    return None


Sections = list[tuple[str, dict[str, Any], dict[str, Any]]]  # (key prefix, values given, defaults)


def optimizer_sections(config: ExperimentConfig, cls: type, options: dict[str, Any]) -> Sections:
    """The optimizer's keyword arguments against its class's defaults, then each parameter
    group's options against the optimizer's (`options`, resolved)."""
    opt = config.optimizer
    sections = [("optimizer", opt.kwargs(), _defaults(cls))]
    return sections + [(f"optimizer.groups[{i}]", {k: v for k, v in g.items() if k != "params"}, options)
                       for i, g in enumerate(opt.groups)]


def blame(sections: Sections, what: str, when: str, error: BaseException) -> ConfigError:
    """The one-line error for `error`, which `what` raised `when`: at the suspect value of
    the first section that has one, else at the first section."""
    cause = (f"{type(error).__name__}: {error}".strip().splitlines() or [type(error).__name__])[0]
    for prefix, given, defaults in sections:
        found = _suspect(given, defaults, error)
        if found:
            key, problem = found
            if problem is None:
                return ConfigError(f"{prefix}.{key}", f"{what} divides by it {when} ({cause}); give a value other than 0")
            return ConfigError(f"{prefix}.{key}", f"{problem}: {what} failed {when} ({cause})")
    return ConfigError(sections[0][0], f"{what} failed {when}: {cause}")


def _check_output(out: torch.Tensor, y: torch.Tensor, task: str, loss: str, n_outputs: int) -> None:
    """Whether the model's output fits the target for `loss` (mse and its kin broadcast
    silently where shapes differ, so this is checked here rather than left to torch)."""
    if task == "regression":
        pred = out.squeeze(-1) if out.dim() > 1 else out
        if pred.shape != y.shape:
            raise ConfigError("model", f"output shape {tuple(out.shape)} does not fit the target's {tuple(y.shape)} "
                              f"for {loss}; the model needs {n_outputs} output{'s' if n_outputs != 1 else ''} per sample "
                              "(passed as out_features to a factory that takes it)")
    elif out.dim() != 2 or out.shape[0] != y.shape[0] or out.shape[1] < n_outputs:
        raise ConfigError("model", f"output shape {tuple(out.shape)} does not fit the target's {tuple(y.shape)} "
                          f"with {n_outputs} classes for {loss}; the model needs an output of shape "
                          f"({y.shape[0]}, {n_outputs}) (out_features={n_outputs})")


def _forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, loss_fn: Callable,
                      loss: str, n_outputs: int, model_key: str) -> float:
    try:
        out = model(x)
    except OptcmpError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model: one line, not a traceback
        raise ConfigError(model_key, f"raised {type(e).__name__} in its forward pass on a batch of shape "
                          f"{tuple(x.shape)}: {e}".splitlines()[0]) from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(model_key, f"its forward pass returned {type(out).__name__}, expected a tensor")
    _check_output(out, y, task, loss, n_outputs)
    pred = out.squeeze(-1) if task == "regression" and out.dim() > 1 else out
    try:
        value = loss_fn(pred, y)
        value.backward()
    except Exception as e:  # noqa: BLE001
        raise ConfigError("train.loss", f"{loss} raised {type(e).__name__} on the model's output "
                          f"{tuple(out.shape)} and the target {tuple(y.shape)}: {e}".splitlines()[0]) from None
    return value.item()


def _batched_step(model: nn.Module, family: str, options: dict[str, Any], groups, decoupled) -> list[float]:
    """One step of the batched optimizer on the model's parameters as a one-member stack;
    returns its groups' learning rates."""
    by_name = dict(model.named_parameters())
    params = [by_name[n] for g in groups for n in g.names]
    flat = torch.cat([p.detach().reshape(1, -1) for p in params], 1)
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(1, -1) for p in params], 1)
    segments, at = [], 0
    for g, dec in zip(groups, decoupled):
        width = sum(by_name[n].numel() for n in g.names)
        segments.append(Segment(at, at + width, [{**options, **g.options}], [dec]))
        at += width
    opt = BatchedOptimizer(family, flat, segments, table_steps=1)
    opt.step(grads)
    return [float(lr) for lr in opt.lrs()[0]]


def dry_step(config: ExperimentConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str,
             loss_fn: Callable, loss: str, n_outputs: int, cls: type, options: dict[str, Any], groups, decoupled,
             family: str | None, length: int) -> None:
    """One training step of `config` on `model` (changed by it: a throwaway) with the batch
    (`x`, `y`); raises ConfigError naming the key where it fails. `family`: the batched
    optimizer to step with, None for the torch one (`cls`)."""
    what = f"`{cls.__name__}`"
    dtype = next(model.parameters()).dtype  # the data in the weights' dtype, as the vectorized engine stacks it
    x, y = (t.to(dtype) if t.is_floating_point() else t for t in (x, y))
    model_key = "model.kind" if is_import_path(config.model.kind) else "model"
    with throwaway():
        model.train()
        model.zero_grad(set_to_none=True)
        value = _forward_backward(model, x, y, task, loss_fn, loss, n_outputs, model_key)
        opt = None
        try:
            if family is not None:
                lrs = _batched_step(model, family, options, groups, decoupled)
            else:
                opt = build_optimizer(model, config.optimizer)
                if needs_closure(opt):
                    opt.step(lambda: _closure(model, x, y, task, loss_fn))
                else:
                    opt.step()
                lrs = [float(g["lr"]) for g in opt.param_groups]
        except OptcmpError:
            raise
        except Exception as e:  # noqa: BLE001 - torch's or the user's optimizer: one line
            raise blame(optimizer_sections(config, cls, options), what, "in its first step", e) from None
        _scheduler_step(config, opt, lrs, length, value, model)


def _closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, loss_fn: Callable) -> torch.Tensor:
    with torch.enable_grad():
        model.zero_grad(set_to_none=True)
        out = model(x)
        value = loss_fn(out.squeeze(-1) if task == "regression" and out.dim() > 1 else out, y)
        value.backward()
    return value


def _scheduler_step(config: ExperimentConfig, opt, lrs: list[float], length: int, value: float, model: nn.Module) -> None:
    """Build the scheduler on the optimizer of the step (or on its learning rates alone) and
    step it once."""
    cfg = config.scheduler
    if cfg is None or (cfg.name is None and not cfg.warmup):
        return
    stepped = opt is not None
    if opt is None:
        opt = rates_only_optimizer(lrs, cfg) or build_optimizer(model, config.optimizer)
    what = f"`{scheduler_class(cfg.name).__name__}`" if cfg.name is not None else "the warmup"
    defaults = _defaults(scheduler_class(cfg.name)) if cfg.name is not None else {}
    sections = [("scheduler", cfg.kwargs(), defaults)]
    try:
        sched = build_scheduler(opt, cfg, length)
    except OptcmpError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's or the user's scheduler: one line
        raise blame(sections, what, "when built", e) from None
    try:
        if not stepped:  # an optimizer step comes before the scheduler's, as in training
            opt.step()
        step_scheduler(sched, value)
    except Exception as e:  # noqa: BLE001
        raise blame(sections, what, "in its first step", e) from None
