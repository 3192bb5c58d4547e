"""What the dry step costs: `optcmp run` of a config with it and without it, in one run.

The dry step (optcmp/dry.py) trains one step of every distinct model/data/optimizer/scheduler
combination on a throwaway model at preflight, so that a bad option fails before any folder
is written. This script times whole processes (start-up and imports included), alternating
the two variants so that drift in the machine's load hits both alike:

  with     `optcmp run CONFIG` as shipped
  without  the same, with `optcmp.resolve.dry_step` replaced by a no-op (a benchmark-only
           patch; the tool itself has no switch to skip its checks)

and, inside one process, the seconds spent in the dry steps themselves. It prints the
medians side by side and the ratio with ÷ without.

    python benchmarks/dry_step.py                          # configs/adam_vs_adamw.yaml, 5 pairs
    python benchmarks/dry_step.py --reps 3 --config configs/weight_decay.yaml
    python benchmarks/dry_step.py --plan                   # `optcmp plan` (preflight alone) too
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs optcmp's CLI; with DRY=0 the dry step is a no-op. Used for both variants so that the
# only difference between them is the dry step.
LAUNCH = """\
import os, sys
import optcmp.resolve
if os.environ.get("DRY") == "0":
    optcmp.resolve.dry_step = lambda *args, **kwargs: None
from optcmp.cli import main
sys.argv = ["optcmp", *sys.argv[1:]]
main()
"""

# Inside one process: preflight of the config, the time spent in dry_step counted apart.
IN_PROCESS = """\
import sys, time
import optcmp.resolve as resolve
spent = [0.0, 0]
real = resolve.dry_step
def timed(*args, **kwargs):
    t = time.perf_counter()
    try:
        return real(*args, **kwargs)
    finally:
        spent[0] += time.perf_counter() - t
        spent[1] += 1
resolve.dry_step = timed
from optcmp.cli import app  # not main(): it ends the process at once when done
t = time.perf_counter()
try:
    app(["plan", sys.argv[1]])
except SystemExit:
    pass
total = time.perf_counter() - t
print(f"IN_PROCESS {spent[0]:.6f} {spent[1]} {total:.6f}", file=sys.stderr)
"""


def run_once(args: list[str], dry: bool) -> float:
    env = {**os.environ, "DRY": "1" if dry else "0", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"optcmp {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return took


def pairs(label: str, make_args, reps: int) -> tuple[float, float]:
    with_, without = [], []
    for rep in range(reps):
        for dry in ((True, False) if rep % 2 == 0 else (False, True)):
            out = Path(tempfile.mkdtemp(prefix="optcmp-dry-"))
            try:
                (with_ if dry else without).append(run_once(make_args(out), dry))
            finally:
                shutil.rmtree(out, ignore_errors=True)
    a, b = statistics.median(with_), statistics.median(without)
    print(f"{label:<28} with {a:7.3f} s   without {b:7.3f} s   ratio {a / b:.3f}   "
          f"(+{(a - b) * 1000:.0f} ms; medians of {reps})")
    return a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/adam_vs_adamw.yaml")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--plan", action="store_true", help="also time `optcmp plan` (preflight alone)")
    parser.add_argument("--engine", default=None, help="pass --engine to optcmp run")
    args = parser.parse_args()
    config = str((ROOT / args.config) if not Path(args.config).is_absolute() else args.config)
    print(f"config {args.config}; load average {os.getloadavg()[0]:.1f} at start")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, config], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("IN_PROCESS")]
    if line:
        spent, count, total = line[-1].split()[1:]
        print(f"{'dry steps in one preflight':<28} {float(spent) * 1000:.1f} ms in {count} call(s) "
              f"of {float(total):.3f} s for `optcmp plan` in-process")

    engine = ["--engine", args.engine] if args.engine else []
    if args.plan:
        pairs("optcmp plan", lambda out: ["plan", config], args.reps)
    a, b = pairs("optcmp run", lambda out: ["run", config, "--out", str(out), *engine], args.reps)
    print(f"dry step cost on `optcmp run {args.config}`: {a / b:.3f}× the run without it "
          f"(load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
