"""One writer per experiment folder: an OS file lock, released by the kernel when its holder
dies (even by SIGKILL), so a crashed sweep never leaves a stale lock behind."""
from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from optcmp.errors import OptcmpError

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner"  # who holds the lock, for the refusal message


@contextmanager
def experiment_lock(exp_dir: Path) -> Iterator[None]:
    """Hold `<exp_dir>/.lock` for the block; refuse at once when another process holds it."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(exp_dir / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OptcmpError(
            f"{exp_dir} is in use by another optcmp run ({_owner(exp_dir)}); wait for it to finish, "
            "stop it, or give this config another `name` (or --out)"
        ) from None
    try:
        (exp_dir / OWNER_NAME).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        yield
    finally:
        (exp_dir / OWNER_NAME).unlink(missing_ok=True)
        lock.release()


def _owner(exp_dir: Path) -> str:
    try:
        pid, _, host = (exp_dir / OWNER_NAME).read_text().strip().partition(" ")
    except OSError:
        return "pid unknown"
    return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
