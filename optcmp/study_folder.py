"""What a study left in its folder, read once for its report (`study_report`): trials.csv,
runs.csv, verdict.json, study.json and the final runs' metrics.csv; missing or damaged files
become notes, never errors, except trials.csv itself and its metric column."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from optcmp.errors import OptcmpError
from optcmp.report import _colors, read_metrics
from optcmp.study_plots import Arm
from optcmp.summary import HIGHER_IS_BETTER

TOLD = ("ok", "diverged", "pruned")  # a trial Optuna was told about


def arm_of(config_ids: pd.Series) -> pd.Series:
    """The arm's label of each trial's config id (`quad-adam-t3` → `quad-adam`)."""
    return config_ids.astype(str).str.rsplit("-t", n=1).str[0]


class StudyFolder:
    """What a study left on disk, read once; missing or damaged files become notes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.notes: list[str] = []
        try:
            self.trials = pd.read_csv(directory / "trials.csv")
        except (OSError, ValueError) as e:  # pandas' parse errors are ValueErrors
            raise OptcmpError(f"{directory / 'trials.csv'}: unreadable ({e}); run the study again to rewrite it") from None
        self.verdict = self._json("verdict.json", "no verdict yet: the study has not finished its final runs")
        self.record = self._json("study.json", None) or {}
        self.runs = self._runs()
        head = self.verdict or self.record
        columns = list(self.trials.columns)
        self.metric = head.get("metric") or (columns[columns.index("rank") - 1] if "rank" in columns else None)
        if self.metric not in columns:
            raise OptcmpError(f"{directory / 'trials.csv'}: no column for the tuning metric; run the study again to rewrite it")
        self.maximize = head.get("direction", "maximize" if self.metric in HIGHER_IS_BETTER else "minimize") == "maximize"
        self.arms = self._arms()
        self.space_keys = self._space_keys(columns)

    def _json(self, name: str, missing: str | None) -> dict[str, Any] | None:
        path = self.dir / name
        if not path.is_file():
            if missing:
                self.notes.append(missing)
            return None
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            self.notes.append(f"{name} unreadable ({e}): left out")
            return None
        return value if isinstance(value, dict) else None

    def _runs(self) -> pd.DataFrame:
        if not (self.dir / "runs.csv").is_file():
            return pd.DataFrame(columns=["run_id", "config_id", "role", "seed", "status"])
        from optcmp.summary import read_runs

        return read_runs(self.dir)

    def _arms(self) -> list[Arm]:
        labels = list(dict.fromkeys(self.trials["config_id"].astype(str).str.rsplit("-t", n=1).str[0]))
        recorded = {a["label"]: a for a in self.record.get("arms", []) if isinstance(a, dict) and "label" in a}
        colors = _colors(list(dict.fromkeys(self._name(label, recorded) for label in labels)))
        out = []
        for label in labels:
            workload = recorded.get(label, {}).get("workload")
            if workload is None and "workload" in self.trials.columns:
                rows = self.trials[self.trials["config_id"].str.startswith(label + "-t")]
                workload = str(rows["workload"].iloc[0]) if not rows.empty else None
            name = self._name(label, recorded)
            out.append(Arm(label, name, workload, colors[name]))
        return out

    def _name(self, label: str, recorded: dict) -> str:
        """The variant's name, as the verdict gives it (the arm's label without its workload)."""
        arm = recorded.get(label)
        if arm is not None:
            return arm.get("variant") or (label[len(arm["workload"]) + 1:] if arm.get("workload") else label)
        rows = self.trials[self.trials["config_id"].str.startswith(label + "-t")]
        variant = rows["variant"].iloc[0] if "variant" in rows and not rows.empty else None
        if isinstance(variant, str):
            return variant
        workload = rows["workload"].iloc[0] if "workload" in rows and not rows.empty else None
        return label[len(workload) + 1:] if isinstance(workload, str) else label

    def _space_keys(self, columns: list[str]) -> list[str]:
        spaces = [a.get("space", {}) for a in self.record.get("arms", []) if isinstance(a, dict)]
        if spaces:
            return list(dict.fromkeys(k for s in spaces for k in s))
        return columns[columns.index("status") + 1:columns.index(self.metric)]

    # --- what the pictures need ---------------------------------------------------------

    def x_key(self) -> str | None:
        """The key the sensitivity curve is drawn against: the learning rate, else the first
        numeric key of the space."""
        numeric = [k for k in self.space_keys if k in self.trials and pd.to_numeric(self.trials[k], errors="coerce").notna().any()]
        return "optimizer.lr" if "optimizer.lr" in numeric else (numeric[0] if numeric else None)

    def log_x(self, key: str) -> bool:
        """A log axis for a log-uniform (or log int) space; for lists, where the values are
        positive and span a factor of 10; without study.json, by the values."""
        forms = [a["space"][key] for a in self.record.get("arms", []) if key in a.get("space", {})]
        if any(isinstance(f, dict) and ("log_uniform" in f or f.get("log")) for f in forms):
            return True
        if any(isinstance(f, dict) and ("uniform" in f or "int" in f) for f in forms):
            return False
        values = pd.to_numeric(self.trials[key], errors="coerce").dropna()
        return bool(len(values)) and bool((values > 0).all()) and values.max() >= 10 * values.min()

    def seed_values(self) -> pd.DataFrame:
        """One row per trial run: config_id, status and the metric (for the seeds' band)."""
        runs = self.runs
        if "role" not in runs or self.metric not in runs:
            return pd.DataFrame(columns=["config_id", "status", self.metric])
        return runs.loc[runs["role"] == "trial", ["config_id", "status", self.metric]]

    def tuning_seeds(self) -> list[int]:
        """The seeds of the trial runs in runs.csv (for a folder without study.json)."""
        if "role" not in self.runs:
            return []
        return sorted(int(x) for x in self.runs.loc[self.runs["role"] == "trial", "seed"].unique())

    def scores(self) -> dict[str, np.ndarray]:
        """Per arm the score of each trial Optuna was told: its value, the worst (±inf) for a
        diverged or pruned one (a pruned trial was judged hopeless: never the best of k)."""
        worst = -math.inf if self.maximize else math.inf
        out = {}
        for arm in self.arms:
            rows = self.trials[self.trials["config_id"].str.rsplit("-t", n=1).str[0] == arm.label]
            rows = rows[rows["status"].isin(TOLD)].sort_values("trial")
            values = rows[self.metric].astype(float).where(rows["status"] == "ok", worst)
            out[arm.label] = values.fillna(worst).to_numpy()
        return out

    def final_curves(self) -> tuple[dict[str, list[pd.DataFrame]], str]:
        runs = self.runs
        finals = runs[(runs["role"] == "final") & (runs["status"] == "ok")] if "role" in runs else runs[:0]
        curves: dict[str, list[pd.DataFrame]] = {}
        for _, run in finals.iterrows():
            path = self.dir / run["run_id"] / "metrics.csv"
            try:
                curves.setdefault(run["config_id"], []).append(read_metrics(path))
            except (OSError, ValueError, KeyError) as e:
                self.notes.append(f"{run['run_id']}: metrics.csv unreadable ({e}): left out of the final curves")
        epochs = any("epoch" in f.columns and f["epoch"].notna().any() for fs in curves.values() for f in fs)
        return curves, "epoch" if epochs else "step"
