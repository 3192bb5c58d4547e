"""The command line end to end: outputs on disk, TensorBoard tags, errors and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from optcmp.cli import app
from tests.conftest import TINY

runner = CliRunner()

SWEEP = """\
name: cli
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 12}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.01, 0.1]
log: {every: 4, histograms: {every: 5}}
"""


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture
def finished(write_config, tmp_path):
    path = write_config(SWEEP)
    result = invoke("run", path, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "cli", result


def test_run_writes_every_output(finished):
    exp, result = finished
    ids = ["adam-wd0.01-s0", "adam-wd0.01-s1", "adam-wd0.1-s0", "adam-wd0.1-s1"]
    for run_id in ids:
        d = exp / run_id
        assert {"config.yaml", "metrics.csv", "result.json", "weights.npz"} <= {p.name for p in d.iterdir()}
        assert any(p.name.startswith("events.out.tfevents") for p in d.iterdir())
        res = json.loads((d / "result.json").read_text())
        assert res["run_id"] == run_id and res["status"] == "ok"
        assert set(res["metrics"]) >= {"train_loss", "weight_norm", "steps", "seconds", "near_zero_frac"}
        assert res["params"]["optimizer.weight_decay"] in (0.01, 0.1)
    runs = pd.read_csv(exp / "runs.csv")
    # summary.chaos auto: each config's chaos probe (seed 0, initial weights one ulp up) trains in its group
    assert runs["run_id"].tolist() == ["adam-wd0.01-s0", "adam-wd0.01-s1", "adam-wd0.01-s0-ulp",
                                       "adam-wd0.1-s0", "adam-wd0.1-s1", "adam-wd0.1-s0-ulp"]
    assert runs["role"].tolist() == ["run", "run", "ulp"] * 2
    assert "6 of 6 runs: 6 ok (2 chaos probes)" in result.output
    runs = runs[runs["role"] == "run"]  # the summary's seeds: not the probes
    assert list(runs.columns[:13]) == [
        "run_id", "config_id", "variant", "role", "seed", "status", "decay", "engine", "device", "error",
        "diverged_step", "pruned_step", "optimizer.weight_decay",
    ]
    summary = pd.read_csv(exp / "summary.csv")
    assert sorted(summary["config_id"]) == ["adam-wd0.01", "adam-wd0.1"]
    assert summary["n"].tolist() == [2, 2]
    for config_id, group in runs.groupby("config_id"):
        row = summary[summary["config_id"] == config_id].iloc[0]
        assert row["train_loss_mean"] == pytest.approx(group["train_loss"].mean())
        assert row["train_loss_std"] == pytest.approx(group["train_loss"].std(ddof=1))
    assert (exp / "summary.md").read_text().startswith("| rank | config | optimizer.weight_decay | decay |")
    assert json.loads((exp / "summary.json").read_text())["primary"] == "best_train_loss"
    assert "adam-wd0.1" in result.output and "coupled (L2)" in result.output


def test_resolved_config_is_rerunnable(finished, tmp_path):
    exp, _ = finished
    resolved = exp / "adam-wd0.1-s1" / "config.yaml"
    again = invoke("run", resolved, "--out", tmp_path / "again", "--set", "name=again")
    assert again.exit_code == 0, again.output
    a = json.loads((exp / "adam-wd0.1-s1" / "result.json").read_text())["metrics"]
    b = json.loads((tmp_path / "again" / "again" / "adam-s1" / "result.json").read_text())["metrics"]
    # the sweep trained its runs as one vectorized group, the rerun trains one run: equal
    # up to the rounding of the other kernels
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
    assert b["weight_norm"] == pytest.approx(a["weight_norm"], rel=1e-6)


def test_tensorboard_tags(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(finished[0] / "adam-wd0.1-s0"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    # Linear(1, 8), LayerNorm(8), Linear(8, 8), LayerNorm(8), Linear(8, 1): each layer by
    # its place and type, so a LayerNorm's numbers never look like a Linear layer's
    layers = ["0.Linear", "1.LayerNorm", "2.Linear", "3.LayerNorm", "4.Linear"]
    finals = ["train_loss", "train_loss_tail", "best_train_loss", "weight_norm", "near_zero_frac", "steps",
              "steps_per_second"]  # for HParams; no validation split, a regression: no val_*, no accuracy
    assert scalars == {"train/loss", "lr/group0", "grad_norm", "weight_norm", *(f"weight_norm/{x}" for x in layers),
                       "update_ratio", *(f"~final/{m}" for m in finals)}
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 4, 8, 11]
    names = [f"{layer}.{p}" for layer in layers for p in ("weight", "bias")]
    assert set(acc.Tags()["histograms"]) == {f"weights/{n}" for n in names} | {f"grads/{n}" for n in names}
    assert [e.step for e in acc.Histograms("weights/0.Linear.weight")] == [0, 5, 10, 11]  # and the final weights


def test_summary_rerenders_from_disk(finished):
    exp, _ = finished
    before = (exp / "summary.csv").read_text()
    (exp / "summary.csv").unlink()
    result = invoke("summary", exp)
    assert result.exit_code == 0, result.output
    assert (exp / "summary.csv").read_text() == before


def test_plan_lists_runs_without_training(write_config, tmp_path):
    result = invoke("plan", write_config(SWEEP), "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    for run_id in ["adam-wd0.01-s0", "adam-wd0.01-s1", "adam-wd0.1-s0", "adam-wd0.1-s1"]:
        assert run_id in result.output
    assert "6 runs" in result.output and "adam-wd0.1-s0-ulp" in result.output  # 4 and their chaos probes
    assert "vectorized group of 6" in result.output
    assert not (tmp_path / "runs").exists()
    sequential = invoke("plan", write_config(SWEEP), "--engine", "sequential")
    assert "4 runs" in sequential.output and "-ulp" not in sequential.output  # auto: probes where they are cheap


def test_set_and_sweep_options(write_config, tmp_path):
    result = invoke("plan", write_config(SWEEP), "--set", "seeds=[5]", "--sweep", "optimizer.weight_decay=0,0.3")
    assert result.exit_code == 0, result.output
    assert "adam-wd0-s5" in result.output and "adam-wd0.3-s5" in result.output and "wd0.01" not in result.output


@pytest.mark.parametrize(
    "mutation, message",
    [
        (("optimizer: {name: adam, lr: 0.01}", "optimizer: {name: adma, lr: 0.01}"),
         ":7: optimizer.name: unknown optimizer `adma` (did you mean `adam`?); allowed: adadelta, adafactor, adagrad, adam"),
        (("optimizer: {name: adam, lr: 0.01}", "optimizer: {name: adamw, lr: 0.01, wieght_decay: 0.1}"),
         ":7: optimizer.wieght_decay: `AdamW` takes no argument `wieght_decay` (did you mean `weight_decay`?); allowed: amsgrad, betas"),
        (("device: cpu", "device: cuda:7"), ":3: device: `cuda:7` asked for, but"),
        (("data: {kind: quadratic}", "data: {kind: mnist}"),
         ":5: data.kind: unknown data set `mnist`"),
        (("optimizer.weight_decay: [0.01, 0.1]", "optimizer.momentum: [0.9]"),
         ":9: sweep.optimizer.momentum: 0.9: `Adam` takes no argument `momentum`"),
    ],
)
def test_config_errors_exit_2_with_one_line(write_config, tmp_path, mutation, message):
    path = write_config(SWEEP.replace(*mutation))
    result = invoke("run", path, "--out", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith(f"error: {path}")
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "cli").exists()


def test_missing_config_file(tmp_path):
    result = invoke("run", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nope.yaml'}: no such file"


def test_summary_of_empty_folder(tmp_path):
    result = invoke("summary", tmp_path)
    assert result.exit_code == 2
    assert result.output.strip().endswith("no finished runs here (no */result.json); run `optcmp run CONFIG` first")


def test_help_does_not_import_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "optcmp", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "run" in proc.stdout and "plan" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "optcmp" in imported
    assert not imported & {"torch", "pandas", "numpy", "tensorboardX", "scipy"}


def test_a_vectorized_scheduled_sweep_never_builds_a_torch_optim_optimizer(write_config, tmp_path):
    """Its first construction imports torch._dynamo, a second: the schedule is checked and
    stepped on an optimizer holding only learning rates."""
    config = write_config(TINY.replace("log:", "scheduler: {name: cosineannealinglr, warmup_steps: 5}\nseeds: [0, 1]\nlog:")
                          .replace("seeds: [0]\n", ""))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "optcmp", "run", str(config), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "torch._dynamo" not in proc.stderr
    result = json.loads((tmp_path / "out" / "tiny" / "adam-s1" / "result.json").read_text())
    assert result["engine"] == "vectorized" and result["status"] == "ok"


def test_run_does_not_import_pandas(write_config, tmp_path):
    """pandas costs every sweep a quarter of a second to import: `run` writes its summary without it."""
    config = write_config()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "optcmp", "run", str(config), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" in imported and "pandas" not in imported
    summary = json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())
    assert [c["config_id"] for c in summary["configs"]] == ["adam"]
    assert summary["configs"][0]["n"] == 1 and summary["configs"][0]["train_loss_std"] is None


def test_main_pauses_garbage_collection_until_the_imports_are_done(monkeypatch):
    import gc

    from optcmp import cli

    assert gc.isenabled()
    cli._imports_done()  # nothing paused: nothing to do
    assert gc.isenabled() and not cli._gc_paused
    seen = {}

    def command():
        seen["during"], seen["paused"] = gc.isenabled(), cli._gc_paused
        frozen = gc.get_freeze_count()
        cli._imports_done()
        seen["after"], seen["frozen"] = gc.isenabled(), gc.get_freeze_count() > frozen

    monkeypatch.setattr(cli, "app", command)
    monkeypatch.setattr(cli, "_exit_now", lambda code: seen.setdefault("code", code))
    try:
        cli.main()
    finally:
        gc.unfreeze()
        gc.enable()
    # paused while the command imports; collecting again after, without what was built so far
    assert seen == {"during": False, "paused": True, "after": True, "frozen": True, "code": 0}
    assert not cli._gc_paused


def test_version_is_the_packages():
    import tomllib
    from pathlib import Path

    import optcmp

    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.output == f"optcmp {optcmp.__version__}\n"
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert optcmp.__version__ == pyproject["project"]["version"]


def test_name_option_names_the_experiment_folder(write_config, tmp_path):
    result = invoke("run", write_config(), "--out", tmp_path / "runs", "--set", "name=ignored", "--name", "2024")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["2024"]  # a string, and the last word
    assert json.loads((tmp_path / "runs" / "2024" / "adam-s0" / "result.json").read_text())["status"] == "ok"


def test_summary_metric_prints_another_ranking_and_writes_nothing(finished):
    exp, _ = finished
    files = {name: (exp / name).read_text() for name in ("runs.csv", "summary.csv", "summary.md", "summary.json")}
    result = invoke("summary", exp, "--metric", "weight_norm")
    assert result.exit_code == 0, result.output
    assert "cli: ranked by weight_norm (files unchanged; --write saves this ranking)" in result.output
    assert {name: (exp / name).read_text() for name in files} == files
    ranked = pd.read_csv(exp / "summary.csv").sort_values("weight_norm_mean")["config_id"].tolist()
    assert [line.split()[1] for line in result.output.splitlines() if line[:1].isdigit()] == ranked

    result = invoke("summary", exp, "--metric", "weight_norm", "--write")
    assert result.exit_code == 0, result.output
    assert json.loads((exp / "summary.json").read_text())["primary"] == "weight_norm"
    assert pd.read_csv(exp / "summary.csv")["config_id"].tolist() == ranked
    result = invoke("summary", exp)  # keeps the ranking the files have
    assert result.exit_code == 0, result.output
    assert "cli: ranked by weight_norm\n" in result.output
    assert json.loads((exp / "summary.json").read_text())["primary"] == "weight_norm"


def test_summary_wide_shows_every_column(finished):
    exp, _ = finished
    result = invoke("summary", exp, "--wide")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("#"))
    assert header.split() == ["#", "config", "weight_decay", "decay", "best_train_loss", "weight_norm", "near_zero_frac",
                              "train_loss_tail", "train_loss", "steps", "seconds", "steps_per_second", "group_size", "n",
                              "runs", "status", "diverged", "diverged_frac",
                              # the chaos probes' ratios (summary.chaos auto): every column is every column
                              "train_loss_sensitivity", "train_loss_tail_sensitivity", "best_train_loss_sensitivity",
                              "weight_norm_sensitivity", "near_zero_frac_sensitivity"]


def test_an_install_hint_keeps_its_brackets(finished, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the report extra were not installed
    result = invoke("report", finished[0])
    assert result.exit_code == 2
    assert result.output == "error: optcmp report needs matplotlib: pip install 'optcmp[report]'\n"


def test_the_sklearn_hint_keeps_its_brackets(write_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    path = write_config(SWEEP.replace("data: {kind: quadratic}", "data: {kind: sklearn, name: digits}"))
    result = invoke("run", path, "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.output == (f"error: {path}:5: data.kind: `sklearn` data sets need scikit-learn: "
                             "pip install 'optcmp[sklearn]'\n")


def test_tensorboard_hint_only_where_it_is_installed(monkeypatch, tmp_path):
    import importlib.util

    from optcmp.cli import tensorboard_hint

    assert tensorboard_hint(tmp_path) == f"TensorBoard: tensorboard --logdir {tmp_path}"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    assert tensorboard_hint(tmp_path) == (f"TensorBoard logs written; to view them: pip install 'optcmp[tensorboard]', "
                                          f"then optcmp board {tmp_path}")


def test_run_ends_with_the_tensorboard_hint(finished):
    exp, result = finished
    assert f"TensorBoard: tensorboard --logdir {exp}" in result.output.splitlines()
