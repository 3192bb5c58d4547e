"""A study stopped at any moment resumes exactly: no finished trial or run redone, none lost,
a trial asked but not told trained with its stored values (never drawn again), a trial half
asked completed as it would have been; trials.csv and verdict.json end equal to an
uninterrupted study's. Stopped by an exception at chosen points, and by kill -9 at random
moments of a real `optcmp run`."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from optcmp.config import load_config
from optcmp.sampling import ArmStudy, Space
from optcmp.study_run import Study, run_study
from optcmp.units import Execution

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
name: resume
device: cpu
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 40, loss: mse}
log: {every: 5, histograms: {every: 0}}
optimizers:
  adam: {name: adam}
  sgdm: {name: sgd, momentum: 0.9, space: {optimizer.lr: {log_uniform: [1.0e-5, 1.0e-3]}}}
tune:
  space: {optimizer.lr: {log_uniform: [1.0e-3, 1.0e-1]}, optimizer.weight_decay: {choice: [0.0, 0.01]}}
  sampler: tpe
  budget: 12
  final_seeds: 2
"""
FILES = ("trials.csv", "verdict.json", "verdict.md", "runs.csv")


def owner(exp: Path) -> int | None:
    """The pid holding the experiment's lock (stale after a kill -9, hence the pid)."""
    try:
        return int((exp / ".lock.owner").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def finished_runs(exp: Path) -> dict[str, str]:
    """Run id → the events file of each finished run (its name holds the pid that trained it)."""
    out = {}
    for path in exp.glob("*/result.json"):
        if json.loads(path.read_text())["status"] in ("ok", "diverged", "pruned"):
            (events,) = path.parent.glob("events.out.tfevents.*")
            out[path.parent.name] = events.name
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted study's files."""
    root = tmp_path_factory.mktemp("reference")
    (root / "resume.yaml").write_text(CONFIG)
    run_study(load_config(root / "resume.yaml"), root / "resume", execution=Execution("sequential"))
    return {name: (root / "resume" / name).read_text() for name in FILES if name != "runs.csv"}


def check_equal(exp: Path, reference: dict[str, str]) -> None:
    for name, text in reference.items():
        assert (exp / name).read_text() == text, name
    for arm in ("adam", "sgdm"):
        study = optuna.load_study(study_name=f"resume/{arm}", storage=f"sqlite:///{exp / 'study.db'}")
        assert [t.number for t in study.trials] == list(range(12))  # the budget counts stored trials: none lost or added
        assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}


class Stop(Exception):
    pass


@pytest.mark.parametrize("where", ["before training", "mid-ask", "mid-tell", "in the final runs"])
def test_a_study_stopped_anywhere_resumes_exactly(tmp_path, monkeypatch, reference, where):
    path = tmp_path / "resume.yaml"
    path.write_text(CONFIG)
    exp = tmp_path / "resume"
    calls = {"n": 0}

    def once(original, when):
        def patched(*args, **kwargs):
            calls["n"] += 1
            if when(calls["n"], args):
                raise KeyboardInterrupt
            return original(*args, **kwargs)
        return patched

    if where == "before training":  # round 2: its trials asked, none trained
        monkeypatch.setattr(Study, "_train", once(Study._train, lambda n, args: n == 2))
    elif where == "mid-ask":  # the second key of sgdm's trial 10 (round 2) is not stored yet
        monkeypatch.setattr(Space, "suggest", once(Space.suggest, lambda n, args: n == 2 * 10 + 2 * 11 + 2))
    elif where == "mid-tell":  # round 1: adam's 10 trials told, sgdm's not
        monkeypatch.setattr(ArmStudy, "tell", once(ArmStudy.tell, lambda n, args: n == 11))
    else:
        monkeypatch.setattr(Study, "_train", once(Study._train, lambda n, args: n == 4))
    first = run_study(load_config(path), exp, execution=Execution("sequential"))
    assert first.interrupted and first.verdict is None
    before = finished_runs(exp)
    monkeypatch.undo()
    second = run_study(load_config(path), exp, execution=Execution("sequential"))
    assert not second.interrupted
    check_equal(exp, reference)
    after = finished_runs(exp)
    assert {k: after[k] for k in before} == before  # nothing that had finished was trained again
    assert second.trained == len(after) - len(before) and set(second.kept) == set(before)


def test_kill_minus_9_at_random_moments(tmp_path, reference):
    path = tmp_path / "resume.yaml"
    path.write_text(CONFIG)
    exp = tmp_path / "out" / "resume"
    cmd = [sys.executable, "-m", "optcmp", "run", str(path), "--out", str(tmp_path / "out"), "--engine", "sequential"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(13)
    targets = [0, *sorted(rng.sample(range(1, 28), 3))]  # kill once this many runs have finished, and a bit later
    kept: dict[str, str] = {}
    progress = []  # finished runs after each attempt
    for attempt in range(8):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if attempt < len(targets):
            while proc.poll() is None and (owner(exp) != proc.pid or len(finished_runs(exp)) < targets[attempt]):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
        finished = finished_runs(exp) if exp.exists() else {}
        assert {k: finished[k] for k in kept} == kept  # a finished run is never trained again
        progress.append(len(finished))
        kept = finished
        if proc.returncode == 0:
            break
        time.sleep(0.1)
    assert proc.returncode == 0, proc.stdout.read().decode()
    # killed more than once, at least once in the middle of training (a kill may also land after the
    # last run finished, while the study writes its tables: that resume must recover too)
    assert len(progress) >= 3 and any(0 < p < 28 for p in progress[:-1]), progress
    check_equal(exp, reference)
