"""Aggregation over seeds and the summary files. Reads and writes the disk only.

Each config (`config_id`) becomes one row, over its runs of role "run" (and "final", in a
study; a row without a role, from an older folder, counts as "run"): for every metric
`<m>_mean`, `<m>_std` and `<m>_ci95_low`/`<m>_ci95_high` over the seeds that finished `ok` —
a Student t interval of the mean, clipped to the metric's range (losses >= 0, accuracies and
shares in [0, 1]; `optcmp.stats` says why) — and `n`; `diverged` (runs that diverged),
`diverged_frac` (of the runs that finished ok or diverged) with its Wilson interval
`diverged_frac_ci95_low`/`_high`; where the config was probed (a role "ulp" run: its first
seed, initial weights moved one ulp), `<m>_sensitivity` and `chaotic`.

Rank 1 is the best mean of the primary metric among the configs with at least two seeds (one
seed is no noise estimate: such a config gets no rank); configs with diverged runs rank after
those without, by their diverged share (divergence is the worst outcome).

This module needs no pandas (whose import alone costs about a quarter of a second, paid
by every `optcmp run`): runs.csv is read with the csv module and the statistics are the
standard library's. `read_runs` gives `compare` and `report` a pandas DataFrame.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optcmp.display import markdown, missing
from optcmp.errors import OptcmpError
from optcmp.results import FIRST_COLUMNS, Status, atomic_write_text, collect_results, planned_ids, write_runs_csv
from optcmp.stats import CHAOS_METRICS, chaos_sentences, is_chaotic, mean_interval, sensitivity, wilson_interval

METRICS = (
    "train_loss", "best_train_loss", "train_loss_tail", "val_loss", "best_val_loss", "val_loss_tail",
    "val_accuracy", "best_val_accuracy", "val_accuracy_tail", "train_accuracy", "weight_norm",
    "near_zero_frac", "steps", "seconds", "steps_per_second", "group_size",
)
HIGHER_IS_BETTER = ("val_accuracy", "best_val_accuracy", "val_accuracy_tail", "train_accuracy", "steps_per_second")
# The roles the summary and compare aggregate; "ulp" probes feed chaos detection only.
AGGREGATED_ROLES = ("run", "final")
PROBE_ROLE = "ulp"
ONE_SEED_NOTE = "one seed: no noise estimate, configs are not ranked"
ROUNDS_FILE = "rounds.json"  # the last decision of `seeds: auto` (optcmp.rounds)
STATUS_ORDER = tuple(s.value for s in Status)  # ok, diverged, pruned, failed, interrupted


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
    if not path.exists() and not (Path(exp_dir).is_dir() and collect_results(exp_dir)):
        raise OptcmpError(f"{exp_dir}: no runs.csv here; run `optcmp run CONFIG` first")
    return path


REQUIRED = ("run_id", "config_id", "seed", "status")  # the columns every reader relies on
_STATUSES = frozenset(s.value for s in Status)


def _parse(path: Path) -> tuple[RunTable | None, str]:
    """runs.csv as a RunTable, or (None, what is wrong with it)."""
    try:
        text = path.read_bytes().decode()
    except IsADirectoryError:
        return None, "a folder, not a file"
    except FileNotFoundError:
        return None, "missing"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        return None, f"not CSV ({e})"
    lines = [line for line in lines if line]
    if not lines:
        return None, "empty"
    header, rows = lines[0], lines[1:]
    lacking = [c for c in REQUIRED if c not in header]
    if lacking:
        return None, f"no {', '.join(lacking)} column" + ("s" if len(lacking) > 1 else "")
    if len(set(header)) < len(header):
        return None, "a column named twice"
    if not rows:
        return None, "no rows"
    table, seen = RunTable(header, []), set()
    for n, line in enumerate(rows, start=2):
        if len(line) != len(header):
            return None, f"line {n} has {len(line)} cells, the header {len(header)}"
        row = dict(zip(header, map(_cell, line)))
        if row["status"] not in _STATUSES or not isinstance(row["run_id"], str) or row["run_id"] in seen or \
                not isinstance(row["seed"], int) or row["config_id"] is None:
            return None, f"line {n} is not a run's row"
        if row["status"] == Status.OK and not any(row.get(m) is not None for m in METRICS):
            return None, f"line {n}: an ok run without metrics"
        seen.add(row["run_id"])
        table.rows.append(row)
    return table, ""


def rebuild_runs_csv(exp_dir: Path) -> None:
    """runs.csv written anew from the run folders' result.json, in plan order."""
    exp_dir = Path(exp_dir)
    order = {run_id: i for i, run_id in enumerate(planned_ids(exp_dir))}
    results = sorted(collect_results(exp_dir), key=lambda r: order.get(r["run_id"], len(order)))
    write_runs_csv(exp_dir, results)


def read_run_table(exp_dir: Path) -> RunTable:
    """runs.csv; a damaged one (not UTF-8 or CSV, a column the readers need missing, a row
    that is no run's) is rebuilt from the run folders first, as `optcmp summary` does."""
    path = _runs_csv(exp_dir)
    table, problem = _parse(path)
    if table is not None:
        return table
    if not any(p.is_dir() for p in Path(exp_dir).iterdir()) or not collect_results(exp_dir):
        raise OptcmpError(f"{path}: {problem}, and no run folder here has a result.json to rebuild it from")
    if path.is_dir():
        raise OptcmpError(f"{path}: a folder where optcmp keeps its table of runs; remove it, then "
                          f"`optcmp summary {exp_dir}` rebuilds the table from the run folders")
    rebuild_runs_csv(exp_dir)
    table, problem = _parse(path)
    if table is None:  # the folders' own results make no table (e.g. every one damaged)
        raise OptcmpError(f"{path}: {problem}, even rebuilt from the run folders")
    return table


def read_runs(exp_dir: Path):
    """runs.csv as a pandas DataFrame (for `compare` and `report`); a damaged one is
    rebuilt from the run folders first (see `read_run_table`)."""
    import pandas as pd

    read_run_table(exp_dir)
    return pd.read_csv(Path(exp_dir) / "runs.csv")


def _filled(runs: Any, column: str) -> bool:
    return any(not missing(v) for v in runs[column])


def param_columns(runs: Any) -> list[str]:
    """The swept keys: the columns with a dot in their name (`optimizer.weight_decay`)."""
    return [c for c in runs.columns if "." in c and c not in FIRST_COLUMNS]


def metric_columns(runs: Any) -> list[str]:
    return [m for m in METRICS if m in runs.columns and _filled(runs, m)]


# The default ranking metric: the first one the runs report. Best-so-far before the final value:
# on the reference MLP (Adam lr 0.01) a 1-ulp perturbation moves the final train_loss by a median
# 0.17 and up to 220x the seed-to-seed spread, the tail mean of the last 10 % by 1.09 (up to 6.6),
# best-so-far by 0.21 and at most 2.3, with the smallest spread (benchmarks/chaos_probe.py).
# best_val_loss selects on the validation split (an early-stopping oracle): a generalization
# claim wants a held-out set.
DEFAULT_PRIMARY = ("best_val_loss", "val_loss", "best_train_loss", "train_loss")


def default_primary(runs: Any) -> str:
    return next((m for m in DEFAULT_PRIMARY if m in runs.columns and _filled(runs, m)), "train_loss")


def mean_ci(values: Iterable[float], level: float = 0.95, metric: str | None = None) -> tuple[float, float, float, float]:
    """(mean, sample std, ci low, ci high): a Student t interval, clipped to the range of `metric`
    when one is named (see `optcmp.stats.mean_interval`); NaN where n < 2."""
    return mean_interval(values, level, metric)


def role_of(run: dict[str, Any]) -> str:
    """A run's role; a row without one (a folder from before roles) is an ordinary run."""
    role = run.get("role")
    return "run" if missing(role) or role == "" else str(role)


def aggregated(runs: Any) -> list[dict[str, Any]]:
    """The rows the summary and compare count: roles "run" and "final"."""
    return [r for r in RunTable.of(runs).rows if role_of(r) in AGGREGATED_ROLES]


def chaos_by_config(runs: Any) -> dict[str, dict[str, Any]]:
    """Per probed config: {"seed", "sensitivity": {metric: ratio, inf where the probe diverged and
    its seed did not or the reverse, or where only the probe moved}, "chaotic": [metric, ...]}.
    A config is probed when it has a role "ulp" run, and at least two seeds finished ok."""
    runs = RunTable.of(runs)
    probes = {r["config_id"]: r for r in runs.rows if role_of(r) == PROBE_ROLE}
    rows = aggregated(runs)
    out: dict[str, dict[str, Any]] = {}
    for config_id, probe in probes.items():
        group = [r for r in rows if r["config_id"] == config_id]
        same = [r for r in group if r.get("seed") == probe.get("seed")]
        ok = {r.get("seed"): r for r in group if r["status"] == "ok"}
        if not same or len(ok) < 2 or {probe["status"], same[-1]["status"]} - {"ok", "diverged"}:
            continue
        base = same[-1]
        flipped = (probe["status"] == "diverged") != (base["status"] == "diverged")
        if probe["status"] == base["status"] == "diverged":
            continue
        ratios: dict[str, float] = {}
        chaotic = []
        for m in CHAOS_METRICS:
            values = [r[m] for r in ok.values() if not missing(r.get(m))]
            if len(values) < 2:
                continue
            if flipped:
                ratios[m], pv, bv = math.inf, None, None
            elif missing(probe.get(m)) or missing(base.get(m)):
                continue
            else:
                pv, bv = float(probe[m]), float(base[m])
                ratios[m] = sensitivity(pv, bv, values)
            if is_chaotic(ratios[m], pv, bv):
                chaotic.append(m)
        out[config_id] = {"seed": probe.get("seed"), "sensitivity": ratios, "chaotic": chaotic}
    return out


def _status_text(statuses: list[str]) -> str:
    known = ", ".join(f"{statuses.count(s)} {s}" for s in STATUS_ORDER if s in statuses)
    other = sorted(set(statuses) - set(STATUS_ORDER))
    return ", ".join([known, *(f"{statuses.count(s)} {s}" for s in other)] if other else [known])


@dataclass
class Summary:
    """The summary table: one row (a dict) per config, best first by `primary`.

    `primary`: the metric asked for (or the default); `ranked_by`: the metric the ranks are of,
    None when no config has two seeds; `notes`: sentences for the terminal and summary.md (one
    seed, divergence, chaos); `chaos`: `chaos_by_config` of the runs."""

    columns: list[str]
    rows: list[dict[str, Any]]
    primary: str | None = None
    ranked_by: str | None = None
    notes: list[str] = field(default_factory=list)
    chaos: dict[str, dict[str, Any]] = field(default_factory=dict)

    def column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self.rows]

    def row(self, config_id: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["config_id"] == config_id)

    def records(self, nested: bool = False) -> list[dict[str, Any]]:
        """The rows with every column, empty cells as None (JSON's null). `nested` (summary.json):
        `chaotic` as a list and `sensitivity` as {metric: ratio} (null where infinite), both null
        where the config was not probed, instead of the flat `chaotic`/`<m>_sensitivity` cells."""
        out = []
        for r in self.rows:
            record = {c: None if _blank(r.get(c)) else r.get(c) for c in self.columns}
            info = self.chaos.get(r["config_id"])
            if nested:
                record = {c: v for c, v in record.items() if not c.endswith("_sensitivity")}
                record["chaotic"] = None if info is None else list(info["chaotic"])
                record["sensitivity"] = None if info is None else {
                    m: None if math.isinf(v) else v for m, v in info["sensitivity"].items()}
            elif "chaotic" in record and info is not None:
                record["chaotic"] = " ".join(info["chaotic"])
            out.append(record)
        return out

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


def _blank(value: Any) -> bool:
    return missing(value) or (isinstance(value, float) and math.isinf(value))


def aggregate(runs: Any, primary: str | None = None, asked_by: str = "summary.primary") -> Summary:
    """One row per config over its seeds, best first by `primary`. `runs`: a RunTable, a
    DataFrame of runs.csv, or a list of its rows. `asked_by`: where `primary` came from, for
    the message when it is unknown (the config key, or the command's option)."""
    runs = RunTable.of(runs)
    rows_in = aggregated(runs)
    if not rows_in:
        return Summary(["config_id", "n"], [], primary)
    params = param_columns(runs)
    metrics = metric_columns(runs)
    primary = primary or default_primary(runs)
    if primary not in runs.columns and primary not in METRICS:  # a known metric no run reported (all failed): unranked
        allowed = ", ".join(metrics)
        raise OptcmpError(f"{asked_by}: unknown metric `{primary}`; allowed: {allowed}")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for run in rows_in:
        groups.setdefault(run["config_id"], []).append(run)
    chaos = chaos_by_config(runs)
    probed = [m for m in CHAOS_METRICS if any(m in info["sensitivity"] for info in chaos.values())]
    stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95_low", "ci95_high")]
    columns = ["config_id", "rank", *params, "decay", "n", "runs", "status", "diverged", "diverged_frac",
               "diverged_frac_ci95_low", "diverged_frac_ci95_high", *stats, "chaotic", *(f"{m}_sensitivity" for m in probed)]
    rows = []
    for config_id, group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        diverged = sum(r["status"] == "diverged" for r in group)
        row: dict[str, Any] = {"config_id": config_id}
        for p in params:
            row[p] = group[0].get(p)
        row["decay"] = group[0].get("decay")
        row["n"] = len(ok)
        row["runs"] = len(group)
        row["status"] = _status_text([r["status"] for r in group])
        row["diverged"] = diverged
        outcomes = len(ok) + diverged
        row["diverged_frac"] = diverged / outcomes if outcomes else None
        row["diverged_frac_ci95_low"], row["diverged_frac_ci95_high"] = wilson_interval(diverged, outcomes)
        for m in metrics:
            values = [r[m] for r in ok if not missing(r.get(m))]
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci95_low"], row[f"{m}_ci95_high"] = mean_ci(values, metric=m)
        info = chaos.get(config_id)
        row["chaotic"] = None
        for m in probed:
            row[f"{m}_sensitivity"] = None if info is None else info["sensitivity"].get(m)
        rows.append(row)
    ranked_by, notes = _rank(rows, primary, columns)
    notes += chaos_sentences(chaos, primary, metrics) if ranked_by else []
    return Summary(columns, rows, primary, ranked_by, notes, chaos)


def _rank(rows: list[dict[str, Any]], primary: str, columns: list[str]) -> tuple[str | None, list[str]]:
    """Sort `rows` best first and number the ones with a noise estimate; (ranked_by, notes)."""
    key = f"{primary}_mean"
    for row in rows:
        row["rank"] = None
    if key not in columns:
        return None, []
    sign = -1 if primary in HIGHER_IS_BETTER else 1
    single = {r["config_id"] for r in rows if missing(r[f"{primary}_std"])}  # fewer than two seeds with a value
    rows.sort(key=lambda r: (r["config_id"] in single, r["diverged_frac"] or 0.0, missing(r[key]),
                             0.0 if missing(r[key]) else sign * r[key]))  # stable: ties keep order
    rankable = [r for r in rows if r["config_id"] not in single]
    if not rankable:
        return None, [ONE_SEED_NOTE]
    for rank, row in enumerate(rankable, 1):
        row["rank"] = rank
    notes = []
    if single:
        unranked = ", ".join(str(r["config_id"]) for r in rows if r["config_id"] in single)
        notes.append(f"not ranked, fewer than two seeds with a {primary}: {unranked}")
    if any(r["diverged"] for r in rankable):
        notes.append("configs with diverged runs rank after those without, by their diverged share "
                     f"(divergence is the worst outcome); {primary}_mean is over the runs that finished ok")
    return primary, notes


def read_rounds(exp_dir: Path) -> dict[str, Any] | None:
    """rounds.json: the last decision of `seeds: auto` here, or None."""
    try:
        found = json.loads((Path(exp_dir) / ROUNDS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def write_summary(exp_dir: Path, primary: str | None = None, asked_by: str = "summary.primary") -> Summary:
    """Aggregate runs.csv into summary.csv, summary.md and summary.json (atomically)."""
    exp_dir = Path(exp_dir)
    table = aggregate(read_run_table(exp_dir), primary, asked_by)
    rounds = read_rounds(exp_dir)
    atomic_write_text(exp_dir / "summary.csv", table.to_csv())
    said = "" if rounds is None else (f"\nSeeds: auto, round {rounds.get('look')} of {rounds.get('design', {}).get('rounds')} "
                                      f"({rounds.get('seeds')} seeds): {rounds.get('sentence')}.\n")
    atomic_write_text(exp_dir / "summary.md", markdown(table) + said)
    document = {"primary": table.primary, "ranked_by": table.ranked_by, "notes": table.notes,
                "configs": table.records(nested=True)}
    if rounds is not None:
        document["seeds_auto"] = rounds  # the design, its error rate and the last decision
    atomic_write_text(exp_dir / "summary.json", json.dumps(document, indent=2) + "\n")
    return table

