"""Ends what a process started, once that process is gone — however it went, kill -9 too.

A local Ray instance that `ray.init()` starts shares the driver's fate only in part: its
GCS server and raylet are started with PR_SET_PDEATHSIG and die with the driver, but the
raylet's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`, ~180 MB) notice the
raylet's death, then spend 60 s trying to report it to the GCS server that died with it
(`ray._private.process_watcher`: `publish_error_to_driver`, a 60 s timeout) before they
exit. Nothing in a process killed by SIGKILL can run, so a small watcher outside it does
the work: `watch(marker)` starts `python -m optcmp.reaper`, which notes (pid and start
time, from /proc, every `REFRESH_S`) the driver's children whose command line holds
`marker` (Ray's package folder: the processes `ray.init` started, nothing else the driver
may run) and everything below them; when the pipe from the driver closes (the driver
ended, or closed it after `ray.shutdown()`), it kills those still running — the same
processes, not others that reuse a pid. Linux only; elsewhere `watch` starts nothing. No
torch, no Ray: the watcher starts in a few tens of milliseconds.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

REFRESH_S = 0.5


def _table() -> tuple[dict[int, list[int]], dict[int, int]]:
    """Children by parent pid, and start times by pid, of every process (/proc)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:  # ended meanwhile
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: the parent's pid
        starts[pid] = int(fields[19])  # starttime, in clock ticks since boot
    return children, starts


def descendants(root: int, marker: str) -> dict[int, int]:
    """pid → start time of `root`'s children whose command line holds `marker`, and of
    every process below them."""
    children, starts = _table()
    out: dict[int, int] = {}
    todo = [c for c in children.get(root, ()) if marker.encode() in _cmdline(c)]
    out.update((c, starts[c]) for c in todo)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out[child] = starts[child]
                todo.append(child)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def watch(marker: str) -> subprocess.Popen | None:
    """Start the watcher of this process's children marked by `marker` (see the module's
    docstring); closing its stdin, or this process ending, makes it kill them. None where
    there is no /proc to read."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"):
        return None
    known = ",".join(f"{pid}:{start}" for pid, start in descendants(os.getpid(), marker).items())
    return subprocess.Popen([sys.executable, "-m", "optcmp.reaper", str(os.getpid()), marker, known],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True)


def stop(watcher: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Let the watcher end what is left (after an orderly shutdown, usually nothing)."""
    if watcher is None:
        return
    try:
        watcher.stdin.close()
        watcher.wait(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        watcher.kill()


def main(driver: int, marker: str, known_text: str) -> None:
    # A terminal's Ctrl-C and a scheduler's SIGTERM are for the driver; this one acts on its end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    me = os.getpid()
    known = {int(p): int(s) for p, s in (item.split(":") for item in known_text.split(",") if item)}
    while True:
        ready, _, _ = select.select([0], [], [], REFRESH_S)
        if ready and not os.read(0, 4096):  # end of file: the driver ended or let go
            break
        known.update(descendants(driver, marker))
    for pid, start in known.items():
        if pid != me and start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
