"""A TensorBoard event file written by a background thread.

The training thread only enqueues small jobs; one thread per process, shared by all
open event files, wakes a few times a second, encodes everything that queued up since, frames it as TFRecords with their checksums and
appends it to the file, so training never waits on encoding or on the disk. Waking rarely
and encoding in batches also keeps the thread's share of the GIL small: the training thread
needs the GIL back after every torch op.

tensorboardX's own `EventFileWriter` is not used: it ships every event through a
`multiprocessing.Queue` (pickling each proto) and checksums byte by byte in Python.
"""
from __future__ import annotations

import math
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event

from .crc32c import crc32c_many, masked

_STOP = object()


class BatchJob:
    """A queued job whose event is encoded together with the other queued jobs of the
    same class and `batch_key` (e.g. histograms of the same tags), in one vectorized call."""

    def batch_key(self) -> Hashable:
        raise NotImplementedError

    @classmethod
    def encode_batch(cls, jobs: list) -> list[bytes]:
        """One serialized `Event` per job, in order."""
        raise NotImplementedError


Job = Callable[[], Iterable[bytes]] | BatchJob


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def event_bytes(wall_time: float, step: int, summary: bytes) -> bytes:
    """A serialized `Event` {wall_time (1), step (2), summary (5)} around serialized `Summary` bytes."""
    return b"".join(
        [b"\x09", struct.pack("<d", wall_time), b"\x10", varint(step & 0xFFFFFFFFFFFFFFFF),
         b"\x2a", varint(len(summary)), summary]
    )


_VALUE_PREFIXES: dict[str, bytes] = {}
_FLOAT = struct.Struct("<f")


def _value_prefix(tag: str) -> bytes:
    """`Summary.value` {tag (1), simple_value (2)} up to the float's 4 bytes, cached per tag."""
    prefix = _VALUE_PREFIXES.get(tag)
    if prefix is None:
        name = tag.encode()
        value = b"\x0a" + varint(len(name)) + name + b"\x15"
        prefix = _VALUE_PREFIXES[tag] = b"\x0a" + varint(len(value) + 4) + value
    return prefix


def _float32(value: float) -> bytes:
    try:
        return _FLOAT.pack(value)
    except OverflowError:  # beyond float32: infinite, as protobuf stores it
        return _FLOAT.pack(math.copysign(math.inf, value))


def scalar_summary(items: Iterable[tuple[str, float]]) -> bytes:
    """A serialized `Summary` of scalars (`simple_value`), one value per (tag, value): what
    `Summary(value=[Summary.Value(tag=..., simple_value=...)])` serializes to, at a
    fraction of the cost."""
    return b"".join([_value_prefix(tag) + _float32(value) for tag, value in items])


@lru_cache(maxsize=256)
def _summary_struct(tags: tuple[str, ...]) -> struct.Struct:
    """Packs a scalar `Summary` of these tags from (prefix, value, prefix, value, …)."""
    return struct.Struct("<" + "".join(f"{len(_value_prefix(tag))}sf" for tag in tags))


def scalar_summaries(tags: tuple[str, ...], rows: Iterable[Sequence[float]]) -> list[bytes]:
    """`scalar_summary` of the same tags for many rows of values, one struct call each."""
    packer = _summary_struct(tags)
    prefixes = [_value_prefix(tag) for tag in tags]
    out = []
    for values in rows:
        try:
            out.append(packer.pack(*[x for pair in zip(prefixes, values) for x in pair]))
        except (OverflowError, struct.error):  # a value beyond float32
            out.append(scalar_summary(zip(tags, values)))
    return out


def frame(records: list[bytes]) -> bytes:
    """TFRecord framing of serialized events: length, its checksum, data, its checksum."""
    headers = [struct.pack("<Q", len(r)) for r in records]
    crcs = crc32c_many(headers + records)
    n = len(records)
    parts = []
    for i, record in enumerate(records):
        parts += [
            headers[i],
            struct.pack("<I", masked(crcs[i])),
            record,
            struct.pack("<I", masked(crcs[n + i])),
        ]
    return b"".join(parts)


class _Pump:
    """The process's one writer thread, shared by every open `EventFileWriter`: it wakes a
    few times a second (or when poked) and drains each writer's queue. A sweep that trains
    64 runs together has 64 event files open, and 64 threads waking on their own would
    take the GIL from the training thread 64 times as often."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pid: int | None = None

    def _start(self) -> None:
        # Also after a fork: the child has the writers it inherited but not the thread.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._writers: list[EventFileWriter] = []
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="optcmp-events", daemon=True).start()

    def add(self, writer: EventFileWriter) -> None:
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            self._writers.append(writer)

    def remove(self, writer: EventFileWriter) -> None:
        with self._lock:
            if writer in self._writers:
                self._writers.remove(writer)

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        # A daemon thread, so a process that dies without closing its writers is not kept
        # alive by it; their runs are redone in that case anyway.
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                writers = list(self._writers)
            drain(writers)


_PUMP = _Pump(interval=0.25)


class EventFileWriter:
    """Appends events to a new `events.out.tfevents.*` file in `logdir`, from the shared
    writer thread."""

    def __init__(self, logdir: Path, *, flush_secs: float = 5.0) -> None:
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        # The same stem as TensorFlow and tensorboardX use, so every reader finds the file.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._file = open(self.path, "wb")
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Event()  # set by the writer thread once the file is closed
        self._error: BaseException | None = None
        self._closed = False
        first = Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
        self._file.write(frame([first]))
        _PUMP.add(self)

    def submit(self, job: Job) -> None:
        """Queue a job: a `BatchJob`, or a callable run on the thread that returns serialized `Event`s."""
        if self._closed:
            raise RuntimeError(f"event file {self.path} is closed")
        self._queue.put(job)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is on disk (e.g. for a live TensorBoard)."""
        done = threading.Event()
        self.submit(done)  # type: ignore[arg-type]  # set by the thread once written
        _PUMP.poke()
        done.wait(timeout)
        self._raise_error()

    def close(self) -> None:
        """Write what is queued, close the file. Idempotent."""
        if self._closed:
            return
        self._queue.put(_STOP)
        self._closed = True
        _PUMP.poke()
        self._done.wait()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing {self.path} failed: {self._error!r}") from self._error

    def _take(self) -> tuple[list[Job], list[threading.Event], bool] | None:
        """On the writer thread: what is queued, as (jobs, flush waiters, stop); None: nothing."""
        jobs = []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not jobs:
            return None
        waiters = [job for job in jobs if isinstance(job, threading.Event)]
        kept = [job for job in jobs if job is not _STOP and not isinstance(job, threading.Event)]
        return kept, waiters, any(job is _STOP for job in jobs)

    def _write(self, events: list[bytes] | BaseException, waiters: list[threading.Event], stop: bool) -> None:
        """On the writer thread: append the encoded `events` (or keep the error that
        encoding them raised), flush when due, wake the waiters, close on a stop."""
        try:
            if isinstance(events, BaseException):
                raise events
            if events and self._error is None:
                self._file.write(frame(events))
            if waiters or stop or time.monotonic() - self._last_flush > self._flush_secs:
                self._file.flush()
                self._last_flush = time.monotonic()
        except BaseException as e:  # re-raised by flush()/close() on the caller's thread
            self._error = self._error or e
        for waiter in waiters:
            waiter.set()
        if stop:
            try:
                self._file.close()
            except BaseException as e:
                self._error = self._error or e
            _PUMP.remove(self)
            self._done.set()


def drain(writers: Sequence[EventFileWriter]) -> None:
    """On the writer thread: encode what every writer has queued, then append each
    writer's events to its file. Batch jobs of the same class and key are encoded together
    across writers: the members of a vectorized group log the same tags, so a log point's
    histograms (or scalars) of 128 runs are one `encode_batch` call instead of 128 (the
    256-member reference sweep's writer CPU, under cProfile: 1.28 s before, 0.77 s after).
    Where a batch raises, each writer's jobs are encoded again on their own, so that the
    error is kept by the writer it belongs to. A writer that failed already writes nothing
    more: its jobs are not encoded."""
    taken = [(writer, took) for writer in writers if (took := writer._take()) is not None]
    lists = [[] if writer._error is not None else jobs for writer, (jobs, _, _) in taken]
    try:
        encoded: list[list[bytes] | BaseException] = list(_encode_many(lists))
    except Exception:  # noqa: BLE001 - attributed below, one writer at a time
        encoded = []
        for jobs in lists:
            try:
                encoded.append(_encode(jobs))
            except BaseException as e:  # noqa: BLE001 - kept by its writer, re-raised at its close
                encoded.append(e)
    for (writer, (_, waiters, stop)), events in zip(taken, encoded):
        writer._write(events, waiters, stop)


def _encode(jobs: list[Job]) -> list[bytes]:
    """Serialized events of queued jobs, in queue order; batch jobs encoded per class and key."""
    return _encode_many([jobs])[0]


def _encode_many(job_lists: Sequence[list[Job]]) -> list[list[bytes]]:
    """`_encode` of each list, with the batch jobs of all the lists encoded per class and
    key together."""
    out: list[list[list[bytes]]] = [[[] for _ in jobs] for jobs in job_lists]
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for w, jobs in enumerate(job_lists):
        for i, job in enumerate(jobs):
            if isinstance(job, BatchJob):
                groups.setdefault((type(job), job.batch_key()), []).append((w, i))
            else:
                out[w][i] = list(job())
    for (cls, _), places in groups.items():
        for (w, i), event in zip(places, cls.encode_batch([job_lists[w][i] for w, i in places])):
            out[w][i] = [event]
    return [[event for events in lists for event in events] for lists in out]
