"""Results on disk: atomic writes, `result.json` of each run, the experiment's `runs.csv`."""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any

from optcmp.errors import OptcmpError


class Status(str, Enum):
    """What became of a run: result.json's `status`. A str, so it compares, hashes and
    serializes as its value (`Status.OK == "ok"`)."""

    OK = "ok"  # trained to the end
    DIVERGED = "diverged"  # its loss became NaN/inf or passed train.diverge_threshold
    PRUNED = "pruned"  # stopped early by its caller (a study's pruner); `pruned_step` says where
    FAILED = "failed"  # raised; error.txt has the traceback
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


# Finished runs are kept on resume; failed and interrupted ones are redone.
FINISHED = frozenset({Status.OK, Status.DIVERGED, Status.PRUNED})

_UMASK = os.umask(0)
os.umask(_UMASK)
FIRST_COLUMNS = ["run_id", "config_id", "variant", "role", "seed", "status", "decay", "engine", "device", "error",
                 "diverged_step", "pruned_step"]


class NoSpace(OptcmpError):
    """The disk (or the user's quota) is full. Not the user's mistake in the input: exit 1.
    Nothing is damaged (every file is written whole or not at all, result.json last), and
    the same command, run again once there is room, does what is left."""

    exit_code = 1


FULL = (errno.ENOSPC, errno.EDQUOT)


def no_space(error: BaseException) -> NoSpace | None:
    """A `NoSpace` for an error caused, however indirectly, by a full disk; else None."""
    seen, e = set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, NoSpace):
            return e
        if isinstance(e, OSError) and e.errno in FULL:
            where = f" writing {e.filename}" if e.filename else ""
            return NoSpace(f"no space left on the device{where}: free some space and run the same command again "
                           "(what is written is whole; finished runs are kept)")
        e = e.__cause__ or e.__context__
    return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`:
    a reader (or a crash) sees the old file or the new one, never half of one. A full disk
    raises `NoSpace`, the old file (if any) still whole."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise OptcmpError(f"{path}: a folder where optcmp writes a file; remove it and run again")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        _raise_if_full(e, path)
        raise
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            _raise_if_full(e, path)
        raise


def _raise_if_full(error: OSError, path: Path) -> None:
    if error.errno in FULL:
        error.filename = error.filename or str(path)  # os.write and fsync do not say which file
        raise no_space(error) from error


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


# result.json's fields that the readers rely on, and their types, as `read_result` checks them
_FIELDS = {"run_id": str, "config_id": str, "status": str, "params": dict, "metrics": dict, "seed": int}
_OPTIONAL = {"config_hash": str, "error": str, "variant": str, "role": str, "diverged_step": int, "pruned_step": int}


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's result, or None when it has none (never started, or killed before the
    end) or a damaged one (not UTF-8, not JSON, not an object, a field missing or of the
    wrong type, an unknown status, a folder in its place): either way the run is redone."""
    try:
        result = json.loads((Path(run_dir) / "result.json").read_bytes())
    except (OSError, ValueError):  # missing, a folder, unreadable; not UTF-8, not JSON
        return None
    if not isinstance(result, dict) or any(not _is(result.get(k), t) for k, t in _FIELDS.items()) or \
            any(result.get(k) is not None and not _is(result[k], t) for k, t in _OPTIONAL.items()):
        return None
    if result["status"] not in _STATUSES:
        return None
    if not all(v is None or _is(v, float) for v in result["metrics"].values()):
        return None
    if result["status"] == Status.OK and not result["metrics"]:  # a finished run has its numbers
        return None
    return result


def _is(value: Any, kind: type) -> bool:
    if isinstance(value, bool):  # JSON's true is no number
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


_STATUSES = frozenset(s.value for s in Status)


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
    """Results of the given runs (in that order), or of every run folder, from disk; a
    damaged result.json counts as none (`read_result`)."""
    exp_dir = Path(exp_dir)
    if run_ids is None:
        run_ids = sorted(p.name for p in exp_dir.iterdir() if p.is_dir() and (p / "result.json").exists())
    out = []
    for run_id in run_ids:
        result = read_result(exp_dir / run_id)
        if result is not None:
            out.append(result)
    return out


def planned_ids(exp_dir: Path) -> list[str]:
    """The run ids of plan.json (the last `optcmp run`'s plan), in order; [] where there is
    none or it is damaged (an older or copied folder, a foreign file)."""
    try:
        plan = json.loads((Path(exp_dir) / "plan.json").read_bytes())
    except (OSError, ValueError):
        return []
    if not isinstance(plan, list):
        return []
    ids = [r.get("run_id") for r in plan if isinstance(r, dict)]
    return list(dict.fromkeys(i for i in ids if isinstance(i, str)))
