"""The report of a study (issue 13.7, 13.8): one self-contained file, the verdict first, whose
numbers are verdict.json's; the expected best-of-k equal to a direct computation; the
performance profiles equal to a direct computation from runs.csv."""
from __future__ import annotations

import html
import json
import math
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from optcmp.config import load_config
from optcmp.display import significant, with_uncertainty
from optcmp.study_folder import StudyFolder
from optcmp.study_plots import best_of_k
from optcmp.study_report import budget_rows, write_report
from optcmp.study_run import run_study
from tests.test_report import assert_real_png, figures_in

WORKLOADS = """\
name: two
device: cpu
model: {kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 30}
log: {every: 5, histograms: {every: 0}}
optimizers:
  adam: {name: adam}
  sgdm: {name: sgd, momentum: 0.9}
workloads:
  quad: {}
  blobs: {data: {kind: random_classification, samples: 100, features: 5}, train: {steps: 20}}
tune:
  space: {optimizer.lr: {log_uniform: [1.0e-4, 1.0]}}
  budget: 5
  seeds: [0, 1]
  final_seeds: 3
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_report")
    (root / "two.yaml").write_text(WORKLOADS)
    run_study(load_config(root / "two.yaml"), root / "two")
    write_report(root / "two")
    return root / "two"


class Tables(HTMLParser):
    """Every <table>'s rows of cell texts, and the <h2>/<h3> heading before it."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.heading, self.text, self.cell, self.row = "", None, None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "h3"):
            self.text = ""
        elif tag == "table":
            self.tables.append((self.heading, []))
        elif tag == "tr":
            self.row = []
            self.tables[-1][1].append(self.row)
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self.text is not None:
            self.heading, self.text = self.text, None
        elif tag in ("td", "th"):
            self.row.append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        elif self.text is not None:
            self.text += data


def tables_of(page: str) -> list[tuple[str, list[list[str]]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def table_with(page: str, first: str, contains: str) -> list[list[str]]:
    """The table whose header row starts with `first` and contains the header `contains`."""
    found = [rows for _, rows in tables_of(page) if rows and rows[0][0] == first and contains in " ".join(rows[0])]
    assert found, (first, contains)
    return found[0]


def test_best_of_k_equals_a_direct_computation():
    scores = [3.0, 1.0, 2.0, 5.0]
    k, mean, low, high = best_of_k(scores, maximize=False, resamples=500, seed=3)
    rng = np.random.default_rng(3)
    orders = rng.integers(0, 4, size=(500, 4))
    best = np.array([[min(scores[i] for i in order[:j]) for j in range(1, 5)] for order in orders])
    assert k.tolist() == [1, 2, 3, 4]
    assert mean == pytest.approx(best.mean(axis=0), rel=1e-12)
    assert low.tolist() == [sorted(best[:, j])[math.ceil(0.05 * 500) - 1] for j in range(4)]
    assert high.tolist() == [sorted(best[:, j])[math.ceil(0.95 * 500) - 1] for j in range(4)]
    # and the bootstrap approaches the exact expectation of the best of k draws with
    # replacement: sum_i v_(i) * (((n-i+1)/n)^k - ((n-i)/n)^k), values sorted best first
    _, mean, _, _ = best_of_k(scores, maximize=False, resamples=200_000)
    v = sorted(scores)
    exact = [sum(v[i] * (((4 - i) / 4) ** kk - ((3 - i) / 4) ** kk) for i in range(4)) for kk in (1, 2, 3, 4)]
    assert mean == pytest.approx(exact, rel=0.01)
    assert exact[0] == pytest.approx(np.mean(scores))


def test_best_of_k_maximizes_and_keeps_divergence_infinite():
    k, mean, _, _ = best_of_k([0.5, 0.9], maximize=True, resamples=4000)
    assert mean[0] == pytest.approx(0.7, abs=0.01) and mean[1] == pytest.approx(0.5 * 0.25 + 0.9 * 0.75, abs=0.01)
    rng = np.random.default_rng(0)
    orders = rng.integers(0, 3, size=(1000, 3))
    _, mean, _, _ = best_of_k([math.inf, math.inf, 1.0], maximize=False)
    # infinite exactly where some resample's first k trials all diverged
    all_diverged = [bool((orders[:, :j] != 2).all(axis=1).any()) for j in (1, 2, 3)]
    assert np.isinf(mean).tolist() == all_diverged == [True, True, True]
    _, mean, _, _ = best_of_k([math.inf, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], maximize=False, resamples=1000)
    assert np.isinf(mean[0]) and mean[-1] == 1.0


def test_the_report_is_one_file_with_the_verdict_first(study_dir):
    page = (study_dir / "report.html").read_text()
    sections = re.findall(r'<section id="([a-z]+)"', page)
    assert sections == ["verdict", "sensitivity", "budget", "final", "profiles", "tables"]
    titles = [t for t, _ in figures_in(page)]
    assert titles == ["Sensitivity: best_train_loss against optimizer.lr", "Expected best of k trials against the tuning budget",
                      "The tuned variants on the final seeds", "Performance profiles across workloads"]
    for _, data in figures_in(page):
        assert_real_png(data)
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(x.startswith("data:image/png;base64,") for x in links)
    assert "2 variants × 2 workloads, 20 trials" in page
    assert "1000 bootstrap resamples (numpy default_rng seed 0)" in page
    assert "the band spans the lowest to the highest of the 2 tuning seeds (0, 1)" in page
    assert "final seeds 2–4" in page
    runs = pd.read_csv(study_dir / "runs.csv")
    diverged = int(((runs.role == "final") & (runs.status == "diverged")).sum())
    said = f"{diverged} diverged final runs are left out of the curves"
    assert (said in page) == (diverged > 1), (diverged, said)


def test_the_verdict_rows_are_verdict_json(study_dir):
    v = json.loads((study_dir / "verdict.json").read_text())
    page = (study_dir / "report.html").read_text()
    ranks = table_with(page, "rank", "mean rank")
    assert ranks[0] == ["rank", "variant", "mean rank", "wins ρ(1)", "rank on quad", "rank on blobs"]
    assert [r[1] for r in ranks[1:]] == v["ranking"]
    for row in ranks[1:]:
        entry = v["variants"][row[1]]
        assert row[2:4] == [significant(entry["mean_rank"]), significant(float(entry["wins"]))]
        assert row[4:] == [str(v["workloads"][w]["variants"][row[1]]["rank"]) for w in ("quad", "blobs")]
    verdicts = [(h, rows) for h, rows in tables_of(page) if rows[0][:2] == ["rank", "variant"] and "n" in rows[0]]
    assert [h for h, _ in verdicts] == ["quad", "blobs"]
    for workload, rows in verdicts:
        section = v["workloads"][workload]
        assert [r[1] for r in rows[1:]] == section["ranking"]
        header = rows[0]
        for row in rows[1:]:
            entry = section["variants"][row[1]]
            f = entry["final"]
            cells = dict(zip(header, row))
            assert cells["rank"] == str(entry["rank"]) and cells["best trial"] == str(entry["best_trial"])
            assert cells["its values"] == f"lr={significant(entry['best_params']['optimizer.lr'])}"
            assert cells["final best_train_loss (mean ± std)"] == with_uncertainty(f["mean"], f["std"])
            assert (cells["n"], cells["diverged"]) == (str(f["n"]), str(f["diverged"]))
        for c in section["comparisons"]:
            assert f"{c['sentence']} <span class=\"p\">(p Holm = {significant(c['p_holm'], 2)}" in html.unescape(page)


def test_the_budget_table_is_best_of_k_of_trials_csv(study_dir):
    trials = pd.read_csv(study_dir / "trials.csv")
    page = (study_dir / "report.html").read_text()
    rows = table_with(page, "workload", "k=5")
    assert rows[0] == ["workload", "variant", "k=1", "k=2", "k=3", "k=4", "k=5"]
    assert len(rows) == 5
    for row in rows[1:]:
        mine = trials[(trials.workload == row[0]) & (trials.variant == row[1])].sort_values("trial")
        scores = np.where(mine.status == "ok", mine.best_train_loss, math.inf)
        _, mean, _, _ = best_of_k(scores, maximize=False)
        assert row[2:] == ["∞" if math.isinf(m) else significant(float(m)) for m in mean]
    header, raw = budget_rows(StudyFolder(study_dir))
    assert header == rows[0] and [r[:2] for r in raw] == [r[:2] for r in rows[1:]]


def test_the_profiles_are_a_direct_computation_from_runs_csv(study_dir):
    runs = pd.read_csv(study_dir / "runs.csv")
    finals = runs[runs.role == "final"]
    ratios = {}
    for workload in ("quad", "blobs"):
        score = {}
        for variant in ("adam", "sgdm"):
            mine = finals[(finals.workload == workload) & (finals.variant == variant)]
            score[variant] = mine.best_train_loss.mean() if (mine.status == "ok").all() else math.inf
        best = min(score.values())
        ratios[workload] = {n: s / best for n, s in score.items()}
    taus = sorted({1.0, *(r for rs in ratios.values() for r in rs.values() if math.isfinite(r))})
    page = (study_dir / "report.html").read_text()
    rows = table_with(page, "variant", "ratio on quad")
    assert rows[0] == ["variant", "ratio on quad", "ratio on blobs", *(f"ρ({significant(t, 4)})" for t in taus)]
    for row in rows[1:]:
        name = row[0]
        assert row[1:3] == ["failed" if math.isinf(ratios[w][name]) else significant(ratios[w][name]) for w in ratios]
        assert row[3:] == [significant(sum(ratios[w][name] <= t for w in ratios) / 2) for t in taus]


def test_a_study_without_its_verdict_gets_the_trials_pictures(study_dir, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(study_dir, copy)
    (copy / "verdict.json").unlink()
    write_report(copy)
    page = (copy / "report.html").read_text()
    assert "<b>No verdict yet</b>: 20 of 20 trials told" in page
    assert "no verdict yet: the study has not finished its final runs." in page
    assert [t for t, _ in figures_in(page)][:2] == ["Sensitivity: best_train_loss against optimizer.lr",
                                                    "Expected best of k trials against the tuning budget"]
    assert 'id="profiles"' not in page


def test_optcmp_report_of_a_study_folder(study_dir, tmp_path):
    from typer.testing import CliRunner

    from optcmp.cli import app

    copy = tmp_path / "cli"
    shutil.copytree(study_dir, copy)
    (copy / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Report: {copy / 'report.html'}"
    assert 'id="sensitivity"' in (copy / "report.html").read_text()
