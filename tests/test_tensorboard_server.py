"""A real TensorBoard server shows RunLogger's histograms and the HParams of a small sweep."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
import torch

from optcmp.tb.logger import RunLogger

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="tensorboard (optional extra: pip install 'optcmp[tensorboard]') is not installed",
)

SWEEP = [(0.01, 0), (0.1, 0), (0.1, 1)]  # (weight_decay, seed): two configs, one with two seeds
STEPS = 3


def write_sweep(logdir):
    """Three runs in their own folders, as `optcmp run` lays them out; returns what was logged."""
    expected = {}
    for wd, seed in SWEEP:
        run = f"wd/wd{wd}-s{seed}"
        torch.manual_seed(seed)
        w = torch.randn(4, 5)
        with RunLogger(logdir / run) as logger:
            for step in range(STEPS):
                logger.scalars(step, {"train/loss": 1.0 / (step + 1) + wd})
                logger.histograms(step, {"weights/0.weight": w * (step + 1)})
            final = 1.0 / STEPS + wd
            logger.hparams({"optimizer.weight_decay": wd, "seed": seed}, {"train_loss": final})
        expected[run] = (wd, seed, final)
    return expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(base, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_for_runs(base, runs, proc, log, deadline):
    """Poll until the server answers and has loaded every run (it loads in the background)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tensorboard exited with {proc.returncode}: {log.read_text()}")
        try:
            if set(request(base, "/data/runs")) >= set(runs):
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.3)
    pytest.fail("tensorboard did not serve the runs within 60 s")


@contextmanager
def tensorboard_server(logdir, runs, tmp_path):
    """A TensorBoard server on `logdir`, once it has loaded `runs`; yields its base URL."""
    port = free_port()
    log = tmp_path / "tensorboard.log"  # a file, so the server never blocks on a full pipe
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
             "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_runs(base, runs, proc, log, time.monotonic() + 60)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ALL_STATUSES = ["STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING", "STATUS_UNKNOWN"]


def session_groups(base, metrics, hparams):
    return request(base, "/data/plugin/hparams/session_groups", {
        "experimentName": "",
        "allowedStatuses": ALL_STATUSES,
        "colParams": [*({"metric": {"tag": m}} for m in metrics), *({"hparam": h} for h in hparams)],
        "startIndex": 0,
        "sliceSize": 100,
    })


@needs_tensorboard
def test_server_shows_histograms_and_hparams(tmp_path):
    logdir = tmp_path / "runs"
    expected = write_sweep(logdir)
    with tensorboard_server(logdir, expected, tmp_path) as base:
        # Histograms tab: every step, each bucket [left, right, count], counts summing to 20.
        histos = request(base, "/data/plugin/histograms/histograms?run=wd/wd0.1-s1&tag=weights/0.weight")
        assert [step for _, step, _ in histos] == list(range(STEPS))
        torch.manual_seed(1)
        w = torch.randn(4, 5)
        for _, step, buckets in histos:
            assert sum(count for _, _, count in buckets) == 20
            assert buckets[0][0] == pytest.approx((w * (step + 1)).min().item())
            assert buckets[-1][1] == pytest.approx((w * (step + 1)).max().item())

        # Distributions tab: the same histograms as percentile bands, from min to max.
        dists = request(base, "/data/plugin/distributions/distributions?run=wd/wd0.1-s1&tag=weights/0.weight")
        assert [step for _, step, _ in dists] == list(range(STEPS))
        for (_, step, bands), (_, _, buckets) in zip(dists, histos):
            assert bands[0][1] == pytest.approx(buckets[0][0]) and bands[-1][1] == pytest.approx(buckets[-1][1])

        # HParams dashboard: one session group per run, seeds apart, with the final metric.
        groups = session_groups(base, ["~final/train_loss"], ["optimizer.weight_decay", "seed"])
        assert groups["totalSize"] == len(SWEEP)
        seen = {}
        for group in groups["sessionGroups"]:
            (session,) = group["sessions"]
            assert session["status"] == "STATUS_SUCCESS"
            (metric,) = group["metricValues"]
            assert metric["name"]["tag"] == "~final/train_loss"
            seen[group["name"]] = (
                group["hparams"]["optimizer.weight_decay"],
                int(group["hparams"]["seed"]),
                pytest.approx(metric["value"], rel=1e-6),
            )
        assert seen == expected


SMALL_SWEEP = """name: tb
seeds: 2
device: cpu
model: {kind: mlp, hidden: [6], norm: layernorm, activation: relu}
data: {kind: random_classification, samples: 60, features: 4, classes: 3, val_fraction: 0.25, batch_size: 15}
train: {steps: 8}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1]
log: {every: 4, histograms: {every: 4}}
summary: {chaos: off}  # the runs planned, no chaos probes (summary.chaos auto adds one per config)
"""
LAYERS = ["0.Linear", "1.LayerNorm", "3.Linear"]  # Linear(4, 6), LayerNorm(6), ReLU, Linear(6, 3)
CURVES = {"train/loss", "val/loss", "val/accuracy", "lr/group0", "grad_norm", "weight_norm", "update_ratio",
          *(f"weight_norm/{layer}" for layer in LAYERS)}
METRICS = ["val_loss", "val_accuracy", "train_loss", "train_accuracy", "val_loss_tail", "val_accuracy_tail",
           "train_loss_tail", "best_val_loss", "best_val_accuracy", "best_train_loss", "weight_norm",
           "near_zero_frac", "steps", "steps_per_second"]


@needs_tensorboard
def test_server_reads_a_sweep_as_optcmp_writes_it(write_config, tmp_path):
    """Tags by module path and type, the final metrics only under `~final/` (for HParams,
    which names them plainly), seeds as text, the Custom Scalars layout: as the server says."""
    from typer.testing import CliRunner

    from optcmp.cli import app

    result = CliRunner().invoke(app, ["run", str(write_config(SMALL_SWEEP)), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    exp = tmp_path / "runs" / "tb"
    ids = ["adam-wd0-s0", "adam-wd0-s1", "adam-wd0.1-s0", "adam-wd0.1-s1"]
    with tensorboard_server(exp, ids, tmp_path) as base:
        scalars = request(base, "/data/plugin/scalars/tags")
        assert sorted(scalars) == ids
        finals = {f"~final/{m}" for m in METRICS}
        for run_id in ids:
            assert set(scalars[run_id]) == CURVES | finals
        histograms = request(base, "/data/plugin/histograms/tags")
        params = [f"{layer}.{p}" for layer in LAYERS for p in ("weight", "bias")]
        assert set(histograms["adam-wd0.1-s1"]) == {f"{kind}/{p}" for kind in ("weights", "grads") for p in params}
        steps = request(base, "/data/plugin/histograms/histograms?run=adam-wd0.1-s1&tag=weights/1.LayerNorm.weight")
        assert [step for _, step, _ in steps] == [0, 4, 7]

        # HParams: the metrics under their own names, the seed a string
        experiment = request(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
        assert [(m["name"]["tag"], m["displayName"]) for m in experiment["metricInfos"]] == [
            (f"~final/{m}", m) for m in METRICS]
        types = {h["name"]: h["type"] for h in experiment["hparamInfos"]}
        assert types == {"optimizer.name": "DATA_TYPE_STRING", "decay": "DATA_TYPE_STRING", "seed": "DATA_TYPE_STRING",
                         "optimizer.weight_decay": "DATA_TYPE_FLOAT64"}
        groups = session_groups(base, ["~final/val_loss", "~final/steps"], ["seed", "optimizer.weight_decay"])
        seen = {}
        for group in groups["sessionGroups"]:
            values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            seen[group["name"]] = (group["hparams"]["seed"], group["hparams"]["optimizer.weight_decay"],
                                   pytest.approx(values["~final/val_loss"], rel=1e-6), values["~final/steps"])
        on_disk = {run_id: json.loads((exp / run_id / "result.json").read_text()) for run_id in ids}
        assert seen == {run_id: (str(r["seed"]), r["params"]["optimizer.weight_decay"], r["metrics"]["val_loss"], 8)
                        for run_id, r in on_disk.items()}

        # Custom Scalars: one layout, merged from the runs' identical ones
        layout = request(base, "/data/plugin/custom_scalars/layout")
        assert [(c["title"], [(ch["title"], ch["multiline"]["tag"]) for ch in c["chart"]]) for c in layout["category"]] == [
            ("loss", [("train/loss", ["^train/loss$"]), ("val/loss", ["^val/loss$"])]),
            ("accuracy", [("val/accuracy", ["^val/accuracy$"])]),
            ("learning rate", [("lr (each parameter group)", ["^lr/"])]),
            ("norms", [("grad_norm", ["^grad_norm$"]), ("weight_norm", ["^weight_norm$"]),
                       ("update_ratio", ["^update_ratio$"])]),
        ]
        # what the custom scalars charts fetch: every run's series of a tag regex
        series = request(base, "/data/plugin/custom_scalars/scalars?run=adam-wd0-s0&tag=%5Eval%2Floss%24")
        assert [step for _, step, _ in series["tag_to_events"]["val/loss"]] == [0, 4, 7]


@needs_tensorboard
def test_board_command_serves_an_output_folder(tmp_path):
    write_sweep(tmp_path / "runs")
    port = free_port()
    log = tmp_path / "board.log"
    with log.open("wb") as out:
        # Its own session, so the test can send Ctrl-C to optcmp and TensorBoard alike, as a terminal does.
        proc = subprocess.Popen(
            [sys.executable, "-m", "optcmp", "board", str(tmp_path / "runs"), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_runs(f"http://127.0.0.1:{port}", [f"wd/wd{wd}-s{seed}" for wd, seed in SWEEP], proc, log,
                      time.monotonic() + 60)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert f"http://127.0.0.1:{port}/" in log.read_text()


def test_board_without_tensorboard_says_how_to_install(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from optcmp.cli import app

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    result = CliRunner().invoke(app, ["board", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "tensorboard is not installed: pip install 'optcmp[tensorboard]'" in result.output
