"""The experiment config: pydantic models with commented defaults, loading, overrides.

`load_config(path, sets, sweeps)` merges the file with `--set`/`--sweep` overrides first
and validates once, so an override is checked exactly like the file's own value. Every
error is an `OptcmpError` naming the file (or the option), the dotted key, the line and
what is allowed.
"""
from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from optcmp.errors import OptcmpError
from optcmp.yamlio import parse_value, read_yaml_file

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ACTIVATIONS = ("none", "relu", "gelu", "tanh", "sigmoid", "silu", "elu", "leaky_relu", "softplus")
LOSSES = ("auto", "mse", "l1", "smooth_l1", "huber", "cross_entropy", "nll", "bce_with_logits")


def _one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    """`value` if it is one of `choices`, else a did-you-mean error listing them."""
    if value not in choices:
        raise ValueError(f"unknown {what} `{value}`{_did_you_mean(value, choices)}; allowed: {', '.join(choices)}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    # The defaults are the reference LayerNorm MLP of the weight-decay experiment.
    kind: str = "mlp"  # mlp | linear | "package.module:factory"
    hidden: list[int] = Field(default_factory=lambda: [20, 20, 20, 20])
    norm: Literal["none", "layernorm", "batchnorm"] = "layernorm"
    activation: str = "none"
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to an imported factory

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("every hidden width must be ≥ 1")
        return v

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
    name: str | None = None  # sklearn data set shipped with the package: breast_cancer, digits, wine, iris, diabetes, linnerud
    path: str | None = None  # csv file, relative to the config file's folder
    target: str | None = None  # csv target column
    columns: list[str] | None = None  # csv feature columns (default: every column but the target)
    task: Literal["auto", "regression", "classification"] = "auto"  # auto: inferred from the target
    standardize: bool = False  # features to mean 0, std 1, fitted on the training split only
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to an imported factory

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("batch_size must be `full` or an integer ≥ 1")
        return v


class TrainConfig(_Strict):
    steps: int | None = Field(None, ge=1)  # optimizer steps; give steps or epochs
    epochs: int | None = Field(None, ge=1)  # passes over the training set
    loss: str = "auto"  # auto: mse for regression, cross_entropy for classification
    diverge_threshold: float | None = None  # a loss above this also counts as diverged

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
    model_config = ConfigDict(extra="allow", validate_assignment=True)
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
    model_config = ConfigDict(extra="allow", validate_assignment=True)
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


class ExperimentConfig(_Strict):
    name: str = "experiment"  # the folder under the output root
    seeds: list[int] = Field(default_factory=lambda: [0])  # or a count N, meaning 0..N-1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    sweep: dict[str, list[Any]] = Field(default_factory=dict)  # dotted key → values (a grid)
    log: LogConfig = Field(default_factory=LogConfig)
    summary: SummaryConfig = Field(default_factory=SummaryConfig)

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
        if isinstance(v, bool):
            raise ValueError("a list of integers or a count")
        if isinstance(v, int):
            if v < 1:
                raise ValueError("a count must be ≥ 1")
            return list(range(v))
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one seed")
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        if any(s < 0 for s in v):
            raise ValueError("seeds must be ≥ 0")
        return v

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError("allowed: auto, cpu, cuda, cuda:N, mps")
        return v

    @field_validator("sweep")
    @classmethod
    def _sweep_lists(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key}: give at least one value")
            if key in ("sweep", "seeds", "name") or key.startswith("sweep."):
                raise ValueError(f"{key}: cannot be swept (use `seeds` for seeds)")
        return v


# --- loading -------------------------------------------------------------------------


@dataclass
class Source:
    """Where each key of the merged config came from, for error messages."""

    path: str
    lines: dict[str, int] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)  # dotted key → "--set k=v"

    def where(self, key: str) -> str:
        """`file:line: key` or `--set key=value: key` for the most specific known place."""
        probe = key
        while probe:
            if probe in self.overrides:
                return f"{self.overrides[probe]}: {key}"
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}: {key}"
            probe = probe.rpartition(".")[0]
        return f"{self.path}: {key}"

    def error(self, key: str, message: str) -> OptcmpError:
        return OptcmpError(f"{self.where(key)}: {message}")


@dataclass
class LoadedConfig:
    config: ExperimentConfig
    source: Source
    base_dir: Path  # the config file's folder: relative paths in the config are relative to it


def _did_you_mean(word: str, choices) -> str:
    word = str(word)
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    # difflib ranks `adamax` above `adam` for `adma`; a typo rarely changes the length
    best = min(close, key=lambda c: (abs(len(c) - len(word)), -difflib.SequenceMatcher(None, word, c).ratio()))
    return f" (did you mean `{best}`?)"


def _model_fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _field_model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the mapping at `loc` (for did-you-mean lists)."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        ann = info.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def _format_validation_error(err: ValidationError, source: Source, prefix: str = "") -> OptcmpError:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
    # pydantic names union members in loc (`int`, `literal['full']`); drop them
    loc = tuple(p for p in loc if p not in ("int", "str", "float", "list[int]", "function-before[_seed_count(), list[int]]"))
    key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
    key = f"{prefix}{key}" if prefix else key
    if e["type"] == "extra_forbidden":
        owner = _field_model_at(loc[:-1])
        allowed = _model_fields(owner) if owner else []
        msg = f"unknown key{_did_you_mean(loc[-1], allowed)}; allowed: {', '.join(allowed)}"
    else:
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("literal_error",):
            msg = msg.replace("Input should be", "allowed:")
        if e["type"].endswith("_type") or e["type"].endswith("_parsing"):
            msg = f"{msg}, got {e.get('input')!r}"
    return source.error(key or "(top level)", msg)


def set_dotted(data: dict, key: str, value: Any, where: str) -> None:
    """Set `a.b.c` in nested dicts, creating levels; a non-mapping in the way is an error."""
    parts = key.split(".")
    cur = data
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        if not isinstance(nxt, dict):
            raise OptcmpError(f"{where}: {'.'.join(parts[: i + 1])} is not a mapping, cannot set {key}")
        cur = nxt
    cur[parts[-1]] = value


def _split_override(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise OptcmpError(f"{option} {text!r}: expected KEY=VALUE with a dotted key, e.g. {option} optimizer.lr=0.001")
    return key, value


def validate(data: Any, source: Source) -> ExperimentConfig:
    """Validate a merged config dict, and every point of its sweep grid."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OptcmpError(f"{source.path}: the config must be a mapping of keys (name, model, data, …)")
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise _format_validation_error(err, source) from None
    # A swept key must be a real config key, and each value valid there: validate the
    # config with each value put in place (the keys of optimizer/scheduler kwargs are
    # checked later against the class signature).
    base = config.model_dump(mode="python", exclude={"sweep"})
    for key, values in config.sweep.items():
        for value in values:
            trial = copy.deepcopy(base)
            set_dotted(trial, key, value, source.where(f"sweep.{key}"))
            try:
                ExperimentConfig.model_validate(trial)
            except ValidationError as err:
                e = _format_validation_error(err, source)
                raise source.error(f"sweep.{key}", f"value {value!r}: {str(e).split(': ', 2)[-1]}") from None
    return config


def load_config(path: str | Path, sets: list[str] = (), sweeps: list[str] = (),
                parsed: tuple[Any, dict[str, int]] | None = None) -> LoadedConfig:
    """Read the YAML file, apply `--set KEY=VALUE` and `--sweep KEY=V1,V2`, validate once.

    `parsed`: (data, key → line) of a config that is no file (the API's YAML text or dict);
    `path` then only names it in messages, and relative paths in it are the working folder's."""
    path = Path(path)
    data, lines = read_yaml_file(path) if parsed is None else parsed
    source = Source(str(path), lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OptcmpError(f"{path}: the config must be a mapping of keys (name, model, data, …)")
    data.setdefault("name", _default_name(path))
    for text in sets:
        key, raw = _split_override(text, "--set")
        where = f"--set {text}"
        value = parse_value(raw, where)
        set_dotted(data, key, value, where)
        source.overrides[key] = where
        # a fixed value replaces a sweep axis over the same key
        if isinstance(data.get("sweep"), dict):
            data["sweep"].pop(key, None)
    for text in sweeps:
        key, raw = _split_override(text, "--sweep")
        where = f"--sweep {text}"
        values = parse_value(f"[{raw}]", where)
        if not isinstance(data.get("sweep"), dict):
            data["sweep"] = {}
        data["sweep"][key] = values
        source.overrides[f"sweep.{key}"] = where
    return LoadedConfig(validate(data, source), source, path.parent)


def _default_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".-") or "experiment"
    return stem[:100]
