"""`optcmp board`: a TensorBoard server that ends with optcmp; `optcmp board --study DIR`:
optuna-dashboard on the study's Optuna storage, the same way.

The port is checked before TensorBoard starts, so a port in use is one line rather than
TensorBoard's exit 255 and a page of its log. TensorBoard runs as a child that the kernel
stops when optcmp ends, however it ends (kill -9 too: PR_SET_PDEATHSIG, Linux); Ctrl-C and
SIGTERM stop it and end `board` with exit status 0.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optcmp.stopping as stopping
from optcmp.errors import OptcmpError


def serve(directory: Path, host: str, port: int) -> int:
    """Run TensorBoard on `directory` until it exits (its exit status) or a stop signal (0)."""
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(directory), "--host", host, "--port", str(port)]
    with stopping.handled():  # SIGINT and SIGTERM raise KeyboardInterrupt here
        proc = subprocess.Popen(cmd, preexec_fn=die_with_parent(os.getpid()))
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the usual way to stop it
            _end(proc)
            return 0


def serve_dashboard(storage: str, host: str, port: int) -> int:
    """Run optuna-dashboard on the storage URL `storage` until it exits or a stop signal (0)."""
    code = ("import sys; from optuna_dashboard import run_server; "
            "run_server(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]))")
    cmd = [sys.executable, "-c", code, storage, host, str(port)]
    with stopping.handled():
        proc = subprocess.Popen(cmd, preexec_fn=die_with_parent(os.getpid()))
        try:
            return proc.wait()
        except KeyboardInterrupt:
            _end(proc)
            return 0


def study_storage(directory: Path, storage: str | None) -> str:
    """The Optuna storage URL of the study in `directory`: --storage where given, else its
    study.db; a study kept elsewhere (`tune --storage`) needs --storage, since study.json
    holds its URL with the password masked."""
    if storage:
        return storage
    if not directory.is_dir():
        raise OptcmpError(f"{directory}: no such folder (give a study's folder, e.g. runs/<name> of `optcmp tune`)")
    if (directory / "study.db").is_file():
        return f"sqlite:///{(directory / 'study.db').resolve()}"
    record = directory / "study.json"
    if record.is_file():
        import json

        try:
            url = json.loads(record.read_text()).get("storage")
        except (OSError, ValueError, AttributeError):
            url = None
        if url and url != "study.db":
            raise OptcmpError(f"{directory}: the study is kept in {url}; give that URL: --storage URL")
    raise OptcmpError(f"{directory}: no study here (no study.db); give the folder `optcmp tune` wrote, e.g. runs/<name>")


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, a port TensorBoard could not listen on (in use, out of range),
    binding as its server does (SO_REUSEADDR)."""
    import errno
    import socket

    if not 0 <= port <= 65535:
        raise OptcmpError(f"--port {port}: a port is a number from 1 to 65535")
    if port == 0:  # TensorBoard picks a free one
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise OptcmpError(f"--host {host}: not an address to listen on ({getattr(e, 'strerror', None) or e})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OptcmpError(f"--port {port}: {host}:{port} is in use (another TensorBoard?); "
                                  f"give another port, e.g. --port {port + 1 if port < 65535 else 6006}") from None
            raise OptcmpError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def die_with_parent(parent: int):
    """A child's preexec_fn: the kernel sends it SIGTERM when this process ends, even by
    SIGKILL (Linux's PR_SET_PDEATHSIG); elsewhere none."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: its death was missed
            os._exit(1)

    return preexec


def _end(proc) -> None:
    """Stop a child (a terminal's Ctrl-C may have reached it already): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
