"""Search spaces of a study: the distributions a `tune.space` (or a variant's `space:`)
may give a dotted key, and which keys a space may address. No torch, no Optuna: the study
engine maps a `Distribution` onto Optuna's (`FloatDistribution(low, high, log=…)`,
`IntDistribution`, `CategoricalDistribution`).

    optimizer.lr: {log_uniform: [1.0e-5, 1.0e-1]}   # continuous, log scale; low > 0
    optimizer.momentum: {uniform: [0.8, 0.99]}       # continuous
    train.steps: {int: [100, 1000], log: true}       # integers, optionally on a log scale
    optimizer.weight_decay: {choice: [0.0, 0.01]}    # one of these values
    optimizer.eps: [1.0e-8, 1.0e-6]                  # a plain list: a grid axis (a choice for
                                                     # the random, tpe and qmc samplers)

The grid sampler needs a finite set per key: lists, choices and int ranges (each integer);
a continuous distribution under `sampler: grid` is an error, since there is no one right
way to grid it (give the points as a list).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from optcmp.values import did_you_mean, fmt, got, is_int, is_number, shown

KINDS = ("log_uniform", "uniform", "int", "choice")
FORMS = ("{log_uniform: [low, high]}, {uniform: [low, high]}, {int: [low, high]}, {choice: [values]} "
         "or a list of values (a grid axis)")
TUNABLE = ("model", "data", "train", "optimizer", "scheduler")  # the sections a space may address
MAX_GRID = 100_000  # points of an int range or a whole grid (past it, the grid sampler is not the tool)


def _distinct(values: list[Any]) -> str | None:
    seen: list[Any] = []
    for v in values:
        if any(v == s and type(v) is type(s) for s in seen):
            return f"{shown(v)} is given twice"
        seen.append(v)
    return None


def _parse(v: Any) -> dict[str, Any]:
    """The user's form → the model's fields, with one-line errors."""
    if isinstance(v, list):
        if not v:
            raise ValueError("an empty list; allowed: a list of at least one value (a grid axis)")
        twice = _distinct(v)
        if twice:
            raise ValueError(f"{twice}; allowed: distinct values")
        return {"kind": "grid", "values": v}
    if not isinstance(v, dict):
        raise ValueError(f"expected a distribution, {got(v)}; allowed: {FORMS}")
    kinds = [k for k in v if k != "log"]
    if len(kinds) != 1:
        given = " and ".join(map(str, kinds)) or "only `log`"
        raise ValueError(f"give one distribution, got {given}; allowed: {FORMS}")
    kind = kinds[0]
    if kind not in KINDS:
        raise ValueError(f"unknown distribution `{kind}`{did_you_mean(kind, KINDS)}; allowed: {FORMS}")
    log = v.get("log", False)
    if "log" in v and kind != "int":
        hint = " (use log_uniform)" if kind == "uniform" else ""
        raise ValueError(f"`log` goes with int only{hint}; allowed: {{int: [low, high], log: true}}")
    if not isinstance(log, bool):
        raise ValueError(f"log: expected true or false, {got(log)}")
    body = v[kind]
    if kind == "choice":
        if not isinstance(body, list) or not body:
            raise ValueError(f"choice: expected a list of at least one value, {got(body)}")
        twice = _distinct(body)
        if twice:
            raise ValueError(f"choice: {twice}; allowed: distinct values")
        return {"kind": "choice", "values": body}
    number, check = ("integers", is_int) if kind == "int" else ("numbers", is_number)
    if not isinstance(body, list) or len(body) != 2 or not all(check(x) for x in body):
        raise ValueError(f"{kind}: expected [low, high], two {number}, {got(body)}")
    low, high = body
    if low == high:
        raise ValueError(f"{kind}: empty range [{fmt(low)}, {fmt(high)}]; allowed: low < high")
    if low > high:
        raise ValueError(f"{kind}: low {fmt(low)} is above high {fmt(high)}; allowed: low < high")
    if (kind == "log_uniform" or log) and low <= 0:
        raise ValueError(f"{kind}{' with log' if log else ''}: a log scale needs low > 0, got [{fmt(low)}, {fmt(high)}]; "
                         "allowed: 0 < low < high")
    return {"kind": kind, "low": low, "high": high, "log": log or kind == "log_uniform"}


class Distribution(BaseModel):
    """One key's search distribution; `model_dump` gives back the user's form."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str  # log_uniform | uniform | int | choice | grid (a plain list)
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False  # log_uniform, or an int range on a log scale
    values: list[Any] | None = None  # choice and grid

    @model_validator(mode="before")
    @classmethod
    def _user_form(cls, v: Any) -> Any:
        return v if isinstance(v, Distribution) else _parse(v)

    @model_serializer
    def _as_written(self) -> Any:
        if self.kind == "grid":
            return list(self.values or [])
        if self.kind == "choice":
            return {"choice": list(self.values or [])}
        out: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.kind == "int" and self.log:
            out["log"] = True
        return out

    @property
    def continuous(self) -> bool:
        return self.kind in ("log_uniform", "uniform")

    def points(self) -> list[Any] | None:
        """The finite set of values, for a grid: the list, the choices, every integer of an
        int range (None past MAX_GRID); None for a continuous distribution."""
        if self.values is not None:
            return list(self.values)
        if self.kind == "int" and self.high - self.low < MAX_GRID:
            return list(range(self.low, self.high + 1))
        return None

    def contains(self, value: Any) -> bool:
        """Whether a sampled value lies in this distribution (for tests and checks)."""
        if self.values is not None:
            return any(value == v and type(value) is type(v) for v in self.values)
        if self.kind == "int" and not is_int(value):
            return False
        return is_number(value) and self.low <= value <= self.high

    def endpoints(self) -> list[Any]:
        """Values to validate at the key: both ends of a range, or every listed value."""
        return list(self.values) if self.values is not None else [self.low, self.high]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _is_dict(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is dict


def space_key_problem(root: type[BaseModel], key: str) -> str | None:
    """Why a space key addresses no config value, or None. A key is a field path of the
    config models (`optimizer.lr`, `data.batch_size`), a key of model/data kwargs, or an
    optimizer/scheduler keyword (`optimizer.momentum`: checked against the class at
    preflight, `imports.check_kwargs`)."""
    parts = key.split(".")
    if parts[0] not in TUNABLE:
        return (f"a search space tunes keys of {', '.join(TUNABLE)}{did_you_mean(parts[0], TUNABLE)}; "
                f"`{parts[0]}` is not one of them")
    model = _model_of(root.model_fields[parts[0]].annotation)
    path = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        last = i == len(parts) - 1
        fields = model.model_fields
        if part not in fields:
            if model.model_config.get("extra") == "allow" and last:
                return None  # an optimizer or scheduler keyword
            allowed = ", ".join(f"{path}.{f}" for f in fields)
            extra = f", or a keyword of the {path}" if model.model_config.get("extra") == "allow" else ""
            return f"addresses no config value{did_you_mean(part, fields)}; allowed: {allowed}{extra}"
        annotation = fields[part].annotation
        path = f"{path}.{part}"
        sub = _model_of(annotation)
        if sub is not None and not last:
            model = sub
            continue
        if sub is not None:
            return f"`{path}` is a whole section; give a key inside it"
        if _is_dict(annotation):
            return None if i == len(parts) - 2 else f"give one key of `{path}`, e.g. {path}.width"
        return None if last else f"`{path}` holds a value, not keys"
    return f"`{key}` is a whole section; give a key inside it"

