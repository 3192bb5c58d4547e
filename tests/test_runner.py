"""The sweep driver: failures and divergence do not stop a sweep, exit statuses, resume and
changed configs, --fresh, one writer per experiment, and the work-unit seam."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.config import load_config
from optcmp.errors import OptcmpError
from optcmp.runner import Execution, plan_units, preflight
from optcmp.sweep import expand
from tests.sweeps import ROOT, result_files, run

SWEEP = """\
name: sweep
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic}
train: {steps: 20}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1]
log: {every: 5, histograms: {every: 0}}
"""
IDS = ["adam-wd0-s0", "adam-wd0-s1", "adam-wd0.1-s0", "adam-wd0.1-s1"]
# with each config's chaos probe (summary.chaos auto: the runs are vectorized), in plan order
PROBED = ["adam-wd0-s0", "adam-wd0-s1", "adam-wd0-s0-ulp", "adam-wd0.1-s0", "adam-wd0.1-s1", "adam-wd0.1-s0-ulp"]

FAULTY = """\
name: faulty
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic}
train: {steps: 20}
optimizer: {name: "tests.sweeps:FailingAdam", lr: 0.01}
sweep:
  optimizer.fail_at: [null, 3]
log: {every: 5, histograms: {every: 0}}
"""


def plan_units_of(loaded, specs, engine: str = "auto", jobs: int = 1):
    return plan_units(preflight(loaded, specs), engine, jobs)


def status_of(exp: Path) -> dict[str, str]:
    return dict(pd.read_csv(exp / "runs.csv")[["run_id", "status"]].itertuples(index=False))


def test_a_failing_run_is_marked_and_the_sweep_goes_on(write_config, tmp_path, monkeypatch):
    monkeypatch.delenv("OPTCMP_TEST_HEALED", raising=False)
    config, exp = write_config(FAULTY), tmp_path / "faulty"
    first = run(config, tmp_path)
    assert first.exit_code == 1, first.output
    ok, bad = ["FailingAdam-fail_atNone-s0", "FailingAdam-fail_atNone-s1"], ["FailingAdam-fail_at3-s0", "FailingAdam-fail_at3-s1"]
    assert status_of(exp) == {**dict.fromkeys(ok, "ok"), **dict.fromkeys(bad, "failed")}
    runs = pd.read_csv(exp / "runs.csv").set_index("run_id")
    assert runs.loc[bad[0], "error"] == "RuntimeError: injected fault at step 3"
    assert "Traceback" in (exp / bad[0] / "error.txt").read_text()
    summary = pd.read_csv(exp / "summary.csv").set_index("config_id")
    assert summary.loc["FailingAdam-fail_at3", "status"] == "2 failed" and summary.loc["FailingAdam-fail_at3", "n"] == 0
    assert summary.loc["FailingAdam-fail_atNone", "n"] == 2
    assert "4 of 4 runs: 2 ok, 2 failed" in first.output and "2 run(s) failed" in first.output

    # the next attempt redoes the failed runs only
    before = result_files(exp)
    monkeypatch.setenv("OPTCMP_TEST_HEALED", "1")
    second = run(config, tmp_path)
    assert second.exit_code == 0, second.output
    assert "2 of 4 runs finished earlier and are kept; 2 to run" in second.output
    after = result_files(exp)
    assert all(after[i] == before[i] for i in ok) and all(after[i] != before[i] for i in bad)
    assert set(status_of(exp).values()) == {"ok"}


def test_a_diverged_run_is_final_and_not_redone(write_config, tmp_path):
    config = write_config(SWEEP.replace("optimizer.weight_decay: [0.0, 0.1]", "optimizer.lr: [0.01, 1.0e30]"))
    exp = tmp_path / "sweep"
    first = run(config, tmp_path)
    assert first.exit_code == 0, first.output  # diverging is an outcome, not an error
    result = json.loads((exp / "adam-lr1e+30-s0" / "result.json").read_text())
    assert result["status"] == "diverged" and result["diverged_step"] == 1
    assert result["error"] == "loss became nan at step 1"
    assert status_of(exp) == {"adam-lr0.01-s0": "ok", "adam-lr0.01-s1": "ok",
                              "adam-lr1e+30-s0": "diverged", "adam-lr1e+30-s1": "diverged"}
    assert "  diverged: adam-lr1e+30-s0: loss became nan at step 1" in first.output
    before = result_files(exp)
    second = run(config, tmp_path)
    assert second.exit_code == 0 and "4 of 4 runs finished earlier and are kept; 0 to run" in second.output
    assert result_files(exp) == before


def test_ctrl_c_in_a_run_marks_it_interrupted_and_exits_130(write_config, tmp_path, monkeypatch):
    monkeypatch.delenv("OPTCMP_TEST_HEALED", raising=False)
    config = write_config(FAULTY.replace("lr: 0.01}", "lr: 0.01, interrupt: true}"))
    exp = tmp_path / "faulty"
    result = run(config, tmp_path)
    assert result.exit_code == 130, result.output
    # the runs before the interrupted one finished; the ones after it never started
    assert status_of(exp) == {"FailingAdam-fail_atNone-s0": "ok", "FailingAdam-fail_atNone-s1": "ok",
                              "FailingAdam-fail_at3-s0": "interrupted"}
    assert not (exp / "FailingAdam-fail_at3-s1").exists()
    assert pd.read_csv(exp / "summary.csv")["status"].tolist() == ["2 ok", "1 interrupted"]
    assert "Interrupted with 2 of 4 runs left to do" in result.output


def test_a_changed_config_is_refused_and_fresh_starts_over(write_config, tmp_path):
    config, exp = write_config(SWEEP), tmp_path / "sweep"
    assert run(config, tmp_path).exit_code == 0
    before = result_files(exp)
    (exp / "notes.txt").write_text("mine")

    changed = run(config, tmp_path, "--set", "train.steps=30", "--set", "log.every=10")
    assert changed.exit_code == 2
    message = " ".join(changed.output.split())
    assert f"error: {exp} holds results of another config under the name `sweep` (adam-wd0-s0 and 3 more runs): " \
           "train.steps is 20 there, 30 here; log.every is 5 there, 10 here." in message
    assert "another `name` to keep both, or run with --fresh" in message
    assert result_files(exp) == before  # refused before touching anything

    fresh = run(config, tmp_path, "--set", "train.steps=30", "--set", "log.every=10", "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert {json.loads(b)["metrics"]["steps"] for b in result_files(exp).values()} == {30}
    assert (exp / "notes.txt").read_text() == "mine"


def test_more_seeds_and_values_extend_an_experiment(write_config, tmp_path):
    config, exp = write_config(SWEEP), tmp_path / "sweep"
    assert run(config, tmp_path).exit_code == 0
    before = result_files(exp)
    more = run(config, tmp_path, "--set", "seeds=3", "--sweep", "optimizer.weight_decay=0.0,0.1,0.5")
    assert more.exit_code == 0, more.output
    assert "4 of 9 runs finished earlier and are kept; 5 to run" in more.output
    assert all(result_files(exp)[i] == before[i] for i in IDS)
    assert pd.read_csv(exp / "runs.csv")["run_id"].tolist() == [
        "adam-wd0-s0", "adam-wd0-s1", "adam-wd0-s2", "adam-wd0.1-s0", "adam-wd0.1-s1", "adam-wd0.1-s2",
        "adam-wd0.5-s0", "adam-wd0.5-s1", "adam-wd0.5-s2"]
    # a changed fixed value is still caught when no run id is shared
    other = run(config, tmp_path, "--set", "optimizer.name=adamw")
    assert other.exit_code == 2 and "optimizer.name is 'adam' there, 'adamw' here" in " ".join(other.output.split())


def test_a_second_writer_is_refused(write_config, tmp_path):
    config, exp = write_config(SWEEP), tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from optcmp.locking import experiment_lock\n"
         "with experiment_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(exp)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "held\n"
        second = run(config, tmp_path)
        assert second.exit_code == 2
        assert f"error: {exp} is in use by another optcmp run (pid {holder.pid}); wait for it to finish" in " ".join(second.output.split())
        assert not (exp / "plan.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run(config, tmp_path).exit_code == 0  # the lock died with its holder


def test_work_units_reach_the_vectorized_engine_through_one_seam(write_config, tmp_path, monkeypatch):
    """The runner executes the units `planning.plan_units` made, as given: run_unit hands a
    vectorized unit to `vectorized.execute_unit`; results come back in plan order whatever
    the grouping."""
    from optcmp import planning, vectorized
    from optcmp.trainer import execute
    from optcmp.units import Unit

    calls = []

    def plan_units(runs, engine="auto", jobs=1):
        return [Unit(tuple(runs[1::2]), "vectorized"), Unit(tuple(runs[0::2]), "vectorized")]  # odd runs first

    def execute_unit(unit, exp_dir, base_dir, progress=None, should_stop=None):
        calls.append([s.run_id for s in unit])
        return [execute(run, exp_dir, base_dir) for run in unit.runs]

    loaded = load_config(write_config(SWEEP))
    specs = expand(loaded.config)
    assert [[s.run_id for s in u] for u in plan_units_of(loaded, specs, "sequential")] == [[i] for i in PROBED]
    monkeypatch.setattr(planning, "plan_units", plan_units)
    monkeypatch.setattr(vectorized, "execute_unit", execute_unit)
    result = CliRunner().invoke(app, ["run", str(write_config(SWEEP)), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert calls == [["adam-wd0-s1", "adam-wd0.1-s0", "adam-wd0.1-s0-ulp"], ["adam-wd0-s0", "adam-wd0-s0-ulp", "adam-wd0.1-s1"]]
    assert pd.read_csv(tmp_path / "sweep" / "runs.csv")["run_id"].tolist() == PROBED


def test_execution_options_are_checked(monkeypatch):
    with pytest.raises(OptcmpError, match=r"^--address and --gpus-per-run need --executor ray$"):
        Execution(address="auto")
    with pytest.raises(OptcmpError, match=r"^--jobs 0: must be at least 1$"):
        Execution(jobs=0)
    with pytest.raises(OptcmpError, match=r"^--jobs applies to the local executor"):
        Execution(executor="ray", jobs=2)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(OptcmpError, match=r"^the ray executor needs ray: pip install 'optcmp\[ray\]'$"):
        Execution(executor="ray")


def test_an_unreachable_ray_cluster_is_reported_at_once(write_config, tmp_path):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(write_config(SWEEP), tmp_path, "--executor", "ray", "--address", f"127.0.0.1:{port}")
    assert result.exit_code == 2
    assert f"error: --address 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port} (Connection refused)" in result.output
