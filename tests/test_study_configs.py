"""The shipped study configs (configs/studies/): each is a valid study of the stated size,
and each runs as shipped, shortened (few steps, a budget of 2, 2 final seeds)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from optcmp.config import load_config
from optcmp.study import Protocol, total_runs
from optcmp.study_report import write_report
from optcmp.study_run import run_study
from optcmp.units import Execution

STUDIES = Path(__file__).resolve().parent.parent / "configs" / "studies"
# file: (variants, workloads, budget, final seeds, runs at most)
SIZES = {"reference.yaml": (3, 1, 16, 10, 3 * (16 + 10)),
         "weight_decay.yaml": (3, 1, 16, 10, 3 * (16 + 10)),
         "workloads.yaml": (4, 4, 8, 5, 16 * (8 + 5)),
         "digits_cnn.yaml": (4, 1, 8, 10, 4 * (8 + 10))}


def test_the_shipped_study_configs_are_the_stated_studies():
    assert sorted(p.name for p in STUDIES.glob("*.yaml")) == sorted(SIZES)
    for name, (variants, workloads, budget, finals, runs) in SIZES.items():
        protocol = Protocol.of(load_config(STUDIES / name), Execution())
        assert len({a.variant for a in protocol.arms}) == variants
        assert len({a.workload for a in protocol.arms}) == workloads
        assert (protocol.budget, len(protocol.tune.final_seeds), total_runs(protocol)) == (budget, finals, runs)
        assert set(protocol.tune.seeds).isdisjoint(protocol.tune.final_seeds)


def test_the_weight_decay_study_tunes_each_decay_on_its_own_range():
    protocol = Protocol.of(load_config(STUDIES / "weight_decay.yaml"), Execution())
    spaces = {a.variant: {k: d.model_dump(exclude_none=True) for k, d in a.space.items()} for a in protocol.arms}
    lr = {"log_uniform": [1e-4, 3e-2]}
    assert {v: {k: d.get("log_uniform") for k, d in s.items()} for v, s in spaces.items()} == {
        "adam": {"optimizer.lr": lr["log_uniform"]},
        "adam_l2": {"optimizer.lr": lr["log_uniform"], "optimizer.weight_decay": [1e-5, 1e-1]},
        "adamw": {"optimizer.lr": lr["log_uniform"], "optimizer.weight_decay": [1e-3, 3.0]},
    }
    assert protocol.metric == "val_accuracy_tail" and protocol.maximize


@pytest.mark.parametrize("name", sorted(SIZES))
def test_a_shipped_study_runs_shortened(name, tmp_path):
    text = (STUDIES / name).read_text()
    steps = 20 if name != "reference.yaml" else 40
    loaded = load_config(STUDIES / name, sets=[f"train.steps={steps}", "tune.budget=2", "tune.final_seeds=[5, 6]"])
    outcome = run_study(loaded, tmp_path / "study")
    runs = pd.read_csv(tmp_path / "study" / "runs.csv")
    variants, workloads = SIZES[name][:2]
    assert len(runs) == variants * workloads * (2 + 2) and set(runs.status) <= {"ok", "diverged"}
    assert sorted(runs[runs.role == "final"].seed.unique()) == [5, 6]
    assert json.loads((tmp_path / "study" / "verdict.json").read_text()) == outcome.verdict
    page = write_report(tmp_path / "study").read_text()
    assert ('id="profiles"' in page) == (workloads > 1) == ("workloads:" in text)


def test_plan_of_a_study_describes_it_without_training(tmp_path):
    from typer.testing import CliRunner

    from optcmp.cli import app

    result = CliRunner().invoke(app, ["plan", str(STUDIES / "weight_decay.yaml"), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == [
        f"study study-weight-decay → {tmp_path / 'runs' / 'study-weight-decay'} (nothing trains; `optcmp tune` runs it)",
        "metric val_accuracy_tail (higher is better); sampler random (seed 0, the same for every variant); prune none",
        "budget 16 trials per arm, on tuning seed 0; the best trial of each arm rerun on final seeds 1–10",
        "3 arms: at most 78 runs (48 trial runs in 1 round of 16 trials per arm, 30 final runs)"]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert [r[0] for r in rows if r[0]] == ["adam", "adam_l2", "adamw"]
    assert "weight_decay" in " ".join(" ".join(r) for r in rows) and not (tmp_path / "runs").exists()
    result = CliRunner().invoke(app, ["plan", str(STUDIES / "workloads.yaml"), "--set", "tune.sampler=tpe",
                                      "--set", "tune.budget=20", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "16 arms: at most 400 runs (320 trial runs in 5 rounds of 10, 3, 3, 3, 1 trials per arm, 80 final runs)" \
        in result.output


def test_study_numbers_rewrites_only_its_readme_block(tmp_path):
    import importlib.util as iu

    spec = iu.spec_from_file_location("study_numbers", STUDIES.parent.parent / "benchmarks" / "study_numbers.py")
    numbers = iu.module_from_spec(spec)
    spec.loader.exec_module(numbers)
    readme = tmp_path / "README.md"
    readme.write_text(f"# head\n{numbers.BEGIN}\nold numbers\n{numbers.END}\ntail\n")
    numbers.rewrite(readme, "new numbers\n")
    assert readme.read_text() == f"# head\n{numbers.BEGIN}\nnew numbers\n{numbers.END}\ntail\n"
    verdict = {"profiles": {"ratios": {"a": {"x": 1.0, "y": 1.2}, "b": {"x": None, "y": 1.0}}},
               "ranking": ["y", "x"], "variants": {"y": {"rank": 1, "mean_rank": 1.5}, "x": {"rank": 2, "mean_rank": 1.5}}}
    assert numbers.profile_table(verdict)[2:] == [
        "| rank | variant | mean rank | ρ(1) | ρ(1.05) | ρ(1.1) | ρ(1.25) | ρ(1.5) | ρ(2) |", "|---|---|---|---|---|---|---|---|---|",
        "| 1 | y | 1.50 | 0.50 | 0.50 | 0.50 | 1.00 | 1.00 | 1.00 |",
        "| 2 | x | 1.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 |"]
