"""report.py: one self-contained HTML file, verdict first, and a sweep with missing pieces."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from optcmp.report import OLD_PNGS, _plot_curves, read_metrics, weight_histograms, write_report

FIXTURE = Path(__file__).parent / "fixtures" / "sweep"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ["Loss", "Final best_val_loss per seed", "Final weight distributions", "Weight norm"]


@pytest.fixture
def sweep(tmp_path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "sweep")
    return tmp_path / "sweep"


def figures_in(page: str) -> list[tuple[str, bytes]]:
    """(title, PNG bytes) of each embedded picture, in order."""
    found = re.findall(r'<figure><h2>([^<]+)</h2><img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [(title, base64.b64decode(data)) for title, data in found]


def assert_real_png(data: bytes) -> None:
    assert data[:8] == PNG_SIGNATURE
    pixels = imread(io.BytesIO(data))
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 300, pixels.shape
    assert pixels.std() > 0.05, "blank"


def test_the_report_is_one_file(sweep):
    path = write_report(sweep)
    assert path == sweep / "report.html"
    page = path.read_text()
    # No val/accuracy in a regression sweep, so no accuracy plot.
    assert [title for title, _ in figures_in(page)] == FIGURES
    for _, data in figures_in(page):
        assert_real_png(data)
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert links and all(link.startswith("data:image/png;base64,") for link in links), links
    assert "<script" not in page and "http" not in page and "<link" not in page  # opens offline
    assert sorted(p.name for p in sweep.iterdir() if p.is_file()) == ["report.html", "runs.csv"]


def test_sections_in_order_verdict_first_and_tables_collapsed(sweep):
    page = write_report(sweep).read_text()
    order = [page.index(f'<section id="{s}">') for s in ("verdict", "pictures", "summary", "runs")]
    assert order == sorted(order)
    assert [t for t, _ in figures_in(page)] == FIGURES
    verdict = page[order[0]:order[1]]
    # adamw-wd0.1 has the lowest mean of its 3 ok seeds, but its 4th diverged: it ranks after the
    # configs without divergence, and its comparisons are rank-based with the diverged seed worst.
    assert "<p>Best by best_val_loss: <b>adam-wd0.1</b> (0.526 ± 0.084, 4 seeds).</p>" in verdict
    assert re.findall(r'<ul class="verdict">(.*?)</ul>', verdict) == []
    assert ("<p><b>No significant difference</b> in best_val_loss between the 3 configs (3 comparisons, "
            "Holm-corrected at 5%).</p>") in verdict
    assert re.findall(r"<details><summary>([^<]+)</summary>", page) == [
        "The comparisons", "Every column (3 configs)", "Comparison table (3 rows; compare.csv has every column)",
        "12 runs"]
    assert ("<li>no significant difference between adam-wd0.1 and adamw-wd0.1 in best_val_loss (adamw-wd0.1 ranks "
            "lower, p=1 (Holm), Wilcoxon signed-rank with diverged runs ranked worst, 4 paired seeds); diverged: "
            "adam-wd0.1 0 of 4, adamw-wd0.1 1 of 4 (Fisher&#x27;s exact test p=1 (Holm): not a significant "
            "difference)</li>") in page
    assert "12 runs (11 ok, 1 diverged), ranked by best_val_loss" in page


def test_the_summary_is_formatted_as_the_terminal_shows_it(sweep):
    page = write_report(sweep).read_text()
    summary = page[page.index('<section id="summary">'):page.index("<details>", page.index('<section id="summary">'))]
    assert re.findall(r"<th[^>]*>([^<]+)</th>", summary) == [
        "#", "config", "optimizer.name", "optimizer.weight_decay", "decay", "best_val_loss", "weight_norm",
        "near_zero_frac", "train_loss", "n", "status"]
    assert ('<tr><td class="l">1</td><td class="l">adam-wd0.1</td><td class="l">adam</td><td class="l">0.1</td>'
            '<td class="l">coupled (L2)</td><td class="r">0.526 ± 0.084</td>') in summary
    assert '<p class="note">same for all: steps 200 · runs 4</p>' in summary


def test_no_significant_difference_is_said(sweep):
    runs = pd.read_csv(sweep / "runs.csv")
    runs = runs[runs["config_id"] != "adamw-wd0.1"]
    runs.to_csv(sweep / "runs.csv", index=False)
    page = write_report(sweep).read_text()
    assert ("<p><b>No significant difference</b> in best_val_loss between the 2 configs (1 comparison, "
            "Holm-corrected at 5%).</p>") in page
    assert "<details><summary>The comparisons</summary>" in page


def test_the_ranking_metric_is_summary_jsons(sweep):
    (sweep / "summary.json").write_text(json.dumps({"primary": "weight_norm", "configs": []}))
    page = write_report(sweep).read_text()
    assert "ranked by weight_norm" in page and "Final weight_norm per seed" in page
    assert "<p>Best by weight_norm: <b>adam-wd0.1</b> (10.78 ± 0.26, 4 seeds).</p>"  # adamw-wd0.1 diverged once in page


def test_pngs_of_older_reports_are_removed(sweep):
    for name in OLD_PNGS:
        (sweep / name).write_bytes(PNG_SIGNATURE)
    write_report(sweep)
    assert not any((sweep / name).exists() for name in OLD_PNGS)


def test_report_survives_missing_and_broken_run_files(sweep):
    (sweep / "adam-wd0.1-s0" / "metrics.csv").unlink()
    (sweep / "adam-wd0.1-s1" / "weights.npz").unlink()
    (sweep / "adam-wd0.01-s2" / "weights.npz").write_bytes(b"not a zip")
    shutil.rmtree(sweep / "adam-wd0.01-s3")  # a run folder gone altogether
    page = write_report(sweep).read_text()
    assert [t for t, _ in figures_in(page)] == FIGURES
    for _, data in figures_in(page):
        assert_real_png(data)
    assert "<code>adam-wd0.1-s0</code>: no metrics.csv: left out of the curves" in page
    assert "<code>adam-wd0.1-s1</code>: no weights.npz: left out of the weight distributions" in page
    assert "<code>adam-wd0.01-s2</code>: unreadable weights.npz" in page
    assert "<code>adam-wd0.01-s3</code>: no metrics.csv" in page
    assert "<li><code>adamw-wd0.1-s3</code>: status diverged: loss became nan at step 37</li>" in page


def test_report_of_an_interrupted_sweep_lists_the_runs_not_run_yet(sweep):
    runs = pd.read_csv(sweep / "runs.csv")
    plan = [{"run_id": r} for r in [*runs["run_id"], "adamw-wd0.01-s0", "adamw-wd0.01-s1"]]
    (sweep / "plan.json").write_text(json.dumps(plan))
    page = write_report(sweep).read_text()
    assert "<code>adamw-wd0.01-s0</code>: planned in plan.json but has no result: not run yet" in page
    assert "<code>adamw-wd0.01-s1</code>: planned" in page
    assert "<code>adam-wd0.1-s0</code>: planned" not in page


def test_report_on_a_sweep_where_every_run_failed(sweep):
    runs = pd.read_csv(sweep / "runs.csv")
    runs["status"] = "failed"
    runs.to_csv(sweep / "runs.csv", index=False)
    page = write_report(sweep).read_text()
    assert figures_in(page) == []
    assert "No comparison: no runs with status `ok` to compare (runs: failed 12)" in page


def test_accuracy_is_drawn_for_a_classification_sweep(sweep):
    for metrics in sweep.glob("*/metrics.csv"):
        frame = pd.read_csv(metrics)
        frame["val/accuracy"] = np.where(frame["val/loss"].notna(), 0.5 + 0.1 / frame["val/loss"], np.nan)
        frame.to_csv(metrics, index=False)
    page = write_report(sweep).read_text()
    assert [t for t, _ in figures_in(page)] == [*FIGURES[:3], "Validation accuracy", "Weight norm"]
    assert_real_png(dict(figures_in(page))["Validation accuracy"])


def test_curves_are_drawn_by_epoch_for_an_epoch_run_with_the_legend_outside():
    # an epoch run logs once per epoch; its x-axis is the epoch, not the row's step
    frame = pd.DataFrame({"step": [23, 46, 69], "epoch": [1.0, 2.0, 3.0], "train/loss": [0.9, 0.5, 0.4]}).set_index("step")
    fig = _plot_curves({"adam": [frame, frame * [1, 1.1]]}, ("train/loss",), {"adam": "C0"}, "epoch", log=True)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "epoch"
    assert ax.lines[0].get_xdata().tolist() == [1.0, 2.0, 3.0]
    assert ax.lines[0].get_ydata() == pytest.approx([0.945, 0.525, 0.42])
    assert ax.get_legend() is None and [t.get_text() for t in fig.legends[0].get_texts()] == ["adam (n=2)"]
    by_step = _plot_curves({"adam": [frame]}, ("train/loss",), {"adam": "C0"}, "step", log=True)
    assert by_step.axes[0].get_xlabel() == "step" and by_step.axes[0].lines[0].get_xdata().tolist() == [23, 46, 69]


def test_weight_histograms_per_seed_on_shared_bins():
    rng = np.random.default_rng(0)
    seeds = {"a": [rng.normal(0, 1, 500), rng.normal(0, 1.2, 400)], "b": [rng.normal(0.5, 0.3, 300)]}
    bins, densities = weight_histograms(seeds)
    everything = np.concatenate([*seeds["a"], *seeds["b"]])
    low, high = np.quantile(everything, [0.005, 0.995])
    assert (bins[0], bins[-1]) == pytest.approx((low, high))
    for config, arrays in seeds.items():
        assert densities[config].shape == (len(arrays), len(bins) - 1)
        for row, w in zip(densities[config], arrays):
            # a density over all of the run's weights: the mass outside the range is not spread
            assert row == pytest.approx(np.histogram(w, bins=bins)[0] / (len(w) * np.diff(bins)))
            assert (row * np.diff(bins)).sum() == pytest.approx(np.mean((w >= low) & (w <= high)))
    assert weight_histograms({"a": [np.array([np.nan])]}) is None


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
    assert [t for t, _ in figures_in(page)] == ["Loss", "Final best_train_loss per seed", "Final weight distributions",
                                                 "Weight norm"]
    for _, data in figures_in(page):
        assert_real_png(data)
    assert "Left out" not in page
