"""A study's progress display: the sweep's (`progress.SweepProgress`) with totals that are the
study's at most, growing as rounds are planned; at 80 columns, with a fake clock."""
from __future__ import annotations

import io

from rich.console import Console

from optcmp.cli_study import study_progress
from optcmp.config import load_config
from optcmp.study import Protocol
from optcmp.study_run import Study
from optcmp.units import Execution
from tests.test_progress import Clock, shown, terminal

STUDY = """\
name: prog
device: cpu
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 200, loss: mse}
log: {every: 50, histograms: {every: 0}}
optimizers:
  adam: {name: adam}
  sgdm: {name: sgd, momentum: 0.9, space: {optimizer.lr: {log_uniform: [1.0e-5, 1.0e-3]}}, }
tune:
  space: {optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}}
  budget: 4
  seeds: [0, 1]
  final_seeds: 2
"""


class Spec:
    def __init__(self, run_id: str, config_id: str, role: str) -> None:
        self.run_id, self.config_id, self.role = run_id, config_id, role


def protocol(write_config):
    return Protocol.of(load_config(write_config(STUDY)), Execution())


def test_a_study_at_80_columns_counts_every_run_it_may_train(write_config):
    clock = Clock()
    display = study_progress(terminal(80), protocol(write_config), clock=clock)
    # 2 arms × (4 trials × 2 tuning seeds + 2 final runs) = 20 runs of 200 steps: 4000 steps
    trials = [Spec(f"{arm}-t{t}-s{s}", f"{arm}-t{t}", "trial") for arm in ("adam", "sgdm") for t in range(4) for s in (0, 1)]
    display.plan(trials, [])
    unit = [trials[0]]
    display.unit_start(unit)
    clock.now = 4
    display.step(unit, 100, 200, [0.5])
    for spec in trials[1:8]:
        display.run_end({"run_id": spec.run_id})
    lines = shown(display)
    assert all(len(line) <= 80 for line in lines), lines
    # 7 × 200 + 100 = 1500 of 4000 steps in 4 s: 4 × 2500 / 1500 = 6.7 s to go
    assert lines[0].startswith("study runs  ━")
    assert lines[0].split()[-4:] == ["7/20", "ETA", "0:00:06", "0:00:04"]
    assert lines[1].split() == ["adam-t0-s0", "100/200", "loss", "0.5", "0:00:04"]


def test_a_resumed_study_counts_the_kept_runs(write_config):
    clock = Clock()
    display = study_progress(terminal(80), protocol(write_config), clock=clock)
    kept = [{"run_id": f"adam-t{t}-s0", "config_id": f"adam-t{t}", "role": "trial"} for t in range(4)]
    finals = [Spec("adam-s2", "adam", "final"), Spec("adam-s3", "adam", "final")]
    display.plan(finals, kept)
    display.plan(finals, kept)  # the same runs planned twice count once
    assert (display.done_runs, display.done_work, display.steps["adam-s2"]) == (4, 800, 200)
    assert shown(display)[0].split()[-4:] == ["4/20", "ETA", "0:00:00", "0:00:00"]


def test_a_real_study_prints_its_rounds_and_plain_lines(write_config, tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False, color_system=None)
    p = protocol(write_config)
    display = study_progress(console, p, plain_every=0.0)
    from optcmp.study import StudyEvents

    with display:
        events = StudyEvents(display.plan, display.unit_start, display.step, display.run_end, board=display.attach,
                             phase=display.print)
        outcome = Study(p, tmp_path / "prog", None, Execution(), events).run()
    assert outcome.verdict is not None
    lines = out.getvalue().splitlines()
    assert "round 1: 8 trials, 16 runs" in lines
    assert "final runs: the best trial of each of 2 arms on 2 fresh seeds" in lines
    assert display.done_runs == 20 and display.done_work == 4000
    assert all(len(line) <= 80 for line in lines), lines
