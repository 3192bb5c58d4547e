"""A TensorBoard event file written by a background thread.

The training thread only enqueues small jobs; the thread wakes a few times a second,
encodes everything that queued up since, frames it as TFRecords with their checksums and
appends it to the file, so training never waits on encoding or on the disk. Waking rarely
and encoding in batches also keeps the thread's share of the GIL small: the training thread
needs the GIL back after every torch op.

tensorboardX's own `EventFileWriter` is not used: it ships every event through a
`multiprocessing.Queue` (pickling each proto) and checksums byte by byte in Python.
"""
from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable, Iterable
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


class EventFileWriter:
    """Appends events to a new `events.out.tfevents.*` file in `logdir` from a thread."""

    def __init__(self, logdir: Path, *, interval: float = 0.25, flush_secs: float = 5.0) -> None:
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        # The same stem as TensorFlow and tensorboardX use, so every reader finds the file.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._file = open(self.path, "wb")
        self._interval, self._flush_secs = interval, flush_secs
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()  # set by flush() and close(); otherwise the thread polls
        self._error: BaseException | None = None
        self._closed = False
        first = Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
        self._file.write(frame([first]))
        # A daemon thread, so a process that dies without close() is not kept alive by it;
        # the run is redone in that case anyway.
        self._thread = threading.Thread(target=self._run, name="optcmp-events", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job: a `BatchJob`, or a callable run on the thread that returns serialized `Event`s."""
        if self._closed:
            raise RuntimeError(f"event file {self.path} is closed")
        self._queue.put(job)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is on disk (e.g. for a live TensorBoard)."""
        done = threading.Event()
        self.submit(done)  # type: ignore[arg-type]  # set by the thread once written
        self._wake.set()
        done.wait(timeout)
        self._raise_error()

    def close(self) -> None:
        """Write what is queued, close the file and stop the thread. Idempotent."""
        if self._closed:
            return
        self._queue.put(_STOP)
        self._wake.set()
        self._closed = True
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing {self.path} failed: {self._error!r}") from self._error

    def _run(self) -> None:
        last_flush = time.monotonic()
        stop = False
        while not stop:
            self._wake.wait(self._interval)
            self._wake.clear()
            jobs = []
            while True:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(job is _STOP for job in jobs)
            waiters = [job for job in jobs if isinstance(job, threading.Event)]
            jobs = [job for job in jobs if job is not _STOP and not isinstance(job, threading.Event)]
            try:
                if jobs and self._error is None:
                    self._file.write(frame(_encode(jobs)))
                if waiters or stop or time.monotonic() - last_flush > self._flush_secs:
                    self._file.flush()
                    last_flush = time.monotonic()
            except BaseException as e:  # re-raised by flush()/close() on the caller's thread
                self._error = self._error or e
            for waiter in waiters:
                waiter.set()
        try:
            self._file.close()
        except BaseException as e:
            self._error = self._error or e


def _encode(jobs: list[Job]) -> list[bytes]:
    """Serialized events of queued jobs, in queue order; batch jobs encoded per class and key."""
    out: list[list[bytes]] = [[] for _ in jobs]
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if isinstance(job, BatchJob):
            groups.setdefault((type(job), job.batch_key()), []).append(i)
        else:
            out[i] = list(job())
    for (cls, _), indices in groups.items():
        for i, event in zip(indices, cls.encode_batch([jobs[i] for i in indices])):
            out[i] = [event]
    return [event for events in out for event in events]
