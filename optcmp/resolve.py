"""Each run's config resolved once, at preflight, and passed down to the engines.

`resolve_runs(specs, base_dir)` builds each distinct config's data and model once (the
first seed's), runs one dry training step on them (`dry.py`), and decides everything the
planner and the engines need that does not change while a run trains: the optimizer
class, its options and parameter groups, how weight decay acts in each group, the
schedule's length, the data's shape, the loss, the batched optimizer family, and why the
run cannot join a vectorized group. A bad value raises `ConfigError` here, before any
folder is written.

The result, a `ResolvedRun` per run, is plain data and classes (no tensors): it travels to
worker processes and Ray tasks with the run's spec.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optcmp.batched_model import unsupported_layer
from optcmp.batched_optim import STRUCTURAL, VARYING, family_of, invalid_value, unsupported_option
from optcmp.config import ExperimentConfig, OptimizerConfig
from optcmp.data import Dataset, batch_size_of, build_data
from optcmp.dry import blame, dry_step, optimizer_sections
from optcmp.errors import ConfigError
from optcmp.functional import TRIAL_ROWS, functional_reason, training_probe
from optcmp.imports import is_import_path, load_object, signature_of
from optcmp.models import build_model
from optcmp.optimizers import (decay_semantics, describe_groups, optimizer_class, param_groups, resolved_kwargs,
                               schedule_length, weight_decay_kind)
from optcmp.schedules import unscheduled
from optcmp.stacked_eval import PlainStack, plain_layers
from optcmp.sweep import RunSpec

LOSSES = {
    "mse": nn.functional.mse_loss,
    "l1": nn.functional.l1_loss,
    "smooth_l1": nn.functional.smooth_l1_loss,
    "huber": nn.functional.huber_loss,
    "cross_entropy": nn.functional.cross_entropy,
    "nll": nn.functional.nll_loss,
    "bce_with_logits": nn.functional.binary_cross_entropy_with_logits,
}
# Layers that compute differently in training and evaluation mode.
MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class DataShape:
    n_train: int
    n_val: int  # 0 without a validation split
    n_features: int
    n_outputs: int  # 1 for regression, the number of classes for classification
    task: str  # "regression" | "classification"
    seeded: bool  # the data set depends on the seed: each member of a group holds its own
    sample_shape: tuple[int, ...]  # one input sample's shape: (n_features,) for flat features


@dataclass(frozen=True)
class ParamGroup:
    names: tuple[str, ...]  # parameter names, in model order
    options: dict[str, Any]  # the group's own options, as passed to the optimizer


@dataclass(frozen=True, eq=False)
class ResolvedRun:
    """One run's spec with everything resolved from its config."""

    spec: RunSpec
    optimizer_class: type
    kwargs: dict[str, Any]  # the optimizer section's keyword arguments, as given
    options: dict[str, Any]  # with the class's defaults filled in: result.json's `optimizer`
    param_groups: tuple[ParamGroup, ...]
    groups_record: list[dict[str, Any]]  # result.json's `param_groups`: names, lr, weight_decay, options
    decay: str  # coupled | decoupled | none | unknown
    decoupled: tuple[bool, ...]  # per parameter group: weight decay applied to the weights
    family: str | None  # the batched optimizer family, None where there is none
    schedule_length: int  # scheduler steps in the run
    data: DataShape
    loss: str  # the loss's name, `auto` resolved
    full_batch: bool  # every step sees the whole training set
    mode_free: bool  # no layer computes differently in training and evaluation mode
    n_params: int
    activations: int  # values a forward pass holds per sample, input included (for memory estimates)
    stacking: str | None  # the stacked model of its group (a `Stacking.path`); None: none
    unreached: tuple[str, ...]  # parameters a training step gives no gradient: torch.optim leaves them as they are
    why_not: str | None  # why the run cannot join a vectorized group; None: it can
    group_key: str | None = field(default=None)  # runs with equal keys train together
    block_key: str | None = field(default=None)  # within a group, runs with equal keys share one batched optimizer

    @property
    def config(self) -> ExperimentConfig:
        return self.spec.config


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for a device that is not there is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"`{name}` asked for, but this machine has no CUDA device; allowed here: auto, cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError("device", f"`{name}` asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device", "`mps` asked for, but it is not available here; allowed here: auto, cpu")
    return torch.device(name)


def loss_name(config: ExperimentConfig, task: str) -> str:
    """The configured loss, `auto` resolved; one that does not fit the task is a user error."""
    name = config.train.loss
    if name == "auto":
        name = "cross_entropy" if task == "classification" else "mse"
    if task == "classification" and name in ("mse", "l1", "smooth_l1", "huber", "bce_with_logits"):
        raise ConfigError("train.loss", f"`{name}` does not fit a classification data set; use cross_entropy or nll")
    if task == "regression" and name in ("cross_entropy", "nll"):
        raise ConfigError("train.loss", f"`{name}` does not fit a regression data set; use mse, l1, smooth_l1 or huber")
    return name


# --- checks --------------------------------------------------------------------------


def check_optimizer(model: nn.Module, cfg: OptimizerConfig) -> bool:
    """Check the optimizer section as `optimizers.build_optimizer` does (arguments against
    the signature, parameter-group patterns, the constructor's value checks), without
    building a torch.optim optimizer. Returns False when only building one can tell
    (an optimizer or option this engine does not batch); raises ConfigError like it."""
    options = resolved_kwargs(cfg)
    if unsupported_option(cfg.name, options):  # the catalogue also refuses a malformed betas pair
        return False
    param_groups(model, cfg)
    problem = invalid_value(family_of(cfg.name), options)
    if problem:
        raise ConfigError("optimizer", f"`{optimizer_class(cfg.name).__name__}` refused its arguments: {problem}")
    return True


@dataclass(frozen=True)
class Stacking:
    """How a config's model trains in a vectorized group (decided once per model and data)."""

    # "hand-written" (batched_model.py), "plain" (stacked_eval.PlainStack: a plain CNN on the
    # CPU, without vmap) or "torch.func" (functional.py); None: none of them
    path: str | None
    reason: str | None  # why neither can take it, naming the layer
    unreached: tuple[str, ...]  # parameters a training step gives no gradient
    activations: int  # values a forward pass holds per sample, input included


def stacking(config: ExperimentConfig, model: nn.Module, sample: torch.Tensor) -> Stacking:
    """The hand-written stacked model where it covers the model (flat features; Linear,
    LayerNorm, BatchNorm1d and activations), measurably the faster; else, where a trial pass
    of torch.func's runs (`functional.functional_reason`), the plain CNN stack for a
    Sequential of convolutions, pools, activations and Linear layers that draws nothing, on
    images on the CPU (`stacked_eval.PlainStack`: vmap's kernels without vmap), or the
    torch.func one. `sample`: a few of the training inputs."""
    frozen = tuple(n for n, p in model.named_parameters() if not p.requires_grad)
    widths = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    if sample.dim() == 2 and unsupported_layer(model) is None:
        return Stacking("hand-written", None, frozen, widths * 2 + sample.shape[1])
    reason = functional_reason(model, sample[:TRIAL_ROWS])
    if reason:
        return Stacking(None, f"model `{config.model.kind}`: {reason}", frozen, widths * 2 + sample[0].numel())
    unreached, activations = training_probe(model, sample[:TRIAL_ROWS])
    if sample.dim() == 4 and resolve_device(config.device).type == "cpu" and PlainStack.takes(plain_layers(model)):
        return Stacking("plain", None, unreached, activations)
    return Stacking("torch.func", None, unreached, activations)


def why_not(config: ExperimentConfig, stacked: Stacking, options: dict[str, Any]) -> str | None:
    """Why a run of this config cannot join a vectorized group, or None. `stacked`: how
    its model would stack."""
    if stacked.reason:
        return stacked.reason
    if config.scheduler is not None:
        reason = unscheduled(config.scheduler)
        if reason:
            return reason
    name = config.optimizer.name
    reason = unsupported_option(name, options)
    for group in config.optimizer.groups:
        reason = reason or unsupported_option(name, {k: v for k, v in group.items() if k != "params"}, group=True)
    return reason


def group_key(config: ExperimentConfig, layout: tuple[ParamGroup, ...], data: DataShape) -> str:
    """Runs with equal keys can train together as one stacked model: everything but the
    seed, the optimizer and the learning-rate schedule is equal, and so are the parameter
    groups' members (the flat buffer's layout) and the data's shape (which a data factory
    may make depend on the seed). Their optimizers may differ: see `block_key`."""
    dumped = config.model_dump(mode="json")
    for key in ("seeds", "scheduler", "optimizer", "optimizers", "variant"):
        dumped.pop(key, None)
    shape = [data.n_train, data.n_val]
    return json.dumps([dumped, [list(g.names) for g in layout], shape], sort_keys=True, default=str)


def block_key(config: ExperimentConfig, family: str, options: dict[str, Any]) -> str:
    """Within a group, runs with equal keys share one batched optimizer: the same family,
    the same structural options, and parameter groups that differ only in per-member
    options."""
    per_member = set(VARYING[family])
    structural = {k: options.get(k) for k in STRUCTURAL[family]}
    groups = [{k: v for k, v in g.items() if k not in per_member} for g in config.optimizer.groups]
    return json.dumps([family, structural, groups], sort_keys=True, default=str)


# --- resolution ----------------------------------------------------------------------


def _seed_shapes_data(cfg) -> bool:
    """Whether the data set's size may depend on the seed: a data factory that takes one."""
    if not is_import_path(cfg.data.kind):
        return False
    sig = signature_of(load_object(cfg.data.kind, "data.kind"))
    return sig is not None and "seed" in sig.parameters


def _seeded(cfg) -> bool:
    """Whether the data set depends on the seed (drawn from it, or split by it)."""
    return cfg.data.kind == "random_classification" or cfg.data.val_fraction > 0 or _seed_shapes_data(cfg)


def _shape(cfg: ExperimentConfig, data: Dataset) -> DataShape:
    return DataShape(len(data.x_train), 0 if data.x_val is None else len(data.x_val), data.n_features,
                     data.n_outputs, data.task, _seeded(cfg), data.sample_shape)


def mode_free(model: nn.Module) -> bool:
    """Whether the model computes the same in training and evaluation mode: made of
    torch.nn layers only, none of them dropout or a normalization by batch statistics."""
    for m in model.modules():
        if not type(m).__module__.startswith("torch.nn.") or isinstance(m, MODE_DEPENDENT):
            return False
        if isinstance(m, (nn.RNNBase, nn.MultiheadAttention)) and m.dropout:
            return False
    return True


class Resolver:
    """Resolves runs, building each distinct config's data and model once."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = base_dir
        self._configs: dict[str, tuple[dict[str, Any], DataShape]] = {}  # no data kept: only its shape
        self._stackings: dict[str, Stacking] = {}  # by model and data config: a trial pass costs 0.3–0.5 s
        self._dry_steps: set[str] = set()

    def __call__(self, spec: RunSpec) -> ResolvedRun:
        cfg = spec.config
        dumped = cfg.model_dump(mode="json")
        dumped.pop("seeds")
        key = json.dumps(dumped, sort_keys=True, default=str)
        if key not in self._configs:
            with torch.random.fork_rng(devices=[]):  # building a model draws from torch's generator
                self._configs[key] = self._resolve_config(spec)
        common, shape = self._configs[key]
        if _seed_shapes_data(cfg):
            shape = _shape(cfg, build_data(cfg.data, spec.seed, self.base_dir))
        gkey = bkey = None
        if common["why_not"] is None:
            gkey = group_key(cfg, common["param_groups"], shape)
            bkey = block_key(cfg, common["family"], common["options"])
        return ResolvedRun(spec=spec, data=shape, group_key=gkey, block_key=bkey, **common)

    def _resolve_config(self, spec: RunSpec) -> tuple[dict[str, Any], DataShape]:
        cfg = spec.config
        resolve_device(cfg.device)
        data = build_data(cfg.data, spec.seed, self.base_dir)
        loss = loss_name(cfg, data.task)
        model = build_model(cfg.model, data.n_features, data.n_outputs, data.sample_shape)
        opt = cfg.optimizer
        cls = optimizer_class(opt.name)
        try:
            batched = check_optimizer(model, opt)
        except (TypeError, ValueError, IndexError) as e:  # a value of the wrong type or length
            raise blame(optimizer_sections(cfg, cls, resolved_kwargs(opt)), f"`{cls.__name__}`", "when built", e) from None
        options = resolved_kwargs(opt)
        groups = param_groups(model, opt)
        record = describe_groups(groups, options)
        length = schedule_length(cfg, len(data.x_train))
        imported = is_import_path(opt.name)
        own = [{k: v for k, v in g.items() if k not in ("params", "names")} for g in groups]
        key = json.dumps(cfg.model_dump(mode="json", include={"model", "data", "device"}), sort_keys=True, default=str)
        if key not in self._stackings:
            self._stackings[key] = stacking(cfg, model, data.x_train)
        stacked = self._stackings[key]
        reason = why_not(cfg, stacked, options)
        common = dict(
            optimizer_class=cls,
            kwargs=opt.kwargs(),
            options=options,
            param_groups=tuple(ParamGroup(tuple(g["names"]), o) for g, o in zip(groups, own)),
            groups_record=record,
            decay=decay_semantics(opt),
            decoupled=tuple(weight_decay_kind(cls, {**options, **o}, imported) == "decoupled" for o in own),
            family=family_of(opt.name) if reason is None else None,
            schedule_length=length,
            loss=loss,
            full_batch=batch_size_of(cfg.data, len(data.x_train)) >= len(data.x_train),
            mode_free=mode_free(model),
            n_params=sum(p.numel() for p in model.parameters()),
            activations=stacked.activations,
            stacking=stacked.path if reason is None else None,
            unreached=stacked.unreached,
            why_not=reason,
        )
        dry = json.dumps([cfg.model_dump(mode="json", include={"model", "data", "optimizer", "scheduler", "train"})],
                         sort_keys=True, default=str)
        if dry not in self._dry_steps:  # once per distinct model, data, optimizer and scheduler
            bs = batch_size_of(cfg.data, len(data.x_train))
            dry_step(cfg, model, data.x_train[:bs], data.y_train[:bs], data.task, LOSSES[loss], loss, data.n_outputs,
                     cls, options, common["param_groups"], common["decoupled"], family_of(opt.name) if batched else None,
                     length)
            self._dry_steps.add(dry)
        return common, _shape(cfg, data)


def resolve_runs(specs: list[RunSpec], base_dir: Path | None = None) -> list[ResolvedRun]:
    """Every run resolved, in order (raises ConfigError for the first bad value)."""
    resolver = Resolver(base_dir)
    return [resolver(spec) for spec in specs]

