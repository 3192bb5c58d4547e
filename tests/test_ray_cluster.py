"""Ray beyond one process: a real multi-node cluster on this machine losing a worker node
mid-sweep, and a local Ray instance that ends with its driver, kill -9 included.

The cluster is what the README's recipe starts: `ray start --head` (no CPUs: it only
coordinates) and two `ray start --address …` worker nodes of one CPU each, every one its
own raylet, all on 127.0.0.1, with a shared output folder only on the driver's side (a
task trains into a temporary folder on its node and returns the files). Each worker node
gets its own TMPDIR, so a task's temporary folder tells which node ran it, and a killed
attempt's folder stays behind: the count of runs retried.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
SWEEP = """\
name: cluster
seeds: 3
device: cpu
model: {kind: mlp, hidden: [32, 32], norm: layernorm}
data: {kind: quadratic, samples: 256}
train: {steps: 1500}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.01, 0.1, 0.2]
log: {every: 250, histograms: {every: 0}}
"""
RUNS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **extra}


class Cluster:
    """A head and worker nodes started by `ray start`, each a raylet of its own; every
    process of it is found by its temporary folder and ended by pid when done."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="optcmp-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._start("--head", f"--port={self.port}", "--num-cpus=0", f"--temp-dir={self.dir}",
                    "--include-dashboard=false")

    def _start(self, *args: str, tmpdir: Path | None = None) -> None:
        env = _env(**({"TMPDIR": str(tmpdir)} if tmpdir else {}))
        proc = subprocess.run(["ray", "start", "--node-ip-address=127.0.0.1", "--object-store-memory=80000000",
                               "--disable-usage-stats", *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def add_worker(self, name: str) -> Path:
        tmpdir = self.dir / name
        tmpdir.mkdir()
        self._start(f"--address={self.address}", "--num-cpus=1", tmpdir=tmpdir)
        return tmpdir

    def processes(self, tmpdir: Path | None = None) -> list:
        """The cluster's processes (or one worker node's: those with its TMPDIR, and below them)."""
        found = []
        for p in psutil.process_iter():
            try:
                cmd, env = " ".join(p.cmdline()), p.environ()
            except (psutil.Error, OSError):
                continue
            if tmpdir is None and (str(self.dir) in cmd or env.get("TMPDIR", "").startswith(str(self.dir))):
                found.append(p)
            elif tmpdir is not None and env.get("TMPDIR") == str(tmpdir):
                found.append(p)
        for p in list(found):
            try:
                found += [c for c in p.children(recursive=True) if c not in found]
            except psutil.Error:
                pass
        return found

    def busy_worker(self, tmpdir: Path):
        """A worker process of that node running a task (`ray::_ray_work`), or None."""
        for p in self.processes(tmpdir):
            try:
                if p.cmdline()[:1] == ["ray::_ray_work"]:
                    return p
            except psutil.Error:
                pass
        return None

    def kill(self, processes: list) -> None:
        for p in processes:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(processes, timeout=30)

    def close(self) -> None:
        self.kill(self.processes())
        shutil.rmtree(self.dir, ignore_errors=True)


def attempts(tmpdir: Path) -> set[str]:
    """The run ids of task attempts whose temporary folder is still in a node's TMPDIR."""
    return {p.name for d in tmpdir.glob("optcmp-*") for p in d.iterdir() if p.is_dir()}


class Writes:
    """Each result.json's versions (inode, mtime) seen while the sweep runs: a run written twice shows two."""

    def __init__(self, exp: Path) -> None:
        self.exp, self.seen = exp, {}

    def poll(self) -> None:
        for path in self.exp.glob("*/result.json"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            self.seen.setdefault(path.parent.name, set()).add((st.st_ino, st.st_mtime_ns))


@pytest.mark.slow  # about a minute: starting three raylets takes ~20 s, the sweep on two CPUs ~40 s
def test_a_sweep_survives_a_worker_node_killed_mid_sweep(tmp_path):
    """12 runs as 12 Ray tasks on two one-CPU worker nodes; once a run has finished and
    another is running on node b, every process of node b is killed (SIGKILL): its run is
    retried on node a, every run ends ok exactly once, none is lost, none finished redone."""
    config = tmp_path / "cluster.yaml"
    config.write_text(SWEEP)
    cluster = Cluster()
    try:
        node_a, node_b = cluster.add_worker("a"), cluster.add_worker("b")
        exp = tmp_path / "cluster"
        started = time.monotonic()
        driver = subprocess.Popen(
            [sys.executable, "-m", "optcmp", "run", str(config), "--out", str(tmp_path), "--executor", "ray",
             "--address", cluster.address, "--engine", "sequential"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
        writes = Writes(exp)
        deadline = time.monotonic() + 240
        victim = None
        while victim is None:  # a run finished, and another running on node b
            assert driver.poll() is None, driver.stdout.read()
            assert time.monotonic() < deadline, "no run finished with another running on node b"
            writes.poll()
            # a task attempt's folder on node b, not only a busy worker process: a worker is
            # busy before its attempt's folder exists and after it is gone (CI once killed the
            # node between two runs, and no run was in flight to retry)
            if writes.seen and attempts(node_b):
                victim = cluster.busy_worker(node_b)
            time.sleep(0.02)
        before = {run_id: (exp / run_id / "result.json").read_bytes() for run_id in writes.seen}
        cluster.kill(cluster.processes(node_b))  # the raylet, its workers, its agents: the node is gone
        killed_at = time.time_ns()
        in_flight_on_b = attempts(node_b)
        while driver.poll() is None:
            writes.poll()
            assert time.monotonic() < deadline, "the sweep did not end"
            time.sleep(0.02)
        writes.poll()
        output = driver.stdout.read()
        wall = time.monotonic() - started
        assert driver.returncode == 0, output
        assert f"{RUNS} of {RUNS} runs: {RUNS} ok" in output, output

        results = {p.parent.name: json.loads(p.read_text()) for p in exp.glob("*/result.json")}
        retried = in_flight_on_b
        lost = RUNS - sum(r["status"] == "ok" for r in results.values())
        redone = sum(len(versions) > 1 for versions in writes.seen.values())
        print(f"\ncluster sweep: {RUNS} runs, {len(before)} finished before node b was killed, "
              f"retried {len(retried)} ({', '.join(sorted(retried))}), lost {lost}, redone {redone}, {wall:.0f} s")
        assert len(results) == RUNS and lost == 0
        assert len(retried) >= 1 and retried <= set(results)  # the run cut off on node b ended ok, on node a
        assert all((exp / r / "result.json").stat().st_mtime_ns > killed_at for r in retried)
        assert redone == 0 and all(len(v) == 1 for v in writes.seen.values()) and len(writes.seen) == RUNS
        assert all((exp / run_id / "result.json").read_bytes() == data for run_id, data in before.items())
        assert Counter(len(list((exp / r).glob("events.out.tfevents.*"))) for r in results) == Counter({1: RUNS})
        assert attempts(node_a) == set()  # every attempt on node a finished and cleaned up
    finally:
        if "driver" in locals() and driver.poll() is None:
            driver.kill()
        cluster.close()


LONG = """\
name: local
seeds: 4
device: cpu
model: {kind: mlp, hidden: [32, 32], norm: layernorm}
data: {kind: quadratic, samples: 256}
train: {steps: 20000}
optimizer: {name: adam, lr: 0.01}
log: {every: 1000, histograms: {every: 0}}
"""


def _driver_with_local_ray(tmp_path: Path):
    """`optcmp run --executor ray` starting its own local Ray instance, once a task runs:
    (the driver, every process below it)."""
    config = tmp_path / "local.yaml"
    config.write_text(LONG)
    driver = subprocess.Popen(
        [sys.executable, "-m", "optcmp", "run", str(config), "--out", str(tmp_path), "--executor", "ray",
         "--engine", "sequential"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
    deadline = time.monotonic() + 180
    while True:
        assert driver.poll() is None, driver.stdout.read()
        assert time.monotonic() < deadline, "no Ray task started"
        below = psutil.Process(driver.pid).children(recursive=True)
        names = set()
        for p in below:
            try:
                names.add(p.cmdline()[0])
            except (psutil.Error, IndexError):
                pass
        if {"ray::_ray_work", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names:
            return driver, below
        time.sleep(0.2)


@pytest.mark.slow
def test_a_local_ray_instance_ends_with_its_driver_killed(tmp_path):
    """kill -9 of a driver that started its own Ray: its GCS server and raylet die with it
    (Ray's PR_SET_PDEATHSIG), its agents and workers too (optcmp's reaper) — not 60 s
    later, as Ray's agents would on their own."""
    driver, below = _driver_with_local_ray(tmp_path)
    try:
        driver.kill()
        driver.wait()
        gone, alive = psutil.wait_procs(below, timeout=15)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        for p in below:
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.mark.slow
def test_sigterm_to_a_ray_driver_stops_the_sweep_and_its_ray(tmp_path):
    """ray.init makes SIGTERM a sys.exit at any point; optcmp keeps it a stop: exit 130, the
    runs in flight interrupted, runs.csv written, and the local instance ended."""
    driver, below = _driver_with_local_ray(tmp_path)
    try:
        driver.send_signal(signal.SIGTERM)
        output = driver.communicate(timeout=120)[0]
        assert driver.returncode == 130, output
        statuses = [json.loads(p.read_text())["status"] for p in (tmp_path / "local").glob("*/result.json")]
        assert statuses and set(statuses) == {"interrupted"}
        assert "Traceback" not in output
        gone, alive = psutil.wait_procs(below, timeout=15)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        if driver.poll() is None:
            driver.kill()
        for p in below:
            try:
                p.kill()
            except psutil.Error:
                pass
