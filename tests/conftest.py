"""Shared fixtures: tiny configs that train in well under a second."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so `tests.<module>:factory` import paths resolve
    sys.path.insert(0, str(ROOT))

TINY = """\
name: tiny
seeds: [0]
device: cpu
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 20, loss: mse}
optimizer: {name: adam, lr: 0.01}
log: {every: 5, histograms: {every: 10}}
"""


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config into tmp_path and return its path."""

    def write(text: str = TINY, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
