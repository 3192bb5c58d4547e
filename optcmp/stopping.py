"""Stop signals — Ctrl-C's SIGINT, a job scheduler's or `kill`'s SIGTERM — recorded, never lost.

Python runs a signal handler in the main thread, between two bytecodes of whatever it is
doing, and the default SIGINT handler raises KeyboardInterrupt right there: inside a thread
pool's wait (whose threads go on writing run folders), between a result and its file, in a
`finally`. A sweep therefore does not let a signal raise: while one runs (`deferred`), the
handler only records the signal, and each stage asks (`requested`) where stopping leaves
every folder whole:

- the loop before each step (`check` raises `Interrupted` there, which the engine turns
  into `interrupted` results for the runs still training);
- an engine after it has prepared its run folders and after it has built its members;
- the executors before each unit, and every `POLL_S` while they wait for workers;
- the runner after each unit, and once more at the end: a signal that came while the last
  folders were being finished still ends the sweep as interrupted (exit status 130).

Worker threads never see a signal (Python delivers them to the main thread only); worker
processes record theirs the same way (`record_in_worker`). Outside `deferred` — loading
and checking the config, before anything is written — a stop signal raises
KeyboardInterrupt at once, as Python's own handler does for SIGINT.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.1  # how often a driver waiting on workers looks for a recorded signal

_state = {"signal": None, "defer": 0, "depth": 0}


class Interrupted(KeyboardInterrupt):
    """Raised by `check` at a stage's checkpoint once a stop signal was recorded."""


def _handler(signum, frame) -> None:
    if _state["signal"] is None:
        _state["signal"] = signum
    if not _state["defer"]:
        raise KeyboardInterrupt


def requested() -> bool:
    """Whether a stop signal came (since the outermost `handled` block began)."""
    return _state["signal"] is not None


def check() -> None:
    """Raise `Interrupted` if a stop signal came."""
    if _state["signal"] is not None:
        raise Interrupted(signal.Signals(_state["signal"]).name)


def request(signum: int = signal.SIGINT) -> None:
    """Record a stop as a signal would (for callers that stop a sweep themselves)."""
    _state["signal"] = _state["signal"] or signum


@contextmanager
def handled() -> Iterator[None]:
    """Install the handler for SIGINT and SIGTERM for the block: a stop signal raises
    KeyboardInterrupt, or inside `deferred` is only recorded. The outermost block starts
    with no signal recorded, and ends forgetting it and restoring the previous handlers (so
    a later sweep in the same process starts afresh). Off the main thread, where no handler
    can be installed, the block runs as it is (and `requested` stays False)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _state["depth"] == 0
    if outermost:
        _state["signal"] = None
        previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if outermost:
            for s, handler in previous.items():
                signal.signal(s, handler)
            _state["signal"] = None


@contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a stop signal is only recorded: the stages check for it."""
    with handled():
        _state["defer"] += 1
        try:
            yield
        finally:
            _state["defer"] -= 1


def record_in_worker() -> None:
    """For the life of a worker process: stop signals are recorded (the driver's stop and a
    terminal's Ctrl-C both reach it; one signal or two, the run in flight ends once, as
    `interrupted`, and no other starts)."""
    _state.update(signal=None, defer=1, depth=1)
    for s in SIGNALS:
        signal.signal(s, _handler)
