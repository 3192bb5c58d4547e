"""Results on disk: atomic writes, `result.json` of each run, the experiment's `runs.csv`."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATUSES = ("ok", "diverged", "failed", "interrupted")
_UMASK = os.umask(0)
os.umask(_UMASK)
FIRST_COLUMNS = ["run_id", "config_id", "variant", "role", "seed", "status", "decay", "engine", "device", "error",
                 "diverged_step"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`:
    a reader (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: a non-finite float is stored as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    metrics = {k: finite_or_none(v) for k, v in result.get("metrics", {}).items()}
    atomic_write_text(Path(run_dir) / "result.json", json.dumps({**result, "metrics": metrics}, indent=2) + "\n")


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's result, or None when it has none (never started, or killed before the end)."""
    try:
        return json.loads((Path(run_dir) / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def flatten(result: dict[str, Any]) -> dict[str, Any]:
    """One runs.csv row: the fixed columns, the swept values, then the metrics."""
    row = {k: result.get(k) for k in FIRST_COLUMNS}
    for key, value in result.get("params", {}).items():
        row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    row.update(result.get("metrics", {}))
    return row


def runs_csv_text(results: Iterable[dict[str, Any]]) -> str:
    rows = [flatten(r) for r in results]
    columns: dict[str, None] = dict.fromkeys(FIRST_COLUMNS)
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_runs_csv(exp_dir: Path, results: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(Path(exp_dir) / "runs.csv", runs_csv_text(results))


def collect_results(exp_dir: Path, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Results of the given runs (in that order), or of every run folder, from disk."""
    exp_dir = Path(exp_dir)
    if run_ids is None:
        run_ids = sorted(p.name for p in exp_dir.iterdir() if p.is_dir() and (p / "result.json").exists())
    out = []
    for run_id in run_ids:
        result = read_result(exp_dir / run_id)
        if result is not None:
            out.append(result)
    return out
