"""Chaos probes where they are cheap: `summary.chaos: auto` (the default) keeps a config's probe
where its runs train in a vectorized group and drops it where they train one by one; `on`
always probes, `off` never; one seed is never probed (no spread to compare with)."""
from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from optcmp.api import prepare
from optcmp.cli import app

CONFIG = """\
name: probes
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 10}
optimizer: {name: adam, lr: 0.01}
sweep: {optimizer.name: [adam, adadelta]}
log: {every: 5, histograms: {every: 0}}
"""


def run_ids(write_config, chaos: str, engine: str, text: str = CONFIG) -> list[str]:
    loaded, specs, runs = prepare(write_config(text + f"summary: {{chaos: {chaos}}}\n"), engine=engine)
    assert [r.spec for r in runs] == specs
    return [s.run_id for s in specs]


@pytest.mark.parametrize("chaos, engine, probes", [
    ("auto", "auto", ["adam-s0-ulp"]),  # adadelta has no batched update: its runs train one by one
    ("auto", "sequential", []),
    ("on", "auto", ["adam-s0-ulp", "adadelta-s0-ulp"]),
    ("on", "sequential", ["adam-s0-ulp", "adadelta-s0-ulp"]),
    ("off", "auto", []),
])
def test_which_probes_are_planned(write_config, chaos, engine, probes):
    ids = run_ids(write_config, chaos, engine)
    assert [i for i in ids if not i.endswith("-ulp")] == ["adam-s0", "adam-s1", "adadelta-s0", "adadelta-s1"]
    assert [i for i in ids if i.endswith("-ulp")] == probes


def test_one_seed_is_never_probed(write_config):
    assert run_ids(write_config, "on", "auto", CONFIG.replace("seeds: 2", "seeds: [4]")) == ["adam-s4", "adadelta-s4"]


def test_a_run_trains_the_cheap_probes_and_says_how_many(write_config, tmp_path):
    path = write_config(CONFIG)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    runs = pd.read_csv(tmp_path / "probes" / "runs.csv")
    assert runs["run_id"].tolist() == ["adam-s0", "adam-s1", "adam-s0-ulp", "adadelta-s0", "adadelta-s1"]
    assert runs["engine"].tolist() == ["vectorized"] * 3 + ["sequential"] * 2
    assert "5 of 5 runs: 5 ok (1 chaos probe);" in result.output
    summary = pd.read_csv(tmp_path / "probes" / "summary.csv").set_index("config_id")
    assert summary["n"].to_dict() == {"adam": 2, "adadelta": 2}  # a probe is no seed
    assert summary["runs"].to_dict() == {"adam": 2, "adadelta": 2}
    seeds = runs[runs["config_id"] == "adam"].set_index("run_id")["train_loss"]
    assert summary.at["adam", "train_loss_mean"] == pytest.approx((seeds["adam-s0"] + seeds["adam-s1"]) / 2, rel=1e-12)
    ratio = abs(seeds["adam-s0-ulp"] - seeds["adam-s0"]) / pd.Series([seeds["adam-s0"], seeds["adam-s1"]]).std()
    assert summary.at["adam", "train_loss_sensitivity"] == pytest.approx(ratio, rel=1e-9)
    assert pd.isna(summary.at["adadelta", "train_loss_sensitivity"])  # not probed

    again = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--engine", "sequential"])
    assert again.exit_code == 0, again.output  # the probe is not planned now; the seeds are kept
    assert "4 of 4 runs: 4 ok (4 kept from an earlier attempt)" in again.output
