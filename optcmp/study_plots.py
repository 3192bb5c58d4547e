"""The pictures of a study's report (`study_report`): the sensitivity curve, the expected
best-of-k against the tuning budget, the final runs' curves and the performance profiles.

Each `plot_*` takes plain tables (pandas frames, lists) read by `study_report` and returns a
matplotlib Figure, or None when there is nothing to draw. `best_of_k` is the computation
behind the budget curve (Sivaprasad et al., "Optimizer Benchmarking Needs to Account for
Hyperparameter Tuning", ICML 2020): the trials of an arm resampled with replacement, in a
random order, and the best score after k of them, over many such orders.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from optcmp.report import _by_x, _legend_outside, _new_figure

RESAMPLES = 1000  # bootstrap resamples of the trial order
RESAMPLE_SEED = 0  # numpy's default_rng seed for them: the report is the same every time
BAND = (0.05, 0.95)  # the budget curve's band: these quantiles of the resampled best-of-k
TOP = 1.0  # where an infinite value is drawn: the top edge of the axes (in axes coordinates)


@dataclass(frozen=True)
class Arm:
    """What the pictures need of one arm: its name in the legend, its workload and colour."""

    label: str  # run ids' prefix: `adam`, `digits-adam`
    name: str  # the variant as the verdict names it
    workload: str | None
    color: tuple


def best_of_k(scores: Sequence[float], maximize: bool, resamples: int = RESAMPLES,
              seed: int = RESAMPLE_SEED, band: tuple[float, float] = BAND):
    """The best score after k trials, k = 1…n, over `resamples` orders of the n trials drawn
    with replacement: (k, mean, low, high), the mean and the `band` quantiles at each k.

    A diverged or pruned trial scores the worst value (±inf), so where every trial of some
    resample's first k is one, the best of k is that infinite value, and so is the mean."""
    values = np.asarray(scores, dtype=float)
    n = len(values)
    if n == 0:
        empty = np.empty(0)
        return np.arange(1, 1), empty, empty, empty
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, n, size=(resamples, n))]
    best = (np.maximum if maximize else np.minimum).accumulate(draws, axis=1)
    # an infinite mean, not NaN: the infinities of one arm all have the worst sign
    mean = best.mean(axis=0)
    # no interpolation, which would make NaN of ∞ − ∞
    low, high = np.quantile(best, band, axis=0, method="inverted_cdf")
    return np.arange(1, n + 1), mean, low, high


def _log_y(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(finite.size) and bool((finite > 0).all()) and finite.max() > 10 * finite.min()


def _at_top(ax, x, color, marker="x", label=None) -> None:
    """Points drawn on the top edge of the axes: the values that are infinite (diverged)."""
    if len(x):
        ax.scatter(x, np.full(len(x), TOP), transform=ax.get_xaxis_transform(), marker=marker, color=color, s=40,
                   clip_on=False, zorder=5, label=label, linewidths=1.5)


def _panels(workloads: list[str | None], width: float, height: float, extra: float, cols: int = 2):
    fig, axes = _new_figure(len(workloads), width=width if len(workloads) > 1 else min(2 * width, 8.5), height=height,
                            cols=min(cols, len(workloads)), extra=extra)
    for ax, workload in zip(axes, workloads):
        if workload is not None:
            ax.set_title(workload)
        ax.grid(alpha=0.3)
    return fig, dict(zip(workloads, axes))


def _legend_room(arms: Sequence[Arm], more: Sequence[str] = ()) -> float:
    return 0.7 + 0.075 * max([len(a.name) for a in arms] + [len(m) for m in more] + [8])


def plot_sensitivity(arms: Sequence[Arm], trials: pd.DataFrame, seeds: pd.DataFrame, x_key: str, log_x: bool,
                     metric: str):
    """The tuning metric against `x_key` (the learning rate): per arm each trial a point (its
    score, the mean over its tuning seeds), a line through them in x order, and where there
    are several tuning seeds a band from the lowest to the highest seed's value; the rerun
    trial ringed; diverged trials on the top edge (×), pruned ones hollow at their last value.
    `trials`: trials.csv; `seeds`: one row per trial run (`config_id`, `status`, `metric`)."""
    if x_key not in trials.columns:
        return None
    workloads = list(dict.fromkeys(a.workload for a in arms))
    fig, axes = _panels(workloads, 5.6, 3.9, _legend_room(arms, ["diverged (top edge)"]))
    ys: dict[str | None, list[float]] = {w: [] for w in workloads}  # what each panel's y axis shows
    drew = diverged_any = False
    for arm in arms:
        ax = axes[arm.workload]
        mine = trials[trials["config_id"].str.rsplit("-t", n=1).str[0] == arm.label]
        x = pd.to_numeric(mine[x_key], errors="coerce")
        value = mine[metric].astype(float)
        ok = mine[(mine["status"] == "ok") & np.isfinite(value) & x.notna()]
        ok = ok.assign(_x=x[ok.index], _y=value[ok.index]).sort_values("_x", kind="stable")
        if not ok.empty:
            ax.plot(ok["_x"], ok["_y"], color=arm.color, marker="o", markersize=4, linewidth=1.2, label=arm.name)
            ys[arm.workload] += list(ok["_y"])
            per_seed = seeds[seeds["config_id"].isin(ok["config_id"]) & (seeds["status"] == "ok")]
            spread = per_seed.groupby("config_id")[metric].agg(["min", "max", "count"])
            if not spread.empty and spread["count"].max() > 1:
                spread = spread.reindex(ok["config_id"])
                ax.fill_between(ok["_x"], spread["min"], spread["max"], color=arm.color, alpha=0.18, linewidth=0)
                ys[arm.workload] += list(spread["min"].dropna()) + list(spread["max"].dropna())
            best = ok[ok["best"].astype(str) == "True"]
            ax.scatter(best["_x"], best["_y"], s=140, facecolors="none", edgecolors=arm.color, linewidths=1.6, zorder=4)
        diverged = mine[(mine["status"] == "diverged") | ((mine["status"] == "ok") & ~np.isfinite(value))]
        _at_top(ax, x[diverged.index].dropna(), arm.color)
        diverged_any = diverged_any or not diverged.empty
        pruned = mine[(mine["status"] == "pruned") & mine["pruned_value"].notna()] if "pruned_value" in mine else mine[:0]
        if not pruned.empty:
            ax.scatter(x[pruned.index], pruned["pruned_value"].astype(float), s=30, facecolors="none",
                       edgecolors=arm.color, zorder=3)
            ys[arm.workload] += list(pruned["pruned_value"].astype(float))
        drew = drew or not (ok.empty and diverged.empty and pruned.empty)
    if not drew:
        return None
    for workload, ax in axes.items():
        ax.set_xlabel(x_key)
        ax.set_ylabel(f"{metric} (tuning seeds)")
        if log_x:
            ax.set_xscale("log")
        if _log_y(np.asarray(ys[workload], dtype=float)):
            ax.set_yscale("log")
    pruned_any = "pruned_value" in trials and (trials["status"] == "pruned").any()
    _key_entries(list(axes.values())[-1], diverged=diverged_any, best=True, pruned=bool(pruned_any))
    _legend_outside(fig, list(axes.values()))
    return fig


def _key_entries(ax, diverged: bool = False, best: bool = False, pruned: bool = False) -> None:
    """Grey legend entries for the markers' meanings."""
    if pruned:
        ax.scatter([], [], s=30, facecolors="none", edgecolors="grey", label="pruned (its last value)")
    if best:
        ax.scatter([], [], s=140, facecolors="none", edgecolors="grey", linewidths=1.6, label="rerun on final seeds")
    if diverged:
        ax.scatter([], [], marker="x", color="grey", s=40, linewidths=1.5, label="diverged (top edge)")


def plot_budget(arms: Sequence[Arm], scores: dict[str, np.ndarray], maximize: bool, metric: str):
    """The expected best-of-k score against the budget k per arm (`best_of_k`), with its band;
    a k whose expectation is infinite (some resample's first k trials all diverged) on the
    top edge (×)."""
    arms = [a for a in arms if len(scores.get(a.label, ())) > 0]
    if not arms:
        return None
    workloads = list(dict.fromkeys(a.workload for a in arms))
    fig, axes = _panels(workloads, 5.6, 3.6, _legend_room(arms, ["infinite (top edge)"]))
    everything: dict[str | None, list[np.ndarray]] = {w: [] for w in workloads}  # each panel's finite means
    infinite = False
    for arm in arms:
        ax = axes[arm.workload]
        k, mean, low, high = best_of_k(scores[arm.label], maximize)
        finite = np.isfinite(mean)
        ax.plot(k[finite], mean[finite], color=arm.color, linewidth=1.6, label=arm.name)
        both = np.isfinite(low) & np.isfinite(high)
        ax.fill_between(k, np.where(both, low, np.nan), np.where(both, high, np.nan), color=arm.color, alpha=0.18,
                        linewidth=0)
        _at_top(ax, k[~finite], arm.color)
        infinite = infinite or not finite.all()
        everything[arm.workload].append(mean[finite])
    for workload, ax in axes.items():
        ax.set_xlabel("tuning budget k (trials)")
        ax.set_ylabel(f"best {metric} of k")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if _log_y(np.concatenate(everything[workload])):
            ax.set_yscale("log")
    if infinite:
        list(axes.values())[-1].scatter([], [], marker="x", color="grey", s=40, linewidths=1.5,
                                        label="infinite (top edge)")
    _legend_outside(fig, list(axes.values()))
    return fig


def plot_final_curves(arms: Sequence[Arm], curves: dict[str, list[pd.DataFrame]], tags: Sequence[str], x_name: str):
    """The final runs' curves: a row per workload, a panel per tag, per arm the mean over the
    final seeds with a band from the lowest to the highest seed."""
    arms = [a for a in arms if curves.get(a.label)]
    tags = [t for t in tags if any(t in f.columns and f[t].notna().any() for a in arms for f in curves[a.label])]
    if not arms or not tags:
        return None
    workloads = list(dict.fromkeys(a.workload for a in arms))
    legend = _legend_room(arms, ["xxxxxxxxxx (n=00)"])
    width = min(5.5, max(3.5, (11.5 - legend) / len(tags)))
    fig, axes = _new_figure(len(workloads) * len(tags), width=width, height=3.2, cols=len(tags), extra=legend)
    panels = {(w, t): axes[i * len(tags) + j] for i, w in enumerate(workloads) for j, t in enumerate(tags)}
    for (workload, tag), ax in panels.items():
        values = []
        for arm in (a for a in arms if a.workload == workload):
            seeds = [s for s in (_by_x(f, tag, x_name) for f in curves[arm.label] if tag in f.columns) if not s.empty]
            if not seeds:
                continue
            table = pd.concat(seeds, axis=1)
            mean, low, high = table.mean(axis=1), table.min(axis=1), table.max(axis=1)
            ax.plot(mean.index, mean, color=arm.color, label=f"{arm.name} (n={len(seeds)})", linewidth=1.3)
            ax.fill_between(mean.index, low, high, color=arm.color, alpha=0.2, linewidth=0)
            values.append(table.to_numpy(dtype=float).ravel())
        if values and "loss" in tag and _log_y(np.concatenate(values)):
            ax.set_yscale("log")
        ax.set_title(tag if workload is None else f"{workload}: {tag}", fontsize="medium")
        ax.set_xlabel(x_name)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    return fig


def plot_profiles(arms: Sequence[Arm], profile: dict, n_workloads: int):
    """Dolan–Moré performance profiles: ρ(τ), the share of workloads on which a variant's
    final score is within a factor τ of the best variant's, against τ (log scale), as steps."""
    taus, rho = profile.get("taus") or [], profile.get("profiles") or {}
    if not taus or not rho:
        return None
    colors = {a.name: a.color for a in arms}
    fig, (ax,) = _new_figure(1, width=7.5, height=3.8, extra=_legend_room(arms))
    top = max(taus) * 1.5 if max(taus) > 1 else 2.0  # the last step drawn out to the right
    for i, (name, shares) in enumerate(rho.items()):
        x = [*taus, top]
        y = [*shares, shares[-1]]
        # variants with equal profiles would hide one another: a hair's offset apart
        ax.step(x, np.asarray(y) + 0.006 * (i - (len(rho) - 1) / 2), where="post", color=colors.get(name),
                linewidth=1.8, label=name)
    ax.set_xscale("log")
    ax.set_xlim(1, top)
    if top < 20:  # a short log axis: plain numbers, not 1.1×10⁰
        from matplotlib.ticker import FormatStrFormatter, LogLocator

        ax.xaxis.set_major_locator(LogLocator(base=10, subs=np.arange(1, 10) / 10 if top > 3 else (1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 2.0, 2.5, 3.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_ylim(-0.03, 1.03)
    ax.set_yticks(np.linspace(0, 1, n_workloads + 1) if n_workloads <= 10 else np.linspace(0, 1, 6))
    ax.set_xlabel("τ: within this factor of the best variant's final score")
    ax.set_ylabel("ρ(τ): share of workloads")
    ax.grid(alpha=0.3)
    _legend_outside(fig, [ax])
    return fig

