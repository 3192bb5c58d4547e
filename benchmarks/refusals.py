"""How fast hostile configs are refused: a YAML alias bomb (9 levels × 9 aliases), a sweep of
10^7 runs and a 32 MB config, each through `optcmp run` as a whole process, against the
2 s the robustness issue asks for (before: each ran past 60 s).

    python benchmarks/refusals.py            # 3 repetitions each, the median printed
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_bad_input import HOSTILE, hostile_text  # noqa: E402  the test suite's hostile configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; goal: refused in under 2 s (whole process)")
    with tempfile.TemporaryDirectory() as tmp:
        for case in HOSTILE:
            path = Path(tmp) / "hostile.yaml"
            path.write_text(hostile_text(case))
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "optcmp", "run", str(path), "--out", f"{tmp}/out"],
                                      cwd=ROOT, capture_output=True, text=True)
                times.append(time.perf_counter() - start)
            line = (proc.stdout + proc.stderr).strip().splitlines()
            print(f"{case:<11} exit {proc.returncode}  {statistics.median(times):5.2f} s  (goal 2 s)  "
                  f"{line[0][:90] if line else ''}")


if __name__ == "__main__":
    main()
