"""A TensorBoard event file written by a background thread.

The training thread only enqueues small jobs (a callable that returns serialized `Event`s);
the thread builds the protos, frames them as TFRecords with their checksums and appends
them to the file, so training never waits on encoding or on the disk. Jobs that pile up
while the thread is busy are written together, which also batches the checksums.

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
from collections.abc import Callable, Iterable
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event

from .crc32c import crc32c_many, masked

Job = Callable[[], Iterable[bytes]]
_STOP = object()


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

    def __init__(self, logdir: Path, *, flush_secs: float = 5.0) -> None:
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        # The same stem as TensorFlow and tensorboardX use, so every reader finds the file.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._file = open(self.path, "wb")
        self._flush_secs = flush_secs
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        first = Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
        self._file.write(frame([first]))
        # A daemon thread, so a process that dies without close() is not kept alive by it;
        # the run is redone in that case anyway.
        self._thread = threading.Thread(target=self._run, name="optcmp-events", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; it runs on the writer thread and returns serialized `Event`s."""
        if self._closed:
            raise RuntimeError(f"event file {self.path} is closed")
        self._queue.put(job)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is on disk (e.g. for a live TensorBoard)."""
        done = threading.Event()
        self.submit(done)  # type: ignore[arg-type]  # handled by the thread after writing
        done.wait(timeout)
        self._raise_error()

    def close(self) -> None:
        """Write what is queued, close the file and stop the thread. Idempotent."""
        if self._closed:
            return
        self._queue.put(_STOP)
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
            jobs = [self._queue.get()]
            while True:  # take what else is waiting, to frame and write it in one go
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records: list[bytes] = []
            waiters: list[threading.Event] = []
            for job in jobs:
                if job is _STOP:
                    stop = True
                elif isinstance(job, threading.Event):
                    waiters.append(job)
                elif self._error is None:
                    try:
                        records.extend(job())
                    except BaseException as e:  # re-raised by flush()/close() on the caller's thread
                        self._error = e
            try:
                if records and self._error is None:
                    self._file.write(frame(records))
                if waiters or stop or time.monotonic() - last_flush > self._flush_secs:
                    self._file.flush()
                    last_flush = time.monotonic()
            except BaseException as e:
                self._error = self._error or e
            for waiter in waiters:
                waiter.set()
        try:
            self._file.close()
        except BaseException as e:
            self._error = self._error or e
