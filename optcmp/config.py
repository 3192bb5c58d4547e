"""The experiment config: loading, bounds, overrides, and one-line messages. The models
themselves, with their commented defaults, are in `schema` (re-exported here).

`load_config(path, sets, sweeps)` merges the file with `--set`/`--sweep` overrides first
and validates once, so an override is checked exactly like the file's own value. Every
error is an `OptcmpError` naming the file (or the option), the line, the dotted key and
what is allowed: `config.yaml:12: optimizer.lr: expected a number > 0 or null, got yes (a
YAML boolean)`.

Input is bounded: files of at most 1 MiB, YAML nested at most 32 deep and expanding (with
aliases) to at most 100,000 values (`yamlio`), and at most `max_runs` runs (default
10,000), counted from the sweep's lengths before anything is expanded.

Overrides with variants (`optimizers:`): `--set optimizers.sgdm.lr=0.05` sets one
variant's key; `--set optimizer.lr=0.05` sets it for every variant (as a sweep key
`optimizer.lr` does, see `sweep.expand`), while the file's `optimizer:` section holds the
defaults the variants inherit.

Import paths (`package.module:Name`) run code, like a script: see `trust` (`import_paths`,
and `load_config(..., imports=False)` for `--no-imports`).
"""
from __future__ import annotations

import copy
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from optcmp.errors import ConfigError, OptcmpError
from optcmp.schema import (  # noqa: F401 - the models are part of this module's interface
    ACTIVATIONS, LOSSES, MAX_SEED, METRICS, NAME_RE, DataConfig, Distribution, ExperimentConfig, HistogramConfig,
    LogConfig, ModelConfig, OptimizerConfig, SchedulerConfig, SummaryConfig, TrainConfig, TuneConfig, VariantConfig,
)
from optcmp.trust import import_paths, refuse_imports  # noqa: F401 - part of this module's interface
from optcmp.values import did_you_mean as _did_you_mean
from optcmp.values import got, interval, shown, split_keyed
from optcmp.yamlio import Parsed, parse_yaml, read_yaml_file


def _parent(key: str) -> str:
    if key.endswith("]"):
        return key[: key.rindex("[")]
    return key.rpartition(".")[0]


@dataclass
class Source:
    """Where each key of the merged config came from, for error messages."""

    path: str
    lines: dict[str, int] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # dotted key → the scalar as written (`yes`)
    overrides: dict[str, str] = field(default_factory=dict)  # dotted key → "--set k=v"
    own_keys: dict[str, set[str]] = field(default_factory=dict)  # variant → the keys it sets itself

    def where(self, key: str) -> str:
        """`file:line: key` or `--set key=value: key` for the most specific known place."""
        probe = key
        while probe:
            if probe in self.overrides:
                return f"{self.overrides[probe]}: {key}"
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}: {key}"
            probe = _parent(probe)
        return f"{self.path}: {key}"

    def error(self, key: str, message: str) -> OptcmpError:
        return OptcmpError(f"{self.where(key)}: {message}")


@dataclass
class LoadedConfig:
    config: ExperimentConfig
    source: Source
    base_dir: Path  # the config file's folder: relative paths in the config are relative to it

    def locate(self, err: ConfigError, params: dict[str, Any] | None = None, variant: str | None = None) -> OptcmpError:
        """A `ConfigError` met while building a run (its key is the run's, e.g.
        `optimizer.momentum`) as a message naming where the value was given: the sweep axis
        that set it, the variant's own key, or the `optimizer:` default a variant inherited."""
        key, message = err.key, err.message
        for swept, value in (params or {}).items():
            if swept != "variant" and (key == swept or key.startswith((swept + ".", swept + "["))):
                return self.source.error(f"sweep.{self._sweep_key(swept, variant)}", f"{shown(value)}: {message}")
        if variant is not None:
            own = self.source.own_keys.get(variant, set())
            section, _, rest = key.partition(".")
            if section == "optimizer" and (not rest or re.split(r"[.\[]", rest)[0] in own):
                key = f"optimizers.{variant}" + (f".{rest}" if rest else "")
            elif section == "optimizer":
                message = f"(inherited by variant {variant}) {message}"
            elif section == "scheduler" and "scheduler" in own:
                key = f"optimizers.{variant}.{key}"
        return self.source.error(key, message)

    def _sweep_key(self, target: str, variant: str | None) -> str:
        if variant is not None:
            own = f"optimizers.{variant}.{target.removeprefix('optimizer.')}"
            if own in self.config.sweep:
                return own
        return target


# --- messages ----------------------------------------------------------------------


def _unwrap(annotation: Any, meta: list[Any]) -> tuple[Any, list[Any], bool]:
    """(inner annotation, constraints, optional) of Annotated[...] and X | None."""
    optional = False
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            for x in extra:
                meta = [*meta, *(x.metadata if isinstance(x, FieldInfo) else [x])]
            continue
        args = get_args(annotation)
        if get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            optional = True
            if len(rest) == 1:
                annotation = rest[0]
                continue
        return annotation, meta, optional


def _field_at(loc: tuple) -> tuple[Any, list[Any]] | None:
    """The annotation and constraints of the config field at `loc`, or None."""
    annotation: Any = ExperimentConfig
    meta: list[Any] = []
    for part in loc:
        annotation, meta, _ = _unwrap(annotation, meta)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(str(part))
            if info is None:
                return None
            annotation, meta = info.annotation, list(info.metadata)
        elif get_origin(annotation) is list and isinstance(part, int):
            annotation, meta = get_args(annotation)[0], []
        elif get_origin(annotation) is dict:
            annotation, meta = get_args(annotation)[1], []
        else:
            return None
    return annotation, meta


def _describe(annotation: Any, meta: list[Any]) -> str | None:
    annotation, meta, optional = _unwrap(annotation, meta)
    names = {"Gt": "gt", "Ge": "ge", "Lt": "lt", "Le": "le"}
    bounds = {type(m).__name__: getattr(m, names[type(m).__name__]) for m in meta if type(m).__name__ in names}
    low = bounds.get("Gt", bounds.get("Ge"))
    high = bounds.get("Lt", bounds.get("Le"))
    span = interval(low, high, "Gt" in bounds, "Lt" in bounds)
    origin = get_origin(annotation)
    if annotation is bool:
        text = "true or false"
    elif annotation is int:
        text = f"an integer{span}"
    elif annotation is float:
        text = f"a number{span}"
    elif annotation is str:
        text = "a string"
    elif origin is Literal:
        text = "one of " + ", ".join(map(str, get_args(annotation)))
    elif origin is list:
        inner = _describe(get_args(annotation)[0], [])
        text = f"a list of {_plural(inner)}" if inner else "a list"
    elif origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        text = "a mapping"
    else:
        return None
    return f"{text} or null" if optional else text


def _plural(text: str) -> str:
    if text == "true or false":
        return "booleans"
    text = re.sub(r"^an? ", "", text)
    word, _, rest = text.partition(" ")
    return f"{word}s {rest}".rstrip() if not word.endswith("s") else text


def _key_of(loc: tuple) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")


def format_validation_error(err: ValidationError, source: Source) -> OptcmpError:
    """The first error pydantic found, as one line with its file, line, key and what is allowed
    (`a number in [0, 1)`, `a list of integers ≥ 1`, from the field's type and constraints)."""
    return source.error(*explain(err, source))


def explain(err: ValidationError, source: Source) -> tuple[str, str]:
    """(dotted key, message) of the first error pydantic found."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
    kind, value = e["type"], e.get("input")
    key = _key_of(loc)
    text = source.texts.get(key)
    if kind == "extra_forbidden":
        owner = _expected_owner(loc[:-1])
        allowed = list(owner.model_fields) if owner else []
        msg = f"unknown key{_did_you_mean(loc[-1], allowed)}; allowed: {', '.join(allowed)}"
    elif kind == "value_error":
        sub, msg = split_keyed(str(e.get("ctx", {}).get("error", e["msg"])))
        msg = msg.removeprefix("Value error, ")
        key = f"{key}.{sub}".strip(".").replace(".[", "[") if sub else key
        if text is not None and not sub:  # a validator's own message: the value as the user wrote it
            msg = msg.replace(f"got {shown(value)}", f"got {shown(value, text)}", 1)
    else:
        field = _field_at(loc)
        expected = _describe(*field) if field else None
        if kind == "literal_error":
            choices = get_args(_unwrap(field[0], [])[0]) if field else ()
            msg = f"expected {expected}, {got(value, text)}{_did_you_mean(value, choices)}"
        elif expected and kind.startswith(("greater_than", "less_than", "finite_number")):
            msg = f"expected {expected}, got {shown(value, text)}"
            if re.fullmatch(r"(tune\.)?(final_)?seeds\[\d+\]", key) and kind.startswith("less_than"):
                msg += " (the largest seed is 2**63 − 1 − 0x5EED: the shuffle generator gets seed + 0x5EED)"
        elif expected:
            msg = f"expected {expected}, {got(value, text)}"
        else:
            msg = f"{e['msg']}, {got(value, text)}"
    return key or "(top level)", msg


def _expected_owner(loc: tuple) -> type[BaseModel] | None:
    """The model class that owns the mapping at `loc` (for did-you-mean lists)."""
    field = _field_at(loc)
    owner = _unwrap(field[0], [])[0] if field else None
    return owner if isinstance(owner, type) and issubclass(owner, BaseModel) else None


# --- loading -----------------------------------------------------------------------


def set_dotted(data: dict, key: str, value: Any, where: str) -> None:
    """Set `a.b.c` in nested dicts, creating levels; a non-mapping in the way is an error.
    The value is copied: a sweep value is never shared between runs."""
    parts = key.split(".")
    cur = data
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        if not isinstance(nxt, dict):
            raise OptcmpError(f"{where}: {'.'.join(parts[: i + 1])} is not a mapping, cannot set {key}")
        cur = nxt
    cur[parts[-1]] = copy.deepcopy(value)


def _split_override(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_][A-Za-z0-9_+-]*)*", key):
        raise OptcmpError(f"{option} {text!r}: expected KEY=VALUE with a dotted key, e.g. {option} optimizer.lr=0.001")
    if not value.strip():
        what = "at least one value, e.g. --sweep optimizer.lr=0.01,0.1" if option == "--sweep" else \
            "a value (null for the default), e.g. --set optimizer.lr=0.001"
        raise OptcmpError(f"{option} {text}: nothing after `=`; allowed: {what}")
    return key, value


def _check(data: dict[str, Any], source: Source) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, source) from None


def _check_at(base: dict[str, Any], key: str, value: Any, where: str, source: Source, text: str | None) -> None:
    """Validate the config with `value` (written as `text`) put at `key`; an error names `where`."""
    trial = copy.deepcopy(base)
    set_dotted(trial, key, value, source.where(where))
    try:
        ExperimentConfig.model_validate(trial)
    except ValidationError as err:
        found, message = explain(err, Source(source.path, texts={key: text} if text is not None else {}))
        raise source.error(where, message if found == key else f"value {shown(value)}: {found}: {message}") from None


def _mapping(data: Any, path: str) -> dict[str, Any]:
    """The document, which must be a mapping: an empty file (or only comments) is an error."""
    if data is None:
        raise OptcmpError(f"{path}: the config is empty; give at least one key (see configs/ for examples)")
    if not isinstance(data, dict):
        raise OptcmpError(f"{path}: the config must be a mapping of keys (name, model, data, …), got {shown(data)}")
    return data


def validate(data: Any, source: Source) -> ExperimentConfig:
    """Validate a merged config dict, every value of its sweep axes and every end of its
    search spaces, each at the key it sets."""
    config = _check(_mapping(data, source.path), source)
    base = config.model_dump(mode="python", exclude={"sweep", "tune", "workloads"})
    for key, values in config.sweep.items():
        if key != "variant":
            for i, value in enumerate(values):
                _check_at(base, key, value, f"sweep.{key}", source, source.texts.get(f"sweep.{key}[{i}]"))
    spaces = [("tune.space", None, config.tune.space if config.tune else {})]
    spaces += [(f"optimizers.{n}.space", n, v.space) for n, v in config.optimizers.items()]
    for where, variant, space in spaces:
        for key, dist in space.items():
            target = key if variant is None or key.split(".")[0] not in ("optimizer", "scheduler") else \
                f"optimizers.{variant}.{key.removeprefix('optimizer.')}"
            for value in dist.endpoints():
                _check_at(base, target, value, f"{where}.{key}", source, None)
    return config


def load_config(path: str | Path, sets: list[str] = (), sweeps: list[str] = (), imports: bool = True,
                parsed: Parsed | None = None) -> LoadedConfig:
    """Read the YAML file, apply `--set KEY=VALUE` and `--sweep KEY=V1,V2`, validate once.
    `imports=False` (`--no-imports`) refuses every import path the config names.

    `parsed`: a config that is no file (the API's YAML text or dict); `path` then only names
    it in messages, and relative paths in it are the working folder's."""
    path = Path(path)
    parsed = read_yaml_file(path) if parsed is None else parsed
    data = _mapping(parsed.value, str(path))
    source = Source(str(path), parsed.lines, parsed.texts)
    data.setdefault("name", _default_name(path))
    for text in sets:
        key, raw = _split_override(text, "--set")
        where = f"--set {text}"
        value = parse_yaml(raw, where).value
        for target in _targets(data, key):
            set_dotted(data, target, value, where)
            source.overrides[target] = where
            source.texts[target] = raw.strip()
            # a fixed value replaces a sweep axis over the same key
            if isinstance(data.get("sweep"), dict):
                data["sweep"].pop(target, None)
    for text in sweeps:
        key, raw = _split_override(text, "--sweep")
        where = f"--sweep {text}"
        parsed = parse_yaml(f"[{raw}]", where)
        if not isinstance(data.get("sweep"), dict):
            data["sweep"] = {}
        data["sweep"][key] = parsed.value
        source.overrides[f"sweep.{key}"] = where
        source.texts.update({f"sweep.{key}{k}": t for k, t in parsed.texts.items()})
    if isinstance(data.get("optimizers"), dict):
        source.own_keys = {n: set(v) for n, v in data["optimizers"].items() if isinstance(v, dict)}
    loaded = LoadedConfig(validate(data, source), source, path.parent)
    if not imports:
        refuse_imports(loaded)
    return loaded


def _targets(data: dict[str, Any], key: str) -> list[str]:
    """Where `--set key=…` goes: the key, and with variants, `optimizer.K` also into every
    variant (it applies to all, as a sweep key does) and `scheduler.K` into every variant
    that has a scheduler of its own."""
    variants = data.get("optimizers")
    if not isinstance(variants, dict):
        return [key]
    section, _, rest = key.partition(".")
    if section == "optimizer" and rest:
        return [key, *(f"optimizers.{n}.{rest}" for n in variants)]
    if section == "scheduler":
        return [key, *(f"optimizers.{n}.{key}" for n, v in variants.items() if isinstance(v, dict) and "scheduler" in v)]
    return [key]


def _default_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".-") or "experiment"
    return stem[:100]
