"""`report.html`: one self-contained file drawn from what a sweep left on disk.

Reads runs.csv, each run's metrics.csv and weights.npz, summary.json's ranking metric and
the statistics of `compare`; never trains. The page opens with the verdict (the significant
differences, or that there are none) and the pictures; the long tables follow, collapsed.
Images are PNGs embedded as data URIs: no scripts, no CDN, no files beside it, so the page
opens offline and can be mailed or attached as it is.

Runs that failed, diverged or were interrupted, and files that are missing or unreadable,
are left out of the plots and listed, so a half-finished sweep still gets a report.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from optcmp.compare import compare_configs, higher_is_better, ok_runs
from optcmp.display import html_summary, title, with_uncertainty
from optcmp.errors import OptcmpError
from optcmp.results import atomic_write_text, planned_ids
from optcmp.summary import RunTable, aggregate, default_primary, mean_ci, read_runs

# The PNGs reports wrote beside report.html before it embedded its images; removed so that
# none outlives the data it showed.
OLD_PNGS = ("loss.png", "accuracy.png", "weight_norm.png", "weights.png", "final.png")
LOSS_TAGS = ("train/loss", "val/loss")
ACCURACY_TAGS = ("val/accuracy",)
_DPI = 110
# Histogram range: the central 99% of all final weights, so one outlier cannot squash the rest.
_WEIGHT_QUANTILES = (0.005, 0.995)
_MAX_BINS = 80
_BAND = "the band spans the lowest to the highest seed"


def require_matplotlib() -> None:
    """matplotlib is an optional extra: say how to install it before any work is done."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptcmpError("optcmp report needs matplotlib: pip install 'optcmp[report]'") from None


def write_report(directory: str | Path) -> Path:
    """Write `report.html` into the sweep folder `directory`; return its path."""
    require_matplotlib()
    directory = Path(directory)
    runs = read_runs(directory)
    notes: list[tuple[str, str]] = []  # (run_id, why it is missing from the plots)
    for _, run in runs[runs["status"] != "ok"].iterrows():
        error = run.get("error")
        why = f"status {run['status']}" + (f": {error}" if isinstance(error, str) and error else "")
        notes.append((run["run_id"], why))
    notes += [(run_id, "planned in plan.json but has no result: not run yet")
              for run_id in _planned(directory) if run_id not in set(runs["run_id"])]

    good = ok_runs(runs)
    summary = aggregate(RunTable.of(runs), _ranking_metric(directory, runs))
    metric = summary.primary
    colors = _colors(list(pd.unique(good["config_id"])))
    curves = _read_run_files(directory, good, "metrics.csv", read_metrics, "the curves", notes)
    weights = _read_run_files(directory, good, "weights.npz", _flat_weights, "the weight distributions", notes)
    x_name = "epoch" if any("epoch" in f.columns and f["epoch"].notna().any() for fs in curves.values() for f in fs) else "step"

    band = f"Mean over seeds; {_BAND}."
    figures = [
        ("Loss", _plot_curves(curves, LOSS_TAGS, colors, x_name, log=True), band),
        (f"Final {metric} per seed", _plot_final(good, metric, colors),
         "One dot per seed, grey lines joining the runs of one seed; the bar is the mean over seeds "
         "and the vertical line beside it its 95% Student t interval, clipped to the metric's range "
         "(a loss is never below 0, an accuracy never above 1)."),
        ("Final weight distributions", _plot_weights(weights, colors),
         "Every final parameter of a run in one histogram, on bins shared by all runs; per config the mean "
         f"density over seeds, {_BAND} (in grey, the other configs' means)."),
        ("Validation accuracy", _plot_curves(curves, ACCURACY_TAGS, colors, x_name, log=False), band),
        ("Weight norm", _plot_curves(curves, ("weight_norm",), colors, x_name, log=False),
         f"Global L2 norm of all parameters; {band[0].lower()}{band[1:]}"),
    ]
    drawn = [(title, _png_uri(fig), caption) for title, fig, caption in figures if fig is not None]
    page = _page(directory, runs, summary, _verdict(runs, summary), drawn, notes)
    path = directory / "report.html"
    atomic_write_text(path, page)
    for name in OLD_PNGS:
        (directory / name).unlink(missing_ok=True)
    return path


def _ranking_metric(directory: Path, runs: pd.DataFrame) -> str:
    """The metric summary.json ranks by (the config's summary.primary), else the default."""
    try:
        primary = json.loads((directory / "summary.json").read_text()).get("primary")
    except (OSError, ValueError, AttributeError):
        primary = None
    return primary if isinstance(primary, str) and primary in runs.columns else default_primary(runs)


def _planned(directory: Path) -> list[str]:
    """The run ids of the last `optcmp run`'s plan, so an interrupted sweep shows what is missing."""
    return planned_ids(directory)  # [] without a plan (an older or copied folder), or a damaged one


def read_metrics(path: Path) -> pd.DataFrame:
    """One run's metrics.csv indexed by step, one row per step.

    The logger writes a row per `scalars` call, so a step can span rows (train and val logged
    apart); the first value of each column at a step is kept.
    """
    frame = pd.read_csv(path)
    return frame.groupby("step").first().sort_index()


def _read_run_files(directory: Path, good: pd.DataFrame, name: str, read, used_for: str,
                    notes: list) -> dict[str, list]:
    """`read(path)` of each ok run's file `name`, grouped by config; a missing or broken file
    is noted and skipped, since a run killed mid-write or a copied folder must not stop a report."""
    out: dict[str, list] = {}
    for _, run in good.iterrows():
        path = directory / run["run_id"] / name
        if not path.is_file():
            notes.append((run["run_id"], f"no {name}: left out of {used_for}"))
            continue
        try:
            out.setdefault(run["config_id"], []).append(read(path))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # pandas' parse errors are ValueErrors
            notes.append((run["run_id"], f"unreadable {name} ({e}): left out of {used_for}"))
    return out


def _flat_weights(path: Path) -> np.ndarray:
    """All final parameters of one run's weights.npz as one flat array."""
    with np.load(path) as npz:
        return np.concatenate([np.asarray(npz[k], dtype=float).ravel() for k in npz.files] or [np.empty(0)])


# --- pictures ------------------------------------------------------------------------


def _new_figure(n_axes: int = 1, width: float = 5.5, height: float = 3.6, cols: int | None = None, extra: float = 0.0,
                **share):
    # The object API with an explicit Agg canvas: no pyplot state, no GUI backend, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = cols or n_axes
    rows = -(-n_axes // cols)
    fig = Figure(figsize=(width * cols + extra, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **share).ravel()
    for ax in axes[n_axes:]:
        ax.set_visible(False)
    return fig, list(axes[:n_axes])


def _colors(configs: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(configs) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(configs)}


def _legend_outside(fig, axes) -> None:
    """One legend for the figure, right of the panels: long ids never cover a curve."""
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[1:]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize="small", frameon=False)


def _plot_curves(curves: dict, tags: tuple[str, ...], colors: dict, x_name: str, *, log: bool):
    """One panel per tag, one mean line with a min–max band per config; None when nothing to draw."""
    tags = [t for t in tags if any(t in f.columns and f[t].notna().any() for fs in curves.values() for f in fs)]
    if not tags:
        return None
    # room for the legend beside the panels, so that long ids do not squeeze them
    legend = 0.7 + 0.075 * max(len(f"{c} (n=00)") for c in curves)
    # the page is about 11.5 inches wide at the PNGs' resolution: panels share what the legend leaves
    fig, axes = _new_figure(len(tags), width=min(5.5, max(3.5, (11.5 - legend) / len(tags))), extra=legend)
    for ax, tag in zip(axes, tags):
        positive, spread = True, 0.0
        for config, frames in curves.items():
            seeds = [_by_x(f, tag, x_name) for f in frames if tag in f.columns]
            seeds = [s for s in seeds if not s.empty]
            if not seeds:
                continue
            table = pd.concat(seeds, axis=1)  # x × seeds, aligned on step or epoch
            mean, low, high = table.mean(axis=1), table.min(axis=1), table.max(axis=1)
            ax.plot(mean.index, mean, color=colors[config], label=f"{config} (n={len(seeds)})")
            ax.fill_between(mean.index, low, high, color=colors[config], alpha=0.2, linewidth=0)
            positive = positive and bool((low > 0).all())
            spread = max(spread, float(high.max() / low.min()) if positive else 0.0)
        if log and positive and spread > 10:  # a log axis only where the values span a decade
            ax.set_yscale("log")
        ax.set_xlabel(x_name)
        ax.set_title(tag)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    return fig


def _by_x(frame: pd.DataFrame, tag: str, x_name: str) -> pd.Series:
    """A run's values of `tag` indexed by its step, or by its epoch for an epoch run."""
    values = frame[tag]
    if x_name == "epoch" and "epoch" in frame.columns:
        values = pd.Series(values.to_numpy(), index=frame["epoch"].to_numpy())
        values = values[values.index.notna()]
        values = values[~values.index.duplicated(keep="last")]
    return values.dropna()


def weight_histograms(weights: dict[str, list[np.ndarray]]):
    """Per config the histogram of each seed's final weights on bins all share, as densities
    (the count over the run's number of weights and the bin width, so a run's mass outside
    the range is not spread over the rest): (bins, {config: array[seeds, bins - 1]}), or
    None without finite weights."""
    finite = {c: [w[np.isfinite(w)] for w in arrays] for c, arrays in weights.items()}
    finite = {c: [w for w in arrays if w.size] for c, arrays in finite.items()}
    finite = {c: arrays for c, arrays in finite.items() if arrays}
    if not finite:
        return None
    everything = np.concatenate([w for arrays in finite.values() for w in arrays])
    low, high = np.quantile(everything, _WEIGHT_QUANTILES)
    if low == high:
        low, high = low - 1.0, high + 1.0
    # numpy's "auto" rule fits the bin count to the number of weights; a cap keeps steps readable.
    bins = np.histogram_bin_edges(everything, bins="auto", range=(low, high))
    if len(bins) > _MAX_BINS + 1:
        bins = np.linspace(low, high, _MAX_BINS + 1)
    widths = np.diff(bins)
    return bins, {c: np.stack([np.histogram(w, bins=bins)[0] / (w.size * widths) for w in arrays])
                  for c, arrays in finite.items()}


def _plot_weights(weights: dict[str, list[np.ndarray]], colors: dict):
    """One panel per config (same axes): the mean final-weight density over seeds with a
    min–max band, the other configs' means in grey; None without any weights.npz."""
    histograms = weight_histograms(weights)
    if histograms is None:
        return None
    bins, densities = histograms
    centers = (bins[:-1] + bins[1:]) / 2
    fig, axes = _new_figure(len(densities), width=3.6, height=2.6, cols=min(len(densities), 4), sharex=True, sharey=True)
    means = {c: d.mean(axis=0) for c, d in densities.items()}
    for ax, (config, dens) in zip(axes, densities.items()):
        for other, mean in means.items():
            if other != config:
                ax.plot(centers, mean, color="grey", linewidth=0.7, alpha=0.6)
        ax.fill_between(centers, dens.min(axis=0), dens.max(axis=0), color=colors[config], alpha=0.3, linewidth=0,
                        step="mid")
        ax.step(centers, means[config], where="mid", color=colors[config], linewidth=1.4)
        ax.axvline(0.0, color="black", linewidth=0.6)
        ax.set_ylim(bottom=0)
        title = f"{config} (n={len(dens)})"
        ax.set_title(title, fontsize="medium" if len(title) <= 30 else "small" if len(title) <= 45 else "x-small")
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_subplotspec().is_last_row():
            ax.set_xlabel("final weight value")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("density")
    return fig


def _plot_final(good: pd.DataFrame, metric: str, colors: dict):
    """The final metric of every seed per config, best config first; None without values."""
    if metric not in good.columns or good[metric].isna().all():
        return None
    means = good.groupby("config_id", sort=False)[metric].mean().dropna()
    means = means.sort_values(ascending=not higher_is_better(metric), kind="stable")
    x_of = {config: x for x, config in enumerate(means.index)}
    fig, (ax,) = _new_figure(1, width=max(5.0, 0.9 * len(means) + 2.5), height=4.0)
    # Thin lines join the runs of one seed: configs that share seeds share initial weights and
    # data, and parallel lines are what makes a small paired difference significant.
    for _, runs in good[good["config_id"].isin(x_of)].groupby("seed"):
        runs = runs.dropna(subset=[metric]).sort_values("config_id", key=lambda c: c.map(x_of))
        ax.plot(runs["config_id"].map(x_of), runs[metric], color="grey", alpha=0.35, linewidth=0.8)
    for config in means.index:
        values = good.loc[good["config_id"] == config, metric].dropna().to_numpy(dtype=float)
        x = x_of[config]
        ax.scatter(np.full(len(values), x), values, color=colors[config], s=18, zorder=3)
        mean, _, low, high = mean_ci(values, metric=metric)  # inside the metric's range (a loss ≥ 0)
        ax.hlines(mean, x - 0.25, x + 0.25, color="black", linewidth=2, zorder=4)
        if np.isfinite(low):
            ax.vlines(x + 0.3, low, high, color="black", linewidth=1.2, zorder=4)
    values = good[metric].dropna().to_numpy(dtype=float)
    if (values > 0).all() and values.max() > 20 * values.min():  # one config far off: the rest stay readable
        ax.set_yscale("log")
        ax.set_ylim(bottom=values.min() / 2)  # an interval reaching below 0 is cut at the axis
    ax.set_xticks(range(len(means)), list(means.index), rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- the page ------------------------------------------------------------------------


def _verdict(runs: pd.DataFrame, summary) -> tuple[str, str]:
    """(the verdict's HTML, the comparison table's HTML): the significant differences in
    the ranking metric, or that there are none, the best config, and the rest collapsed."""
    metric = summary.primary
    best = "".join(f'<p class="note">{html.escape(note)}.</p>' for note in summary.notes)  # one seed, chaos
    if summary.ranked_by and summary.rows and f"{metric}_mean" in summary.columns:  # one seed ranks nothing
        top = summary.rows[0]
        spread = with_uncertainty(top[f"{metric}_mean"], top.get(f"{metric}_std"))
        best = (f"<p>Best by {html.escape(metric)}: <b>{html.escape(str(top['config_id']))}</b> "
                f"({html.escape(spread)}, {top['n']} seed{'s' if top['n'] != 1 else ''}).</p>") + best
    try:
        frame = compare_configs(runs, metric)
    except OptcmpError as e:
        return f"{best}<p>No comparison: {html.escape(str(e))}</p>", ""
    if frame.empty:
        return f"{best}<p>Only one config: nothing to compare.</p>", ""
    significant = frame[frame["significant"]]
    tested = int(frame["n_comparisons"].iloc[0])
    if tested == 0:
        said = (f"<p><b>No comparison</b> in {html.escape(metric)}: no pair of configs has the two seeds each "
                "that a test needs.</p>")
    elif significant.empty:
        said = (f"<p><b>No significant difference</b> in {html.escape(metric)} between the "
                f"{frame[['config_a', 'config_b']].stack().nunique()} configs ({tested} comparison"
                f"{'s' if tested != 1 else ''}, Holm-corrected at 5%).</p>")
    else:
        said = "<ul class=\"verdict\">" + "".join(f"<li>{html.escape(s)}</li>" for s in significant["sentence"]) + "</ul>"
    rest = frame[~frame["significant"]]
    others = ""
    if not significant.empty and not rest.empty:
        others = _details(f"{len(rest)} other comparison{'s' if len(rest) != 1 else ''}",
                          "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in rest["sentence"]) + "</ul>")
    elif significant.empty:
        others = _details("The comparisons", "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in frame["sentence"]) + "</ul>")
    table = _details(f"Comparison table ({len(frame)} rows; compare.csv has every column)", _compare_html(frame))
    return best + said + others, table


def _details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary><div class=\"scroll\">{body}</div></details>"


def _compare_html(frame: pd.DataFrame) -> str:
    """The columns `optcmp compare` prints, numbers to 3 significant digits."""
    def num(x) -> str:
        return "" if pd.isna(x) else f"{x:.3g}"

    shown = pd.DataFrame({
        "a": frame["config_a"], "b": frame["config_b"], "test": frame["test"],
        "n": [str(p) if p else f"{a}/{b}" for p, a, b in zip(frame["n_pairs"], frame["n_a"], frame["n_b"])],
        "mean a": frame["mean_a"].map(num), "mean b": frame["mean_b"].map(num),
        "rel. diff": frame["rel_diff"].map(lambda x: "" if pd.isna(x) else f"{x:+.1%}"),
        # Cohen's d of a t test, the rank-biserial r of a rank test (diverged runs ranked worst)
        "effect": [f"r {r:+.2f}" if not pd.isna(r) else "" if pd.isna(d) else f"d {d:+.3g}"
                   for d, r in zip(frame["effect_size"], frame["rank_biserial"])],
        "p": frame["p_value"].map(num), "p (Holm)": frame["p_holm"].map(num),
        "significant": frame["significant"].map({True: "yes", False: ""}),
        "diverged": [f"{da}/{na}, {db}/{nb}" if da or db else ""
                     for da, na, db, nb in zip(frame["diverged_a"], frame["n_a"], frame["diverged_b"], frame["n_b"])],
    })
    return _frame_html(shown)


def _frame_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, na_rep="", border=0, classes="table", float_format=lambda x: f"{x:.4g}")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.verdict li { margin: 0.3em 0; }
table.table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; font-variant-numeric: tabular-nums; }
table.table th, table.table td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
table.table th { background: #f4f4f4; } table.table .l { text-align: left; }
.scroll { overflow-x: auto; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: #245; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
img { max-width: 100%; height: auto; }
.note { color: #8a4b00; } p.note { margin: 0.2em 0; font-size: 0.9em; }
"""


def _page(directory: Path, runs: pd.DataFrame, summary, verdict: tuple[str, str],
          drawn: list[tuple[str, str, str]], notes: list[tuple[str, str]]) -> str:
    name = html.escape(directory.resolve().name)
    counts = ", ".join(f"{n} {html.escape(str(s))}" for s, n in runs["status"].value_counts().items())
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    said, comparison_table = verdict
    ranking = title("", summary).removeprefix(": ")
    figures = "".join(
        f'<figure><h2>{html.escape(title)}</h2><img src="{uri}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for title, uri, caption in drawn)
    left_out = ""
    if notes:
        items = "".join(f"<li><code>{html.escape(str(r))}</code>: {html.escape(w)}</li>" for r, w in notes)
        left_out = f'<h2>Left out</h2><ul class="note">{items}</ul>'
    run_cols = [c for c in ("run_id", "config_id", "seed", "status", "error") if c in runs.columns]
    rows = len(summary.rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>optcmp report: {name}</title>
<style>{_CSS}</style></head><body>
<h1>optcmp report: {name}</h1>
<p>{len(runs)} runs ({counts}), {html.escape(ranking)}; written {html.escape(when)} from the files in this folder.</p>
<section id="verdict"><h2>Verdict</h2>{said}</section>
<section id="pictures">{figures}</section>
<section id="summary"><h2>Summary</h2><div class="scroll">{html_summary(summary, 160)}</div>
{_details(f"Every column ({rows} config{'s' if rows != 1 else ''})", html_summary(summary))}
{comparison_table}</section>
{left_out}
<section id="runs"><h2>Runs</h2>{_details(f"{len(runs)} runs", _frame_html(runs[run_cols]))}</section>
</body></html>
"""
