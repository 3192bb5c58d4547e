"""A study's trials trained together: a 16-trial × 3-variant random search on the reference
MLP (1000 steps) against the same 48 runs as a plain sweep, vectorized and sequential, each
as a whole `optcmp run` process, measured in one run of this script.

    python benchmarks/study_batched.py           # 48 trials × 1000 steps (a few minutes with the sequential sweep)
    python benchmarks/study_batched.py --quick   # 12 trials × 200 steps: checks that it works

The study (adam, adamw, sgdm; lr log-uniform in [1e-4, 1e-1], one tuning seed) asks Optuna
for all 16 trials of every variant at once, trains them in vectorized groups (adam and adamw
share the adam family's group, sgdm has its own), tells the results, then reruns each
variant's best trial on 2 fresh seeds (6 runs, one more group) and writes the verdict. The
sweep trains the same 48 trials' configs (variant × the 16 learning rates the study drew) with
`--engine vectorized`, then `--engine sequential`. Printed: the three wall times, the study's
against the vectorized sweep's ("about as long as one vectorized group of 48 runs") and the
sequential sweep's against the study's. Scalars every 10 steps and histograms every 100, as in
vectorized_sweep.py. Other work on the machine makes every figure noisy: the load average is
printed before and after.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

COMMON = """\
device: cpu
data: {{kind: quadratic}}
train: {{steps: {steps}, loss: mse}}
log: {{every: 10, histograms: {{every: 100}}}}
optimizers:
  adam: {{name: adam}}
  adamw: {{name: adamw, weight_decay: 0.01}}
  sgdm: {{name: sgd, momentum: 0.9}}
"""
STUDY = "name: study\n" + COMMON + """\
tune:
  space: {{optimizer.lr: {{log_uniform: [1.0e-4, 1.0e-1]}}}}
  sampler: random
  budget: {trials}
  seeds: [0]
  final_seeds: 2
"""
SWEEP = "name: sweep\n" + COMMON + "sweep:\n{axes}\n"


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def optcmp_run(config: Path, out: Path, *options: str) -> float:
    shutil.rmtree(out, ignore_errors=True)  # a first run, as a user's
    return timed([sys.executable, "-m", "optcmp", "run", str(config), "--out", str(out), *options])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 trials per variant × 200 steps instead of 16 × 1000")
    args = ap.parse_args()
    trials, steps = (4, 200) if args.quick else (16, 1000)
    print(f"{trials} trials × 3 variants, {steps} steps, the reference MLP; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="optcmp-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "study.yaml").write_text(STUDY.format(steps=steps, trials=trials))
        study = optcmp_run(tmp / "study.yaml", tmp / "out")
        drawn = pd.read_csv(tmp / "out" / "study" / "trials.csv")
        runs = pd.read_csv(tmp / "out" / "study" / "runs.csv")
        engines = runs[runs.role == "trial"].groupby("variant").engine.agg(lambda e: ", ".join(sorted(set(e)))).to_dict()
        diverged = (drawn.status == "diverged").sum()
        print(f"optcmp run study.yaml: {study:.2f} s for {len(drawn)} trials ({diverged} diverged) and "
              f"{(runs.role == 'final').sum()} final runs (the trials' engine by variant: {engines})")
        # the same 48 configs as a sweep: each variant at the 16 rates the study drew for it
        # (common random numbers: every variant drew the same 16)
        lrs = sorted(drawn[drawn.variant == "adam"]["optimizer.lr"])
        assert all(sorted(drawn[drawn.variant == v]["optimizer.lr"]) == lrs for v in ("adamw", "sgdm"))
        (tmp / "sweep.yaml").write_text(SWEEP.format(steps=steps, axes=f"  optimizer.lr: {lrs}"))
        vectorized = optcmp_run(tmp / "sweep.yaml", tmp / "out", "--engine", "vectorized")
        print(f"optcmp run sweep.yaml --engine vectorized: {vectorized:.2f} s for {len(drawn)} runs")
        sequential = optcmp_run(tmp / "sweep.yaml", tmp / "out", "--engine", "sequential")
        print(f"optcmp run sweep.yaml --engine sequential: {sequential:.2f} s for {len(drawn)} runs")
    print(f"study / vectorized sweep: {study / vectorized:.2f}× (goal: about 1, the study also trains its final "
          f"runs); sequential sweep / study: {sequential / study:.1f}×")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
