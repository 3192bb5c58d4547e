"""A sweep killed at any moment and run again redoes only what had not finished; Ctrl-C and
SIGTERM leave a valid summary and exit 130. Real signals, to a real `python -m optcmp run`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from optcmp.results import Status
from tests.sweeps import ROOT, result_files, run

# Six runs of a few tenths of a second each: long enough to be caught in the middle.
LONG = """\
name: long
seeds: 3
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic}
train: {steps: 600}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1]
log: {every: 50, histograms: {every: 500}}
"""
RUNS = 6


def start(config: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "optcmp", "run", str(config), "--out", str(out), "--engine", "sequential", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def wait_for_run_in_flight(proc: subprocess.Popen, exp: Path, timeout: float = 90) -> None:
    """Until a run has started training (its events file exists) and has no result yet."""
    deadline = time.monotonic() + timeout
    while not any(not (d / "result.json").exists() and any(d.glob("events.out.tfevents.*"))
                  for d in exp.iterdir() if d.is_dir()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"no run in flight within {timeout} s"
        time.sleep(0.01)


def wait_for_results(proc: subprocess.Popen, exp: Path, n: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(result_files(exp)) < n:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"no {n} results within {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigkill_then_rerun_redoes_only_unfinished_runs(write_config, tmp_path, jobs):
    config, exp = write_config(LONG), tmp_path / "long"
    proc = start(config, tmp_path, "--jobs", str(jobs))
    wait_for_results(proc, exp, 2)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    # a killed driver's workers stop too, so nothing writes into the folder any more
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    before = result_files(exp)
    assert 2 <= len(before) < RUNS
    assert all(json.loads(b)["status"] == "ok" for b in before.values())
    half_done = [d.name for d in exp.iterdir() if d.is_dir() and not (d / "result.json").exists()]

    again = run(config, tmp_path, "--jobs", str(jobs))  # the next attempt, in this process
    assert again.exit_code == 0, again.output
    assert f"{len(before)} of {RUNS} runs finished earlier and are kept; {RUNS - len(before)} to run" in again.output
    after = result_files(exp)
    assert len(after) == RUNS
    assert all(after[run_id] == data for run_id, data in before.items())  # not one finished run redone
    runs = pd.read_csv(exp / "runs.csv")
    assert sorted(runs["run_id"]) == sorted(after) and runs["status"].eq("ok").all()
    for run_id in half_done:  # a run cut off half-way starts clean: one event file, each step once
        assert len(list((exp / run_id).glob("events.out.tfevents.*"))) == 1
        steps = pd.read_csv(exp / run_id / "metrics.csv")["step"]
        assert steps.is_unique and steps.iloc[-1] == 599


@pytest.mark.slow
@pytest.mark.parametrize("jobs,sig", [(1, signal.SIGINT), (2, signal.SIGTERM)])
def test_a_stop_signal_leaves_a_valid_summary_and_exits_130(write_config, tmp_path, jobs, sig):
    config, exp = write_config(LONG), tmp_path / "long"
    proc = start(config, tmp_path, "--jobs", str(jobs))
    wait_for_results(proc, exp, 2)
    wait_for_run_in_flight(proc, exp)  # a signal between two runs would interrupt none
    proc.send_signal(sig)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output

    results = {run_id: json.loads(b) for run_id, b in result_files(exp).items()}
    statuses = [r["status"] for r in results.values()]
    assert set(statuses) <= {"ok", "interrupted"} and "interrupted" in statuses
    # every run folder has its result: the runs in flight were marked, none was left half-written
    assert sorted(d.name for d in exp.iterdir() if d.is_dir()) == sorted(results)
    runs = pd.read_csv(exp / "runs.csv")
    assert dict(zip(runs["run_id"], runs["status"])) == {k: r["status"] for k, r in results.items()}
    assert set(runs["status"]) <= {s.value for s in Status}
    summary = pd.read_csv(exp / "summary.csv")
    n_ok = statuses.count("ok")
    assert summary["n"].sum() == n_ok and summary["runs"].sum() == len(results)
    assert f"{len(results)} of {RUNS} runs: {n_ok} ok, {statuses.count('interrupted')} interrupted" in output

    again = run(config, tmp_path, "--jobs", str(jobs))
    assert again.exit_code == 0, again.output
    assert f"{n_ok} of {RUNS} runs finished earlier and are kept" in again.output
    assert pd.read_csv(exp / "runs.csv")["status"].eq("ok").sum() == RUNS


SMALL = """\
name: small
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic, samples: 64}
train: {steps: 20}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1]
log: {every: 5, histograms: {every: 0}}
"""
# The keys this release added to the config (and to result.json) since the previous one
# (de51958): a folder that release wrote lacks them, and every run's config hash differs.
NEW_KEYS = ("optimizers", "tune", "max_runs")
NEW_SUMMARY_KEYS = ("tail", "chaos")
NEW_RESULT_FIELDS = ("variant", "role", "pruned_step")


def as_previous_release(exp: Path) -> None:
    """Rewrite each run folder as the previous release wrote it: config.yaml without the
    new keys, result.json without the new fields and with that release's config hash."""
    import yaml

    for folder in (p for p in exp.iterdir() if p.is_dir()):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        for key in NEW_KEYS:
            del config[key]
        for key in NEW_SUMMARY_KEYS:
            del config["summary"][key]
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        result = json.loads((folder / "result.json").read_text())
        for key in NEW_RESULT_FIELDS:
            del result[key]
        result["config_hash"] = "3890d3bc53083950"  # what de51958 computed for adam-wd0-s0
        (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def test_a_folder_of_the_previous_release_is_resumed_where_the_new_keys_are_defaults(write_config, tmp_path):
    config, exp = write_config(SMALL), tmp_path / "small"
    assert run(config, tmp_path).exit_code == 0
    as_previous_release(exp)
    before = result_files(exp)

    again = run(config, tmp_path)
    assert again.exit_code == 0, again.output
    assert "4 of 4 runs finished earlier and are kept; 0 to run" in again.output
    assert result_files(exp) == before
    runs = pd.read_csv(exp / "runs.csv")
    assert runs["status"].eq("ok").all() and runs["role"].isna().all()  # no role then: ordinary runs
    assert pd.read_csv(exp / "summary.csv")["n"].tolist() == [2, 2]

    # a new key set away from its default is a real difference: refused, nothing touched
    other = run(config, tmp_path, "--set", "summary.tail=0.2")
    assert other.exit_code == 2
    assert "summary.tail is 0.1 there, 0.2 here" in " ".join(other.output.split())
    assert result_files(exp) == before

    more = run(config, tmp_path, "--set", "seeds=3")  # the old runs kept, the new seed trained
    assert more.exit_code == 0, more.output
    assert "4 of 6 runs finished earlier and are kept; 2 to run" in more.output
    assert all(result_files(exp)[k] == v for k, v in before.items())
