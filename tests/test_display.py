"""display.py: numbers as precise as their spread, and tables that fit the terminal."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import yaml

import optcmp
from optcmp.display import (markdown, render_text, short_key, significant, summary_view, view_width,
                            with_uncertainty)
from optcmp.summary import aggregate
from tests.test_summary import RUNS as SUMMARY_RUNS

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))

RUNS = SUMMARY_RUNS  # two configs, three seeds, one diverged


def text(table, width: int, wide: bool = False) -> str:
    width = view_width(table, width, wide)
    return render_text(summary_view(table, width, wide, f"x: ranked by {table.primary}"), width)


def lines(table, width: int, wide: bool = False) -> list[str]:
    """The lines shown, the title (centred over the table) without its margins."""
    title, *rest = text(table, width, wide).splitlines()
    return [title.strip(), *(line.rstrip() for line in rest)]


@pytest.mark.parametrize("mean, std, shown", [
    (3.3447, 0.4213, "3.34 ± 0.42"),
    (148.9569, 112.4195, "150 ± 110"),
    (26.4921, 0.1683, "26.49 ± 0.17"),
    (0.002887, 0.001387, "0.0029 ± 0.0014"),
    (0.9796, 0.0999, "0.98 ± 0.10"),
    (2.5, 0.996, "2.5 ± 1.0"),  # the std rounds up to 1.0: still two digits
    (-0.05, 0.5, "-0.05 ± 0.50"),
    (4.938e-4, 2.43e-5, "(4.94 ± 0.24)e-4"),
    (2.19e6, 3.1e4, "(2.190 ± 0.031)e6"),
    (3.3447, None, "3.345"),  # no spread (one seed): four significant digits
    (3.3447, float("nan"), "3.345"),
    (21930.4, 0.0, "21930 ± 0"),
    (float("nan"), 0.1, "–"),
])
def test_mean_and_std_to_the_digits_the_spread_allows(mean, std, shown):
    assert with_uncertainty(mean, std) == shown


@pytest.mark.parametrize("x, shown", [
    (3.3447, "3.345"), (2212.6764, "2213"), (0.001332, "0.001332"), (0.00533, "0.005330"),
    (1000.0, "1000"), (1.0, "1"), (0.0, "0"), (123456.0, "1.235e+05"), (4.2e-6, "4.200e-06"),
])
def test_significant_digits(x, shown):
    assert significant(x) == shown


def test_short_headers_for_swept_keys():
    keys = ["optimizer.weight_decay", "optimizer.name", "scheduler.name", "model.hidden", "data.hidden"]
    assert [short_key(k, keys) for k in keys] == ["weight_decay", "optimizer", "scheduler", "model.hidden", "data.hidden"]


def test_markdown_keeps_every_column_ranking_metric_first():
    body = markdown(aggregate(RUNS)).splitlines()
    assert body[0] == ("| rank | config | optimizer.name | decay | val_loss | val_accuracy | train_loss | n | runs | status | "
                       "diverged | diverged_frac |")
    assert body[2] == "| 1 | a | adam | coupled (L2) | 0.740 ± 0.053 | 0.797 ± 0.015 | 0.557 ± 0.060 | 3 | 3 | 3 ok | 0 | 0 |"
    assert body[3] == "| 2 | b | adamw | decoupled | 0.925 ± 0.035 | 0.710 ± 0.014 | 0.420 ± 0.028 | 2 | 3 | 2 ok, 1 diverged | 1 | 0.3333 |"
    assert body[-3].startswith("Ranked by val_loss (mean over seeds); ± is the standard deviation over seeds")
    assert body[-1] == ("Configs with diverged runs rank after those without, by their diverged share (divergence is "
                        "the worst outcome); val_loss_mean is over the runs that finished ok.")


def test_narrow_table_keeps_what_differs_and_says_the_rest():
    assert lines(aggregate(RUNS), 80) == [
        "x: ranked by val_loss",
        "#   config   decay               val_loss    val_accuracy   n   status",
        "────────────────────────────────────────────────────────────────────────────────",
        "1   a        coupled (L2)   0.740 ± 0.053   0.797 ± 0.015   3   3 ok",
        "2   b        decoupled      0.925 ± 0.035   0.710 ± 0.014   2   2 ok, 1 diverged",
        "same for all: runs 3",
        "not shown (--wide shows all): train_loss, optimizer",
        "configs with diverged runs rank after those without, by their diverged share",
        "  (divergence is the worst outcome); val_loss_mean is over the runs that",
        "  finished ok",
    ]


def test_wide_shows_every_column():
    assert lines(aggregate(RUNS), 80, wide=True)[1].split() == [
        "#", "config", "optimizer", "decay", "val_loss", "val_accuracy", "train_loss", "n", "runs", "status",
        "diverged", "diverged_frac"]


def sweep_runs(ids: list[str], seeds: int = 3, vectorized: bool = True, **params) -> list[dict]:
    rows = []
    for i, config_id in enumerate(ids):
        for s in range(seeds):
            rows.append({"run_id": f"{config_id}-s{s}", "config_id": config_id, "seed": s, "status": "ok",
                         "decay": "decoupled", **{k: v[i] for k, v in params.items()},
                         "train_loss": 1.0 + i + 0.1 * s, "best_train_loss": 1.0 + i + 0.1 * s,
                         "weight_norm": 20.0 - i + 0.2 * s, "near_zero_frac": 0.01 * (i + 1) + 0.001 * s,
                         "steps": 100, "steps_per_second": 5000.0 if vectorized else 5000.0 + 10 * i + s})
    return rows


def test_the_question_of_a_weight_decay_sweep_comes_right_after_the_ranking():
    table = aggregate(sweep_runs(["wd0.01", "wd0.1"], **{"optimizer.weight_decay": [0.01, 0.1]}), "train_loss")
    assert lines(table, 80) == [
        "x: ranked by train_loss",
        "#   config   weight_decay    train_loss    weight_norm    near_zero_frac",
        "─" * 72,
        "1   wd0.01   0.01           1.10 ± 0.10   20.20 ± 0.20   0.0110 ± 0.0010",
        "2   wd0.1    0.1            2.10 ± 0.10   19.20 ± 0.20   0.0210 ± 0.0010",
        "same for all: decay decoupled · steps 100 · n 3 · 3 ok",
        "not shown (--wide shows all): best_train_loss (= train_loss),",
        "  steps_per_second (per vectorized group)",
    ]


def test_a_sequential_runs_own_rate_is_kept():
    table = aggregate(sweep_runs(["a", "b"], vectorized=False, **{"optimizer.lr": [0.1, 0.2]}))
    assert "steps_per_second" in lines(table, 200)[1].split()


def test_ids_too_long_for_a_table_are_stacked_whole():
    long_id = "adamw-lr0.001-wd0.1-betas0.9,0.95-eps1e-08-warmup_steps100-nesterov-x"
    table = aggregate(sweep_runs([long_id, "sgd"], **{"optimizer.lr": [0.001, 0.1]}), "train_loss")
    assert lines(table, 80) == [
        "x: ranked by train_loss",
        f"1  {long_id}",
        "  train_loss 1.10 ± 0.10 · weight_norm 20.20 ± 0.20",
        "  near_zero_frac 0.0110 ± 0.0010 · lr 0.001",
        "2  sgd",
        "  train_loss 2.10 ± 0.10 · weight_norm 19.20 ± 0.20",
        "  near_zero_frac 0.0210 ± 0.0010 · lr 0.1",
        "same for all: decay decoupled · steps 100 · n 3 · 3 ok",
        "not shown (--wide shows all): best_train_loss (= train_loss),",
        "  steps_per_second (per vectorized group)",
    ]


def test_markup_in_an_id_is_printed_as_it_is():
    table = aggregate(sweep_runs(["adam-nodecay[bias]", "adam-[bold]x"]))
    shown = text(table, 80)
    assert "adam-nodecay[bias]" in shown and "adam-[bold]x" in shown


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> list[optcmp.Experiment]:
    """Every shipped config trained with few steps (its ids and columns are what matter)."""
    out = tmp_path_factory.mktemp("shipped")
    experiments = []
    for path in CONFIGS:
        unit = "steps" if "steps" in yaml.safe_load(path.read_text())["train"] else "epochs"
        experiments.append(optcmp.run(path, out=out, overrides={f"train.{unit}": 80 if unit == "steps" else 2,
                                                                "log.histograms.every": 0}))
    return experiments


def test_every_shipped_summary_fits_80_columns_with_every_id_whole(shipped):
    assert [e.name for e in shipped] == ["adam-vs-adamw", "digits-cnn", "linear-classifier", "lr-schedule", "real-data",
                                      "weight-decay"]
    for experiment in shipped:
        shown = experiment.table(width=80)
        assert max(map(len, shown.splitlines())) <= 80, shown
        for config_id in experiment.summary["config_id"]:
            assert re.search(rf"(?<![\w.,-]){re.escape(config_id)}(?![\w.,-])", shown), (config_id, shown)
        assert experiment.summary["config_id"].iloc[0] in shown.splitlines()[3]  # the best first


def test_a_wrapped_list_keeps_its_commas():
    from optcmp.display import _wrap

    assert _wrap(["aaaa", "bbbb", "cccc"], 14, "x: ", sep=", ") == ["x: aaaa, bbbb,", "  cccc"]
    assert _wrap(["aaaa", "bbbb", "cccc"], 14, "x: ") == ["x: aaaa · bbbb", "  cccc"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.text(alphabet="ab ±–漢é", max_size=12), st.lists(st.text(alphabet="x1 ±漢é.", max_size=14),
                                                                               min_size=3, max_size=3),
                          st.sampled_from(["id", "param", "metric", "other"])), min_size=0, max_size=7))
def test_table_width_is_rich_measure_of_the_whole_table(spec):
    """table_width adds up remembered column widths; rich measuring the whole table must agree
    (headers and cells of any width, wide characters, empty ones, left and right columns)."""
    from rich.console import Console
    from rich.measure import Measurement

    from optcmp.display import Column, rich_table, table_width

    columns = [Column(header, cells, kind, f"k{i}") for i, (header, cells, kind) in enumerate(spec)]
    console = Console(width=100_000)
    assert table_width(columns) == Measurement.get(console, console.options, rich_table(columns)).maximum
