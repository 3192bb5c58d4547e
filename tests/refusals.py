"""The check every refused config gets: `optcmp run` (or `plan`) exits 2 with exactly one
line, `error: <message>`, no traceback, and nothing written under --out."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from optcmp.cli import app

BASE = "# a config to refuse\ndevice: cpu\nlog: {every: 1}\n#\n"  # 4 lines: a case's own keys start on line 5


def refused(config: Path, out: Path, *args: str, command: str = "run") -> str:
    """The one-line message of a refused config (asserting exit 2 and no output folder)."""
    result = CliRunner().invoke(app, [command, str(config), "--out", str(out), *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert not out.exists(), list(out.rglob("*"))
    return lines[0].removeprefix("error: ")
