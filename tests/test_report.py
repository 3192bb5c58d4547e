"""report.py: real PNGs, an HTML page that references them, and a sweep with missing pieces."""
from __future__ import annotations

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
    assert "<li>adamw-wd0.1 has 12% lower val_loss than adam-wd0.1, p=0.0073 (Holm), 3 paired seeds</li>" in page
    assert "<li><code>adamw-wd0.1-s3</code>: status diverged: loss became nan at step 37</li>" in page
    assert "12 runs (11 ok, 1 diverged)" in page


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
