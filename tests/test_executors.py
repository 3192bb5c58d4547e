"""Executors: `--jobs 2` and `--executor ray` give the very numbers of `--jobs 1`; a dying
worker is reported (the process pool) or retried and then reported (Ray)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.sweeps import ROOT, run

SWEEP = """\
name: sweep
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: random_classification, samples: 64, features: 4, batch_size: 16, val_fraction: 0.25}
train: {steps: 40}
optimizer: {name: adamw, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1]
log: {every: 5, histograms: {every: 20}}
"""
IDS = ["adamw-wd0-s0", "adamw-wd0-s1", "adamw-wd0.1-s0", "adamw-wd0.1-s1"]
# measured, so they differ from one attempt to the next; and the size of the unit a run trained in
TIMING = ("seconds", "steps_per_second", "group_size")


def numbers(exp: Path) -> dict[str, dict]:
    """Everything a run computed: final metrics, every logged scalar, the final weights."""
    out = {}
    for run_id in IDS:
        result = json.loads((exp / run_id / "result.json").read_text())
        assert result["status"] == "ok"
        weights = np.load(exp / run_id / "weights.npz")
        out[run_id] = {
            "metrics": {k: v for k, v in result["metrics"].items() if k not in TIMING},
            "scalars": (exp / run_id / "metrics.csv").read_bytes(),
            "weights": {name: weights[name] for name in weights.files},
        }
    return out


def assert_same_numbers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for run_id in a:
        assert a[run_id]["metrics"] == b[run_id]["metrics"], run_id
        assert a[run_id]["scalars"] == b[run_id]["scalars"], run_id
        for name, array in a[run_id]["weights"].items():
            np.testing.assert_array_equal(array, b[run_id]["weights"][name], err_msg=f"{run_id} {name}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep trained in this process, one run after another (`--jobs 1`)."""
    tmp = tmp_path_factory.mktemp("reference")
    config = tmp / "sweep.yaml"
    config.write_text(SWEEP)
    result = run(config, tmp)
    assert result.exit_code == 0, result.output
    return config, numbers(tmp / "sweep")


@pytest.mark.slow
def test_jobs_2_gives_the_numbers_of_jobs_1(reference, tmp_path):
    config, expected = reference
    result = run(config, tmp_path, "--jobs", 2)
    assert result.exit_code == 0, result.output
    assert_same_numbers(numbers(tmp_path / "sweep"), expected)
    assert pd.read_csv(tmp_path / "sweep" / "runs.csv")["run_id"].tolist() == IDS  # plan order, not finishing order


GROUP = """\
name: group
seeds: 4
device: cpu
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 30}
optimizer: {name: adam, lr: 0.01}
sweep: {optimizer.name: [adam, adamw], optimizer.weight_decay: [0.0, 0.1]}
log: {every: 10, histograms: {every: 10}}
"""


def test_jobs_2_splits_a_vectorized_group_across_forked_workers(write_config, tmp_path):
    """16 runs of one group and their 4 chaos probes (summary.chaos auto) train as two pieces
    of 10 in two forked processes, with the very numbers (scalars, metrics, weights) of the
    whole group in this process."""
    from optcmp.config import load_config
    from optcmp.executors import start_method
    from optcmp.runner import plan_units, preflight
    from optcmp.sweep import expand

    config = write_config(GROUP)
    loaded = load_config(config)
    specs = expand(loaded.config)
    units = plan_units(preflight(loaded, specs), "auto", jobs=2)
    assert [len(u) for u in units] == [10, 10]
    assert start_method(units, threads=1) == "fork"
    from typer.testing import CliRunner

    from optcmp.cli import app

    shown = CliRunner().invoke(app, ["plan", str(config), "--jobs", "2"]).output
    assert "engine auto: 2 work units on 2 processes" in shown
    assert "vectorized group of 10: adam-wd0-s0, adam-wd0-s1, adam-wd0-s2, … adam-wd0.1-s0-ulp" in shown
    for name, extra in (("one", []), ("two", ["--jobs", 2])):
        result = run(config, tmp_path / name, "--engine", "vectorized", *extra)  # the last --engine counts
        assert result.exit_code == 0, result.output
    ids = [s.run_id for s in specs]
    one, two = (tmp_path / name / "group" for name in ("one", "two"))
    for run_id in ids:
        a, b = (json.loads((d / run_id / "result.json").read_text()) for d in (one, two))
        assert a["engine"] == b["engine"] == "vectorized"
        assert {k: v for k, v in a["metrics"].items() if k not in TIMING} == \
            {k: v for k, v in b["metrics"].items() if k not in TIMING}
        assert (one / run_id / "metrics.csv").read_bytes() == (two / run_id / "metrics.csv").read_bytes()
        wa, wb = np.load(one / run_id / "weights.npz"), np.load(two / run_id / "weights.npz")
        for name in wa.files:
            np.testing.assert_array_equal(wa[name], wb[name])
    assert pd.read_csv(two / "runs.csv")["run_id"].tolist() == ids


def test_workers_are_forked_only_where_that_is_safe(write_config):
    from optcmp.config import load_config
    from optcmp.executors import start_method
    from optcmp.sweep import expand

    cpu = [expand(load_config(write_config(GROUP)).config)]
    assert start_method(cpu, threads=1) == "fork"
    assert start_method(cpu, threads=2) == "spawn"  # an OpenMP pool does not survive a fork
    auto = [expand(load_config(write_config(GROUP.replace("device: cpu", "device: auto"))).config)]
    import torch

    assert start_method(auto, threads=1) == ("spawn" if torch.cuda.is_available() else "fork")
    cuda = [expand(load_config(write_config(GROUP.replace("device: cpu", "device: cuda"))).config)]
    assert start_method(cuda, threads=1) == "spawn"  # CUDA cannot be used in a forked child


def test_preload_imports_the_engines_of_the_units_before_the_fork(write_config):
    """A fresh process that plans vectorized units holds no engine module until `preload`,
    then the vectorized engine's with the TensorBoard writer it stands on: the forked
    workers share them."""
    import subprocess
    import sys

    config = write_config(GROUP)
    script = f"""
import sys
from optcmp.config import load_config
from optcmp.engines import preload
from optcmp.runner import plan_units, preflight
from optcmp.sweep import expand
loaded = load_config({str(config)!r})
units = plan_units(preflight(loaded, expand(loaded.config)), "vectorized", jobs=2)
before = [m in sys.modules for m in ("optcmp.vectorized", "optcmp.loop", "tensorboardX")]
preload(units)
after = [m in sys.modules for m in ("optcmp.vectorized", "optcmp.loop", "tensorboardX")]
print(sorted({{u.engine for u in units}}), before, after)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['vectorized'] [False, False, False] [True, True, True]"


@pytest.mark.slow
def test_a_dead_worker_process_fails_its_runs_not_the_sweep(write_config, tmp_path):
    config = write_config("""\
name: dying
device: cpu
data: {kind: quadratic}
train: {steps: 5}
sweep:
  model.kind: [mlp, "tests.sweeps:dying_model"]
log: {histograms: {every: 0}}
""")
    result = run(config, tmp_path, "--jobs", 2)
    assert result.exit_code == 1, result.output
    died = json.loads((tmp_path / "dying" / "adam-dying_model-s0" / "result.json").read_text())
    assert died["status"] == "failed"
    assert died["error"].startswith("its worker process died (") and died["error"].endswith("); run again to retry")
    assert "failed: adam-dying_model-s0: its worker process died" in result.output


# --- Ray: one local instance for the module (starting one takes seconds) -----------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        # Ray's workers are fresh interpreters: let them import tests.sweeps too
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        yield ray
        ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_numbers_of_jobs_1(local_ray, reference, tmp_path):
    config, expected = reference
    result = run(config, tmp_path, "--executor", "ray")
    assert result.exit_code == 0, result.output
    assert_same_numbers(numbers(tmp_path / "sweep"), expected)
    # the driver wrote every file from what the tasks sent back: the run folders are whole
    for run_id in IDS:
        names = {p.name for p in (tmp_path / "sweep" / run_id).iterdir()}
        assert {"config.yaml", "metrics.csv", "weights.npz", "result.json"} <= names
        assert any(n.startswith("events.out.tfevents.") for n in names)
    assert local_ray.is_initialized()  # a Ray instance the caller started is left running


@pytest.mark.slow
def test_ray_retries_a_dead_worker_then_reports_the_failure(local_ray, write_config, tmp_path):
    once = tmp_path / "died-once"
    config = write_config(f"""\
name: dying
seeds: 1
device: cpu
model: {{kind: "tests.sweeps:dying_model"}}
data: {{kind: quadratic}}
train: {{steps: 5}}
sweep:
  model.kwargs: [{{marker: "{once}"}}, {{}}]
log: {{histograms: {{every: 0}}}}
""")
    result = run(config, tmp_path, "--executor", "ray")
    assert result.exit_code == 1, result.output
    results = {tuple(r["params"]["model.kwargs"]): r for r in
               (json.loads(p.read_text()) for p in (tmp_path / "dying").glob("*/result.json"))}
    assert once.read_text() == "died once\n"
    assert results[("marker",)]["status"] == "ok"  # its first attempt died; Ray's retry finished it
    failed = results[()]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("Ray task failed after 2 retries: WorkerCrashedError: ")
