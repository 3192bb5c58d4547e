"""RunLogger: what lands in the event file and metrics.csv, read back with TensorBoard's reader."""
from __future__ import annotations

import csv
import os
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from torch import nn

from tensorboardX.proto.api_pb2 import DataType

from optcmp.tb import crc32c as crc
from optcmp.tb import histograms as hist
from optcmp.tb.events import EventFileWriter
from optcmp.tb.logger import RunLogger, log_histograms

ea_mod = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard (optional extra) is needed to read event files back",
)
from tensorboard.plugins.hparams import metadata as hp_metadata  # noqa: E402

BINS = 30


def read_events(run_dir):
    """TensorBoard's own reader, with no sampling limit for any kind of data."""
    guidance = {k: 0 for k in ea_mod.DEFAULT_SIZE_GUIDANCE}
    acc = ea_mod.EventAccumulator(str(run_dir), size_guidance=guidance)
    acc.Reload()
    return acc


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 2))


def train_and_log(logger: RunLogger, steps: int = 4):
    """Train a small model, logging every parameter and gradient; return what was logged."""
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    logged: dict[str, dict[int, torch.Tensor]] = {}
    losses = []
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        tensors = {}
        for name, p in model.named_parameters():
            tensors[f"weights/{name}"] = p  # live parameters: the optimizer changes them next
            tensors[f"grads/{name}"] = p.grad
        logger.histograms(step, tensors)
        for tag, t in tensors.items():
            logged.setdefault(tag, {})[step] = t.detach().clone()
        logger.scalars(step, {"train/loss": loss.item()})
        losses.append(loss.item())
        opt.step()
        opt.zero_grad()
    return logged, losses


def assert_histogram_matches(h, t: torch.Tensor):
    """A HistogramValue describes tensor `t`: exact extrema and count, sums, bucket edges."""
    x = t.double().flatten()
    assert h.num == x.numel()
    assert sum(h.bucket) == x.numel()
    assert h.min == x.min().item() and h.max == x.max().item()
    assert h.sum == pytest.approx(x.sum().item(), rel=1e-9, abs=1e-12)
    assert h.sum_squares == pytest.approx((x * x).sum().item(), rel=1e-9)
    assert len(h.bucket_limit) == len(h.bucket)
    assert h.bucket_limit[-1] == h.max
    assert len(h.bucket) == BINS
    if h.max > h.min:
        assert np.allclose(np.diff(h.bucket_limit), (h.max - h.min) / BINS)
        # Every value sits in the bucket whose edges enclose it (up to float32 rounding at an edge).
        eps = 1e-5 * (h.max - h.min)
        below = np.cumsum(h.bucket)
        for limit, n in zip(h.bucket_limit, below):
            assert (x < limit - eps).sum().item() <= n <= (x <= limit + eps).sum().item()
    else:  # a constant: everything in the first bucket, which TensorBoard shows as [min, max]
        assert list(h.bucket) == [x.numel()] + [0] * (BINS - 1)


def test_every_histogram_tag_and_step_matches_its_tensor(tmp_path):
    logger = RunLogger(tmp_path, histogram_bins=BINS)
    logged, losses = train_and_log(logger, steps=4)
    logger.close()

    acc = read_events(tmp_path)
    assert sorted(acc.Tags()["histograms"]) == sorted(logged)
    for tag, by_step in logged.items():
        events = acc.Histograms(tag)
        assert [e.step for e in events] == sorted(by_step)
        for e in events:
            assert_histogram_matches(e.histogram_value, by_step[e.step])
    # The Distributions tab is derived from the same histograms.
    assert len(acc.CompressedHistograms("weights/0.weight")) == 4
    loss_events = acc.Scalars("train/loss")
    assert [e.step for e in loss_events] == [0, 1, 2, 3]
    assert [e.value for e in loss_events] == [pytest.approx(v, rel=1e-6) for v in losses]


def test_constant_and_non_finite_tensors(tmp_path):
    ones = torch.ones(4, 5)  # a LayerNorm weight at initialization
    with_nan = torch.tensor([1.0, float("nan"), 3.0, float("inf"), -2.0])
    with RunLogger(tmp_path, histogram_bins=BINS) as logger:
        logger.histograms(7, {"weights/ln": ones, "grads/bad": with_nan, "weights/empty": torch.empty(0)})
    acc = read_events(tmp_path)
    assert sorted(acc.Tags()["histograms"]) == ["grads/bad", "weights/ln"]
    (ln,) = acc.Histograms("weights/ln")
    assert (ln.step, ln.histogram_value.min, ln.histogram_value.max) == (7, 1.0, 1.0)
    assert_histogram_matches(ln.histogram_value, ones)
    # Non-finite values are left out: the histogram describes the finite ones.
    (bad,) = acc.Histograms("grads/bad")
    assert_histogram_matches(bad.histogram_value, torch.tensor([1.0, 3.0, -2.0]))


def test_several_runs_logged_together(tmp_path):
    """The vectorized engine's way: one summary call for the tensors of every run."""
    torch.manual_seed(0)
    weights = [torch.randn(4, 3), torch.randn(4, 3) * 10]
    loggers = [RunLogger(tmp_path / f"run{i}", histogram_bins=BINS) for i in range(2)]
    log_histograms(5, [(lg, {"weights/w": w, "weights/empty": torch.empty(0)}) for lg, w in zip(loggers, weights)])
    loggers[0].histograms(6, {})  # nothing to show: no event
    for i, (logger, w) in enumerate(zip(loggers, weights)):
        logger.close()
        acc = read_events(tmp_path / f"run{i}")
        assert acc.Tags()["histograms"] == ["weights/w"]
        (event,) = acc.Histograms("weights/w")
        assert event.step == 5
        assert_histogram_matches(event.histogram_value, w)


def test_summary_is_taken_before_the_tensor_changes():
    t = torch.arange(10.0)
    summary = hist.summarize([t], BINS)
    t.mul_(100)  # e.g. an optimizer step right after logging
    row = summary.array()[0]
    assert (row[hist.MIN], row[hist.MAX], row[hist.SUM]) == (0.0, 9.0, 45.0)


def test_histograms_are_encoded_and_written_off_the_calling_thread(tmp_path, monkeypatch):
    threads = set()
    encode = hist.encode

    def spy(tags, summaries):
        threads.add(threading.current_thread().name)
        return encode(tags, summaries)

    monkeypatch.setattr(hist, "encode", spy)
    with RunLogger(tmp_path) as logger:
        logger.histograms(0, {"weights/w": torch.randn(10)})
        logger.flush()
    assert threads == {"optcmp-events"}


def test_histogram_bytes_are_compact(tmp_path):
    """30 buckets of float64 limits and counts: about 0.6 kB per histogram of a 20×20 weight."""
    with RunLogger(tmp_path, histogram_bins=BINS) as logger:
        for step in range(10):
            logger.histograms(step, {f"weights/{i}": torch.randn(20, 20) for i in range(10)})
        path = logger.events_path
    per_histogram = os.path.getsize(path) / 100
    assert 500 < per_histogram < 620


def test_scalars_rows_and_metrics_csv(tmp_path):
    logger = RunLogger(tmp_path)
    logger.scalars(0, {"train/loss": 2.5, "lr/group0": 0.01})
    logger.scalars(0, {"val/loss": 3.0})  # the same step: the same row
    logger.scalars(1, {"train/loss": 1.5, "lr/group0": 0.005})
    logger.close()
    logger.close()  # idempotent

    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["step", "train/loss", "lr/group0", "val/loss"],
        ["0", "2.5", "0.01", "3.0"],
        ["1", "1.5", "0.005", ""],
    ]
    assert not (tmp_path / "metrics.csv.tmp").exists()
    acc = read_events(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("lr/group0")] == [
        (0, pytest.approx(0.01)),
        (1, pytest.approx(0.005)),
    ]
    assert [(e.step, e.value) for e in acc.Scalars("val/loss")] == [(0, 3.0)]


def test_config_text(tmp_path):
    yaml_text = "```yaml\nname: wd\noptimizer:\n  lr: 0.01\n```"
    with RunLogger(tmp_path) as logger:
        logger.text("config", yaml_text)
    acc = read_events(tmp_path)
    (event,) = acc.Tensors("config")
    stored = event.tensor_proto.string_val[0].decode()
    assert stored == yaml_text
    assert acc.SummaryMetadata("config").plugin_data.plugin_name == "text"


def test_hparams_in_the_runs_own_folder(tmp_path):
    run_dir = tmp_path / "adamw-wd0.1-s1"
    with RunLogger(run_dir) as logger:
        logger.scalars(9, {"train/loss": 0.5})
        logger.hparams(
            {"optimizer.name": "adamw", "optimizer.weight_decay": 0.1, "seed": "1", "norm": None, "hidden": 64},
            {"train_loss": 0.5, "val_accuracy": None},
            status="diverged",
        )
    assert [p.name for p in tmp_path.iterdir()] == ["adamw-wd0.1-s1"]  # no timestamped sub-run
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == []

    acc = read_events(run_dir)
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["optimizer.name"].string_value == "adamw"
    assert start.hparams["optimizer.weight_decay"].number_value == 0.1
    assert start.hparams["seed"].string_value == "1"
    assert start.hparams["hidden"].number_value == 64
    assert start.hparams["norm"].string_value == "null"
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    string, number = DataType.DATA_TYPE_STRING, DataType.DATA_TYPE_FLOAT64
    assert [(h.name, h.type) for h in experiment.hparam_infos] == [
        ("optimizer.name", string), ("optimizer.weight_decay", number), ("seed", string), ("norm", string),
        ("hidden", number)]
    # every metric named, the one without a value too, shown under its own name
    assert [(m.name.tag, m.display_name) for m in experiment.metric_infos] == [
        ("~final/train_loss", "train_loss"), ("~final/val_accuracy", "val_accuracy")]
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == 2  # STATUS_FAILURE
    # The dashboard reads metric values from scalars of the same tag; None has none.
    assert [(e.step, e.value) for e in acc.Scalars("~final/train_loss")] == [(9, 0.5)]
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "~final/train_loss"]


def test_custom_scalars_layout_charts_the_tags_the_run_logs(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2

    with RunLogger(tmp_path) as logger:
        logger.scalars(0, {"train/loss": 2.0, "lr/group0": 0.1, "lr/group1": 0.2, "grad_norm": 1.0, "weight_norm": 3.0,
                           "weight_norm/0.Linear": 3.0})
        logger.scalars(0, {"val/loss": 2.5})  # later tag sets do not change the layout
        logger.scalars(1, {"train/loss": 1.0, "lr/group0": 0.1, "lr/group1": 0.2, "grad_norm": 1.0, "weight_norm": 3.0,
                           "weight_norm/0.Linear": 3.0})
    (event,) = read_events(tmp_path).Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    assert [(c.title, [(ch.title, list(ch.multiline.tag)) for ch in c.chart]) for c in layout.category] == [
        ("loss", [("train/loss", ["^train/loss$"])]),
        ("learning rate", [("lr (each parameter group)", ["^lr/"])]),
        ("norms", [("grad_norm", ["^grad_norm$"]), ("weight_norm", ["^weight_norm$"])]),
    ]


def test_a_redone_run_replaces_stale_events(tmp_path):
    with RunLogger(tmp_path) as logger:
        logger.scalars(0, {"train/loss": 9.0})
    with RunLogger(tmp_path) as logger:
        logger.scalars(0, {"train/loss": 1.0})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert [e.value for e in read_events(tmp_path).Scalars("train/loss")] == [1.0]


def test_batched_jobs_keep_queue_order():
    from optcmp.tb.events import BatchJob, _encode

    class Numbered(BatchJob):
        batches = []

        def __init__(self, n, key):
            self.n, self.key = n, key

        def batch_key(self):
            return self.key

        @classmethod
        def encode_batch(cls, jobs):
            cls.batches.append([job.n for job in jobs])
            return [str(job.n).encode() for job in jobs]

    jobs = [Numbered(0, "a"), lambda: [b"x"], Numbered(1, "b"), Numbered(2, "a"), lambda: [b"y", b"z"]]
    assert _encode(jobs) == [b"0", b"x", b"1", b"2", b"y", b"z"]
    assert Numbered.batches == [[0, 2], [1]]  # one call per key


def test_writer_errors_surface_at_close(tmp_path):
    writer = EventFileWriter(tmp_path)

    def broken():
        raise ValueError("bad event")

    writer.submit(broken)
    with pytest.raises(RuntimeError, match="bad event"):
        writer.close()


def test_crc32c_matches_the_reference():
    from tensorboardX.crc32c import crc32c as slow_reference

    assert crc.crc32c(b"123456789") == 0xE3069283  # the standard check value
    rng = np.random.default_rng(0)
    messages = [rng.bytes(n) for n in (0, 1, 3, 4, 5, 63, 64, 65, 255, 1000, 4097, 20021)]
    assert crc.crc32c_many(messages) == [slow_reference(m) for m in messages]
    # TFRecord framing: length, masked crc of length, data, masked crc of data.
    framed = crc.masked(crc.crc32c(struct.pack("<Q", 3)))
    assert framed == crc.masked(slow_reference(struct.pack("<Q", 3)))


def test_batched_and_device_paths_give_the_same_summary():
    """numpy on CPU, one step or many at once, and the torch ops used on GPUs agree."""
    torch.manual_seed(0)
    steps = [
        [torch.randn(20, 20) * (s + 1), torch.ones(5), torch.tensor([1.0, float("nan"), -4.0]), torch.randn(7)]
        for s in range(3)
    ]
    one_by_one = np.stack([hist.summarize(ts, BINS).array() for ts in steps])
    together = hist.stack([hist.summarize(ts, BINS) for ts in steps])
    np.testing.assert_array_equal(together, one_by_one)
    for ts, expected in zip(steps, one_by_one):
        flat = torch.cat([t.reshape(-1) for t in ts])
        with_torch = hist._summarize_torch(flat, tuple(t.numel() for t in ts), BINS).double().numpy()
        np.testing.assert_array_equal(with_torch[:, : hist.SUM], expected[:, : hist.SUM])
        np.testing.assert_allclose(with_torch[:, hist.SUM :], expected[:, hist.SUM :], rtol=1e-12)
    assert one_by_one[0, 2, hist.NUM] == 2  # the NaN left out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_summary_equals_cpu_summary():
    torch.manual_seed(0)
    tensors = [torch.randn(20, 20), torch.randn(20), torch.ones(5), torch.randn(7) * 1e-3]
    on_cpu = hist.summarize(tensors, BINS).array()  # numpy
    on_gpu = hist.summarize([t.cuda() for t in tensors], BINS).array()  # torch on the device
    np.testing.assert_array_equal(on_gpu[:, : hist.SUM], on_cpu[:, : hist.SUM])
    np.testing.assert_allclose(on_gpu[:, hist.SUM : hist.N_STATS], on_cpu[:, hist.SUM : hist.N_STATS], rtol=1e-9)
    # Bucketing uses the same float32 arithmetic; allow a value on an edge to fall either side.
    assert np.abs(on_gpu[:, hist.N_STATS :] - on_cpu[:, hist.N_STATS :]).sum() <= 2


def test_scalar_summary_bytes_equal_protobuf():
    """The hand-framed scalar summary is byte for byte what protobuf serializes, including
    long tags (two-byte lengths), values beyond float32, NaN and infinities."""
    import math

    from tensorboardX.proto.summary_pb2 import Summary

    from optcmp.tb.events import scalar_summaries, scalar_summary

    items = [("train/loss", 3.25), ("weight_norm/0", 1e-30), ("x" * 200, -2.5), ("big", 1e39), ("small", -1e39),
             ("nan", float("nan")), ("inf", -math.inf)]
    expected = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in items]).SerializeToString()
    assert scalar_summary(items) == expected
    # many rows of the same tags at once (one struct call a row; beyond float32 falls back)
    tags = tuple(t for t, _ in items)
    rows = [[v for _, v in items], [0.5] * len(items)]
    assert scalar_summaries(tags, rows) == [
        Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, row)]).SerializeToString()
        for row in rows]


class _Block(nn.Module):
    """A module of the user's own, with a parameter of its own and nested layers."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.body = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))


def test_parameter_tags_name_module_path_and_type():
    from optcmp.tb.tags import ParameterTags, parameter_labels

    model = nn.Sequential(nn.Linear(2, 3), _Block(), nn.Linear(3, 1, bias=False))
    assert parameter_labels(model) == {
        "0.weight": "0.Linear.weight", "0.bias": "0.Linear.bias",
        "1.scale": "1._Block.scale",
        "1.body.0.weight": "1.body.0.Linear.weight", "1.body.0.bias": "1.body.0.Linear.bias",
        "1.body.1.weight": "1.body.1.LayerNorm.weight", "1.body.1.bias": "1.body.1.LayerNorm.bias",
        "2.weight": "2.Linear.weight",
    }
    assert parameter_labels(nn.Linear(2, 1)) == {"weight": "Linear.weight", "bias": "Linear.bias"}  # the model itself
    bare = ParameterTags(nn.Linear(2, 1), ["weight", "bias"])  # the model's own parameters: a layer each
    assert (bare.norm_tags, bare.layers) == (("weight_norm", "weight_norm/Linear.weight", "weight_norm/Linear.bias"), [0, 1])
    names = [n for n, _ in model.named_parameters()]
    tags = ParameterTags(model, names)
    assert tags.weights[:2] == ["weights/0.Linear.weight", "weights/0.Linear.bias"]
    assert tags.grads[-1] == "grads/2.Linear.weight"
    assert tags.norm_tags == ("weight_norm", "weight_norm/0.Linear", "weight_norm/1._Block", "weight_norm/1.body.0.Linear",
                              "weight_norm/1.body.1.LayerNorm", "weight_norm/2.Linear")
    assert tags.layers == [0, 0, 1, 2, 2, 3, 3, 4]


_CELL = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(width=32),
                  st.integers(-10**20, 10**20), st.booleans(), st.text(max_size=5), st.none())


@settings(max_examples=300, deadline=None)
@given(columns=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=6, unique=True),
       data=st.data())
def test_csv_text_is_the_csv_modules_text(columns, data):
    """metrics.csv's writer joins floats and ints itself; whatever the rows hold (missing
    cells, nan, inf, -0.0, float32 values, and strings, bools or None that go through the
    csv module), its text is `csv.DictWriter`'s, byte for byte."""
    import io

    from optcmp.tb.logger import csv_text

    rows = data.draw(st.lists(st.dictionaries(st.sampled_from(columns), _CELL), max_size=8))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    assert csv_text(columns, rows) == buf.getvalue()


def test_the_writer_thread_batches_across_runs_and_writes_each_file_as_alone(tmp_path, monkeypatch):
    """Three runs log the same scalar and histogram tags (as a vectorized group's members
    do): the writer thread encodes each log point's histograms of all three in one call,
    and every event file holds, record for record, what it holds when its run is written
    on its own."""
    from optcmp.tb import events as ev
    from optcmp.tb import logger as lg

    calls = []
    encode = lg._HistogramJob.encode_batch.__func__
    monkeypatch.setattr(lg._HistogramJob, "encode_batch",
                        classmethod(lambda cls, jobs: calls.append(len(jobs)) or encode(cls, jobs)))
    monkeypatch.setattr(time, "time", lambda: 1234.5)  # the same wall times in both writes
    gate, drain = threading.Event(), ev.drain
    monkeypatch.setattr(ev, "drain", lambda writers: gate.wait(10) and drain(writers))

    def write(folder, runs: list[int]) -> list[bytes]:
        gate.clear()  # the writer thread waits until everything is queued
        torch.manual_seed(0)
        weights = [torch.randn(4, 3) for _ in range(3)]
        loggers = {i: RunLogger(folder / f"r{i}", histogram_bins=BINS) for i in runs}
        for step in range(3):
            for i, logger in loggers.items():
                logger.scalars(step, {"train/loss": float(i + step), "lr/group0": 0.1})
            log_histograms(step, [(logger, {"weights/w": weights[i] * (step + 1)}) for i, logger in loggers.items()])
        gate.set()
        for logger in loggers.values():
            logger.close()
        return [logger.events_path.read_bytes() for logger in loggers.values()]

    alone = [write(tmp_path / f"alone{i}", [i])[0] for i in range(3)]  # one run at a time: one writer
    calls.clear()
    together = write(tmp_path / "together", [0, 1, 2])
    # Each run logs 3 steps: a call of more than 3 jobs holds several runs' histograms (all 9
    # unless the writer thread took its list of writers while the 3 were being opened)
    assert max(calls) >= 6
    assert together == alone


def test_an_encoding_error_stays_with_its_own_writer(tmp_path, monkeypatch):
    """Two writers drained together, one with a broken job: that writer's close fails, the
    other's events are written."""
    from optcmp.tb import events as ev

    gate, drain = threading.Event(), ev.drain
    monkeypatch.setattr(ev, "drain", lambda writers: gate.wait(10) and drain(writers))  # the thread waits
    good, bad = EventFileWriter(tmp_path / "good"), EventFileWriter(tmp_path / "bad")

    def broken():
        raise ValueError("bad event")

    good.submit(lambda: [b"kept"])
    bad.submit(broken)
    drain([good, bad])  # both in one drain, as the writer thread takes them
    gate.set()
    good.close()
    with pytest.raises(RuntimeError, match="bad event"):
        bad.close()
    assert good.path.read_bytes().endswith(ev.frame([b"kept"]))
