"""The experiment config's pydantic models, with commented defaults. No torch.

Values are strict: a boolean is not a number (`lr: yes` is an error, not lr 1.0), a
string is not a boolean (`amsgrad: 'false'`), a number in a string is not a number, and
`seeds: [true, false]` is not [1, 0]. Learning rates, momenta and weight decays are
range-checked wherever they appear: top level, parameter groups, optimizer keywords.

Named optimizer variants (`optimizers:`): each a full optimizer section (its own options,
parameter groups, no_decay) plus an optional `scheduler:` (replaces the top-level one for
that variant) and `space:` (its own search space for a study). With both `optimizer:` and
`optimizers:`, `optimizer:` holds shared defaults: every variant inherits each key it does
not set itself (lists such as `groups` are replaced, not merged). A variant must name its
optimizer (`name:`), unless `optimizer:` names one for all. Without `tune:` the variants
are a sweep axis named `variant`; see `sweep.expand` for how sweep keys apply to them.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from optcmp.autoseeds import design_of, is_auto
from optcmp.schema_checks import DEFAULT_MAX_RUNS, check_experiment, inherit_defaults
from optcmp.space import Distribution
from optcmp.stats import SequentialDesign
from optcmp.values import did_you_mean, got, interval, is_number, keyed, shown, within

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ACTIVATIONS = ("none", "relu", "gelu", "tanh", "sigmoid", "silu", "elu", "leaky_relu", "softplus")
LOSSES = ("auto", "mse", "l1", "smooth_l1", "huber", "cross_entropy", "nll", "bce_with_logits")
# The metrics of result.json a summary can rank by and a study can tune on (DESIGN.md).
METRICS = (
    "train_loss", "val_loss", "val_accuracy", "train_accuracy", "best_train_loss", "best_val_loss",
    "best_val_accuracy", "train_loss_tail", "val_loss_tail", "val_accuracy_tail", "weight_norm",
    "near_zero_frac", "steps", "seconds", "steps_per_second",
)
# data.SHUFFLE_STREAM is added to the seed for the shuffle generator, whose seed must stay a
# signed 64-bit integer: the largest seed leaves room for it (kept equal by a test).
SEED_OFFSET = 0x5EED
MAX_SEED = 2**63 - 1 - SEED_OFFSET
MAX_SEED_COUNT = 1_000_000
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]

# Optimizer keywords range-checked wherever they appear (top level, groups, variants):
# name → (low, high, low open, high open). Their types against the class come at preflight.
OPTION_RANGES = {
    "lr": (0, None, True, False),
    "weight_decay": (0, None, False, False),
    "momentum": (0, 1, False, True),
    "dampening": (0, 1, False, False),
}
EACH_RANGES = {"betas": (0, 1, False, True), "eps": (0, None, False, False)}  # a number or each of a list


def _one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    """`value` if it is one of `choices`, else a did-you-mean error listing them."""
    if value not in choices:
        raise ValueError(f"unknown {what} `{value}`{did_you_mean(value, choices)}; allowed: {', '.join(choices)}")
    return value


def seed_list(v: Any) -> Any:
    """A count N means seeds 0…N−1; a boolean is neither a count nor a seed."""
    if isinstance(v, bool) or (isinstance(v, int) and not 1 <= v <= MAX_SEED_COUNT):
        raise ValueError(f"expected a list of integers in [0, {MAX_SEED}] or a count in [1, {MAX_SEED_COUNT:,}], {got(v)}")
    return list(range(v)) if isinstance(v, int) else v


def distinct_seeds(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("give at least one seed")
    if len(set(v)) != len(v):
        twice = next(s for s in v if v.count(s) > 1)
        raise ValueError(f"seed {twice} is given twice; seeds must be distinct")
    return v


def check_option(key: str, value: Any) -> str | None:
    """What is wrong with an optimizer keyword's value by its name (lr > 0, momentum in
    [0, 1), each beta in [0, 1) …), or None. Keywords not named here pass."""
    if key in OPTION_RANGES:
        bounds = OPTION_RANGES[key]
        ok, what = is_number(value) and within(value, *bounds), "a number"
    elif key in EACH_RANGES and value is not None:
        bounds = EACH_RANGES[key]
        many = isinstance(value, (list, tuple))
        items = value if many else [value]
        ok = (many or key != "betas") and all(x is None or (is_number(x) and within(x, *bounds)) for x in items)
        what = "a list of numbers" if many or key == "betas" else "a number"
    else:
        return None
    return None if ok else f"expected {what}{interval(*bounds)}, {got(value)}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    # The defaults are the reference LayerNorm MLP of the weight-decay experiment.
    kind: str = "mlp"  # mlp | linear | cnn | "package.module:factory"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [20, 20, 20, 20])  # mlp
    norm: Literal["none", "layernorm", "batchnorm"] = "layernorm"  # mlp
    activation: str = "none"  # mlp: after each hidden layer; cnn: after each convolution
    # cnn: the output channels of its 3×3 convolutions, each followed by the activation and
    # a 2×2 max-pool; images come from `data.shape` ([channels, height, width])
    channels: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [16, 32], min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to an imported factory

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str) -> str:
        return _one_of(v, ACTIVATIONS, "activation")


class DataConfig(_Strict):
    kind: str = "quadratic"  # quadratic | random_classification | sklearn | csv | "package.module:factory"
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # share of samples held out for validation
    batch_size: Union[Literal["full"], int] = "full"  # full batch, or N samples per step (shuffled)
    # random_classification: the reference classification data set
    samples: int = Field(1000, ge=2)
    features: int = Field(10, ge=1)
    classes: int = Field(2, ge=2)
    # sklearn / csv / imported factories
    # sklearn data set shipped with the package: breast_cancer, digits, wine, iris, diabetes, linnerud
    name: str | None = None
    path: str | None = None  # csv file, relative to the config file's folder
    target: str | None = None  # csv target column
    columns: list[str] | None = None  # csv feature columns (default: every column but the target)
    task: Literal["auto", "regression", "classification"] = "auto"  # auto: inferred from the target
    standardize: bool = False  # features to mean 0, std 1, fitted on the training split only
    # each sample's features reshaped (row-major) to this shape, e.g. [1, 8, 8] for digits as
    # one-channel 8×8 images; none: as the data set gives them
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to an imported factory

    @field_validator("batch_size", mode="before")
    @classmethod
    def _full_or_positive(cls, v: Any) -> Any:
        if v == "full" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"expected `full` or an integer ≥ 1, {got(v)}")


class TrainConfig(_Strict):
    steps: int | None = Field(None, ge=1)  # optimizer steps; give steps or epochs
    epochs: int | None = Field(None, ge=1)  # passes over the training set
    loss: str = "auto"  # auto: mse for regression, cross_entropy for classification
    diverge_threshold: float | None = Field(None, gt=0)  # a loss above this also counts as diverged

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        return _one_of(v, LOSSES, "loss")

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TrainConfig":
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        if self.steps is None and self.epochs is None:
            self.steps = 1000
        return self


class OptimizerConfig(BaseModel):
    # Any other key is a keyword argument of the optimizer, checked against its signature.
    model_config = ConfigDict(extra="allow", validate_assignment=True, strict=True, allow_inf_nan=False)
    name: str = "adam"  # any torch.optim class (case-insensitive) or "package.module:Class"
    lr: float | None = Field(None, gt=0)  # None: the optimizer's own default
    weight_decay: float | None = Field(None, ge=0)  # None: the optimizer's default (AdamW 0.01, Adam 0)
    # Parameters whose weight_decay is 0: `bias`, `norm` (weights and biases of normalization
    # layers) or name patterns (globs; `head` also matches head.weight, `LayerNorm.weight`
    # also matches encoder.0.LayerNorm.weight).
    no_decay: list[str] = Field(default_factory=list)
    # Per-module options, first match wins: [{params: "head", lr: 0.1}, …]; `params` is a
    # pattern as in no_decay, or a list of them; the other keys are optimizer arguments.
    groups: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("no_decay", mode="before")
    @classmethod
    def _one_pattern(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _option_ranges(self) -> "OptimizerConfig":
        for key, value in (self.model_extra or {}).items():
            problem = check_option(key, value)
            if problem:
                raise keyed(key, problem)
        for i, group in enumerate(self.groups):
            for key, value in group.items():
                problem = check_option(key, value) if key != "params" else None
                if problem:
                    raise keyed(f"groups[{i}].{key}", problem)
        return self

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for the optimizer class (defaults left out)."""
        out = dict(self.model_extra or {})
        if self.lr is not None:
            out["lr"] = self.lr
        if self.weight_decay is not None:
            out["weight_decay"] = self.weight_decay
        return out


class SchedulerConfig(BaseModel):
    # Any other key is a keyword argument of the scheduler, checked against its signature.
    model_config = ConfigDict(extra="allow", validate_assignment=True, strict=True, allow_inf_nan=False)
    # any torch.optim.lr_scheduler class (case-insensitive), "package.module:Class", or
    # `constant` (the same as null): the learning rate stays put after the warmup
    name: str | None = None
    interval: Literal["step", "epoch"] = "step"  # scheduler.step() after every optimizer step, or every epoch
    # Linear warmup from lr·warmup_start_factor to lr before the schedule starts, counted in
    # optimizer steps (interval: step) or in epochs (interval: epoch).
    warmup_steps: int = Field(0, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.01, gt=0, le=1)

    @field_validator("name")
    @classmethod
    def _constant_is_none(cls, v: str | None) -> str | None:
        # a readable sweep value and run id for "no schedule" (torch's ConstantLR is another thing)
        return None if v is not None and v.lower() == "constant" else v

    @model_validator(mode="after")
    def _warmup_unit(self) -> "SchedulerConfig":
        if self.interval == "step" and self.warmup_epochs:
            raise ValueError("warmup_epochs needs interval: epoch; with interval: step give warmup_steps")
        if self.interval == "epoch" and self.warmup_steps:
            raise ValueError("warmup_steps needs interval: step; with interval: epoch give warmup_epochs")
        return self

    @property
    def warmup(self) -> int:
        """Warmup length in scheduler steps (the unit of `interval`)."""
        return self.warmup_steps if self.interval == "step" else self.warmup_epochs

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class VariantConfig(OptimizerConfig):
    """A named optimizer variant: an optimizer section (the shared `optimizer:` defaults
    merged in) with the variant's effective schedule and its own search space."""

    scheduler: SchedulerConfig | None = None  # the top-level scheduler unless the variant gives its own
    space: dict[str, Distribution] = Field(default_factory=dict)  # replaces tune.space's entries for its keys

    def section(self) -> dict[str, Any]:
        """The optimizer section a run of this variant gets (no scheduler, no space)."""
        return self.model_dump(mode="python", exclude={"scheduler", "space"})


class HistogramConfig(_Strict):
    every: int = Field(10, ge=0)  # 0 switches histograms off
    weights: bool = True
    grads: bool = True
    bins: int = Field(30, ge=1, le=1000)  # buckets per histogram


class LogConfig(_Strict):
    every: int = Field(1, ge=1)  # scalars every N steps (or epochs, when training by epochs)
    histograms: HistogramConfig = Field(default_factory=HistogramConfig)


class SummaryConfig(_Strict):
    primary: str | None = None  # ranking metric; default val_loss where there is one, else train_loss
    near_zero: float = Field(1e-3, gt=0)  # |w| below this counts as "near zero"
    # The *_tail metrics average the evaluation points in the last `tail` share of training
    # (0.1: the last 10 % of steps or epochs), final point included.
    tail: float = Field(0.1, gt=0, le=1)
    # The chaos probe (issue 14): each config with ≥ 2 seeds gets one more run, its first
    # seed with every initial weight one ulp up, to tell noise from signal. auto: where it
    # is cheap (the planner may drop probes of configs that train one by one); on; off.
    chaos: Literal["auto", "on", "off"] = "auto"

    @field_validator("primary")
    @classmethod
    def _known_metric(cls, v: str | None) -> str | None:
        return None if v is None else _one_of(v, METRICS, "metric")

    @field_validator("chaos", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML 1.1 reads on/off as booleans


class TuneConfig(_Strict):
    """A study (issue 13): every variant tuned with the same budget of trials on the tuning
    seeds, its best trial rerun on fresh seeds, the variants compared there."""

    # dotted key → distribution: {log_uniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]}
    # (with `log: true` for a log scale), {choice: [...]}, or a plain list (a grid axis;
    # a choice for the other samplers). A variant's own `space:` replaces entries by key.
    space: dict[str, Distribution] = Field(default_factory=dict)
    sampler: Literal["grid", "random", "tpe", "qmc"] = "random"  # Optuna's samplers
    # Trials per variant, the same for every variant. With sampler grid it may be left out:
    # the whole grid (then every variant's grid must have as many points).
    budget: int | None = Field(None, ge=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0])  # tuning seeds, or a count N: 0…N−1
    # What tuning optimizes; None: the summary's default ranking metric, best_val_loss with a validation
    # split, else best_train_loss (best-so-far: the least chaotic loss, benchmarks/chaos_probe.py).
    metric: str | None = None
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: maximize accuracies, minimize the rest
    # The best trial of each variant is rerun on fresh seeds: a count N gives the N seeds
    # after the largest tuning seed; a list must share no seed with `seeds`.
    final_seeds: list[Seed] = Field(default_factory=lambda: list(range(1, 11)))  # 10 after the default tuning seed
    prune: Literal["none", "halving"] = "none"  # halving: successive halving of hopeless trials
    seed: int = Field(0, ge=0, le=2**32 - 1)  # the samplers' seed, the same for every variant

    @field_validator("seeds", mode="before")
    @classmethod
    def _tuning_seed_count(cls, v: Any) -> Any:
        return seed_list(v)

    @field_validator("seeds")
    @classmethod
    def _distinct_tuning_seeds(cls, v: list[int]) -> list[int]:
        return distinct_seeds(v)

    @field_validator("metric")
    @classmethod
    def _known_tuning_metric(cls, v: str | None) -> str | None:
        return None if v is None else _one_of(v, METRICS, "metric")

    @model_validator(mode="before")
    @classmethod
    def _final_seed_count(cls, data: Any) -> Any:
        """A count N of final seeds becomes the N seeds after the largest tuning seed."""
        if not isinstance(data, dict):
            return data
        count = data.get("final_seeds", 10)
        if isinstance(count, bool) or (isinstance(count, int) and not 1 <= count <= MAX_SEED_COUNT):
            raise keyed("final_seeds", f"expected a count in [1, {MAX_SEED_COUNT:,}] or a list of seeds, {got(count)}")
        if not isinstance(count, int):
            return data
        seeds = data.get("seeds", [0])
        seeds = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
        if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds):
            return data  # the tuning seeds' own error comes first
        start = max(seeds) + 1
        return {**data, "final_seeds": list(range(start, start + count))}

    @model_validator(mode="after")
    def _fresh_final_seeds(self) -> "TuneConfig":
        try:
            distinct_seeds(self.final_seeds)
        except ValueError as e:
            raise keyed("final_seeds", str(e)) from None
        both = [s for s in self.final_seeds if s in self.seeds]
        if both:
            raise keyed("final_seeds", f"seed {both[0]} is also a tuning seed (tune.seeds: {shown(self.seeds)}); "
                        "allowed: seeds that played no part in the tuning (or a count: fresh ones are chosen)")
        return self


class WorkloadConfig(_Strict):
    """One workload of a study (`workloads:`): its model, data and train sections. Each key a
    workload does not set is the top-level section's (merged in before validation)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


class ExperimentConfig(_Strict):
    name: str = "experiment"  # the folder under the output root
    seeds: list[Seed] = Field(default_factory=lambda: [0])  # or a count N, meaning 0..N-1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)  # with `optimizers:`, their shared defaults
    optimizers: dict[str, VariantConfig] = Field(default_factory=dict)  # named variants: a sweep axis, or a study's
    scheduler: SchedulerConfig | None = None
    sweep: dict[str, list[Any]] = Field(default_factory=dict)  # dotted key → values (a grid)
    tune: TuneConfig | None = None  # a study: tune each variant with an equal budget, compare on fresh seeds
    workloads: dict[str, WorkloadConfig] = Field(default_factory=dict)  # a study on several workloads, each tuned on its own
    log: LogConfig = Field(default_factory=LogConfig)
    summary: SummaryConfig = Field(default_factory=SummaryConfig)
    max_runs: int = Field(DEFAULT_MAX_RUNS, ge=1)  # a sweep expanding to more runs is refused before it starts
    # `seeds: auto` (optcmp.autoseeds): `seeds` is then every seed the design may train, 0…max−1,
    # and this the design; not a key of its own (never dumped: a run's config has its one seed).
    _seeds_auto: SequentialDesign | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _auto_seeds(cls, data: Any, handler: Any) -> Any:
        design = None
        if isinstance(data, dict) and is_auto(data.get("seeds")):
            design = design_of(data["seeds"])
            if data.get("tune") is not None:
                raise keyed("seeds", "`auto` is for sweeps; a study (tune:) has its own tune.seeds and tune.final_seeds")
            data = {**data, "seeds": list(range(design.max_seeds))}
        model = handler(data)
        if design is not None:
            model._seeds_auto = design
        return model

    @property
    def seeds_auto(self) -> SequentialDesign | None:
        """The sequential design of `seeds: auto`, or None for a list or count of seeds."""
        return self._seeds_auto

    @model_validator(mode="before")
    @classmethod
    def _variants_inherit(cls, data: Any) -> Any:
        return inherit_defaults(data)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not NAME_RE.match(v) or ".." in v:
            raise ValueError(
                "must be letters, digits, '.', '_' or '-' (at most 100, not starting with '.' or '-', no '..')"
            )
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        return seed_list(v)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        return distinct_seeds(v)

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {shown(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        check_experiment(self)
        return self


