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


@needs_tensorboard
def test_server_shows_histograms_and_hparams(tmp_path):
    logdir = tmp_path / "runs"
    expected = write_sweep(logdir)
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
        wait_for_runs(base, expected, proc, log, time.monotonic() + 60)

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
        groups = request(base, "/data/plugin/hparams/session_groups", {
            "experimentName": "",
            "allowedStatuses": ["STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING", "STATUS_UNKNOWN"],
            "colParams": [
                {"metric": {"tag": "final/train_loss"}},
                {"hparam": "optimizer.weight_decay"},
                {"hparam": "seed"},
            ],
            "startIndex": 0,
            "sliceSize": 100,
        })
        assert groups["totalSize"] == len(SWEEP)
        seen = {}
        for group in groups["sessionGroups"]:
            (session,) = group["sessions"]
            assert session["status"] == "STATUS_SUCCESS"
            (metric,) = group["metricValues"]
            assert metric["name"]["tag"] == "final/train_loss"
            seen[group["name"]] = (
                group["hparams"]["optimizer.weight_decay"],
                int(group["hparams"]["seed"]),
                pytest.approx(metric["value"], rel=1e-6),
            )
        assert seen == expected
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
