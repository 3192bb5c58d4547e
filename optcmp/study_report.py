"""`report.html` of a study folder (a config with `tune:`): one self-contained file, the
verdict first.

    write_report(directory)   # a study's page where the folder holds trials.csv, else report.py's

Read from the folder only, never trained: verdict.json (the verdict table, the pairwise
sentences with their Holm-corrected p, with workloads the ranks and performance profiles),
study.json (the spaces: a log-scale axis for a log-uniform one), trials.csv and runs.csv
(each trial's score and its tuning seeds' values), the final runs' metrics.csv. A study
that has not reached its verdict (stopped, or still running) gets the trials' pictures and
says so. The pictures (`study_plots`) are embedded PNGs; long tables sit in <details>.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from optcmp.display import significant, with_uncertainty
from optcmp.report import _CSS, OLD_PNGS, _details, _png_uri, require_matplotlib
from optcmp.results import atomic_write_text
from optcmp.study_folder import TOLD, StudyFolder
from optcmp.study_plots import (BAND, RESAMPLE_SEED, RESAMPLES, best_of_k, plot_budget, plot_final_curves,
                                plot_profiles, plot_sensitivity)
from optcmp.verdict import protocol_sentence

FINAL_TAGS = ("train/loss", "val/loss", "val/accuracy")


def is_study(directory: str | Path) -> bool:
    return (Path(directory) / "trials.csv").is_file()


def write_report(directory: str | Path) -> Path:
    """`report.html` of `directory`: a study's page, or a sweep's (`optcmp.report`)."""
    if is_study(directory):
        return write_study_report(directory)
    from optcmp.report import write_report as sweep_report

    return sweep_report(directory)


def write_study_report(directory: str | Path) -> Path:
    """Write `report.html` into the study folder `directory`; return its path."""
    require_matplotlib()
    directory = Path(directory)
    s = StudyFolder(directory)
    figures = _figures(s)
    page = _page(s, figures)
    path = directory / "report.html"
    atomic_write_text(path, page)
    for name in OLD_PNGS:
        (directory / name).unlink(missing_ok=True)
    return path


def _figures(s: StudyFolder) -> list[tuple[str, str, Any, str]]:
    """(section id, title, figure or None, caption) in the page's order."""
    v = s.verdict or s.record
    seeds = v.get("tuning_seeds") or s.tuning_seeds()
    n_seeds = len(seeds)
    out = []
    x = s.x_key()
    if x is not None:
        log_x = s.log_x(x)
        others = [k for k in s.space_keys if k != x]
        band = (f"; the band spans the lowest to the highest of the {n_seeds} tuning seeds ({_seed_list(seeds)})"
                if n_seeds > 1 else f" (tuning seed {_seed_list(seeds)})" if seeds else "")
        caption = (f"Each point is one trial: its score, {s.metric} averaged over its tuning seeds, against {x} "
                   f"({'log' if log_x else 'linear'} scale); the line joins a variant's trials in {x} order{band}. "
                   "The ringed trial of each variant is the one rerun on the final seeds. Diverged trials score the "
                   "worst value and are drawn as × on the top edge")
        if (s.trials["status"] == "pruned").any():
            caption += "; pruned trials hollow, at the value they were stopped at"
        caption += "."
        if others:
            caption += f" The space also varies {', '.join(others)}: neighbouring points differ in those too."
        out.append(("sensitivity", f"Sensitivity: {s.metric} against {x}",
                    plot_sensitivity(s.arms, s.trials, s.seed_values(), x, log_x, s.metric), caption))
    sampler = v.get("sampler")
    caption = (f"The expected best {s.metric} after k trials of each variant: the mean, over {RESAMPLES} bootstrap "
               f"resamples (numpy default_rng seed {RESAMPLE_SEED}) of the variant's trials drawn with replacement "
               "in a random order, of the best score among the first k (Sivaprasad et al., \"Optimizer Benchmarking "
               f"Needs to Account for Hyperparameter Tuning\", ICML 2020); the band spans the {BAND[0]:.0%}–{BAND[1]:.0%} "
               "quantiles of the resamples. A diverged or pruned trial scores the worst value; a k at which some "
               "resample's first k trials all scored it has an infinite expectation, drawn as × on the top edge. "
               "The scores are on the tuning seeds: a variant that is good at every budget is easy to tune.")
    if sampler and sampler != "random":
        caption += f" The {sampler} sampler's trials are not independent draws: the curve treats them as if they were."
    out.append(("budget", "Expected best of k trials against the tuning budget",
                plot_budget(s.arms, s.scores(), s.maximize, s.metric), caption))
    curves, x_name = s.final_curves()
    finals = (s.verdict or {}).get("final_seeds") or []
    out.append(("final", "The tuned variants on the final seeds", plot_final_curves(s.arms, curves, FINAL_TAGS, x_name),
                f"Each variant's best trial rerun on the final seeds{' ' + _seed_list(finals) if finals else ''}, which "
                "played no part in the tuning: the mean over seeds, the band from the lowest to the highest seed"
                + _left_out(s) + "."))
    profile = (s.verdict or {}).get("profiles")
    if profile:
        n = len(s.verdict.get("workloads", {}))
        out.append(("profiles", "Performance profiles across workloads", plot_profiles(s.arms, profile, n),
                    f"Dolan–Moré performance profiles over the {n} workloads: ρ(τ) is the share of workloads on which "
                    "a variant's final score (the mean over the final seeds; a diverged final run is a failure, never "
                    "within any τ) is within a factor τ of the best variant's. ρ(1) is the share it wins; the higher "
                    "curve is the better variant across the workloads. Equal curves are drawn a hair apart."))
    return out


def _left_out(s: StudyFolder) -> str:
    """The final runs the curves leave out (diverged ones), said in the caption."""
    runs = s.runs
    if "role" not in runs:
        return ""
    finals = runs[runs["role"] == "final"]
    diverged = int((finals["status"] == "diverged").sum())
    if not diverged:
        return ""
    return (f"; {diverged} diverged final run{'s are' if diverged != 1 else ' is'} left out of the curves (the legend's "
            "n counts the seeds drawn), and counted in the verdict")


def _seed_list(seeds: list) -> str:
    seeds = [int(x) for x in seeds]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


# --- the page ----------------------------------------------------------------------------


def _cell(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return "" if x is None else ("yes" if x else "")
    if isinstance(x, float):
        return significant(x)
    return str(x)


def _table(header: list[str], rows: list[list[Any]], left: int = 2, cls: str = "table", right: int | None = None) -> str:
    """An HTML table, the first `left` columns (and those from `right` on) left-aligned, each
    cell escaped, in a box that scrolls sideways where the page is too narrow."""
    def align(i: int) -> str:
        return " class=l" if i < left or (right is not None and i >= right) else ""

    head = "".join(f"<th{align(i)}>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{align(i)}>{html.escape(_cell(c))}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def params_text(params: dict[str, Any]) -> str:
    """`lr=0.003162, weight_decay=0.01`: optimizer keys by their keyword, the others dotted."""
    return ", ".join(f"{k.removeprefix('optimizer.')}={significant(v) if isinstance(v, float) else json.dumps(v)}"
                     for k, v in params.items())


def _trial_counts(t: dict[str, int]) -> str:
    said = [f"{t[k]} {k}" for k in ("ok", "diverged", "pruned") if t.get(k)]
    return f"{', '.join(said) or 'none finished'} of {t['n']}"


def verdict_rows(section: dict[str, Any]) -> list[list[Any]]:
    """The verdict table's rows, best first: rank, variant, best trial, its values, its
    tuning score, the final mean ± std, the 95 % interval, n, diverged finals, the trials."""
    rows = []
    for name in section["ranking"]:
        v = section["variants"][name]
        f, t = v["final"], v["trials"]
        ci = "–" if f.get("ci95_low") is None else f"[{significant(f['ci95_low'])}, {significant(f['ci95_high'])}]"
        rows.append([v["rank"], name, v["best_trial"], params_text(v["best_params"]), v["best_value"],
                     with_uncertainty(f["mean"], f["std"]), ci, f["n"], f["diverged"],
                     _trial_counts(t)])
    return rows


def _verdict_table(section: dict[str, Any], metric: str) -> str:
    return _table(["rank", "variant", "best trial", "its values", f"its {metric} (tuning)", f"final {metric} (mean ± std)",
                   "95% interval", "n", "diverged", "trials"], verdict_rows(section), left=4, cls="table verdict-table",
                  right=9)


def _pairs(comparisons: list[dict[str, Any]]) -> str:
    if not comparisons:
        return "<p>One variant: nothing to compare.</p>"
    items = []
    for c in comparisons:
        p = "–" if c.get("p_holm") is None else significant(c["p_holm"], 2)
        mark = "significant" if c["significant"] else "not significant"
        power = f'<br><span class="power">{html.escape(c["power_sentence"])}</span>' \
            if c.get("power_sentence") and not c["significant"] else ""
        items.append(f'<li class="{"sig" if c["significant"] else "nosig"}">{html.escape(c["sentence"])} '
                     f'<span class="p">(p Holm = {p}: {mark})</span>{power}</li>')
    rows = [[c["a"], c["b"], c["test"], c.get("mean_a"), c.get("mean_b"), c.get("diff"),
             "–" if c.get("diff_ci95_low") is None else f"[{significant(c['diff_ci95_low'])}, {significant(c['diff_ci95_high'])}]",
             c.get("p_value"), c.get("p_holm"), c["significant"]] for c in comparisons]
    table = _details(f"The {len(comparisons)} comparison{'s' if len(comparisons) != 1 else ''} in numbers",
                     _table(["a", "b", "test", "mean a", "mean b", "a − b", "95% interval of a − b", "p", "p (Holm)",
                             "significant"], rows, left=3))
    return f'<ul class="verdict">{"".join(items)}</ul>{table}'


def _verdict_html(s: StudyFolder) -> str:
    v = s.verdict
    if v is None:
        told = s.trials["status"].isin(TOLD).sum()
        budget = s.record.get("budget")
        of = f" of {budget * len(s.arms)}" if budget else ""
        return (f"<p><b>No verdict yet</b>: {told}{of} trials told, the final runs not done (the study is running, "
                "or was stopped: run the same command again to finish it). The pictures show the trials so far.</p>")
    out = [f"<p>{html.escape(protocol_sentence(v))}</p>"]
    if v.get("metric_reason"):
        out.append(f'<p class="note">Tuning metric {html.escape(v["metric"])}: {html.escape(v["metric_reason"])}.</p>')
    if "workloads" not in v:
        return "".join(out) + _verdict_table(v, v["metric"]) + _pairs(v["comparisons"])
    out.append(_ranks_html(v))
    for workload, section in v["workloads"].items():
        out.append(f"<h3>{html.escape(workload)}</h3>{_verdict_table(section, v['metric'])}{_pairs(section['comparisons'])}")
    return "".join(out)


def rank_rows(v: dict[str, Any]) -> list[list[Any]]:
    """Across workloads: rank, variant, mean rank, wins (ρ(1)), then its rank on each workload."""
    return [[e["rank"], name, e["mean_rank"], e["wins"], *(v["workloads"][w]["variants"][name]["rank"] for w in v["workloads"])]
            for name in v["ranking"] for e in [v["variants"][name]]]


def _ranks_html(v: dict[str, Any]) -> str:
    table = _table(["rank", "variant", "mean rank", "wins ρ(1)", *(f"rank on {w}" for w in v["workloads"])], rank_rows(v),
                   cls="table ranks")
    return ("<p>Across the workloads, by mean rank (ties by the share of workloads won); each workload's ranks are "
            "by the final mean, the fewest diverged final runs first:</p>" + table)


def _trials_html(s: StudyFolder) -> str:
    rows = s.trials.astype(object).where(s.trials.notna(), None).values.tolist()
    return _details(f"trials.csv: {len(rows)} trials", _table(list(s.trials.columns), rows, left=1))


def _finals_html(s: StudyFolder) -> str:
    v = s.verdict
    if v is None:
        return ""
    sections = v["workloads"].items() if "workloads" in v else [(None, v)]
    rows = []
    for workload, section in sections:
        for name in section["ranking"]:
            f = section["variants"][name]["final"]
            values = ", ".join("diverged" if x is None else significant(x) for x in f["values"])
            rows.append([*([workload] if workload else []), name, _seed_list(f["seeds"]), values])
    header = [*(["workload"] if "workloads" in v else []), "variant", "final seeds", f"{v['metric']} per seed"]
    return _details("The final runs' values, seed by seed", _table(header, rows, left=len(header)))


def budget_rows(s: StudyFolder) -> tuple[list[str], list[list[Any]]]:
    """The expected best-of-k at every k per arm, as the budget curve draws it (∞: some
    resample's first k trials all diverged or were pruned)."""
    scores = s.scores()
    n = max((len(v) for v in scores.values()), default=0)
    workloads = any(a.workload for a in s.arms)
    rows = []
    for arm in s.arms:
        _, mean, _, _ = best_of_k(scores[arm.label], s.maximize)
        rows.append([*([arm.workload] if workloads else []), arm.name,
                     *(("∞" if math.isinf(m) else float(m)) for m in mean), *([""] * (n - len(mean)))])
    return [*(["workload"] if workloads else []), "variant", *(f"k={k}" for k in range(1, n + 1))], rows


def _budget_html(s: StudyFolder) -> str:
    header, rows = budget_rows(s)
    if not rows:
        return ""
    return _details(f"Expected best {s.metric} of k trials, in numbers",
                    _table(header, rows, left=2 if "workload" in header else 1))


def profile_rows(v: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Per variant its ratio to the best on each workload ("failed": its final runs diverged
    or the ratio is undefined), then ρ(τ) at each τ where a profile steps."""
    p = v["profiles"]
    header = ["variant", *(f"ratio on {w}" for w in p["ratios"]), *(f"ρ({significant(t, 4)})" for t in p["taus"])]
    rows = [[name, *("failed" if p["ratios"][w].get(name) is None else float(p["ratios"][w][name]) for w in p["ratios"]),
             *(float(x) for x in p["profiles"][name])] for name in v["ranking"]]
    return header, rows


def _profiles_html(s: StudyFolder) -> str:
    if not (s.verdict or {}).get("profiles"):
        return ""
    header, rows = profile_rows(s.verdict)
    return _details("Performance profiles in numbers", _table(header, rows, left=1))


_STUDY_CSS = """
table.verdict-table td.l { white-space: normal; max-width: 22em; }
.verdict li.sig { font-weight: 600; } .verdict .p { color: #555; font-weight: normal; } .power { color: #666; font-size: 0.9em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
"""


def _arms_text(arms: list) -> str:
    names = len({a.name for a in arms})
    workloads = len({a.workload for a in arms if a.workload is not None})
    text = f"{names} variant{'s' if names != 1 else ''}"
    return text + (f" × {workloads} workload{'s' if workloads != 1 else ''}" if workloads else "")


def _page(s: StudyFolder, figures: list[tuple[str, str, Any, str]]) -> str:
    name = html.escape(s.dir.resolve().name)
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    counts = ", ".join(f"{n} {html.escape(str(k))}" for k, n in s.trials["status"].value_counts().items())
    finals = int(((s.runs["role"] == "final") if "role" in s.runs else pd.Series(dtype=bool)).sum())
    pictures = "".join(
        f'<section id="{sid}"><figure><h2>{html.escape(title)}</h2><img src="{_png_uri(fig)}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure></section>"
        for sid, title, fig, caption in figures if fig is not None)
    notes = "".join(f'<p class="note">{html.escape(n)}.</p>' for n in s.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>optcmp study: {name}</title>
<style>{_CSS}{_STUDY_CSS}</style></head><body>
<h1>optcmp study: {name}</h1>
<p>{_arms_text(s.arms)}, \
{len(s.trials)} trials ({counts}), {finals} final runs; written {html.escape(when)} from the files in this folder.</p>
{notes}
<section id="verdict"><h2>Verdict</h2>{_verdict_html(s)}</section>
{pictures}
<section id="tables"><h2>Tables</h2>{_finals_html(s)}{_budget_html(s)}{_profiles_html(s)}{_trials_html(s)}</section>
</body></html>
"""
