"""One run's folder through its lifecycle, the same for both engines.

    prepared   the folder emptied, config.yaml written, the TensorBoard logger open
    finished   ok (metrics, weights.npz), diverged or pruned: HParams entry, logger closed,
               result.json written last, atomically
    failed     the same with error.txt holding the traceback
    interrupted  Ctrl-C or SIGTERM: result.json says so
    abandoned  a config error stopped the run: the logger is closed and no result.json is
               written, so the next attempt redoes it

A folder without result.json is a run that did not finish; the runner redoes it.
"""
from __future__ import annotations

import io
import math
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optcmp.resolve import ResolvedRun
from optcmp.results import Status, atomic_write_bytes, atomic_write_text, write_result
from optcmp.sweep import RunSpec
from optcmp.tb.logger import RunLogger
from optcmp.units import base_result
from optcmp.yamlio import dump_yaml

IO_THREADS = 4  # threads writing run folders at the start and end of a vectorized group


def in_threads(fn: Callable, items) -> list:
    """`[fn(x) for x in items]` on a few threads: writing run folders mostly waits on
    fsync, which needs no core, so members' folders are written side by side."""
    items = list(items)
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def hparams_of(spec: RunSpec, decay: str) -> dict[str, Any]:
    """The run's HParams: optimizer, decay, the swept values, and the seed as text (the
    dashboard has no integers and shows every number to five digits: seed `0.0000`; the
    seed names a row, it is no quantity to plot on an axis)."""
    hp: dict[str, Any] = {"optimizer.name": spec.config.optimizer.name, "decay": decay, "seed": str(spec.seed)}
    for k, v in spec.params.items():
        hp[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return hp


def hparams_metrics(run: ResolvedRun) -> list[str]:
    """The metrics the HParams dashboard lists for a run: those its task and data split give
    (the same for every run of a config, whatever became of it), without the bookkeeping
    (`seconds`, `group_size`). The final values first, then the tails and the best values:
    the dashboard shows the first five at first."""
    kinds = [("val", "loss"), ("val", "accuracy"), ("train", "loss"), ("train", "accuracy")]
    if run.data.n_val == 0:
        kinds = [k for k in kinds if k[0] != "val"]
    if run.data.task != "classification":
        kinds = [k for k in kinds if k[1] != "accuracy"]
    names = [f"{split}_{kind}" for split, kind in kinds]
    names += [f"{split}_{kind}_tail" for split, kind in kinds if (split, kind) != ("train", "accuracy")]
    names += [f"best_{split}_{kind}" for split, kind in kinds if (split, kind) != ("train", "accuracy")]
    return names + ["weight_norm", "near_zero_frac", "steps", "steps_per_second"]


class RunFolder:
    """A run's folder, result and logger, from `prepared` to `finished`."""

    def __init__(self, run: ResolvedRun, exp_dir: Path, engine: str, device: torch.device) -> None:
        self.run, self.spec = run, run.spec
        self.dir = Path(exp_dir) / run.spec.run_id
        self.result = base_result(run, engine, str(device))
        self.result["param_groups"] = run.groups_record
        if self.dir.is_dir() and not self.dir.is_symlink():  # a rerun never appends to old events
            shutil.rmtree(self.dir)
        elif self.dir.is_symlink() or self.dir.exists():  # a file, or a link, in the run folder's place
            self.dir.unlink()
        self.dir.mkdir(parents=True)
        text = dump_yaml(run.config.model_dump(mode="json"))
        atomic_write_text(self.dir / "config.yaml", text)
        self.logger = RunLogger(self.dir, histogram_bins=run.config.log.histograms.bins)
        self.logger.text("config", f"```yaml\n{text}```")
        self.done = False

    def log(self, step: int, tags: tuple[str, ...], values: list[float]) -> None:
        self.logger.scalar_row(step, tags, values)

    def save_weights(self, named: list[tuple[str, torch.Tensor]]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{n: p.detach().float().cpu().numpy() for n, p in named})
        atomic_write_bytes(self.dir / "weights.npz", buf.getvalue())

    def finish(self, status: Status, seconds: float, **fields: Any) -> None:
        """Record the outcome (`status` and any other result fields, e.g. `metrics`,
        `diverged_step`), register the HParams entry, close the logger, write result.json."""
        self.result.update(status=status, **fields)
        values = self.result["metrics"]
        metrics = {name: values[name] if isinstance(values.get(name), (int, float)) and math.isfinite(values[name])
                   else None for name in hparams_metrics(self.run)}
        self.logger.hparams(hparams_of(self.spec, self.result["decay"]), metrics, status=status)
        self.logger.close()
        self.result["metrics"].setdefault("seconds", seconds)
        write_result(self.dir, self.result)
        self.done = True

    def fail(self, error: BaseException, traceback_text: str, seconds: float) -> None:
        (self.dir / "error.txt").write_text(traceback_text)
        self.finish(Status.FAILED, seconds, error=f"{type(error).__name__}: {error}")

    def interrupt(self, seconds: float) -> None:
        self.finish(Status.INTERRUPTED, seconds, error="interrupted by the user")

    def abandon(self) -> None:
        """A config error stopped the run: close the logger, write no result."""
        self.logger.close()
        self.done = True
