"""Statistics between configs: is one setting really better, or is it seed noise?

Pure functions over a runs table (the rows of `<DIR>/runs.csv`). Only runs with status `ok`
count. Two configs that share seeds also share initial weights and data order (the seeding
contract), so their runs come in pairs and a paired t-test removes the seed-to-seed variance
they have in common; otherwise Welch's t-test, which does not assume equal variances. The
p-values of all pairs are Holm-corrected together, because a sweep asks many questions at once.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from optcmp.errors import OptcmpError
from optcmp.results import atomic_write_text
from optcmp.summary import HIGHER_IS_BETTER, default_primary, metric_columns, param_columns, read_runs

ALPHA = 0.05
# A seed builds the same initial weights and data order only while these stay the same.
_INIT_KEYS = ("model.", "data.")

COLUMNS = ["config_a", "config_b", "metric", "test", "n_a", "n_b", "n_pairs", "mean_a", "mean_b",
           "diff", "diff_ci95_low", "diff_ci95_high", "rel_diff", "effect_size", "p_value",
           "p_holm", "significant", "n_comparisons", "note", "sentence"]


def ok_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that finished: diverged, failed and interrupted runs carry no comparable metric."""
    return runs[runs["status"] == "ok"]


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is the better one (accuracy), not a smaller (loss)."""
    return metric in HIGHER_IS_BETTER


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order; NaN stays NaN and is not counted.

    scipy only ships Benjamini–Hochberg (`false_discovery_control`), which controls the false
    discovery rate, not the family-wise error that "p=0.003 (Holm)" promises.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        # Step-down: each p is scaled by the number of hypotheses still open, and an adjusted
        # p never drops below the one before it.
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def compare_configs(runs: pd.DataFrame, metric: str | None = None,
                    baseline: str | None = None) -> pd.DataFrame:
    """One row per pair of configs (or per config against `baseline`) with a t-test on `metric`.

    Columns: see `COLUMNS`. `diff = mean_a - mean_b`, `rel_diff = diff / |mean_b|`,
    `effect_size` is Cohen's d (d_z, the mean difference over its SD, when paired), `p_holm`
    the Holm-corrected p-value and `significant` means `p_holm < 0.05`. Paired rows use only
    the seeds both configs have; `mean_a`/`mean_b` are over the seeds the test used.
    """
    ok = ok_runs(runs)
    if ok.empty:
        counts = ", ".join(f"{s} {n}" for s, n in runs["status"].value_counts().items())
        raise OptcmpError(f"no runs with status `ok` to compare (runs: {counts or 'none'})")
    metric = metric or default_primary(runs)
    allowed = metric_columns(runs)
    if metric not in allowed:
        raise OptcmpError(f"--metric: unknown metric `{metric}`; allowed: {', '.join(allowed)}")
    configs = _ranked_configs(runs, metric)
    if baseline is None:
        pairs = list(combinations(configs, 2))
    elif baseline in configs:
        pairs = [(c, baseline) for c in configs if c != baseline]
    else:
        raise OptcmpError(f"--baseline: unknown config `{baseline}`; allowed: {', '.join(configs)}")

    params = runs.drop_duplicates("config_id").set_index("config_id")[param_columns(runs)]
    rows = [_compare_pair(ok, metric, a, b, _shares_init(params, a, b)) for a, b in pairs]
    frame = pd.DataFrame(rows, columns=COLUMNS[:COLUMNS.index("p_holm")] + ["note"])
    frame["p_holm"] = holm(frame["p_value"])
    frame["significant"] = frame["p_holm"] < ALPHA
    frame["n_comparisons"] = int(frame["p_value"].notna().sum())
    frame["sentence"] = [describe(row) for _, row in frame.iterrows()]
    return frame[COLUMNS]


def write_compare(directory: str | Path, metric: str | None = None,
                  baseline: str | None = None) -> pd.DataFrame:
    """Compare the configs of the sweep in `directory` and write `compare.csv` there atomically."""
    frame = compare_configs(read_runs(directory), metric, baseline)
    atomic_write_text(Path(directory) / "compare.csv", frame.to_csv(index=False))
    return frame


def describe(row: Mapping) -> str:
    """One sentence a person can quote, naming the better config first.

    e.g. "adamw-wd0.1 has 12% lower val_loss than adam-wd0.1, p=0.003 (Holm), 5 paired seeds".
    """
    a, b, metric = row["config_a"], row["config_b"], row["metric"]
    if row["note"] == "too few seeds":
        return (f"too few seeds to compare {a} and {b} in {metric} ({row['n_a']} vs {row['n_b']} "
                f"ok runs with a value; a test needs at least 2 each)")
    seeds = _seeds_phrase(row)
    if row["note"] == "identical":
        return f"no difference between {a} and {b} in {metric}: identical values over {seeds}"
    a_first = (row["mean_a"] >= row["mean_b"]) == higher_is_better(metric)
    first, second = (a, b) if a_first else (b, a)
    m_first, m_second = (row["mean_a"], row["mean_b"]) if a_first else (row["mean_b"], row["mean_a"])
    change = _change_phrase(m_first, m_second)
    if row["note"] == "no variance":
        return (f"{first} has {change} {metric} than {second} on every one of {seeds}, with no "
                f"seed-to-seed variation, so there is no p-value")
    p = _p_phrase(row["p_holm"], row["n_comparisons"])
    if row["significant"]:
        return f"{first} has {change} {metric} than {second}, {p}, {seeds}"
    return f"no significant difference between {a} and {b} in {metric} ({first} {change}, {p}, {seeds})"


def _ranked_configs(runs: pd.DataFrame, metric: str) -> list[str]:
    """Every config id, best mean first, so pairs read "best against the rest"; untested last."""
    means = ok_runs(runs).groupby("config_id")[metric].mean()
    means = means.reindex(pd.unique(runs["config_id"]))
    ranked = means.sort_values(ascending=not higher_is_better(metric), na_position="last", kind="stable")
    return list(ranked.index)


def _shares_init(params: pd.DataFrame, a: str, b: str) -> bool:
    """True when seed s gives a and b the same initial weights and data order."""
    for key in params.columns:
        va, vb = params.at[a, key], params.at[b, key]
        same = (pd.isna(va) and pd.isna(vb)) or va == vb
        if not same and key.startswith(_INIT_KEYS):
            return False
    return True


def _compare_pair(ok: pd.DataFrame, metric: str, a: str, b: str, shared_init: bool) -> dict:
    xa, xb = (_values_by_seed(ok, c, metric) for c in (a, b))
    common = xa.index.intersection(xb.index)
    paired = shared_init and len(common) >= 2
    if paired:
        xa, xb = xa[common], xb[common]
    row = dict(config_a=a, config_b=b, metric=metric, test="none", n_a=len(xa), n_b=len(xb),
               n_pairs=len(common) if paired else 0, mean_a=xa.mean(), mean_b=xb.mean(),
               diff=np.nan, diff_ci95_low=np.nan, diff_ci95_high=np.nan, rel_diff=np.nan,
               effect_size=np.nan, p_value=np.nan, note="")
    if len(xa) < 2 or len(xb) < 2:
        row["note"] = "too few seeds"
        return row
    row["diff"] = row["mean_a"] - row["mean_b"]
    row["rel_diff"] = row["diff"] / abs(row["mean_b"]) if row["mean_b"] != 0 else np.nan
    row.update(_paired_test(xa, xb) if paired else _welch_test(xa, xb))
    return row


def _values_by_seed(ok: pd.DataFrame, config: str, metric: str) -> pd.Series:
    runs = ok[ok["config_id"] == config].drop_duplicates("seed", keep="last")
    return runs.set_index("seed")[metric].dropna().astype(float)


def _paired_test(xa: pd.Series, xb: pd.Series) -> dict:
    d = (xa - xb).to_numpy()
    sd = d.std(ddof=1)
    if _negligible(sd, xa, xb):
        return _no_variance(d.mean(), "paired t", xa, xb)
    with warnings.catch_warnings():
        # Nearly equal runs trigger scipy's "precision loss" warning; the result is still right.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(xa.to_numpy(), xb.to_numpy())
    ci = res.confidence_interval(0.95)
    return dict(test="paired t", p_value=float(res.pvalue), effect_size=d.mean() / sd,
                diff_ci95_low=float(ci.low), diff_ci95_high=float(ci.high))


def _welch_test(xa: pd.Series, xb: pd.Series) -> dict:
    a, b = xa.to_numpy(), xb.to_numpy()
    na, nb = len(a), len(b)
    # Cohen's d over the pooled SD; Welch only changes the test's degrees of freedom.
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if _negligible(pooled, xa, xb):
        return _no_variance(a.mean() - b.mean(), "Welch t", xa, xb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return dict(test="Welch t", p_value=float(res.pvalue), effect_size=(a.mean() - b.mean()) / pooled,
                diff_ci95_low=float(ci.low), diff_ci95_high=float(ci.high))


def _negligible(value: float, xa: pd.Series, xb: pd.Series) -> bool:
    """Zero up to float rounding: `x + 0.1 - x` is not exactly 0.1, and a t-test on rounding
    noise would report p=1e-60 for what is a constant shift."""
    scale = max(np.abs(xa).max(), np.abs(xb).max())
    return abs(value) <= 1e-12 * scale


def _no_variance(mean_diff: float, test: str, xa: pd.Series, xb: pd.Series) -> dict:
    """Every seed gave the same difference: a t statistic is 0/0 or x/0, so state it plainly."""
    if _negligible(mean_diff, xa, xb):
        return dict(test=test, p_value=1.0, effect_size=0.0, diff_ci95_low=0.0,
                    diff_ci95_high=0.0, note="identical")
    return dict(test=test, note="no variance", diff_ci95_low=mean_diff, diff_ci95_high=mean_diff)


def _seeds_phrase(row: Mapping) -> str:
    if row["n_pairs"]:
        return f"{row['n_pairs']} paired seeds"
    return f"{row['n_a']} vs {row['n_b']} seeds (Welch)"


def _change_phrase(value: float, reference: float) -> str:
    """"12% lower": `value` against `reference`, relative where the reference is not zero."""
    word = "lower" if value < reference else "higher"
    if reference == 0:
        return f"{abs(value - reference):.3g} {word}"
    pct = abs(value - reference) / abs(reference) * 100
    return f"{pct:.0f}% {word}" if pct >= 10 else f"{pct:.2g}% {word}"


def _p_phrase(p: float, n_comparisons: int) -> str:
    text = "p<0.001" if p < 0.001 else f"p={p:.2g}"
    return f"{text} (Holm)" if n_comparisons > 1 else text
