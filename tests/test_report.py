"""report.py: real PNGs, an HTML page that references them, and a sweep with missing pieces."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from optcmp.report import PNG_NAMES, read_metrics, write_report

FIXTURE = Path(__file__).parent / "fixtures" / "sweep"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sweep(tmp_path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "sweep")
    return tmp_path / "sweep"


def images_in(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4), path
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 300, (path, pixels.shape)
    assert pixels.std() > 0.05, f"{path} is blank"


def test_report_draws_real_pngs_and_the_html_references_each(sweep):
    path = write_report(sweep)
    assert path == sweep / "report.html"
    page = path.read_text()
    # No val/accuracy in a regression sweep, so no accuracy plot.
    assert images_in(page) == ["loss.png", "weight_norm.png", "weights.png", "final.png"]
    for name in images_in(page):
        assert_real_png(sweep / name)
    assert not (sweep / "accuracy.png").exists()
    assert "<script" not in page and "http" not in page  # self-contained: opens offline


def test_report_holds_the_compare_sentences_and_lists_what_it_left_out(sweep):
    page = write_report(sweep).read_text()
    # adamw-wd0.1's diverged seed counts (ranked worst): the comparison is rank-based, not significant.
    assert ("<li>no significant difference between adam-wd0.1 and adamw-wd0.1 in best_val_loss (adamw-wd0.1 ranks "
            "lower, p=1 (Holm), Wilcoxon signed-rank with diverged runs ranked worst, 4 paired seeds); diverged: "
            "adam-wd0.1 0 of 4, adamw-wd0.1 1 of 4 (Fisher&#x27;s exact test p=1 (Holm): not a significant "
            "difference)</li>") in page
    assert "<li><code>adamw-wd0.1-s3</code>: status diverged: loss became nan at step 37</li>" in page
    assert "12 runs (11 ok, 1 diverged)" in page
    assert "Aggregated from <code>runs.csv</code>" in page  # no summary.csv in the fixture
    assert "<td>adamw-wd0.1</td>" in page


def test_report_embeds_summary_csv_when_there_is_one(sweep):
    pd.DataFrame({"config_id": ["adamw-wd0.1"], "val_loss_mean": [0.4375]}).to_csv(sweep / "summary.csv", index=False)
    page = write_report(sweep).read_text()
    assert "From <code>summary.csv</code>" in page
    assert "<td>0.4375</td>" in page


def test_report_survives_missing_and_broken_run_files(sweep):
    (sweep / "adam-wd0.1-s0" / "metrics.csv").unlink()
    (sweep / "adam-wd0.1-s1" / "weights.npz").unlink()
    (sweep / "adam-wd0.01-s2" / "weights.npz").write_bytes(b"not a zip")
    shutil.rmtree(sweep / "adam-wd0.01-s3")  # a run folder gone altogether
    page = write_report(sweep).read_text()
    for name in images_in(page):
        assert_real_png(sweep / name)
    assert len(images_in(page)) == 4
    assert "<code>adam-wd0.1-s0</code>: no metrics.csv: left out of the curves" in page
    assert "<code>adam-wd0.1-s1</code>: no weights.npz: left out of the weight distributions" in page
    assert "<code>adam-wd0.01-s2</code>: unreadable weights.npz" in page
    assert "<code>adam-wd0.01-s3</code>: no metrics.csv" in page


def test_report_of_an_interrupted_sweep_lists_the_runs_not_run_yet(sweep):
    runs = pd.read_csv(sweep / "runs.csv")
    plan = [{"run_id": r} for r in [*runs["run_id"], "adamw-wd0.01-s0", "adamw-wd0.01-s1"]]
    (sweep / "plan.json").write_text(json.dumps(plan))
    page = write_report(sweep).read_text()
    assert "<code>adamw-wd0.01-s0</code>: planned in plan.json but has no result: not run yet" in page
    assert "<code>adamw-wd0.01-s1</code>: planned" in page
    assert "<code>adam-wd0.1-s0</code>: planned" not in page


def test_report_on_a_sweep_where_every_run_failed(sweep):
    write_report(sweep)  # a first report leaves PNGs that must not outlive their data
    runs = pd.read_csv(sweep / "runs.csv")
    runs["status"] = "failed"
    runs.to_csv(sweep / "runs.csv", index=False)
    page = write_report(sweep).read_text()
    assert images_in(page) == []
    assert "No comparison: no runs with status `ok` to compare (runs: failed 12)" in page
    assert not any((sweep / name).exists() for name in PNG_NAMES)


def test_accuracy_is_drawn_for_a_classification_sweep(sweep):
    for metrics in sweep.glob("*/metrics.csv"):
        frame = pd.read_csv(metrics)
        frame["val/accuracy"] = np.where(frame["val/loss"].notna(), 0.5 + 0.1 / frame["val/loss"], np.nan)
        frame.to_csv(metrics, index=False)
    page = write_report(sweep).read_text()
    assert "accuracy.png" in images_in(page)
    assert_real_png(sweep / "accuracy.png")


def test_read_metrics_merges_the_rows_of_one_step(tmp_path):
    # RunLogger writes train and val scalars of one step in separate rows.
    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss,val/loss\n0,2.0,\n0,,3.0\n1,1.5,\n")
    frame = read_metrics(path)
    assert list(frame.index) == [0, 1]
    assert frame.loc[0, "train/loss"] == 2.0 and frame.loc[0, "val/loss"] == 3.0
    assert np.isnan(frame.loc[1, "val/loss"])


TINY_SWEEP = """\
name: tiny
seeds: 3
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic, batch_size: full}
train: {steps: 20, loss: mse}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.lr: [0.001, 0.05]   # a real effect after 20 steps
  log.every: [5, 10]            # irrelevant to training: a null difference
log: {every: 5, histograms: {every: 0}}
"""


def test_run_then_compare_and_report_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from optcmp.cli import app

    (tmp_path / "tiny.yaml").write_text(TINY_SWEEP)
    cli = CliRunner()
    result = cli.invoke(app, ["run", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    exp = tmp_path / "runs" / "tiny"

    # train_loss: the best-so-far default is taken at the evaluation points, which log.every sets.
    result = cli.invoke(app, ["compare", str(exp), "--metric", "train_loss"])
    assert result.exit_code == 0, result.output
    # Same seeds and an irrelevant value: the runs are equal number for number.
    assert ("• no difference between adam-lr0.05-every5 and adam-lr0.05-every10 in train_loss: "
            "identical values over 3 paired seeds") in result.output
    frame = pd.read_csv(exp / "compare.csv")
    assert len(frame) == 6 and set(frame["test"]) == {"paired t"}
    lr_differs = frame["config_a"].str[:11] != frame["config_b"].str[:11]
    assert frame["significant"].tolist() == lr_differs.tolist()
    assert (frame.loc[lr_differs, "rel_diff"] < -0.1).all()  # the larger lr learns faster here

    result = cli.invoke(app, ["compare", str(exp), "--baseline", "adam-lr0.1"])
    assert result.exit_code == 2
    assert "--baseline: unknown config `adam-lr0.1`; allowed: adam-lr0.05-every5" in result.output

    result = cli.invoke(app, ["report", str(exp)])
    assert result.exit_code == 0, result.output
    assert f"Report: {exp / 'report.html'}" in result.output.replace("\n", "")
    page = (exp / "report.html").read_text()
    assert images_in(page) == ["loss.png", "weight_norm.png", "weights.png", "final.png"]
    for name in images_in(page):
        assert_real_png(exp / name)
    assert "Left out" not in page
