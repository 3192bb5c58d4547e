"""The Python API: the CLI's path, DataFrames equal to the files, the CLI's errors."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import optcmp
from optcmp.cli import app
from optcmp.compare import compare_configs

CONFIG = """\
name: api
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 10}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1]
log: {every: 5, histograms: {every: 0}}
"""
BAD = CONFIG.replace("{name: adam, lr: 0.01}", "{name: adma, lr: 0.01}")


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "api.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def experiment(config_path, tmp_path):
    return optcmp.run(config_path, out=tmp_path / "runs")


def test_import_optcmp_loads_neither_torch_nor_pandas():
    code = "import sys, optcmp; optcmp.OptcmpError; print(sorted({'torch', 'pandas', 'numpy'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"


def test_public_names():
    assert {"run", "load", "Experiment", "OptcmpError", "__version__"} <= set(dir(optcmp))
    assert optcmp.OptcmpError is __import__("optcmp.errors").errors.OptcmpError
    with pytest.raises(AttributeError):
        optcmp.nothing_here


def test_run_returns_the_files_as_dataframes(experiment, tmp_path, capfd):
    exp_dir = tmp_path / "runs" / "api"
    assert experiment.dir == exp_dir and experiment.name == "api"
    pd.testing.assert_frame_equal(experiment.runs, pd.read_csv(exp_dir / "runs.csv"))
    pd.testing.assert_frame_equal(experiment.summary, pd.read_csv(exp_dir / "summary.csv"))
    # each config's chaos probe (summary.chaos: auto, a vectorized group) follows its seeds
    assert experiment.runs["run_id"].tolist() == ["adam-wd0-s0", "adam-wd0-s1", "adam-wd0-s0-ulp",
                                                  "adam-wd0.1-s0", "adam-wd0.1-s1", "adam-wd0.1-s0-ulp"]
    assert experiment.runs["role"].tolist() == ["run", "run", "ulp"] * 2
    assert experiment.runs["status"].tolist() == ["ok"] * 6
    assert experiment.summary["n"].tolist() == [2, 2]  # the probes are no seeds
    assert capfd.readouterr() == ("", "")  # nothing printed unless asked


def test_load_opens_a_finished_folder(experiment):
    again = optcmp.load(experiment.dir)
    assert again == experiment
    pd.testing.assert_frame_equal(again.summary, experiment.summary)
    with pytest.raises(optcmp.OptcmpError, match="no such experiment folder"):
        optcmp.load(experiment.dir / "nope")
    with pytest.raises(optcmp.OptcmpError) as exc:
        optcmp.load(experiment.dir / "adam-wd0-s0")
    assert str(exc.value) == f"{experiment.dir / 'adam-wd0-s0'}: no runs.csv here; run `optcmp run CONFIG` first"


def test_compare_is_the_commands(experiment):
    pd.testing.assert_frame_equal(experiment.compare(), compare_configs(pd.read_csv(experiment.dir / "runs.csv")))
    frame = experiment.compare(metric="weight_norm", baseline="adam-wd0")
    assert frame[["config_a", "config_b", "metric"]].values.tolist() == [["adam-wd0.1", "adam-wd0", "weight_norm"]]
    assert not (experiment.dir / "compare.csv").exists()  # writes nothing


def test_a_yaml_string_a_dict_and_the_file_train_the_same(experiment, tmp_path):
    from_text = optcmp.run(CONFIG, out=tmp_path / "text")
    from_dict = optcmp.run(yaml.safe_load(CONFIG), out=tmp_path / "dict")
    for other in (from_text, from_dict):
        assert other.name == "api"
        columns = ["run_id", "status", "train_loss", "weight_norm"]
        pd.testing.assert_frame_equal(other.runs[columns], experiment.runs[columns])


def test_overrides_and_sweeps_as_dicts_or_strings(config_path, tmp_path):
    a = optcmp.run(config_path, out=tmp_path / "a", overrides={"seeds": [3], "name": "x"},
                   sweeps={"optimizer.weight_decay": [0.01, 0.2]})
    b = optcmp.run(config_path, out=tmp_path / "b", overrides=["seeds=[3]", "name=x"],
                   sweeps=["optimizer.weight_decay=0.01,0.2"])
    assert a.runs["run_id"].tolist() == ["adam-wd0.01-s3", "adam-wd0.2-s3"] == b.runs["run_id"].tolist()
    assert a.runs["train_loss"].tolist() == b.runs["train_loss"].tolist()
    assert optcmp.run(config_path, out=tmp_path / "c", name="named", sweeps={"optimizer.weight_decay": [0.0]}).name == "named"


def test_an_invalid_config_raises_the_message_the_cli_prints(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(optcmp.OptcmpError) as exc:
        optcmp.run(path, out=tmp_path / "runs")
    cli = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert cli.exit_code == 2
    assert cli.output == f"error: {exc.value}\n"
    assert str(exc.value).startswith(f"{path}:7: optimizer.name: unknown optimizer `adma` (did you mean `adam`?)")
    assert not (tmp_path / "runs").exists()


def test_errors_in_a_string_or_dict_config_name_the_key():
    with pytest.raises(optcmp.OptcmpError) as exc:
        optcmp.run(BAD)
    assert str(exc.value).startswith("<yaml>:7: optimizer.name: unknown optimizer `adma` (did you mean `adam`?)")
    with pytest.raises(optcmp.OptcmpError) as exc:
        optcmp.run(yaml.safe_load(BAD))
    assert str(exc.value).startswith("<dict>: optimizer.name: unknown optimizer `adma` (did you mean `adam`?)")
    with pytest.raises(optcmp.OptcmpError) as exc:
        optcmp.run(CONFIG, engine="fast")
    assert str(exc.value) == "--engine fast: allowed: auto, sequential, vectorized"
    with pytest.raises(optcmp.OptcmpError) as exc:
        optcmp.run(CONFIG, sweeps={"optimizer.lr": 0.1})
    assert str(exc.value) == "sweeps: optimizer.lr: expected a list of values, got 0.1"


def test_a_missing_file_is_the_clis_error(tmp_path):
    with pytest.raises(optcmp.OptcmpError) as exc:
        optcmp.run(tmp_path / "nope.yaml")
    assert str(exc.value) == f"{tmp_path / 'nope.yaml'}: no such file"


def test_quiet_false_says_each_run_and_the_summary(config_path, tmp_path, capfd):
    optcmp.run(config_path, out=tmp_path / "loud", quiet=False)
    out = capfd.readouterr().out.splitlines()
    assert out[:6] == ["ok          adam-wd0-s0", "ok          adam-wd0-s1", "ok          adam-wd0-s0-ulp",
                       "ok          adam-wd0.1-s0", "ok          adam-wd0.1-s1", "ok          adam-wd0.1-s0-ulp"]
    assert out[6] == "api: ranked by best_train_loss"


def test_table_and_notebook_view(experiment):
    text = experiment.table(width=80)
    assert text.splitlines()[0] == "api: ranked by best_train_loss"
    assert max(map(len, text.splitlines())) <= 80
    page = experiment._repr_html_()
    assert page.startswith("<div><p><b>optcmp experiment api</b>")
    for config_id in experiment.summary["config_id"]:
        assert f'<td class="l">{config_id}</td>' in page
    assert repr(experiment) == f"Experiment({str(experiment.dir)!r})"


def test_report_writes_one_html_file(experiment):
    path = experiment.report()
    assert path == experiment.dir / "report.html"
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('<img src="data:image/png;base64,') == 4
