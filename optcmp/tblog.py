"""One run's logger: scalars to TensorBoard and metrics.csv, histograms, text, hparams.

The trainer only talks to `RunLogger`; how events are encoded and written is private here.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from tensorboardX import SummaryWriter


class RunLogger:
    """Writes one run's TensorBoard events and its `metrics.csv` into `run_dir`."""

    def __init__(self, run_dir: Path, *, histogram_bins: int = 64) -> None:
        self.run_dir = Path(run_dir)
        self.histogram_bins = histogram_bins
        self._writer = SummaryWriter(str(self.run_dir))
        self._rows: list[dict[str, float]] = []
        self._columns: dict[str, None] = {"step": None}

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log scalars at `step` to TensorBoard and to the metrics.csv row of that step."""
        row = {"step": step}
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)
            row[tag] = value
            self._columns.setdefault(tag)
        self._rows.append(row)

    def histograms(self, step: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Log one histogram per tensor at `step`; tags are the mapping's keys."""
        for tag, t in tensors.items():
            self._writer.add_histogram(tag, t.detach().float().cpu(), step, bins=self.histogram_bins)

    def text(self, tag: str, text: str) -> None:
        self._writer.add_text(tag, text, 0)

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """Register this run in the HParams dashboard with its swept values and final metrics."""
        self._writer.add_hparams(dict(hparams), dict(metrics), name=".")

    def close(self) -> None:
        self._writer.close()
        self._write_csv()

    def _write_csv(self) -> None:
        path = self.run_dir / "metrics.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self._columns))
            w.writeheader()
            w.writerows(self._rows)
        os.replace(tmp, path)
