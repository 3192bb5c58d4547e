"""Aggregation over seeds and the summary files. Reads and writes the disk only.

Each config (`config_id`) becomes one row: for every metric `<m>_mean`, `<m>_std`,
`<m>_ci95_low`, `<m>_ci95_high` (Student t over the seeds that finished `ok`) and `n`,
ranked by a primary metric.

This module needs no pandas (whose import alone costs about a quarter of a second, paid
by every `optcmp run`): runs.csv is read with the csv module and the statistics are the
standard library's. `read_runs` gives `compare` and `report` a pandas DataFrame.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optcmp.display import markdown, missing
from optcmp.errors import OptcmpError
from optcmp.results import FIRST_COLUMNS, atomic_write_text

METRICS = (
    "train_loss", "best_train_loss", "val_loss", "best_val_loss", "val_accuracy", "best_val_accuracy",
    "train_accuracy", "weight_norm", "near_zero_frac", "steps", "seconds", "steps_per_second",
)
HIGHER_IS_BETTER = ("val_accuracy", "best_val_accuracy", "train_accuracy", "steps_per_second")
STATUS_ORDER = ("ok", "diverged", "failed", "interrupted")


def _cell(text: str) -> Any:
    """A runs.csv cell as pandas' reader would type it: int, float, string, or None when empty."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class RunTable:
    """runs.csv: its columns in order and one dict per run."""

    columns: list[str]
    rows: list[dict[str, Any]]

    def __getitem__(self, column: str) -> list[Any]:
        return [row.get(column) for row in self.rows]

    @classmethod
    def of(cls, runs: Any) -> RunTable:
        """A RunTable from a RunTable, a DataFrame or a list of dicts."""
        if isinstance(runs, RunTable):
            return runs
        if hasattr(runs, "to_dict"):  # a pandas DataFrame
            return cls(list(runs.columns), runs.to_dict("records"))
        columns = list(dict.fromkeys(k for row in runs for k in row))
        return cls(columns, list(runs))


def _runs_csv(exp_dir: Path) -> Path:
    path = Path(exp_dir) / "runs.csv"
    if not path.exists():
        raise OptcmpError(f"{exp_dir}: no runs.csv here; run `optcmp run CONFIG` first")
    return path


def _empty(path: Path) -> OptcmpError:
    return OptcmpError(f"{path}: empty; run `optcmp summary {path.parent}` to rebuild it from the run folders")


def read_run_table(exp_dir: Path) -> RunTable:
    path = _runs_csv(exp_dir)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise _empty(path)
        rows = [dict(zip(header, map(_cell, line))) for line in reader if line]
    return RunTable(header, rows)


def read_runs(exp_dir: Path):
    """runs.csv as a pandas DataFrame (for `compare` and `report`)."""
    import pandas as pd

    path = _runs_csv(exp_dir)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise _empty(path) from None


def _filled(runs: Any, column: str) -> bool:
    return any(not missing(v) for v in runs[column])


def param_columns(runs: Any) -> list[str]:
    """The swept keys: the columns with a dot in their name (`optimizer.weight_decay`)."""
    return [c for c in runs.columns if "." in c and c not in FIRST_COLUMNS]


def metric_columns(runs: Any) -> list[str]:
    return [m for m in METRICS if m in runs.columns and _filled(runs, m)]


def default_primary(runs: Any) -> str:
    return "val_loss" if "val_loss" in runs.columns and _filled(runs, "val_loss") else "train_loss"


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, ci low, ci high) with a Student t interval; NaN where n < 2."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = statistics.stdev(values)
    from scipy.special import stdtrit  # Student t quantile; imported only when seeds need it (0.06 s)

    half = float(stdtrit(n - 1, (1 + level) / 2)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def _status_text(statuses: list[str]) -> str:
    return ", ".join(f"{statuses.count(s)} {s}" for s in STATUS_ORDER if s in statuses)


@dataclass
class Summary:
    """The summary table: one row (a dict) per config, best first by `primary`."""

    columns: list[str]
    rows: list[dict[str, Any]]
    primary: str | None = None

    def column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self.rows]

    def row(self, config_id: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["config_id"] == config_id)

    def records(self) -> list[dict[str, Any]]:
        """The rows with every column, empty cells as None (JSON's null)."""
        return [{c: None if missing(r.get(c)) else r.get(c) for c in self.columns} for r in self.rows]

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for record in self.records():
            writer.writerow(["" if v is None else v for v in record.values()])
        return buf.getvalue()

    def frame(self):
        """As a pandas DataFrame (for `report`)."""
        import pandas as pd

        return pd.DataFrame(self.records(), columns=self.columns)


def aggregate(runs: Any, primary: str | None = None) -> Summary:
    """One row per config over its seeds, best first by `primary`. `runs`: a RunTable, a
    DataFrame of runs.csv, or a list of its rows."""
    runs = RunTable.of(runs)
    if not runs.rows:
        return Summary(["config_id", "n"], [], primary)
    params = param_columns(runs)
    metrics = metric_columns(runs)
    primary = primary or default_primary(runs)
    if primary not in runs.columns and primary not in METRICS:  # a known metric no run reported (all failed): unranked
        allowed = ", ".join(metrics)
        raise OptcmpError(f"summary.primary: unknown metric `{primary}`; allowed: {allowed}")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for run in runs.rows:
        groups.setdefault(run["config_id"], []).append(run)
    stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95_low", "ci95_high")]
    columns = ["config_id", "rank", *params, "decay", "n", "runs", "status", *stats]
    rows = []
    for config_id, group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        row: dict[str, Any] = {"config_id": config_id}
        for p in params:
            row[p] = group[0].get(p)
        row["decay"] = group[0].get("decay")
        row["n"] = len(ok)
        row["runs"] = len(group)
        row["status"] = _status_text([r["status"] for r in group])
        for m in metrics:
            values = [r[m] for r in ok if not missing(r.get(m))]
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci95_low"], row[f"{m}_ci95_high"] = mean_ci(values)
        rows.append(row)
    key = f"{primary}_mean"
    if key in columns:
        sign = -1 if primary in HIGHER_IS_BETTER else 1
        rows.sort(key=lambda r: (missing(r[key]), 0.0 if missing(r[key]) else sign * r[key]))  # stable: ties keep order
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return Summary(columns, rows, primary)


def write_summary(exp_dir: Path, primary: str | None = None) -> Summary:
    """Aggregate runs.csv into summary.csv, summary.md and summary.json (atomically)."""
    exp_dir = Path(exp_dir)
    table = aggregate(read_run_table(exp_dir), primary)
    atomic_write_text(exp_dir / "summary.csv", table.to_csv())
    atomic_write_text(exp_dir / "summary.md", markdown(table))
    atomic_write_text(exp_dir / "summary.json", json.dumps({"primary": table.primary, "configs": table.records()}, indent=2) + "\n")
    return table

