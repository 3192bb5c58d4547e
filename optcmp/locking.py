"""One writer per experiment folder: an OS file lock, released by the kernel when its holder
dies (even by SIGKILL), so a crashed sweep never leaves a stale lock behind.

Also the checks that an experiment folder can be written at all (not a file, not on a
read-only file system, not under /proc), each a one-line error before anything is written.
"""
from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from optcmp.errors import OptcmpError

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner"  # who holds the lock, for the refusal message


FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk is not a bad folder: the runner says so (exit 1)


def _reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "a read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno == errno.ENOENT:  # /proc: the parent is there, and takes no new folders
        return "that file system takes no new folders"
    return error.strerror or type(error).__name__


def check_writable(exp_dir: Path) -> None:
    """Refuse, in one line and creating nothing, an experiment folder that cannot be made
    or written: a file in the way (`--out /dev/null`, `--out notes.txt`), a read-only or
    forbidden place (/proc, a read-only mount)."""
    exp_dir = Path(exp_dir)
    existing = exp_dir
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise OptcmpError(f"cannot write the experiment folder {exp_dir}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise OptcmpError(f"cannot write the experiment folder {exp_dir}: {existing} is not a folder "
                          "(--out names the folder the experiments go to)")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(existing) else "permission denied"
        raise OptcmpError(f"cannot write the experiment folder {exp_dir}: {existing} is not writable ({why})")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def make_folder(exp_dir: Path) -> None:
    """`mkdir -p exp_dir`, every failure a one-line error."""
    check_writable(exp_dir)
    try:
        Path(exp_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. under /proc
        if e.errno in FULL:
            raise
        raise OptcmpError(f"cannot write the experiment folder {exp_dir}: {_reason(e)}") from None


@contextmanager
def experiment_lock(exp_dir: Path) -> Iterator[None]:
    """Hold `<exp_dir>/.lock` for the block; refuse at once when another process holds it."""
    exp_dir = Path(exp_dir)
    make_folder(exp_dir)
    path = exp_dir / LOCK_NAME
    if path.is_dir():
        raise OptcmpError(f"{path}: a folder where optcmp keeps its lock file; remove it (it holds nothing of "
                          "optcmp's) and run again")
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OptcmpError(
            f"{exp_dir} is in use by another optcmp run ({_owner(exp_dir)}); wait for it to finish, "
            "stop it (Ctrl-C, or kill with its pid), or give this config another `name` (or --out)"
        ) from None
    except OSError as e:
        if e.errno in FULL:
            raise
        raise OptcmpError(f"cannot write the experiment folder {exp_dir}: {_reason(e)} (creating {path.name})") from None
    try:
        _write_owner(exp_dir)
        yield
    finally:
        try:
            (exp_dir / OWNER_NAME).unlink(missing_ok=True)
        except OSError:  # a folder in its place, say: it only ever informs a refusal
            pass
        lock.release()


def _write_owner(exp_dir: Path) -> None:
    try:
        (exp_dir / OWNER_NAME).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    except OSError:  # informative only; the lock is what counts
        pass


def _owner(exp_dir: Path) -> str:
    try:
        pid, _, host = (exp_dir / OWNER_NAME).read_text().strip().partition(" ")
    except (OSError, ValueError):
        return "pid unknown"
    if not pid.isdigit():
        return "pid unknown"
    return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
