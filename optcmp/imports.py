"""`package.module:Name` import paths, used by model, data, optimizer and scheduler kinds."""
from __future__ import annotations

import importlib
from typing import Any

from optcmp.errors import ConfigError


def is_import_path(text: str) -> bool:
    return ":" in text


def load_object(path: str, where: str) -> Any:
    """Import `package.module:Name` (Name may be dotted); a missing piece is a user error."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(where, f"`{path}` is not an import path; expected package.module:Name")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(where, f"cannot import module `{module_name}` ({e})") from None
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(where, f"importing `{module_name}` failed: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(where, f"module `{module_name}` has no `{attr}`") from None
    return obj
