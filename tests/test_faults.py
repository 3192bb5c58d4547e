"""Damaged files and hostile folders: whatever optcmp reads back may be damaged in any way.
A damaged run is redone, a damaged runs.csv is rebuilt from the run folders, a folder that
cannot be written is one line with exit status 2, a full disk one line with exit status 1
(nothing damaged; the same command recovers once there is room). A refused sweep writes
nothing."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.results import read_result
from tests.sweeps import result_files, run

SWEEP = """\
name: sweep
seeds: 2
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic, samples: 64}
train: {steps: 20}
optimizer: {name: adam, lr: 0.01}
sweep:
  optimizer.weight_decay: [0.0, 0.1]
log: {every: 5, histograms: {every: 10}}
"""
IDS = ["adam-wd0-s0", "adam-wd0-s1", "adam-wd0.1-s0", "adam-wd0.1-s1"]
VICTIM = "adam-wd0.1-s0"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    """The single line a refusal prints (after `error: `); no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, AttributeError, OSError))
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0].removeprefix("error: ")


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file and folder under `path` (files with their bytes): what a refusal must not change."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


@pytest.fixture
def finished(write_config, tmp_path):
    """The sweep trained once: (config, output root, experiment folder, its result files)."""
    config, exp = write_config(SWEEP), tmp_path / "sweep"
    first = run(config, tmp_path)
    assert first.exit_code == 0, first.output
    return config, tmp_path, exp, result_files(exp)


def assert_redone(config: Path, out: Path, exp: Path, before: dict[str, bytes]) -> None:
    """A rerun keeps the three whole runs and redoes the victim, which ends ok and whole."""
    again = run(config, out)
    assert again.exit_code == 0, again.output
    assert "Traceback" not in again.output
    assert "3 of 4 runs finished earlier and are kept; 1 to run" in again.output
    after = result_files(exp)
    assert {k: after[k] for k in IDS if k != VICTIM} == {k: before[k] for k in IDS if k != VICTIM}
    result = read_result(exp / VICTIM)
    assert result is not None and result["status"] == "ok"
    assert {"config.yaml", "metrics.csv", "weights.npz", "result.json"} <= {p.name for p in (exp / VICTIM).iterdir()}
    assert len(list((exp / VICTIM).glob("events.out.tfevents.*"))) == 1
    with (exp / "runs.csv").open() as f:
        assert [(r["run_id"], r["status"]) for r in csv.DictReader(f)] == [(i, "ok") for i in IDS]


def _metrics_null(path: Path) -> None:
    result = json.loads(path.read_text())
    path.write_text(json.dumps({**result, "metrics": None}))


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


DAMAGES = {
    "not UTF-8": lambda p: p.write_bytes(b"\xff\xfe{\x00\x00\x93"),
    "a list": lambda p: p.write_text("[]"),
    "a string": lambda p: p.write_text('"ok"'),
    "metrics null": _metrics_null,
    "an unknown status": lambda p: p.write_text(p.read_text().replace('"status": "ok"', '"status": "done"')),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:40]),
    "a folder": _folder,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_result_json_is_redone(finished, damage):
    config, out, exp, before = finished
    DAMAGES[damage](exp / VICTIM / "result.json")
    summary = invoke("summary", exp)  # reads every result.json: the damaged one counts as none
    assert summary.exit_code == 0 and "Traceback" not in summary.output, summary.output
    assert_redone(config, out, exp, before)


@pytest.mark.parametrize("lost", ["events.out.tfevents.*", "weights.npz", "metrics.csv", "config.yaml"])
def test_a_finished_run_missing_a_file_is_redone(finished, lost):
    config, out, exp, before = finished
    for path in (exp / VICTIM).glob(lost):
        path.unlink()
    assert_redone(config, out, exp, before)


def test_a_file_in_a_run_folders_place_is_replaced(finished):
    config, out, exp, before = finished
    shutil.rmtree(exp / VICTIM)
    (exp / VICTIM).write_text("not a folder")
    assert_redone(config, out, exp, before)


def _ragged(path: Path) -> None:
    path.write_text(path.read_text() + "adam-wd0-s9,adam-wd0,9,ok,extra,cells\n")


RUNS_CSV_DAMAGES = {
    "not UTF-8": lambda p: p.write_bytes(b"\xff\xfe\x00run_id\x00\n\x93\x94"),
    "a NUL byte": lambda p: p.write_bytes(p.read_bytes().replace(b",ok,", b",o\x00k,", 1)),
    "empty": lambda p: p.write_text(""),
    "the header only": lambda p: p.write_text(p.read_text().splitlines()[0] + "\n"),
    "no status column": lambda p: p.write_text(p.read_text().replace("status", "state", 1)),
    "a ragged row": _ragged,
    "cut off mid-row": lambda p: p.write_text(p.read_text()[: len(p.read_text()) * 2 // 3]),
    "no metric columns": lambda p: p.write_text("\n".join(",".join(r.split(",")[:12]) for r in p.read_text().splitlines())),
}


@pytest.mark.parametrize("damage", list(RUNS_CSV_DAMAGES))
@pytest.mark.parametrize("command", ["compare", "report", "summary"])
def test_a_damaged_runs_csv_is_rebuilt_from_the_run_folders(finished, command, damage):
    config, out, exp, before = finished
    intact = (exp / "runs.csv").read_bytes()
    RUNS_CSV_DAMAGES[damage](exp / "runs.csv")
    result = invoke(command, exp)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert (exp / "runs.csv").read_bytes() == intact  # the same table as `optcmp run` wrote
    assert result_files(exp) == before


def test_a_damaged_runs_csv_without_run_folders_is_one_line(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "runs.csv").write_bytes(b"\xff\xfe\x00")
    for command in ("compare", "report"):
        message = one_line_error(invoke(command, exp))
        assert message == f"{exp / 'runs.csv'}: not UTF-8 text, and no run folder here has a result.json to rebuild it from"


@pytest.mark.parametrize("plan", ['["adam-wd0-s0", 3]', '{"run_id": "x"}', "not json", '[{"id": 1}]', "\xff", "folder"])
def test_a_damaged_plan_json_is_ignored_by_readers_and_replaced_by_run(finished, plan):
    config, out, exp, before = finished
    path = exp / "plan.json"
    if plan == "folder":
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(plan.encode("utf-8", "surrogateescape") if plan != "\xff" else b"\xff")
    for command in ("summary", "report", "compare"):
        result = invoke(command, exp)
        assert result.exit_code == 0 and "Traceback" not in result.output, (command, result.output)
    again = run(config, out)
    if plan == "folder":  # a folder where a file is written: one line, nothing else touched
        assert one_line_error(again) == f"{path}: a folder where optcmp writes a file; remove it and run again"
        assert result_files(exp) == before
        return
    assert again.exit_code == 0, again.output
    assert [r["run_id"] for r in json.loads(path.read_text())] == IDS
    assert result_files(exp) == before


def test_a_lock_that_is_a_folder_is_one_line_and_nothing_is_written(write_config, tmp_path):
    config, exp = write_config(SWEEP), tmp_path / "sweep"
    (exp / ".lock").mkdir(parents=True)
    before = tree(exp)
    message = one_line_error(run(config, tmp_path))
    assert message == f"{exp / '.lock'}: a folder where optcmp keeps its lock file; remove it (it holds nothing " \
                      "of optcmp's) and run again"
    assert tree(exp) == before


@pytest.mark.parametrize("where", ["a file", "/dev/null", "/proc"])
def test_an_output_folder_that_cannot_be_made_is_one_line(write_config, tmp_path, where):
    config = write_config(SWEEP)
    if where == "a file":
        out = tmp_path / "notes.txt"
        out.write_text("mine")
        expected = f"cannot write the experiment folder {out / 'sweep'}: {out} is not a folder " \
                   "(--out names the folder the experiments go to)"
    elif where == "/dev/null":
        out = Path("/dev/null")
        expected = "cannot write the experiment folder /dev/null/sweep: /dev/null is not a folder " \
                   "(--out names the folder the experiments go to)"
    else:
        out = Path("/proc")
        reason = "that file system takes no new folders" if os.geteuid() == 0 else "/proc is not writable (permission denied)"
        expected = f"cannot write the experiment folder /proc/sweep: {reason}"
    before = tree(tmp_path)
    assert one_line_error(run(config, out)) == expected
    assert tree(tmp_path) == before


def _mount(*options: str, at: Path) -> bool:
    """Mount a tmpfs at `at` (root only); False where that cannot be done."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    at.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(at)],
                          capture_output=True).returncode == 0


def _umount(at: Path) -> None:
    subprocess.run(["umount", "-l", str(at)], capture_output=True)


def test_a_read_only_output_folder_is_one_line(write_config, tmp_path):
    config, out = write_config(SWEEP), tmp_path / "ro"
    if _mount("ro", "size=1m", at=out):  # a read-only file system, which even root cannot write
        try:
            why = "a read-only file system"
            before = tree(out)
            assert one_line_error(run(config, out)) == \
                f"cannot write the experiment folder {out / 'sweep'}: {out} is not writable ({why})"
            assert tree(out) == before
        finally:
            _umount(out)
    elif os.geteuid() != 0:  # a folder without write permission (root ignores those)
        out.mkdir()
        out.chmod(0o555)
        try:
            assert one_line_error(run(config, out)) == \
                f"cannot write the experiment folder {out / 'sweep'}: {out} is not writable (permission denied)"
            assert list(out.iterdir()) == []
        finally:
            out.chmod(0o755)
    else:
        pytest.skip("root without a tmpfs mount: no folder is read-only for it")


FULL = "no space left on the device writing "
FULL_END = ": free some space and run the same command again (what is written is whole; finished runs are kept)"


def assert_nothing_damaged(exp: Path) -> None:
    """After a full disk: every result.json there is whole, every ok run has its files, the
    tables parse; a run without a result is simply one to redo."""
    for folder in (p for p in exp.iterdir() if p.is_dir()):
        if (folder / "result.json").exists():
            result = read_result(folder)
            assert result is not None, folder
            if result["status"] == "ok":
                assert {"weights.npz", "metrics.csv", "config.yaml"} <= {p.name for p in folder.iterdir()}
    if (exp / "runs.csv").exists():
        with (exp / "runs.csv").open() as f:
            assert all(r["status"] == "ok" for r in csv.DictReader(f))


def test_a_full_disk_is_one_line_and_a_rerun_recovers(write_config, tmp_path):
    """On a real full file system: a 160 KB tmpfs (root), which fills after a run or two."""
    config, out = write_config(SWEEP.replace("seeds: 2", "seeds: 4")), tmp_path / "small"
    if not _mount("size=160k", at=out):
        pytest.skip("needs root to mount a small tmpfs (the monkeypatched test below runs everywhere)")
    try:
        full = run(config, out)
        message = one_line_error(full, code=1)
        assert message.startswith(FULL + str(out / "sweep")) and message.endswith(FULL_END), message
        assert_nothing_damaged(out / "sweep")
        done = {k: v for k, v in result_files(out / "sweep").items()}
        assert subprocess.run(["mount", "-o", "remount,size=64m", str(out)]).returncode == 0  # room again
        again = run(config, out)
        assert again.exit_code == 0, again.output
        assert f"{len(done)} of 8 runs finished earlier and are kept" in again.output or not done
        after = result_files(out / "sweep")
        assert len(after) == 8 and all(after[k] == v for k, v in done.items())
        assert_nothing_damaged(out / "sweep")
    finally:
        _umount(out)


def test_a_full_disk_met_by_fsync_is_one_line_and_a_rerun_recovers(write_config, tmp_path, monkeypatch):
    """The same with the disk's answer faked: every fsync from the 12th on fails with ENOSPC,
    as a full disk answers (for CI without root)."""
    import errno

    config, exp = write_config(SWEEP), tmp_path / "sweep"
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 12:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    message = one_line_error(run(config, tmp_path), code=1)
    assert message.startswith(FULL + str(exp)) and message.endswith(FULL_END), message
    assert_nothing_damaged(exp)
    done = result_files(exp)
    assert 0 < len(done) < 4
    monkeypatch.setattr(os, "fsync", real)
    again = run(config, tmp_path)
    assert again.exit_code == 0, again.output
    assert f"{len(done)} of 4 runs finished earlier and are kept" in again.output
    assert all(result_files(exp)[k] == v for k, v in done.items())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_cluster_writes_nothing(write_config, tmp_path):
    pytest.importorskip("ray")
    config, port = write_config(SWEEP), _closed_port()
    before = tree(tmp_path)
    message = one_line_error(run(config, tmp_path, "--executor", "ray", "--address", f"127.0.0.1:{port}"))
    assert message == f"--address 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port} (Connection refused)"
    assert tree(tmp_path) == before  # no experiment folder, no plan.json, no .lock


def test_results_of_another_config_are_refused_before_anything_is_written(finished):
    config, out, exp, before = finished
    (exp / ".lock").unlink()
    files = tree(exp)
    message = one_line_error(run(config, out, "--set", "train.steps=30"))
    assert message.startswith(f"{exp} holds results of another config under the name `sweep`")
    assert tree(exp) == files  # not even the lock file


def test_a_folder_in_use_is_one_line_naming_the_holder(write_config, tmp_path):
    import sys

    from tests.sweeps import ROOT

    config, exp = write_config(SWEEP), tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from optcmp.locking import experiment_lock\n"
         "with experiment_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(exp)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "held\n"
        before = tree(exp)
        assert one_line_error(run(config, tmp_path)) == (
            f"{exp} is in use by another optcmp run (pid {holder.pid}); wait for it to finish, "
            "stop it (Ctrl-C, or kill with its pid), or give this config another `name` (or --out)")
        assert tree(exp) == before  # the holder's .lock and .lock.owner, nothing of this attempt
    finally:
        holder.kill()
        holder.wait()
