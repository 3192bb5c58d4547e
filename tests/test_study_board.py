"""`optcmp board --study DIR`: optuna-dashboard on the study's storage, in a real server
(its HTTP API answers with the study's trials), ending with optcmp; one-line refusals."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from optcmp.config import load_config
from optcmp.study_run import run_study

ROOT = Path(__file__).resolve().parent.parent
STUDY = """\
name: dash
device: cpu
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 20, loss: mse}
log: {every: 5, histograms: {every: 0}}
optimizers:
  adam: {name: adam}
  sgdm: {name: sgd, momentum: 0.9}
tune:
  space: {optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}}
  budget: 3
  final_seeds: 2
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("board")
    (root / "dash.yaml").write_text(STUDY)
    run_study(load_config(root / "dash.yaml"), root / "dash")
    return root / "dash"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.skipif(importlib.util.find_spec("optuna_dashboard") is None, reason="needs optuna-dashboard")
def test_board_study_serves_the_trials_and_ends_with_optcmp(study_dir, tmp_path):
    import psutil

    port = free_port()
    log = tmp_path / "board.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "optcmp", "board", "--study", str(study_dir), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                summaries = get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                time.sleep(0.3)
        assert sorted(s["study_name"] for s in summaries) == ["dash/adam", "dash/sgdm"]
        trials = pd.read_csv(study_dir / "trials.csv")
        for summary in summaries:
            variant = summary["study_name"].split("/")[1]
            served = get(f"{base}/api/studies/{summary['study_id']}")["trials"]
            mine = trials[trials.variant == variant].sort_values("trial")
            assert [t["number"] for t in served] == mine.trial.tolist()
            assert [t["params"][0]["name"] for t in served] == ["optimizer.lr"] * 3
            assert [float(t["params"][0]["param_external_value"]) for t in served] == pytest.approx(mine["optimizer.lr"].tolist())
            ok = mine.status == "ok"
            assert [t["values"][0] for t, o in zip(served, ok) if o] == pytest.approx(mine.best_train_loss[ok].tolist())
        (server,) = psutil.Process(proc.pid).children()
        proc.send_signal(signal.SIGTERM)  # optcmp alone, not its group: the dashboard must end with it
        assert proc.wait(timeout=30) == 0, log.read_text()
        gone, alive = psutil.wait_procs([server], timeout=30)
        assert not alive, f"optuna-dashboard (pid {server.pid}) outlived optcmp board"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert f"optuna-dashboard for {study_dir} on {base}/ (Ctrl-C stops it)" in log.read_text()


def invoke(args: list[str]):
    from typer.testing import CliRunner

    from optcmp.cli import app

    return CliRunner().invoke(app, args)


def test_board_study_refusals_are_one_line(tmp_path, study_dir, monkeypatch):
    (tmp_path / "empty").mkdir()
    result = invoke(["board", "--study", str(tmp_path / "empty")])
    assert (result.exit_code, result.output) == (
        2, f"error: {tmp_path / 'empty'}: no study here (no study.db); give the folder `optcmp tune` wrote, e.g. runs/<name>\n")
    result = invoke(["board", "--study", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.output == (
        f"error: {tmp_path / 'nowhere'}: no such folder (give a study's folder, e.g. runs/<name> of `optcmp tune`)\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "study.json").write_text(json.dumps({"storage": "postgresql://me:***@db/optuna"}))
    result = invoke(["board", "--study", str(tmp_path / "elsewhere")])
    assert result.exit_code == 2 and result.output == (
        f"error: {tmp_path / 'elsewhere'}: the study is kept in postgresql://me:***@db/optuna; give that URL: --storage URL\n")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "optuna_dashboard" else find_spec(name, *a))
    result = invoke(["board", "--study", str(study_dir)])
    assert result.exit_code == 2
    assert result.output == "optuna-dashboard is not installed: pip install 'optcmp[dashboard]'\n"


def test_the_hint_after_a_study_names_the_extra_where_it_is_missing(tmp_path, monkeypatch):
    from optcmp.cli_study import looking_hint

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "optuna_dashboard" else find_spec(name, *a))
    assert looking_hint(tmp_path) == (f"Pictures: optcmp report {tmp_path} (report.html); the trials in optuna-dashboard: "
                                      f"pip install 'optcmp[dashboard]', then optcmp board --study {tmp_path}")
