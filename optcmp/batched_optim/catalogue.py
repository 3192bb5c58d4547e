"""The catalogue: optimizer name → family entry, and what the engine asks of it.

Adding an optimizer is one entry (a `Family` subclass in its own module, listed in
`ENTRIES`) and one row of the equality table in tests/test_batched_optim.py.
"""
from __future__ import annotations

from typing import Any

from optcmp.batched_optim._base import DEFAULT_ONLY, Family
from optcmp.batched_optim.adagrad import Adagrad
from optcmp.batched_optim.adam import Adam
from optcmp.batched_optim.adamax import Adamax
from optcmp.batched_optim.lion import Lion
from optcmp.batched_optim.nadam import NAdam
from optcmp.batched_optim.radam import RAdam
from optcmp.batched_optim.rmsprop import RMSprop
from optcmp.batched_optim.sgd import SGD
from optcmp.imports import is_import_path, load_object

ENTRIES: tuple[Family, ...] = (SGD(), Adam(), RMSprop(), Adagrad(), Adamax(), NAdam(), RAdam(), Lion())
CATALOGUE: dict[str, Family] = {entry.name: entry for entry in ENTRIES}

# Per-member options each family batches (any value, STRUCTURAL ones equal within a
# segment), and the options that may differ between the members of one segment.
PER_MEMBER = {entry.name: entry.per_member for entry in ENTRIES}
STRUCTURAL = {entry.name: entry.structural for entry in ENTRIES}
VARYING = {entry.name: tuple(k for k in entry.per_member if k not in entry.structural) for entry in ENTRIES}
# Which names select a family: torch.optim names (lower case), import paths (exact), classes.
FAMILIES = {name: entry.name for entry in ENTRIES for name in entry.names}
PATHS = {path: entry.name for entry in ENTRIES for path in entry.paths}
CLASSES = {cls: entry.name for entry in ENTRIES for cls in entry.classes}
SUPPORTED = ", ".join([*sorted(FAMILIES), *sorted(PATHS)])


def family_of(name: Any) -> str | None:
    """The catalogue family of an optimizer name (a torch.optim name, any case), an import
    path (`pytorch_optimizer:Lion`, `torch.optim:Adam`) or the class itself; None when it
    has no batched update. A subclass is not its parent's family: it may change the step."""
    if isinstance(name, type):
        return CLASSES.get(f"{name.__module__}.{name.__qualname__}")
    if not isinstance(name, str):
        return None
    if name in PATHS:
        return PATHS[name]
    if not is_import_path(name):
        return FAMILIES.get(name.lower())
    try:
        obj = load_object(name, "optimizer.name")
    except Exception:  # noqa: BLE001 - a path that does not resolve has no family; the run says why
        return None
    return family_of(obj) if isinstance(obj, type) else None


def _is_pair(betas: Any) -> bool:
    return isinstance(betas, (list, tuple)) and len(betas) == 2 and \
        all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)


def unsupported_option(name: Any, options: dict[str, Any], group: bool = False) -> str | None:
    """Why an optimizer with these resolved options cannot be batched, or None. `group`:
    the options are a parameter group's own (`optimizer.groups[i]`)."""
    family = family_of(name)
    if family is None:
        return f"optimizer `{name}` has no batched update (supported: {SUPPORTED})"
    entry = CATALOGUE[family]
    for key, value in options.items():
        if group and key in entry.not_per_group:
            return f"optimizer option `{key}` in a parameter group is not batched ({entry.not_per_group[key]})"
        if key in entry.per_member:
            if key == "betas" and not _is_pair(value):
                return f"optimizer option betas={value!r} is not batched (two numbers are)"
            continue
        if key in DEFAULT_ONLY:
            if value not in DEFAULT_ONLY[key]:
                return f"optimizer option {key}={value!r} is not batched"
            continue
        if key in entry.refused:
            allowed, what = entry.refused[key]
            if value not in allowed:
                return f"optimizer option {key}={value!r} is not batched ({what})"
            continue
        return f"optimizer option `{key}` is not batched"
    return None


def invalid_value(family: str, options: dict[str, Any]) -> str | None:
    """What the optimizer's constructor would refuse in these resolved options (its own
    message), or None. Lets a run be checked without building a torch.optim optimizer,
    whose first construction costs a second of importing torch._dynamo. The checks are
    the constructor's expressions, so a value of the wrong type fails with its TypeError."""
    entry = CATALOGUE[family]
    try:
        return entry.invalid(entry.all_options(options))
    except TypeError as e:
        return str(e)
