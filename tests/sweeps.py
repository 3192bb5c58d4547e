"""Helpers of the runner, executor and resume tests: `optcmp run` in this process, result
snapshots, and faults on demand loaded by import path (`tests.sweeps:Name`): an optimizer
that raises, a model whose process dies."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from optcmp.cli import app

ROOT = Path(__file__).resolve().parent.parent
# The test process: a dying model spares it, since preflight takes a dry step there. Worker
# processes (forked, spawned, Ray's) inherit the variable and are not spared.
os.environ.setdefault("OPTCMP_TEST_DRIVER_PID", str(os.getpid()))


def run(config: Path, out: Path, *args: object):
    """`optcmp run CONFIG --out OUT` with the sequential engine: these tests are about how
    runs are executed and recorded, not about how they are grouped."""
    return CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--engine", "sequential", *map(str, args)])


def result_files(exp: Path) -> dict[str, bytes]:
    """Each run's result.json as bytes: a redone run differs at least in its measured seconds."""
    return {p.parent.name: p.read_bytes() for p in sorted(exp.glob("*/result.json"))}


class FailingAdam(torch.optim.Adam):
    """Adam that raises at step `fail_at` (None: never), unless OPTCMP_TEST_HEALED is set,
    so a rerun of the same config can succeed. `interrupt: true` raises KeyboardInterrupt
    instead, as Ctrl-C does in the middle of a step."""

    def __init__(self, params, lr: float = 1e-3, fail_at: int | None = None, interrupt: bool = False) -> None:
        super().__init__(params, lr=lr)
        self.fail_at = fail_at
        self.interrupt = interrupt
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        if self.fail_at is not None and self.steps >= self.fail_at and not os.environ.get("OPTCMP_TEST_HEALED"):
            if self.interrupt:
                raise KeyboardInterrupt
            raise RuntimeError(f"injected fault at step {self.steps}")
        return super().step(closure)


class _Dies(nn.Module):
    def __init__(self, inner: nn.Module, marker: Path | None) -> None:
        super().__init__()
        self.inner = inner
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_driver = os.getpid() == int(os.environ["OPTCMP_TEST_DRIVER_PID"])
        if not in_driver and (self.marker is None or not self.marker.exists()):
            if self.marker is not None:
                self.marker.write_text("died once\n")
            os._exit(13)  # the worker process dies, as when killed or out of memory
        return self.inner(x)


def dying_model(in_features: int, out_features: int, marker: str | None = None) -> nn.Module:
    """Kills its process at the first forward pass in a worker process (never in the test
    process, so the driver's preflight, which takes a dry step, survives). With `marker`,
    only the first attempt dies: it leaves the file."""
    return _Dies(nn.Linear(in_features, out_features), Path(marker) if marker else None)
