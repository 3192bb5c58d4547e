"""`package.module:Name` import paths and keyword checks for the objects they name.

Model, data, optimizer and scheduler kinds all accept an import path, so the user's own
code plugs in without registration. Both a path that does not resolve and a keyword the
named object does not take are user errors (`ConfigError`), found before any training.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from optcmp.errors import ConfigError

# Arguments optcmp passes itself, never expected from the config.
SUPPLIED = ("self", "params", "optimizer")


def is_import_path(text: str) -> bool:
    return isinstance(text, str) and ":" in text


def _import_module(module_name: str, path: str, where: str) -> Any:
    # The `optcmp` console script does not put the current folder on sys.path as
    # `python -m` does; users expect `mymodels:Net` next to their config to import.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(
                where, f"cannot import module `{missing}` (from `{path}`): not installed and not on the Python path"
            ) from None
        raise ConfigError(where, f"importing `{module_name}` failed: no module named `{missing}`") from None
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(where, f"importing `{module_name}` failed: {type(e).__name__}: {e}") from None


def load_object(path: str, where: str) -> Any:
    """Import `package.module:Name` (Name may be dotted); a missing piece is a user error."""
    from optcmp.config import _did_you_mean

    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(where, f"`{path}` is not an import path; expected package.module:Name")
    obj: Any = _import_module(module_name, path, where)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(where, f"module `{module_name}` has no `{attr}`{_did_you_mean(part, names)}")
        obj = getattr(obj, part)
    return obj


def colon_hint(text: str) -> str:
    """For a dotted name without a colon, the form an import path takes."""
    return f" (an import path names the object after a colon: `{text}:Name`)" if "." in text and ":" not in text else ""


def display_name(obj: Any) -> str:
    return getattr(obj, "__name__", type(obj).__name__)


def signature_of(obj: Any) -> inspect.Signature | None:
    """The call signature, or None for objects Python cannot introspect (some C types)."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def check_kwargs(
    section: str, obj: Any, kwargs: dict[str, Any], supplied: tuple[str, ...] = SUPPLIED, own: tuple[str, ...] = ()
) -> None:
    """Every keyword must be a parameter of `obj` (unless it takes **kwargs), and every
    required parameter must be given (by the config or, for `supplied`, by optcmp).
    `own` are the section's keys that optcmp consumes itself, offered in did-you-mean too."""
    from optcmp.config import _did_you_mean

    sig = signature_of(obj)
    if sig is None:
        return
    params = sig.parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in supplied}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in kwargs:
            if key not in named and key not in supplied:
                allowed = ", ".join(sorted(named)) or "none"
                raise ConfigError(
                    f"{section}.{key}",
                    f"`{display_name(obj)}` takes no argument `{key}`{_did_you_mean(key, [*own, *named])}; "
                    f"allowed: {allowed}",
                )
    for name, p in params.items():
        required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and name not in kwargs and name not in supplied:
            raise ConfigError(f"{section}.{name}", f"`{display_name(obj)}` needs `{name}`")
