"""Statistics between configs: is one setting really better, or is it seed noise?

Pure functions over a runs table (the rows of `<DIR>/runs.csv`), roles "run" and "final" only
(a row without a role counts as "run"). Two configs that share seeds also share initial weights
and data order (the seeding contract), so their runs come in pairs and a paired t-test removes
the seed-to-seed variance they have in common; otherwise Welch's t-test, which does not assume
equal variances.

Divergence is an outcome, not a missing value. Where either config of a pair has a diverged run,
the metric comparison is rank-based with every diverged run ranked worst (its value is taken as
+inf for a loss, -inf for an accuracy): the Wilcoxon signed-rank test on paired seeds (a pair
where both diverged is a tie, dropped as a zero difference), Mann–Whitney U otherwise, both as
scipy computes them; `effect_size` is then empty and `rank_biserial` is the rank-biserial
correlation (> 0: config a has the larger values). The diverged shares are compared by Fisher's
exact test on the 2x2 table of diverged and ok runs of the pair's test (`p_diverged`), for the
pairs where any of them diverged.

Two families, each Holm-corrected on its own (family-wise error <= 0.05 within each): the
metric tests of all pairs (`p_holm`), and the divergence tests (`p_diverged_holm`). Kept apart
so that a few diverging configs do not weaken every metric comparison, and because they answer
different questions ("which is lower" against "which diverges more often").

`detectable_diff` is the smallest true difference the pair's test, at its seeds and observed
spread, detects with power 0.8 at alpha 0.05 two-sided (noncentral t, `optcmp.stats`);
`detectable_rel` is it relative to |mean_b|. It is a floor: under Holm the level is lower still.
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
from optcmp.stats import (
    POWER, chaos_sentences, detectable_paired, detectable_welch, min_p_rank_sum, min_p_signed_rank,
)
from optcmp.summary import (
    AGGREGATED_ROLES, HIGHER_IS_BETTER, ONE_SEED_NOTE, chaos_by_config, default_primary, metric_columns,
    param_columns, read_runs,
)

ALPHA = 0.05
# A seed builds the same initial weights and data order only while these stay the same.
_INIT_KEYS = ("model.", "data.")
RANK_TESTS = ("Wilcoxon signed-rank", "Mann-Whitney U")

COLUMNS = ["config_a", "config_b", "metric", "test", "n_a", "n_b", "n_pairs", "diverged_a", "diverged_b",
           "mean_a", "mean_b", "diff", "diff_ci95_low", "diff_ci95_high", "rel_diff", "effect_size",
           "rank_biserial", "diff_se", "df", "p_value", "p_holm", "significant", "n_comparisons", "detectable_diff",
           "detectable_rel", "p_diverged", "p_diverged_holm", "diverged_significant", "note", "sentence",
           "power_sentence"]
_PAIR_COLUMNS = COLUMNS[:COLUMNS.index("p_holm")] + ["detectable_diff", "detectable_rel", "p_diverged", "note"]


def counted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows compare counts: roles "run" and "final" (all rows where there is no role column)."""
    if "role" not in runs.columns:
        return runs
    return runs[runs["role"].fillna("run").replace("", "run").isin(AGGREGATED_ROLES)]


def ok_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The counted runs that finished ok: the ones with a comparable metric value."""
    runs = counted_runs(runs)
    return runs[runs["status"] == "ok"]


def outcome_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The counted runs with an outcome: ok, or diverged (ranked worst)."""
    runs = counted_runs(runs)
    return runs[runs["status"].isin(("ok", "diverged"))]


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
                    baseline: str | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per pair of configs (or per config against `baseline`) with a test on `metric`.

    Columns: see `COLUMNS`. `diff = mean_a - mean_b`, `rel_diff = diff / |mean_b|`,
    `effect_size` is Cohen's d (d_z, the mean difference over its SD, when paired), `diff_se` and
    `df` the t test's standard error of `diff` and its degrees of freedom, `p_holm`
    the Holm-corrected p-value and `significant` means `p_holm < alpha`. Paired rows use only
    the seeds both configs have; `mean_a`/`mean_b` are over the ok runs the test used. Rank tests
    (see the module docstring) leave `diff` and its interval empty.
    """
    ok = ok_runs(runs)
    if ok.empty:
        counted = counted_runs(runs)
        counts = ", ".join(f"{s} {n}" for s, n in counted["status"].value_counts().items())
        raise OptcmpError(f"no runs with status `ok` to compare (runs: {counts or 'none'})")
    metric = metric or default_primary(runs)
    allowed = metric_columns(runs)
    if metric not in allowed:
        raise OptcmpError(f"--metric: unknown metric `{metric}`; allowed: {', '.join(allowed)}")
    outcomes = outcome_runs(runs)
    configs = _ranked_configs(runs, metric)
    if baseline is None:
        pairs = list(combinations(configs, 2))
    elif baseline in configs:
        pairs = [(c, baseline) for c in configs if c != baseline]
    else:
        raise OptcmpError(f"--baseline: unknown config `{baseline}`; allowed: {', '.join(configs)}")

    params = runs.drop_duplicates("config_id").set_index("config_id")[param_columns(runs)]
    rows = [_compare_pair(outcomes, metric, a, b, _shares_init(params, a, b), alpha) for a, b in pairs]
    frame = pd.DataFrame(rows, columns=_PAIR_COLUMNS)
    frame["p_holm"] = holm(frame["p_value"])
    frame["significant"] = frame["p_holm"] < alpha
    frame["n_comparisons"] = int(frame["p_value"].notna().sum())
    frame["p_diverged_holm"] = holm(frame["p_diverged"])
    frame["diverged_significant"] = frame["p_diverged_holm"] < alpha
    frame["sentence"] = [describe(row) for _, row in frame.iterrows()]
    frame["power_sentence"] = [power_phrase(row, alpha) for _, row in frame.iterrows()]
    return frame[COLUMNS]


def compare_notes(runs: pd.DataFrame, metric: str | None = None) -> list[str]:
    """Sentences `compare` prints before the pairs: one seed (no noise estimate), and chaos of
    `metric` from the ulp probes (see `optcmp.stats.chaos_sentences`)."""
    metric = metric or default_primary(runs)
    ok = ok_runs(runs)
    if metric in ok.columns and ok.dropna(subset=[metric]).groupby("config_id")["seed"].nunique().max() < 2:
        return [ONE_SEED_NOTE]
    return chaos_sentences(chaos_by_config(runs), metric, metric_columns(runs))


def write_compare(directory: str | Path, metric: str | None = None,
                  baseline: str | None = None) -> pd.DataFrame:
    """Compare the configs of the sweep in `directory` and write `compare.csv` there atomically."""
    frame = compare_configs(read_runs(directory), metric, baseline)
    atomic_write_text(Path(directory) / "compare.csv", frame.to_csv(index=False))
    return frame


def describe(row: Mapping) -> str:
    """One sentence a person can quote, naming the better config first, with the diverged runs.

    e.g. "adamw-wd0.1 has 12% lower val_loss than adam-wd0.1, p=0.003 (Holm), 5 paired seeds".
    """
    text = _metric_sentence(row)
    if row["diverged_a"] or row["diverged_b"]:
        text += "; " + _divergence_phrase(row)
    return text


def _metric_sentence(row: Mapping) -> str:
    a, b, metric = row["config_a"], row["config_b"], row["metric"]
    if row["note"] == "too few seeds":
        what = "ok or diverged runs" if row["diverged_a"] or row["diverged_b"] else "ok runs with a value"
        return (f"too few seeds to compare {a} and {b} in {metric} ({row['n_a']} vs {row['n_b']} "
                f"{what}; a test needs at least 2 each)")
    seeds = _seeds_phrase(row)
    if row["note"] == "identical":
        return f"no difference between {a} and {b} in {metric}: identical values over {seeds}"
    p = _p_phrase(row["p_holm"], row["n_comparisons"])
    if row["test"] in RANK_TESTS:
        # rank_biserial > 0: a has the larger values (worse for a loss).
        a_first = (row["rank_biserial"] > 0) == higher_is_better(metric)
        first, second = (a, b) if a_first else (b, a)
        word = "higher" if higher_is_better(metric) else "lower"
        ranked = f"{p}, {row['test']} with diverged runs ranked worst, {seeds}"
        if row["significant"]:
            return f"{first} has {word} {metric} than {second} ({ranked})"
        return f"no significant difference between {a} and {b} in {metric} ({first} ranks {word}, {ranked})"
    a_first = (row["mean_a"] >= row["mean_b"]) == higher_is_better(metric)
    first, second = (a, b) if a_first else (b, a)
    m_first, m_second = (row["mean_a"], row["mean_b"]) if a_first else (row["mean_b"], row["mean_a"])
    change = _change_phrase(m_first, m_second)
    if row["note"] == "no variance":
        return (f"{first} has {change} {metric} than {second} on every one of {seeds}, with no "
                f"seed-to-seed variation, so there is no p-value")
    if row["significant"]:
        return f"{first} has {change} {metric} than {second}, {p}, {seeds}"
    return f"no significant difference between {a} and {b} in {metric} ({first} {change}, {p}, {seeds})"


def _divergence_phrase(row: Mapping) -> str:
    a, b = row["config_a"], row["config_b"]
    text = f"diverged: {a} {row['diverged_a']} of {row['n_a']}, {b} {row['diverged_b']} of {row['n_b']}"
    if not np.isnan(row["p_diverged"]):
        verdict = "a significant difference" if row["diverged_significant"] else "not a significant difference"
        p = row["p_diverged_holm"]
        text += f" (Fisher's exact test {'p<0.001' if p < 0.001 else f'p={p:.2g}'} (Holm): {verdict})"
    return text


def power_phrase(row: Mapping, alpha: float = ALPHA) -> str:
    """"n=3 paired seeds cannot tell apart differences below 12 % of adam's train_loss (power 0.8, alpha 0.05)"."""
    if row["note"] == "too few seeds":
        return ""
    seeds = f"n={row['n_pairs']} paired seeds" if row["n_pairs"] else f"n={row['n_a']} vs {row['n_b']} seeds (Welch)"
    if row["test"] in RANK_TESTS:
        smallest = min_p_signed_rank(row["n_pairs"]) if row["n_pairs"] else min_p_rank_sum(row["n_a"], row["n_b"])
        seeds = seeds.replace(" (Welch)", "")
        if smallest >= alpha:
            return (f"{seeds}: a {row['test']} test cannot reach p<{alpha:g} whatever the difference "
                    f"(smallest possible p {smallest:.3g}); add seeds")
        return ""
    if np.isnan(row["detectable_diff"]):
        return ""
    of = f" of {row['config_b']}'s {row['metric']}"
    pct = row["detectable_rel"] * 100  # 9.5 %, 62 %, 140 % (not 1.4e+02 %)
    below = (f"{pct:.2g} %{of}" if pct < 100 else f"{pct:.0f} %{of}") if not np.isnan(pct) else \
        f"{row['detectable_diff']:.3g} in {row['metric']}"
    return f"{seeds} cannot tell apart differences below {below} (power {POWER:g}, alpha {alpha:g})"


def _ranked_configs(runs: pd.DataFrame, metric: str) -> list[str]:
    """Every config id, best first as the summary ranks (diverged share, then mean), untested last."""
    outcomes = outcome_runs(runs)
    means = ok_runs(runs).groupby("config_id")[metric].mean()
    diverged = outcomes.assign(d=outcomes["status"] == "diverged").groupby("config_id")["d"].mean()
    order = pd.DataFrame({"d": diverged, "m": means}).reindex(pd.unique(counted_runs(runs)["config_id"]))
    order["m"] = order["m"] * (-1 if higher_is_better(metric) else 1)
    order["untested"] = order["m"].isna()
    return list(order.sort_values(["untested", "d", "m"], kind="stable").index)


def _shares_init(params: pd.DataFrame, a: str, b: str) -> bool:
    """True when seed s gives a and b the same initial weights and data order."""
    for key in params.columns:
        va, vb = params.at[a, key], params.at[b, key]
        same = (pd.isna(va) and pd.isna(vb)) or va == vb
        if not same and key.startswith(_INIT_KEYS):
            return False
    return True


def _compare_pair(outcomes: pd.DataFrame, metric: str, a: str, b: str, shared_init: bool, alpha: float) -> dict:
    xa, xb = (_values_by_seed(outcomes, c, metric) for c in (a, b))
    common = xa.index.intersection(xb.index)
    paired = shared_init and len(common) >= 2
    if paired:
        xa, xb = xa[common], xb[common]
    fa, fb = xa[np.isfinite(xa)], xb[np.isfinite(xb)]
    row = dict(config_a=a, config_b=b, metric=metric, test="none", n_a=len(xa), n_b=len(xb),
               n_pairs=len(common) if paired else 0, diverged_a=len(xa) - len(fa), diverged_b=len(xb) - len(fb),
               mean_a=fa.mean(), mean_b=fb.mean(), diff=np.nan, diff_ci95_low=np.nan, diff_ci95_high=np.nan,
               rel_diff=np.nan, effect_size=np.nan, rank_biserial=np.nan, diff_se=np.nan, df=np.nan, p_value=np.nan,
               detectable_diff=np.nan, detectable_rel=np.nan, p_diverged=np.nan, note="")
    row["p_diverged"] = _fisher(row["diverged_a"], row["n_a"], row["diverged_b"], row["n_b"])
    if len(xa) < 2 or len(xb) < 2:
        row["note"] = "too few seeds"
        return row
    if row["diverged_a"] or row["diverged_b"]:
        row.update(_signed_rank_test(xa, xb) if paired else _rank_sum_test(xa, xb))
        return row
    row["diff"] = row["mean_a"] - row["mean_b"]
    row["rel_diff"] = row["diff"] / abs(row["mean_b"]) if row["mean_b"] != 0 else np.nan
    row.update(_paired_test(xa, xb, alpha) if paired else _welch_test(xa, xb, alpha))
    if row["mean_b"] != 0:
        row["detectable_rel"] = row["detectable_diff"] / abs(row["mean_b"])
    return row


def _values_by_seed(outcomes: pd.DataFrame, config: str, metric: str) -> pd.Series:
    """The metric by seed over ok runs with a value, and diverged runs as the worst value (±inf)."""
    runs = outcomes[outcomes["config_id"] == config].drop_duplicates("seed", keep="last").set_index("seed")
    worst = -np.inf if higher_is_better(metric) else np.inf
    values = runs[metric].astype(float).where(runs["status"] != "diverged", worst)
    return values.dropna()


def _fisher(diverged_a: int, n_a: int, diverged_b: int, n_b: int) -> float:
    """Fisher's exact test of the diverged shares of the runs the pair's test uses; NaN where none diverged."""
    if diverged_a + diverged_b == 0:
        return np.nan
    return float(stats.fisher_exact([[diverged_a, n_a - diverged_a], [diverged_b, n_b - diverged_b]]).pvalue)


def _signed_rank_test(xa: pd.Series, xb: pd.Series) -> dict:
    a, b = xa.to_numpy(), xb.to_numpy()
    with np.errstate(invalid="ignore"):
        d = np.where(a == b, 0.0, a - b)  # both diverged: a tie (inf - inf would be NaN)
    if not d.any():
        return dict(test=RANK_TESTS[0], p_value=1.0, rank_biserial=0.0, note="identical")
    ranks = stats.rankdata(np.abs(d[d != 0]))
    plus, minus = ranks[d[d != 0] > 0].sum(), ranks[d[d != 0] < 0].sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ties and zeros: scipy's normal approximation says so
        res = stats.wilcoxon(d)
    return dict(test=RANK_TESTS[0], p_value=float(res.pvalue), rank_biserial=(plus - minus) / (plus + minus),
                note="rank-based")


def _rank_sum_test(xa: pd.Series, xb: pd.Series) -> dict:
    a, b = xa.to_numpy(), xb.to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.mannwhitneyu(a, b, alternative="two-sided")
    return dict(test=RANK_TESTS[1], p_value=float(res.pvalue),
                rank_biserial=2 * float(res.statistic) / (len(a) * len(b)) - 1, note="rank-based")


def _paired_test(xa: pd.Series, xb: pd.Series, alpha: float) -> dict:
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
                diff_ci95_low=float(ci.low), diff_ci95_high=float(ci.high), diff_se=sd / math.sqrt(len(d)),
                df=float(res.df),
                detectable_diff=detectable_paired(sd, len(d), alpha))


def _welch_test(xa: pd.Series, xb: pd.Series, alpha: float) -> dict:
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
                diff_ci95_low=float(ci.low), diff_ci95_high=float(ci.high),
                diff_se=math.sqrt(a.var(ddof=1) / na + b.var(ddof=1) / nb), df=float(res.df),
                detectable_diff=detectable_welch(a.std(ddof=1), na, b.std(ddof=1), nb, alpha))


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
    welch = "" if row["test"] in RANK_TESTS else " (Welch)"
    return f"{row['n_a']} vs {row['n_b']} seeds{welch}"


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
