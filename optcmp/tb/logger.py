"""One run's logger: scalars to TensorBoard and metrics.csv, histograms, text, hparams, and
the Custom Scalars layout.

The trainer only talks to `RunLogger`; how events are encoded and written is private here.
Histograms are summarized in batches (`histograms.py`): on a GPU by a few ops on the device
per step; on the CPU the step's tensors are only copied, and numpy summarizes many steps at
once on a background thread, which also encodes and writes every event (`events.py`). So
logging every parameter and gradient at every step costs little training time, and, at 30
buckets of 16 bytes, little disk.
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName, Status
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.layout_pb2 import Category, Chart, Layout, MultilineChartContent
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto
from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

from optcmp.results import Status as RunStatus
from optcmp.results import atomic_write_text

from . import histograms as hist
from .events import BatchJob, EventFileWriter, event_bytes, scalar_summaries, scalar_summary

# TensorBoard's own default for histograms (tf.summary.histogram): enough to show a
# distribution's shape, and small on disk (16 bytes a bucket).
DEFAULT_HISTOGRAM_BINS = 30

_EVENTS_GLOB = "events.out.tfevents.*"
# The final metrics' scalars, which the HParams dashboard reads its metric values from. The
# tilde sorts after every letter, so the Scalars and Time Series tabs, which open their
# first groups, open on the training curves, with these single-point charts last and closed.
FINAL_PREFIX = "~final/"

# The Custom Scalars tab (tensorboard/plugins/custom_scalar): one layout per run, which the
# plugin merges across runs (categories by title, charts without duplicates). A chart is
# shown where the run logs a tag it matches; (category, [(chart title, tag regex)]).
_LAYOUT_TAG = "custom_scalars__config__"
LAYOUT = (
    ("loss", [("train/loss", r"^train/loss$"), ("val/loss", r"^val/loss$")]),
    ("accuracy", [("val/accuracy", r"^val/accuracy$")]),
    ("learning rate", [("lr (each parameter group)", r"^lr/")]),
    ("norms", [("grad_norm", r"^grad_norm$"), ("weight_norm", r"^weight_norm$"), ("update_ratio", r"^update_ratio$")]),
)

# Tags and status codes the HParams plugin looks for (tensorboard/plugins/hparams/metadata.py).
_HPARAMS_PLUGIN = "hparams"
_EXPERIMENT_TAG = "_hparams_/experiment"
_SESSION_START_TAG = "_hparams_/session_start_info"
_SESSION_END_TAG = "_hparams_/session_end_info"
_STATUS = {
    RunStatus.OK: Status.STATUS_SUCCESS,
    RunStatus.DIVERGED: Status.STATUS_FAILURE,
    RunStatus.FAILED: Status.STATUS_FAILURE,
    RunStatus.PRUNED: Status.STATUS_UNKNOWN,  # stopped on purpose: neither success nor failure
    RunStatus.INTERRUPTED: Status.STATUS_UNKNOWN,  # the proto has no "aborted"
}


class RunLogger:
    """Writes one run's TensorBoard events and its `metrics.csv` into `run_dir`.

    Stale event files and `metrics.csv` of an earlier, unfinished attempt of the run are
    removed first: a redone run starts from step 0 and must not show twice in TensorBoard.
    """

    def __init__(self, run_dir: Path, *, histogram_bins: int = DEFAULT_HISTOGRAM_BINS) -> None:
        if histogram_bins < 1:
            raise ValueError(f"histogram_bins must be at least 1, got {histogram_bins}")
        self.run_dir = Path(run_dir)
        self.histogram_bins = histogram_bins
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.run_dir.glob(_EVENTS_GLOB), self.run_dir / "metrics.csv"]:
            stale.unlink(missing_ok=True)
        self._events = EventFileWriter(self.run_dir)
        self._start_time = time.time()
        self._rows: dict[int, dict[str, float]] = {}  # step -> row, in the order first logged
        self._columns: dict[str, None] = {"step": None}
        self._tag_sets: set[tuple[str, ...]] = set()  # tag tuples already in _columns
        self._layout_written = False
        self._last_step = 0
        self._closed = False

    @property
    def events_path(self) -> Path:
        """The event file this logger writes."""
        return self._events.path

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log scalars at `step` to TensorBoard and to the metrics.csv row of that step.

        Several calls for one step (e.g. training, then validation values) fill one row.
        """
        self.scalar_row(step, tuple(values), [float(v) for v in values.values()])

    def scalar_row(self, step: int, tags: tuple[str, ...], values: Sequence[float]) -> None:
        """`scalars` with the tags and the (float) values apart: engines that log the same
        tags for many runs pass one tags tuple to all of them, and the events of all steps
        queued with those tags are encoded in one batch."""
        row = self._rows.get(step)
        if row is None:
            row = self._rows[step] = {"step": step}
        row.update(zip(tags, values))
        if tags not in self._tag_sets:
            self._tag_sets.add(tags)
            self._columns.update(dict.fromkeys(tags))
            if not self._layout_written:
                self._write_layout(tags)
        self._last_step = max(self._last_step, step)
        self._events.submit(_ScalarJob(step, time.time(), tags, values))

    def _write_layout(self, tags: tuple[str, ...]) -> None:
        """The Custom Scalars layout, once, with the run's first scalars: the charts of
        `LAYOUT` that match one of `tags` (a log point's scalars: all the run will log)."""
        categories = []
        for title, charts in LAYOUT:
            shown = [Chart(title=name, multiline=MultilineChartContent(tag=[regex]))
                     for name, regex in charts if any(re.search(regex, tag) for tag in tags)]
            if shown:
                categories.append(Category(title=title, chart=shown))
        if not categories:
            return
        self._layout_written = True
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
        tensor = TensorProto(dtype="DT_STRING", string_val=[Layout(category=categories).SerializeToString()],
                             tensor_shape=TensorShapeProto())
        summary = Summary(value=[Summary.Value(tag=_LAYOUT_TAG, metadata=metadata, tensor=tensor)])
        wall = time.time()
        self._events.submit(lambda: [Event(wall_time=wall, step=0, summary=summary).SerializeToString()])

    def histograms(self, step: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Log one histogram per tensor at `step`; tags are the mapping's keys.

        The tensors may be live parameters: they are copied, or summarized on their device,
        in a few batched ops before this returns; the rest happens on the writer thread.
        Empty tensors are skipped.
        """
        log_histograms(step, [(self, tensors)])

    def text(self, tag: str, text: str) -> None:
        """Store a text (e.g. tag `config`, the resolved YAML) in TensorBoard's Text tab.

        TensorBoard renders it as markdown, so YAML belongs in a ```yaml fence.
        """
        summary = _text_summary(tag, text)
        wall = time.time()
        self._events.submit(lambda: [Event(wall_time=wall, step=0, summary=summary).SerializeToString()])

    def hparams(
        self, hparams: Mapping[str, object], metrics: Mapping[str, float | None], *, status: str = "ok"
    ) -> None:
        """Register this run in the HParams dashboard with its swept values and final metrics.

        Call once, at the end of the run. `hparams` should hold the swept values by dotted
        key and `seed`, so seeds of one config show as separate rows. `metrics` names every
        metric the dashboard lists for the run, in order, with its value, or None where the
        run has none (a diverged run's): the runs of an experiment should name the same
        metrics, as the dashboard takes its columns from one of them. Each value is also
        logged as the scalar `~final/<name>` (the dashboard reads metric values from
        scalars; see `FINAL_PREFIX`). `status` (a `results.Status`: ok, diverged, pruned,
        failed, interrupted) sets the session's status in the dashboard.
        """
        finals = [(FINAL_PREFIX + name, float(value)) for name, value in metrics.items() if value is not None]
        step, wall = self._last_step, time.time()
        summaries = _hparams_summaries(hparams, list(metrics), self._start_time, wall, status)
        finals_event = _scalar_event(step, wall, finals)

        def job():
            return [finals_event] + [
                Event(wall_time=wall, step=step, summary=s).SerializeToString() for s in summaries
            ]

        self._events.submit(job)

    def flush(self) -> None:
        """Wait until everything logged so far is in the event file."""
        self._events.flush()

    def close(self) -> None:
        """Flush and close the event file, then write metrics.csv atomically. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._events.close()
        finally:
            self._write_csv()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_csv(self) -> None:
        atomic_write_text(self.run_dir / "metrics.csv", csv_text(list(self._columns), list(self._rows.values())))


def csv_text(columns: list[str], rows: list[dict[str, object]]) -> str:
    """`csv.DictWriter`'s text of `rows` (an empty cell where a row lacks a column), with
    `lineterminator="\\n"`. Rows of Python floats and ints, as the loggers keep them, are
    joined directly, with the same `repr` for the floats: 1.6 ms against the csv module's
    2.2 ms for 100 rows of 25 scalars (measured; `repr` itself is 1.2 ms of it). Anything
    else goes through the csv module."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    cells = [[row.get(c, "") for c in columns] for row in rows]
    # (one column: the csv module writes an empty cell as "", not as an empty line)
    if len(columns) > 1 and all(type(v) is float or type(v) is int or v == "" for line in cells for v in line):
        buf.write("".join([",".join([v if v == "" else repr(v) for v in line]) + "\n" for line in cells]))
    else:
        w.writerows(cells)
    return buf.getvalue()


def _scalar_event(step: int, wall: float, items: list[tuple[str, float]]) -> bytes:
    # All of a step's scalars share one event: fewer records, fewer checksums.
    return event_bytes(wall, step, scalar_summary(items))


class _ScalarJob(BatchJob):
    """One step's scalars; queued steps with the same tags (of any runs: see
    `events.drain`) are encoded in one go."""

    def __init__(self, step: int, wall: float, tags: tuple[str, ...], values: Sequence[float]) -> None:
        self.step, self.wall, self.tags, self.values = step, wall, tags, values

    def batch_key(self):
        return self.tags

    @classmethod
    def encode_batch(cls, jobs: list[_ScalarJob]) -> list[bytes]:
        return [event_bytes(job.wall, job.step, summary)
                for job, summary in zip(jobs, scalar_summaries(jobs[0].tags, [job.values for job in jobs]))]


def log_histograms(step: int, runs: Sequence[tuple[RunLogger, Mapping[str, torch.Tensor]]]) -> None:
    """`RunLogger.histograms` for several runs at one step, summarized in one batch.

    For engines that train many runs together: one summary call for all their tensors
    instead of one per run.
    """
    by_bins: dict[int, list[tuple[RunLogger, Mapping[str, torch.Tensor]]]] = {}
    for logger, tensors in runs:
        by_bins.setdefault(logger.histogram_bins, []).append((logger, tensors))
    for group in by_bins.values():
        for (logger, _), job in zip(group, _histogram_jobs(step, group)):
            if job is not None:
                logger._events.submit(job)


def _histogram_jobs(
    step: int, runs: Sequence[tuple[RunLogger, Mapping[str, torch.Tensor]]]
) -> list[_HistogramJob | None]:
    """One job per run (all with the same bucket count; None: nothing to show), from one
    summary call per device."""
    bins = runs[0][0].histogram_bins
    wall = time.time()
    for logger, _ in runs:
        logger._last_step = max(logger._last_step, step)
    if len(runs) == 1:  # the usual case, without the bookkeeping below
        tensors = runs[0][1]
        values = list(tensors.values())
        numels = tuple(t.numel() for t in values)
        if values and 0 not in numels and len({t.device for t in values}) == 1:
            return [_HistogramJob(step, wall, tuple(tensors), [hist.summarize(values, bins, numels=numels)], bins)]
    by_device: dict[torch.device, list[tuple[int, str, torch.Tensor]]] = {}
    for i, (_, tensors) in enumerate(runs):
        for tag, tensor in tensors.items():
            if tensor.numel():  # an empty tensor has no histogram
                by_device.setdefault(tensor.device, []).append((i, tag, tensor))
    tags: list[list[str]] = [[] for _ in runs]
    parts: list[list[hist.Pending]] = [[] for _ in runs]
    for entries in by_device.values():
        # A single run's small CPU batch is summarized later, with its other steps; several
        # runs' tensors are summarized together now. Entries are in run order.
        summary = hist.summarize([t for _, _, t in entries], bins, defer=len(runs) == 1)
        mine: dict[int, list[str]] = {}
        for run, tag, _ in entries:
            mine.setdefault(run, []).append(tag)
        start = 0
        for i, run_tags in mine.items():
            tags[i] += run_tags
            parts[i].append(summary if len(runs) == 1 else summary.rows(start, start + len(run_tags)))
            start += len(run_tags)
    return [_HistogramJob(step, wall, tuple(t), p, bins) if t else None for t, p in zip(tags, parts)]


class _HistogramJob(BatchJob):
    """One step's histograms; queued steps with the same tags (of any runs: see
    `events.drain`), bucket count and device groups are encoded in one go."""

    def __init__(self, step: int, wall: float, tags: tuple[str, ...], pending: list[hist.Pending], bins: int):
        self.step, self.wall, self.tags, self.pending, self.bins = step, wall, tags, pending, bins

    def batch_key(self):
        return self.tags, self.bins, len(self.pending)

    @classmethod
    def encode_batch(cls, jobs: list[_HistogramJob]) -> list[bytes]:
        # Per device group (the same in every job of a batch): (steps, K_group, 5 + bins).
        groups = [hist.stack([job.pending[g] for job in jobs]) for g in range(len(jobs[0].pending))]
        summaries = hist.encode(jobs[0].tags, groups[0] if len(groups) == 1 else np.concatenate(groups, 1))
        return [event_bytes(job.wall, job.step, summary) for job, summary in zip(jobs, summaries)]


def _text_summary(tag: str, text: str) -> Summary:
    # The text plugin's format; tensorboardX's `text()` would rename the tag to
    # "<tag>/text_summary".
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[text.encode()],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


def _hparam_value(value: object) -> tuple[str, object]:
    """The HParams field and value for one swept value; lists and None become text."""
    if isinstance(value, bool):
        return "bool_value", value
    if isinstance(value, numbers.Real) and math.isfinite(value):  # numpy scalars too
        return "number_value", float(value)
    if isinstance(value, str):
        return "string_value", value
    return "string_value", json.dumps(value, default=str)


_TYPES = {
    "bool_value": DataType.DATA_TYPE_BOOL,
    "number_value": DataType.DATA_TYPE_FLOAT64,
    "string_value": DataType.DATA_TYPE_STRING,
}


def _plugin_summary(tag: str, data: HParamsPluginData) -> Summary:
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=_HPARAMS_PLUGIN, content=data.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def _hparams_summaries(
    hparams: Mapping[str, object], metrics: list[str], start: float, end: float, status: str
) -> list[Summary]:
    """The experiment, session-start and session-end summaries of the HParams plugin.

    Written into the run's own event file (tensorboardX's `add_hparams` would open a
    timestamped sub-run instead). No group name is set, so every run, and thus every seed,
    is its own row in the dashboard.
    """
    start_info = SessionStartInfo(start_time_secs=start)
    infos = []
    for name, value in hparams.items():
        field, converted = _hparam_value(value)
        setattr(start_info.hparams[name], field, converted)
        infos.append(HParamInfo(name=name, type=_TYPES[field]))
    experiment = Experiment(
        hparam_infos=infos,
        metric_infos=[MetricInfo(name=MetricName(tag=FINAL_PREFIX + name), display_name=name) for name in metrics],
        time_created_secs=start,
    )
    end_info = SessionEndInfo(status=_STATUS.get(status, Status.STATUS_UNKNOWN), end_time_secs=end)
    return [
        _plugin_summary(_EXPERIMENT_TAG, HParamsPluginData(version=0, experiment=experiment)),
        _plugin_summary(_SESSION_START_TAG, HParamsPluginData(version=0, session_start_info=start_info)),
        _plugin_summary(_SESSION_END_TAG, HParamsPluginData(version=0, session_end_info=end_info)),
    ]
