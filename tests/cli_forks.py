"""`optcmp` command lines, each a real process, started in milliseconds: a server process
imports optcmp and torch once, then forks one child per command, which runs `cli.main()`
as the `optcmp` script does (its exit status, signal handling and `os._exit` included).

The signal tests start many short sweeps; a fresh interpreter would spend a second or two
importing torch for each.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import json, os, sys
import torch  # noqa: F401 - imported before the forks, as the point of the server
import optcmp.cli, optcmp.runner, optcmp.vectorized, optcmp.summary  # noqa: F401
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(job["cwd"])
            sys.argv = ["optcmp", *job["argv"]]
            optcmp.cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class CliForks:
    """`start(argv, log)` → the child's pid; `wait()` → its exit status (negative: the
    signal that killed it)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT, env=env)

    def start(self, argv: list[str], log: Path) -> int:
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "log": str(log), "cwd": str(ROOT)}) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def __enter__(self) -> CliForks:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self.proc.kill()
        self.close()
