"""Aggregation over seeds and the summary files. Reads and writes the disk only.

Each config (`config_id`) becomes one row: for every metric `<m>_mean`, `<m>_std`,
`<m>_ci95_low`, `<m>_ci95_high` (Student t over the seeds that finished `ok`) and `n`,
ranked by a primary metric.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from optcmp.errors import OptcmpError
from optcmp.results import FIRST_COLUMNS, atomic_write_text

METRICS = (
    "train_loss", "best_train_loss", "val_loss", "best_val_loss", "val_accuracy", "best_val_accuracy",
    "train_accuracy", "weight_norm", "near_zero_frac", "steps", "seconds", "steps_per_second",
)
HIGHER_IS_BETTER = ("val_accuracy", "best_val_accuracy", "train_accuracy", "steps_per_second")
# The columns of the terminal and markdown tables, in order, when present.
DISPLAY = ("train_loss", "best_train_loss", "val_loss", "best_val_loss", "val_accuracy", "weight_norm",
           "near_zero_frac", "steps_per_second")


def read_runs(exp_dir: Path) -> pd.DataFrame:
    path = Path(exp_dir) / "runs.csv"
    if not path.exists():
        raise OptcmpError(f"{exp_dir}: no runs.csv here; run `optcmp run CONFIG` first")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise OptcmpError(f"{path}: empty; run `optcmp summary {exp_dir}` to rebuild it from the run folders") from None


def param_columns(runs: pd.DataFrame) -> list[str]:
    """The swept keys: the columns with a dot in their name (`optimizer.weight_decay`)."""
    return [c for c in runs.columns if "." in c and c not in FIRST_COLUMNS]


def metric_columns(runs: pd.DataFrame) -> list[str]:
    return [m for m in METRICS if m in runs.columns and runs[m].notna().any()]


def default_primary(runs: pd.DataFrame) -> str:
    return "val_loss" if "val_loss" in runs.columns and runs["val_loss"].notna().any() else "train_loss"


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, ci low, ci high) with a Student t interval; NaN where n < 2."""
    n = len(values)
    if n == 0:
        return (np.nan,) * 4
    mean = float(np.mean(values))
    if n < 2:
        return mean, np.nan, np.nan, np.nan
    std = float(np.std(values, ddof=1))
    from scipy.special import stdtrit  # Student t quantile; imported only when seeds need it (0.2 s)

    half = stdtrit(n - 1, (1 + level) / 2) * std / np.sqrt(n)
    return mean, std, mean - float(half), mean + float(half)


def _status_text(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    return ", ".join(f"{counts[s]} {s}" for s in ("ok", "diverged", "failed", "interrupted") if s in counts)


def aggregate(runs: pd.DataFrame, primary: str | None = None) -> pd.DataFrame:
    """One row per config over its seeds, best first by `primary`."""
    if runs.empty:
        return pd.DataFrame(columns=["config_id", "n"])
    params = param_columns(runs)
    metrics = metric_columns(runs)
    primary = primary or default_primary(runs)
    if primary not in runs.columns and primary not in METRICS:  # a known metric no run reported (all failed): unranked
        allowed = ", ".join(metric_columns(runs))
        raise OptcmpError(f"summary.primary: unknown metric `{primary}`; allowed: {allowed}")
    rows = []
    for config_id, group in runs.groupby("config_id", sort=False):
        ok = group[group["status"] == "ok"]
        row = {"config_id": config_id}
        for p in params:
            row[p] = group[p].iloc[0]
        row["decay"] = group["decay"].iloc[0] if "decay" in group else None
        row["n"] = len(ok)
        row["runs"] = len(group)
        row["status"] = _status_text(group["status"])
        for m in metrics:
            values = ok[m].dropna().to_numpy(dtype=float)
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci95_low"], row[f"{m}_ci95_high"] = mean_ci(values)
        rows.append(row)
    table = pd.DataFrame(rows)
    key = f"{primary}_mean"
    if key in table.columns:
        table = table.sort_values(key, ascending=primary not in HIGHER_IS_BETTER, na_position="last", kind="stable")
    table.insert(1, "rank", range(1, len(table) + 1))
    table.attrs["primary"] = primary
    return table.reset_index(drop=True)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    ax = abs(x)
    return f"{x:.3g}" if ax != 0 and (ax < 1e-3 or ax >= 1e4) else f"{x:.4g}" if ax < 1 else f"{x:.4f}".rstrip("0").rstrip(".")


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The summary as strings, `mean ± std` per metric, for the terminal and summary.md."""
    params = [c for c in table.columns if "." in c and not c.endswith(("_mean", "_std", "_low", "_high"))]
    out = pd.DataFrame({"rank": table["rank"], "config": table["config_id"]})
    for p in params:
        out[p] = table[p].astype(str)
    out["decay"] = table["decay"].map(lambda d: {"coupled": "coupled (L2)"}.get(d, d))
    for m in DISPLAY:
        if f"{m}_mean" in table.columns:
            out[m] = [
                _fmt(mu) if np.isnan(sd) else f"{_fmt(mu)} ± {_fmt(sd)}"
                for mu, sd in zip(table[f"{m}_mean"], table[f"{m}_std"])
            ]
    out["n"] = table["n"].astype(str)
    out["status"] = table["status"]
    return out


def markdown(table: pd.DataFrame) -> str:
    shown = display_table(table)
    head = "| " + " | ".join(shown.columns) + " |"
    sep = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    primary = table.attrs.get("primary", "")
    note = f"Ranked by {primary} (mean over seeds); ± is the standard deviation over seeds, n the seeds that finished ok.\n"
    return "\n".join([head, sep, *body]) + "\n\n" + note


def write_summary(exp_dir: Path, primary: str | None = None) -> pd.DataFrame:
    """Aggregate runs.csv into summary.csv, summary.md and summary.json (atomically)."""
    exp_dir = Path(exp_dir)
    table = aggregate(read_runs(exp_dir), primary)
    atomic_write_text(exp_dir / "summary.csv", table.to_csv(index=False))
    atomic_write_text(exp_dir / "summary.md", markdown(table))
    records = json.loads(table.to_json(orient="records"))
    atomic_write_text(exp_dir / "summary.json", json.dumps({"primary": table.attrs.get("primary"), "configs": records}, indent=2) + "\n")
    return table
