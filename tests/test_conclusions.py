"""What the user reads: chaos and one seed said in words in the summary (terminal at 80 columns,
summary.md), `optcmp compare` (its notes first, each pair's detectable difference, rank tests'
effect r, the diverged runs), and report.html (the notes, intervals inside the metric's range)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optcmp import cli
from optcmp.cli import app
from optcmp.compare import compare_configs
from optcmp.compare_view import compare_table
from optcmp.display import render_text, summary_view
from optcmp.summary import aggregate, write_summary
from tests.test_compare import A, B, runs_frame

runner = CliRunner()


def probed(runs: pd.DataFrame, config: str, metric_shift: float) -> pd.DataFrame:
    """`runs` with a chaos probe of `config`'s seed 0 whose val_loss is moved by `metric_shift`."""
    first = runs[(runs["config_id"] == config) & (runs["seed"] == 0)]
    probe = first.assign(run_id=f"{config}-s0-ulp", role="ulp", val_loss=first["val_loss"] + metric_shift)
    return pd.concat([runs.assign(role="run"), probe], ignore_index=True)


def write_folder(tmp_path, runs: pd.DataFrame):
    exp = tmp_path / "exp"
    exp.mkdir()
    runs.to_csv(exp / "runs.csv", index=False)
    return exp


def test_the_summary_says_chaos_in_words_wrapped_at_80_columns_and_in_summary_md(tmp_path):
    runs = probed(runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B))}), "a", 0.05)
    exp = write_folder(tmp_path, runs)
    table = write_summary(exp, "val_loss")
    ratio = 0.05 / np.std(A, ddof=1)
    sentence = (f"val_loss is chaotic in a: a 1-ulp perturbation of seed 0 moved it by {ratio * 100:.0f} % of the "
                "seed-to-seed spread; single runs do not reproduce; compare means over many seeds, not single seeds")
    assert table.notes == [sentence]
    assert (exp / "summary.md").read_text().endswith(f"\n\n{sentence}.\n")  # as written, not capitalized
    text = render_text(summary_view(table, 80, title="exp"), 80)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    start = next(i for i, line in enumerate(lines) if line.startswith("val_loss is chaotic"))
    said = " ".join(line.strip() for line in lines[start:])
    assert said == sentence and lines[start + 1].startswith("  ")  # wrapped, continuation lines indented
    assert table.row("a")["n"] == 5 and table.row("a")["runs"] == 5  # the probe is no seed


def test_one_seed_ranks_nothing_in_the_terminal_summary_md_and_compare(tmp_path):
    exp = write_folder(tmp_path, runs_frame({"a": {0: 1.0}, "b": {0: 2.0}}))
    table = write_summary(exp, "val_loss")
    assert table.column("rank") == [None, None] and table.ranked_by is None
    md = (exp / "summary.md").read_text()
    assert "| – | a |" in md and "Not ranked;" in md and md.endswith("\n\nOne seed: no noise estimate, configs are not ranked.\n")
    text = render_text(summary_view(table, 80, title="exp: not ranked"), 80)
    assert text.splitlines()[-1] == "one seed: no noise estimate, configs are not ranked"
    result = runner.invoke(app, ["compare", str(exp), "--metric", "val_loss"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:2] == ["one seed: no noise estimate, configs are not ranked",
                         "• too few seeds to compare a and b in val_loss (1 vs 1 ok runs with a value; a test needs at "
                         "least 2 each)"]


def test_compare_prints_its_notes_then_each_pair_with_what_its_seeds_can_detect(tmp_path):
    close = [a + 0.01 * (-1) ** i for i, a in enumerate(A)]  # a and c do not differ significantly
    runs = probed(runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B)), "c": dict(enumerate(close))}), "a", 0.05)
    exp = write_folder(tmp_path, runs)
    frame = compare_configs(runs, "val_loss")
    result = runner.invoke(app, ["compare", str(exp), "--metric", "val_loss"])
    assert result.exit_code == 0, result.output
    printed = result.output.splitlines()
    assert max(map(len, printed)) <= cli.console.width  # wrapped between words (captured: 200 columns)
    lines = unwrapped(printed)
    assert lines[0].startswith("val_loss is chaotic in a: a 1-ulp perturbation of seed 0 moved it by ")
    pairs = [line for line in lines if line.startswith("• ")]
    assert len(pairs) == 3
    for line, row in zip(pairs, frame.itertuples()):
        if row.significant:
            assert line == f"• {row.sentence}"
        else:
            assert line == f"• {row.sentence}; {row.power_sentence}"
            assert row.power_sentence.startswith("n=5 paired seeds cannot tell apart differences below ")
    assert frame["significant"].tolist().count(False) >= 1 and frame["significant"].any()


def unwrapped(lines: list[str]) -> list[str]:
    """Printed lines with each continuation ("  …", as compare_view.wrapped indents it) joined
    back to its line: the sentences as compare.csv has them."""
    whole: list[str] = []
    for line in lines:
        if line.startswith("  ") and whole and not line.startswith("  " * 2):
            whole[-1] += " " + line[2:]
        else:
            whole.append(line)
    return whole


def test_wrapped_breaks_between_words_and_keeps_a_percentage_whole():
    from optcmp.compare_view import wrapped

    assert wrapped(["• a moved it by 2.2 % of the spread"], 16) == ["• a moved it by", "  2.2 % of the", "  spread"]
    assert wrapped(["short", ""], 80) == ["short", ""]
    assert wrapped(["  undecided: one two three"], 16) == ["  undecided: one", "    two three"]


def test_the_compare_table_shows_effect_r_for_rank_tests_and_the_diverged_runs():
    runs = runs_frame({"a": dict(enumerate(A)), "b": dict(enumerate(B)), "c": dict(enumerate(np.add(A, 0.3)))},
                      status={"c-s0": "diverged", "c-s1": "diverged"})
    frame = compare_configs(runs, "val_loss")
    text = render_text(compare_table(frame), 200)
    rows = {tuple(line.split()[:2]): line for line in text.splitlines() if line.startswith(("a ", "b "))}
    ab, ac = frame.iloc[0], frame.iloc[1]
    assert (ab["config_a"], ab["config_b"], ac["config_a"], ac["config_b"]) == ("a", "b", "a", "c")
    assert f"d {ab['effect_size']:+.3g}" in rows[("a", "b")] and rows[("a", "b")].rstrip().endswith("–")
    assert f"r {ac['rank_biserial']:+.2f}" in rows[("a", "c")]
    assert rows[("a", "c")].rstrip().endswith("0/5, 2/5")
    assert "Wilcoxon signed-rank" in rows[("a", "c")]
    narrow = render_text(compare_table(frame, 60), 60).splitlines()
    assert max(map(len, narrow)) <= 60
    assert any(line.startswith("not shown (too wide; compare.csv has every column): ") for line in narrow)
    assert any(line.split()[:2] == ["a", "c"] for line in narrow)  # config ids whole


def test_the_report_says_the_notes_and_clips_the_interval_to_the_metrics_range(tmp_path):
    pytest.importorskip("matplotlib")
    from optcmp.report import _plot_final, _verdict

    losses = [0.01, 0.02, 2.0]  # the t interval of the mean reaches below 0
    runs = runs_frame({"a": dict(enumerate(losses)), "b": dict(enumerate([3.0, 3.1, 3.2]))})
    fig = _plot_final(runs, "val_loss", {"a": "C0", "b": "C1"})
    segments = [seg for coll in fig.axes[0].collections if hasattr(coll, "get_segments") for seg in coll.get_segments()]
    vertical = [seg for seg in segments if seg[0][0] == seg[1][0]]
    assert len(vertical) == 2 and min(seg[:, 1].min() for seg in vertical) == 0.0  # clipped at 0, not below
    one_seed = runs_frame({"a": {0: 1.0}, "b": {0: 2.0}})
    said, _ = _verdict(one_seed, aggregate(one_seed, "val_loss"))
    assert said.startswith('<p class="note">one seed: no noise estimate, configs are not ranked.</p>')
    assert "Best by" not in said and "<b>No comparison</b> in val_loss" in said


def test_the_end_of_a_run_computes_no_compare_statistics(write_config, tmp_path):
    """The summary is written after every run: chaos ratios and intervals only, no pandas, no
    scipy.stats (what `compare` and `seeds: auto` need)."""
    import subprocess
    import sys

    path = write_config("name: cheap\nseeds: 2\ndevice: cpu\nmodel: {kind: mlp, hidden: [4]}\ndata: {kind: quadratic}\n"
                        "train: {steps: 5}\nsweep: {optimizer.lr: [0.1, 0.01]}\nlog: {every: 5, histograms: {every: 0}}\n")
    code = ("import sys; from optcmp.cli import app\n"
            f"try: app(['run', {str(path)!r}, '--out', {str(tmp_path)!r}])\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            "print(sorted(m for m in ('pandas', 'scipy.stats', 'optcmp.compare') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert "6 of 6 runs: 6 ok (2 chaos probes)" in done.stdout
    assert "chaotic" in (tmp_path / "cheap" / "summary.json").read_text()  # the probes' ratios were computed
