"""Helpers shared by the data, model, optimizer and scheduler tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from optcmp.config import load_config
from optcmp.runner import preflight
from optcmp.sweep import expand
from optcmp.trainer import execute


def train_config(path: Path, out: Path, sets: list[str] = ()) -> list[dict[str, Any]]:
    """Check a config as `optcmp run` does, then train each of its runs into `out`."""
    loaded = load_config(path, list(sets))
    specs = expand(loaded.config)
    preflight(loaded, specs)
    return [execute(spec, out, loaded.base_dir) for spec in specs]
