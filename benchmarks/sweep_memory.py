"""Figures for sweeps that scale: the driver's memory over a sweep of hundreds of tiny runs,
and the wall time of `--jobs 1` against `--jobs 2` on the sweep of the hand-written baseline
(../shared/baselines/handwritten_sweep.py: the reference MLP, Adam/AdamW × 8 weight decays).

    python benchmarks/sweep_memory.py                      # 200 tiny runs; 16 runs × 1000 steps
    python benchmarks/sweep_memory.py --runs 400 --steps 2000 --jobs 1 2 4

Everything runs through `runner.run_sweep`, as `optcmp run` does, with the sequential engine
(one run per work unit: the most driver work per run).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from optcmp.config import load_config
from optcmp.runner import Events, Execution, experiment_dir, preflight, run_sweep
from optcmp.sweep import expand

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import baselines_dir  # noqa: E402

BASELINE = Path("handwritten_sweep.py")  # in --baselines (set in main)
DECAYS = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]  # as in the baseline

TINY = """\
name: tiny-{runs}
seeds: {seeds}
device: cpu
model: {{kind: mlp, hidden: [8], norm: layernorm}}
data: {{kind: quadratic}}
train: {{steps: 20}}
optimizer: {{name: adam}}
sweep:
  optimizer.lr: [0.001, 0.003, 0.01, 0.03]
log: {{every: 5, histograms: {{every: 0}}}}
"""

BASELINE_SWEEP = """\
name: baseline-jobs{jobs}
seeds: [0]
device: cpu
model: {{kind: mlp, hidden: [{width}, {width}, {width}, {width}], norm: layernorm}}
data: {{kind: quadratic}}
train: {{steps: {steps}}}
optimizer: {{lr: 0.01}}
sweep:
  optimizer.name: [adam, adamw]
  optimizer.weight_decay: {decays}
log: {{every: 10, histograms: {{every: 0}}}}
"""


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def sweep(tmp: Path, text: str, execution: Execution, events: Events | None = None):
    path = tmp / "config.yaml"
    path.write_text(text)
    loaded = load_config(path)
    specs = expand(loaded.config)
    runs = preflight(loaded, specs)
    return run_sweep(loaded, specs, experiment_dir(tmp, loaded.config.name), events, execution, fresh=True, runs=runs)


def memory(tmp: Path, runs: int) -> None:
    me = psutil.Process()
    samples: dict[int, int] = {}
    done = [0]

    def run_end(result):
        done[0] += 1
        if done[0] in (1, 10, 50, 100, 200, runs) or done[0] % 100 == 0:
            samples[done[0]] = me.memory_info().rss

    text = TINY.format(runs=runs, seeds=runs // 4)
    import scipy.special  # noqa: F401 - the summary's Student t quantile, and
    import optcmp.trainer  # noqa: F401 - torch and the logger loaded before the first figure

    start_rss = me.memory_info().rss
    t = time.perf_counter()
    outcome = sweep(tmp, text, Execution(engine="sequential"), Events(run_end=run_end))
    wall = time.perf_counter() - t
    assert all(r["status"] == "ok" for r in outcome.results) and len(outcome.results) == runs
    print(f"\n{runs}-run sweep in this process (mlp [8], 20 steps, no histograms): {wall:.1f} s, "
          f"{wall / runs * 1000:.0f} ms a run")
    print(f"  driver RSS before the sweep, libraries imported: {mib(start_rss)}")
    for n, rss in sorted(samples.items()):
        print(f"  after run {n:>4}: {mib(rss)}")
    first, last = min(k for k in samples if k >= 10), max(samples)
    print(f"  growth from run {first} to run {last}: {mib(samples[last] - samples[first])} "
          f"({(samples[last] - samples[first]) / (last - first) / 1024:.1f} KiB a run)")


def timing(tmp: Path, jobs_list: list[int], steps: int, width: int) -> None:
    members = 2 * len(DECAYS)
    print(f"\nThe baseline's sweep: {members} runs of the reference MLP (width {width}), {steps} full-batch steps, "
          f"scalars every 10 steps, no histograms; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    if BASELINE.exists():
        # as users run it (torch's default: a thread per core), and with one thread like optcmp's runs
        for label, env in (("torch's default threads", {}), ("1 thread", {"OMP_NUM_THREADS": "1"})):
            out = subprocess.run([sys.executable, str(BASELINE), "--members", str(members), "--steps", str(steps),
                                  "--width", str(width)], capture_output=True, text=True, check=True,
                                 env={**os.environ, **env}).stdout
            rows.append((f"hand-written loop ({label})", float(out.split("train_seconds ")[1].split()[0])))
    for jobs in jobs_list:
        text = BASELINE_SWEEP.format(jobs=jobs, steps=steps, width=width, decays=DECAYS)
        t = time.perf_counter()
        outcome = sweep(tmp, text, Execution(engine="sequential", jobs=jobs))
        assert all(r["status"] == "ok" for r in outcome.results)
        rows.append((f"optcmp --jobs {jobs} (1 thread a run{', process start-up included' if jobs > 1 else ''})",
                     time.perf_counter() - t))
    width_col = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"  {name:<{width_col}}  {seconds:6.1f} s  ({members / seconds:.2f} runs/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="tiny runs in the memory sweep (a multiple of 4)")
    ap.add_argument("--steps", type=int, default=1000, help="steps of each run in the timing sweep")
    ap.add_argument("--width", type=int, default=20, help="hidden width in the timing sweep")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--baselines", help="the folder of handwritten_sweep.py (default: ../shared/baselines)")
    args = ap.parse_args()
    global BASELINE
    BASELINE = baselines_dir(args.baselines) / "handwritten_sweep.py"
    with tempfile.TemporaryDirectory(prefix="optcmp-bench-") as tmp:
        memory(Path(tmp), args.runs)
        timing(Path(tmp), args.jobs, args.steps, args.width)


if __name__ == "__main__":
    main()
