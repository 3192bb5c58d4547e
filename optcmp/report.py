"""`report.html` with PNG plots beside it, drawn from what a sweep left on disk.

Reads runs.csv, each run's metrics.csv and weights.npz, summary.csv and the statistics of
`compare`; never trains. Runs that failed, diverged or were interrupted, and files that are
missing or unreadable, are left out of the plots and listed in the report, so a half-finished
sweep still gets a report. One HTML file and PNGs, no scripts or CDN: it opens offline and
can be mailed as a folder.
"""
from __future__ import annotations

import datetime as _dt
import html
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from optcmp.compare import compare_configs, higher_is_better, ok_runs
from optcmp.errors import OptcmpError
from optcmp.results import atomic_write_bytes, atomic_write_text
from optcmp.summary import aggregate, default_primary, mean_ci, read_runs

# The PNGs this module owns; a rerun removes the ones it no longer draws so none go stale.
PNG_NAMES = ("loss.png", "accuracy.png", "weight_norm.png", "weights.png", "final.png")
LOSS_TAGS = ("train/loss", "val/loss")
ACCURACY_TAGS = ("val/accuracy",)
_DPI = 100
# Histogram range: the central 99% of all final weights, so one outlier cannot squash the rest.
_WEIGHT_QUANTILES = (0.005, 0.995)


def write_report(directory: str | Path) -> Path:
    """Write `report.html` and its PNGs into the sweep folder `directory`; return the HTML path."""
    try:
        import matplotlib  # noqa: F401  (an optional extra; fail before any work is done)
    except ImportError:
        raise OptcmpError("optcmp report needs matplotlib: pip install 'optcmp[report]'") from None
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
    configs = list(pd.unique(good["config_id"]))
    colors = _colors(configs)
    curves = _read_run_files(directory, good, "metrics.csv", read_metrics, "the curves", notes)
    weights = {config: np.concatenate(arrays) for config, arrays in
               _read_run_files(directory, good, "weights.npz", _flat_weights, "the weight distributions", notes).items()}
    metric = default_primary(runs)

    figures = [
        ("Loss", "loss.png", _plot_curves(curves, LOSS_TAGS, colors, log=True),
         "Mean over seeds; the band spans the lowest to the highest seed."),
        ("Validation accuracy", "accuracy.png", _plot_curves(curves, ACCURACY_TAGS, colors, log=False),
         "Mean over seeds; the band spans the lowest to the highest seed."),
        ("Weight norm", "weight_norm.png", _plot_curves(curves, ("weight_norm",), colors, log=False),
         "Global L2 norm of all parameters; mean over seeds with a min–max band."),
        ("Final weights", "weights.png", _plot_weights(weights, colors),
         "Every final parameter of every seed, one density per config; σ is their standard deviation."),
        (f"Final {metric}", "final.png", _plot_final(good, metric, colors),
         "One dot per seed, lines joining the runs of one seed; the bar is the mean over seeds and "
         "the vertical line beside it its 95% Student t interval."),
    ]
    drawn = []
    for title, name, fig, caption in figures:
        if fig is None:
            _remove(directory / name)
            continue
        _save_png(fig, directory / name)
        drawn.append((title, name, caption))

    summary_html = _summary_html(directory, runs)
    compare_html = _compare_html(runs, metric)
    page = _page(directory, runs, summary_html, compare_html, drawn, notes)
    path = directory / "report.html"
    atomic_write_text(path, page)
    return path


def _planned(directory: Path) -> list[str]:
    """The run ids of the last `optcmp run`'s plan, so an interrupted sweep shows what is missing."""
    try:
        return [r["run_id"] for r in json.loads((directory / "plan.json").read_text())]
    except (OSError, ValueError, TypeError, KeyError):  # no plan (an older or copied folder), or a foreign one
        return []


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


def _new_figure(n_axes: int = 1, width: float = 6.0):
    # The object API with an explicit Agg canvas: no pyplot state, no GUI backend, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_axes, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    return fig, list(axes)


def _colors(configs: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(configs) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(configs)}


def _plot_curves(curves: dict, tags: tuple[str, ...], colors: dict, *, log: bool):
    """One panel per tag, one mean line with a min–max band per config; None when nothing to draw."""
    tags = [t for t in tags if any(t in f.columns and f[t].notna().any() for fs in curves.values() for f in fs)]
    if not tags:
        return None
    fig, axes = _new_figure(len(tags))
    for ax, tag in zip(axes, tags):
        positive = True
        for config, frames in curves.items():
            seeds = [f[tag].dropna() for f in frames if tag in f.columns]
            seeds = [s for s in seeds if not s.empty]
            if not seeds:
                continue
            table = pd.concat(seeds, axis=1)  # steps × seeds, aligned on step
            mean, low, high = table.mean(axis=1), table.min(axis=1), table.max(axis=1)
            ax.plot(mean.index, mean, color=colors[config], label=f"{config} (n={len(seeds)})")
            ax.fill_between(mean.index, low, high, color=colors[config], alpha=0.2, linewidth=0)
            positive = positive and bool((low > 0).all())
        if log and positive:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(tag)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def _plot_weights(weights: dict[str, np.ndarray], colors: dict):
    """Overlaid densities of the final weights per config; None without any weights.npz."""
    if not weights:
        return None
    everything = np.concatenate(list(weights.values()))
    everything = everything[np.isfinite(everything)]
    if everything.size == 0:
        return None
    low, high = np.quantile(everything, _WEIGHT_QUANTILES)
    if low == high:
        low, high = low - 1.0, high + 1.0
    # numpy's "auto" rule fits the bin count to the number of weights; a cap keeps steps readable.
    bins = np.histogram_bin_edges(everything, bins="auto", range=(low, high))
    if len(bins) > 101:
        bins = np.linspace(low, high, 101)
    fig, (ax,) = _new_figure(1, width=7.0)
    for config, w in weights.items():
        w = w[np.isfinite(w)]
        ax.hist(w, bins=bins, density=True, histtype="step", linewidth=1.5, color=colors[config],
                label=f"{config} (σ={w.std():.3g})")
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("final weight value")
    ax.set_ylabel("density")
    ax.set_title("Final weight distributions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _plot_final(good: pd.DataFrame, metric: str, colors: dict):
    """The final metric of every seed per config, best config first; None without values."""
    if metric not in good.columns or good[metric].isna().all():
        return None
    means = good.groupby("config_id", sort=False)[metric].mean().dropna()
    means = means.sort_values(ascending=not higher_is_better(metric), kind="stable")
    x_of = {config: x for x, config in enumerate(means.index)}
    fig, (ax,) = _new_figure(1, width=max(5.0, 1.2 * len(means) + 2))
    # Thin lines join the runs of one seed: configs that share seeds share initial weights and
    # data, and parallel lines are what makes a small paired difference significant.
    for _, runs in good[good["config_id"].isin(x_of)].groupby("seed"):
        runs = runs.dropna(subset=[metric]).sort_values("config_id", key=lambda c: c.map(x_of))
        ax.plot(runs["config_id"].map(x_of), runs[metric], color="grey", alpha=0.35, linewidth=0.8)
    for config in means.index:
        values = good.loc[good["config_id"] == config, metric].dropna().to_numpy(dtype=float)
        x = x_of[config]
        ax.scatter(np.full(len(values), x), values, color=colors[config], s=18, zorder=3)
        mean, _, low, high = mean_ci(values)
        ax.hlines(mean, x - 0.25, x + 0.25, color="black", linewidth=2, zorder=4)
        if np.isfinite(low):
            ax.vlines(x + 0.3, low, high, color="black", linewidth=1.2, zorder=4)
    ax.set_xticks(range(len(means)), list(means.index), rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"Final {metric} per seed")
    ax.grid(alpha=0.3, axis="y")
    return fig


def _save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    atomic_write_bytes(path, buf.getvalue())


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, na_rep="", border=0, classes="table",
                         float_format=lambda x: f"{x:.4g}")


def _summary_html(directory: Path, runs: pd.DataFrame) -> str:
    """summary.csv as `optcmp run`/`summary` wrote it, else aggregated here from runs.csv."""
    path = directory / "summary.csv"
    try:
        if path.is_file():
            return f"<p>From <code>summary.csv</code>.</p>{_table_html(pd.read_csv(path))}"
        return f"<p>Aggregated from <code>runs.csv</code>.</p>{_table_html(aggregate(runs).frame())}"
    except (OSError, ValueError) as e:  # a truncated or hand-edited summary.csv
        return f"<p>No summary: {html.escape(str(e))}</p>"


def _compare_html(runs: pd.DataFrame, metric: str) -> str:
    try:
        frame = compare_configs(runs, metric)
    except OptcmpError as e:
        return f"<p>No comparison: {html.escape(str(e))}</p>"
    if frame.empty:
        return "<p>Only one config: nothing to compare.</p>"
    sentences = "".join(f"<li>{html.escape(s)}</li>" for s in frame["sentence"])
    return f"<ul>{sentences}</ul>{_table_html(frame.drop(columns=['sentence']))}"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table.table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
table.table th, table.table td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.table th { background: #f4f4f4; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
.note { color: #8a4b00; }
"""


def _page(directory: Path, runs: pd.DataFrame, summary_html: str, compare_html: str,
          drawn: list[tuple[str, str, str]], notes: list[tuple[str, str]]) -> str:
    name = html.escape(directory.resolve().name)
    counts = ", ".join(f"{n} {html.escape(str(s))}" for s, n in runs["status"].value_counts().items())
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    figures = "".join(
        f'<h2>{html.escape(title)}</h2><figure><img src="{name_}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for title, name_, caption in drawn)
    if notes:
        items = "".join(f"<li><code>{html.escape(str(r))}</code>: {html.escape(w)}</li>" for r, w in notes)
        left_out = f'<h2>Left out</h2><ul class="note">{items}</ul>'
    else:
        left_out = ""
    run_cols = [c for c in ("run_id", "config_id", "seed", "status", "error") if c in runs.columns]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>optcmp report: {name}</title>
<style>{_CSS}</style></head><body>
<h1>optcmp report: {name}</h1>
<p>{len(runs)} runs ({counts}); written {html.escape(when)} from the files in this folder.</p>
<h2>Summary</h2>{summary_html}
<h2>Comparison</h2>{compare_html}
{figures}
{left_out}
<h2>Runs</h2>{_table_html(runs[run_cols])}
</body></html>
"""
