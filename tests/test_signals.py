"""A stop signal is never lost: SIGINT or SIGTERM to `optcmp run` while a vectorized group
prepares its 64 run folders, or while it writes their results, ends the sweep with exit
status 130, the finished runs kept and whole, the others `interrupted`, and a valid
runs.csv and summary. Real signals to real `optcmp run` processes (`tests.cli_forks`).

To hit a window every time, the test waits for a file of that stage to appear, freezes the
process there (SIGSTOP), checks from the files that the stage is half done, sends the
signal and lets the process go on (SIGCONT): the signal arrives at that very point.
"""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_forks import CliForks

GROUP = """\
name: group
seeds: 16
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic, samples: 64}
train: {steps: 30}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1, 0.2, 0.3]
log: {every: 10, histograms: {every: 15}}
summary: {chaos: off}  # the runs planned, no chaos probes (summary.chaos auto adds one per config)
"""
RUNS = 64
TRIES = 20
FILES = {"config.yaml", "metrics.csv", "weights.npz", "result.json"}


def check_valid_end(exp: Path) -> Counter:
    """The state a stopped sweep must leave: every planned run is absent, or `ok` with all
    its files, or `interrupted`; runs.csv and summary.json parse and agree with the folders
    (where no run had begun, there are none)."""
    plan = [r["run_id"] for r in json.loads((exp / "plan.json").read_text())]
    assert len(plan) == RUNS
    statuses = {}
    for run_id in plan:
        folder = exp / run_id
        if not folder.exists():
            continue
        result = json.loads((folder / "result.json").read_text())  # no folder is left without one
        statuses[run_id] = result["status"]
        if result["status"] == "ok":
            names = {p.name for p in folder.iterdir()}
            assert FILES <= names and any(n.startswith("events.out.tfevents.") for n in names), (run_id, names)
        else:
            assert result["status"] == "interrupted", (run_id, result["status"])
    counts = Counter(statuses.values())
    if not statuses and not (exp / "runs.csv").exists():  # stopped before a run began: nothing to show
        return counts
    with (exp / "runs.csv").open(newline="") as f:
        rows = {row["run_id"]: row["status"] for row in csv.DictReader(f)}
    assert rows == statuses
    configs = json.loads((exp / "summary.json").read_text())["configs"]
    assert sum(c["runs"] for c in configs) == len(statuses) and sum(c["n"] for c in configs) == counts["ok"]
    return counts


def half_prepared(exp: Path) -> bool | None:
    """None before the first run folder exists; then whether some folders, not all, are prepared."""
    if not exp.is_dir():
        return None
    folders = [e for e in os.scandir(exp) if e.is_dir()]
    if not folders:
        return None
    prepared = sum(any(n.startswith("events.out.tfevents.") for n in os.listdir(e.path)) for e in folders)
    return len(folders) < RUNS or prepared < RUNS


def half_finished(exp: Path) -> bool | None:
    """None before the first result.json exists; then whether some runs, not all, have one."""
    if not exp.is_dir():
        return None
    done = sum(os.path.exists(os.path.join(e.path, "result.json")) for e in os.scandir(exp) if e.is_dir())
    return None if done == 0 else done < RUNS


def stop_at(forks: CliForks, config: Path, out: Path, stage, sig: int, log: Path) -> tuple[int, bool]:
    """Start `optcmp run`, freeze it once `stage` sees its first file, send `sig` there.
    Returns (exit status, whether the stage was half done when the signal came)."""
    pid = forks.start(["run", config, "--out", out], log)
    exp = out / "group"
    deadline = time.monotonic() + 120
    while (seen := stage(exp)) is None:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.0002)
    os.kill(pid, signal.SIGSTOP)
    inside = bool(stage(exp))  # frozen: what the files say now holds when the signal lands
    os.kill(pid, sig)
    os.kill(pid, signal.SIGCONT)
    return forks.wait(), inside


def signal_in_window(tmp_path: Path, stage, tries: int) -> list[Counter]:
    config = tmp_path / "group.yaml"
    config.write_text(GROUP)
    outcomes, attempts = [], 0
    with CliForks() as forks:
        while len(outcomes) < tries:
            attempts += 1
            assert attempts <= 2 * tries, f"the window was missed {attempts - len(outcomes)} times"
            out = tmp_path / f"try{attempts}"
            sig = (signal.SIGINT, signal.SIGTERM)[attempts % 2]
            log = tmp_path / f"try{attempts}.log"
            rc, inside = stop_at(forks, config, out, stage, sig, log)
            output = log.read_text()
            assert rc == 130, output
            assert "Traceback" not in output, output
            counts = check_valid_end(out / "group")
            assert f"{sum(counts.values())} of {RUNS} runs: " in output, output
            if inside:
                outcomes.append(counts)
        # the last try's finished runs are kept by the next attempt, the rest is done
        rc = forks.start(["run", config, "--out", out], log)
        assert forks.wait() == 0, log.read_text()
        text = log.read_text()
        if counts["ok"]:
            assert f"{counts['ok']} of {RUNS} runs finished earlier and are kept; {RUNS - counts['ok']} to run" in text
        assert check_valid_end(out / "group") == Counter(ok=RUNS)
    return outcomes


def _tries() -> int:
    return TRIES if os.environ.get("OPTCMP_SIGNAL_TRIES") is None else int(os.environ["OPTCMP_SIGNAL_TRIES"])


def test_a_signal_while_a_group_prepares_its_folders_interrupts_every_run(tmp_path):
    outcomes = signal_in_window(tmp_path, half_prepared, _tries())
    # nothing had trained: every folder there was is `interrupted`, none is left without a result
    assert all(set(c) == {"interrupted"} for c in outcomes), outcomes


def test_a_signal_while_a_group_writes_its_results_keeps_those_written(tmp_path):
    outcomes = signal_in_window(tmp_path, half_finished, _tries())
    # the runs whose results were being written are ok (their writing is finished, never
    # cut off), and the sweep still ends as interrupted
    assert all(c["ok"] + c["interrupted"] == RUNS and c["ok"] > 0 for c in outcomes), outcomes


SWEEP = """\
name: group
seeds: 4
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic, samples: 64}
train: {steps: 30}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1, 0.2, 0.3]
  model.hidden: [[8], [4]]
log: {every: 10, histograms: {every: 15}}
summary: {chaos: off}  # the runs planned, no chaos probes (summary.chaos auto adds one per config)
"""


@pytest.mark.slow
def test_a_signal_at_a_random_moment_of_a_sweep_is_never_lost(tmp_path):
    """Two vectorized groups one after the other, 32 sequential runs, or the groups in
    pieces on two worker processes: a signal at a random moment (its delay drawn from a
    fixed seed) always ends with exit 130 and a valid end state, whatever stage it lands in."""
    global RUNS
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP)
    rng = random.Random(12)
    previous, RUNS = RUNS, 32
    ends = Counter()
    try:
        with CliForks() as forks:
            for i in range(_tries()):
                out, log = tmp_path / f"try{i}", tmp_path / f"try{i}.log"
                how = (["--engine", "auto"], ["--engine", "sequential"], ["--jobs", "2"])[i % 3]
                pid = forks.start(["run", config, "--out", out, *how], log)
                deadline = time.monotonic() + 120
                while not (out / "group").is_dir():  # the sweep has begun
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.001)
                time.sleep(rng.uniform(0, 1.0))
                try:
                    os.kill(pid, (signal.SIGINT, signal.SIGTERM)[i % 2])
                except ProcessLookupError:  # it had ended
                    pass
                rc = forks.wait()
                output = log.read_text()
                if "Interrupted" not in output:  # the sweep ended before the signal came
                    assert rc == 0 and "32 of 32 runs: 32 ok" in output, output
                    ends["finished first"] += 1
                    continue
                assert rc == 130 and "Traceback" not in output, output
                counts = check_valid_end(out / "group")
                ends["stopped with some ok" if counts["ok"] else "stopped, none ok" if counts else "stopped before a run"] += 1
    finally:
        RUNS = previous
    print(f"\nrandom-moment signals: {dict(ends)}")


# --- children end with optcmp ----------------------------------------------------------


def _board(tmp_path: Path):
    """`optcmp board` on a folder with one run's events; returns (its process, TensorBoard's)."""
    import socket
    import subprocess
    import sys

    import psutil

    pytest.importorskip("tensorboard")
    from optcmp.tb.logger import RunLogger

    with RunLogger(tmp_path / "runs" / "a") as logger:
        logger.scalars(0, {"train/loss": 1.0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "board.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "optcmp", "board", str(tmp_path / "runs"), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    deadline = time.monotonic() + 60
    while True:  # until TensorBoard listens
        assert proc.poll() is None, (tmp_path / "board.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "board.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    (server,) = psutil.Process(proc.pid).children()
    return proc, server, port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_tensorboard_ends_with_optcmp_board(tmp_path, sig):
    """SIGTERM to `optcmp board` alone (not its group), or kill -9, which nothing in optcmp
    can see: the TensorBoard server ends too (the kernel tells it, PR_SET_PDEATHSIG)."""
    import psutil

    proc, server, port = _board(tmp_path)
    try:
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        gone, alive = psutil.wait_procs([server], timeout=30)
        assert not alive, f"TensorBoard (pid {server.pid}) outlived optcmp board"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if server.is_running():
            server.kill()


def test_board_on_a_port_in_use_is_one_line(tmp_path):
    import socket

    from typer.testing import CliRunner

    from optcmp.cli import app

    pytest.importorskip("tensorboard")
    (tmp_path / "runs").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["board", str(tmp_path / "runs"), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: --port {port}: 127.0.0.1:{port} is in use (another TensorBoard?); " \
                            f"give another port, e.g. --port {port + 1}\n"
