"""The 64-run weight-decay sweep through `optcmp run --engine vectorized`, against the
hand-written loop in ../shared/baselines/handwritten_sweep.py, as whole processes.

    python benchmarks/vectorized_sweep.py            # 64 runs × 1000 steps (~4 min with the checks)
    python benchmarks/vectorized_sweep.py --no-sequential   # the timing only (~2 min)
    python benchmarks/vectorized_sweep.py --quick    # 16 runs × 300 steps

The sweep is the baseline's: Adam and AdamW × weight_decay [0 … 1.0] × 4 seeds, lr 0.01,
the reference LayerNorm MLP, full batch; optcmp also logs scalars every 10 steps and
histograms of every weight and gradient every 100 steps, and writes every run's folder,
runs.csv and the summary.

optcmp runs with `--jobs N` (N = the machine's cores, `--jobs` here to change it): the
group is split across N forked processes, one torch thread each. The baseline runs as
shipped (torch's default threads, one per core) and again with one torch thread, which is
faster on a small machine; the speed-up is printed against both. Other work on the machine
makes every figure noisy; the load average is printed, and each time is the median of a
few runs.

Then the same sweep runs with `--engine sequential`, and the median and worst relative
difference between the engines is printed for the final train_loss and weight_norm of every run and
for every parameter tensor in weights.npz (‖a − b‖ / ‖b‖). At lr 0.01 this sweep amplifies
rounding noise (torch.optim against itself from weights perturbed by 1e-7 ends 1000 steps
far apart), so the same figure is printed for the sequential engine against itself with
two torch threads instead of one (seed 0's runs), which changes nothing but the summation
order in some kernels: the yardstick for "equal up to rounding" on this sweep.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DECAYS, baselines_dir, reference_sweep  # noqa: E402

GOAL = 30.0



def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def optcmp_run(config: Path, out: Path, engine: str, *options: str) -> tuple[float, str]:
    """A first run of the sweep into `out` (what an earlier repetition left there is removed
    before the clock starts, as a user's first `optcmp run` finds no results)."""
    shutil.rmtree(out, ignore_errors=True)
    return timed([sys.executable, "-m", "optcmp", "run", str(config), "--out", str(out), "--engine", engine, *options])


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def differences(one: Path, other: Path) -> dict[str, tuple[float, float]]:
    """(median, worst) relative difference per quantity over all runs of two output folders."""
    found: dict[str, list[float]] = {"train_loss": [], "weight_norm": [], "weights.npz": []}
    runs = sorted(p.name for p in one.iterdir() if (p / "result.json").exists())
    for run_id in runs:
        a, b = (json.loads((d / run_id / "result.json").read_text()) for d in (one, other))
        assert a["status"] == b["status"] == "ok", (run_id, a["status"], b["status"])
        for key in ("train_loss", "weight_norm"):
            found[key].append(relative(a["metrics"][key], b["metrics"][key]))
        wa, wb = np.load(one / run_id / "weights.npz"), np.load(other / run_id / "weights.npz")
        found["weights.npz"].append(max(relative(wa[n], wb[n]) for n in wb.files))
    return {k: (statistics.median(v), max(v)) for k, v in found.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 runs × 300 steps instead of 64 × 1000")
    ap.add_argument("--repeats", type=int, default=3, help="optcmp runs to take the median of")
    ap.add_argument("--baseline-repeats", type=int, default=1, help="baseline runs to take the median of")
    ap.add_argument("--no-sequential", action="store_true", help="skip the engine comparison")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="optcmp's --jobs (default: the cores)")
    ap.add_argument("--baselines", help="the folder of handwritten_sweep.py (default: ../shared/baselines)")
    args = ap.parse_args()
    baseline = baselines_dir(args.baselines) / "handwritten_sweep.py"

    members, steps = (16, 300) if args.quick else (64, 1000)
    print(f"sweep: {members} runs (adam, adamw × {len(DECAYS)} weight decays × {members // 16} seeds), {steps} steps, "
          f"scalars every 10 steps, histograms every 100; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="optcmp-bench-") as tmp:
        tmp = Path(tmp)
        config = tmp / "sweep.yaml"
        config.write_text(reference_sweep(members, steps))  # as the baseline cycles through its members

        jobs = ["--jobs", str(args.jobs)]
        times, trained = [], []
        for _ in range(args.repeats):
            seconds, out = optcmp_run(config, tmp / "vectorized", "vectorized", *jobs)
            times.append(seconds)
            # "64 of 64 runs: 64 ok; 2.0 s of training in 2.5 s": the runs' own time, then the sweep's
            trained.append(float(re.search(r"in ([\d.]+) s", out).group(1)))
        ours = statistics.median(times)
        summary_line = next((line for line in out.splitlines() if " runs: " in line), "").strip()
        print(f"optcmp run --engine vectorized --jobs {args.jobs}: {ours:.2f} s "
              f"(median of {', '.join(f'{t:.2f}' for t in times)}); it says: {summary_line}")
        one = statistics.median(optcmp_run(config, tmp / "vectorized1", "vectorized", "--jobs", "1")[0]
                                for _ in range(args.repeats))
        print(f"optcmp run --engine vectorized --jobs 1: {one:.2f} s (median of {args.repeats})")

        cmd = [sys.executable, str(baseline), "--members", str(members), "--steps", str(steps)]
        baselines = {}
        for label, env in (("as shipped (torch's default threads)", None), ("one torch thread", one_thread_env())):
            runs = [timed(cmd, env) for _ in range(args.baseline_repeats)]
            base = statistics.median(t for t, _ in runs)
            base_trained = statistics.median(float(re.search(r"train_seconds ([\d.]+)", o).group(1)) for _, o in runs)
            baselines[label] = base
            print(f"baseline handwritten_sweep.py --members {members} --steps {steps}, {label}: {base:.2f} s "
                  f"(median of {', '.join(f'{t:.2f}' for t, _ in runs)}; its training loop {base_trained:.2f} s)")
        for label, base in baselines.items():
            print(f"speed-up, whole processes, against the baseline {label}: {base / ours:.1f}× with --jobs {args.jobs}, "
                  f"{base / one:.1f}× with --jobs 1 (goal {GOAL:.0f}×)")
        print(f"load average now {os.getloadavg()[0]:.1f}")

        if not args.no_sequential:
            seconds, _ = optcmp_run(config, tmp / "sequential", "sequential")
            print(f"optcmp run --engine sequential: {seconds:.2f} s")
            # seed 0 only: two threads on a busy 2-core machine can be ten times slower
            seconds, _ = optcmp_run(config, tmp / "sequential2", "sequential", "--threads", "2", "--set", "seeds=[0]")
            print(f"optcmp run --engine sequential --threads 2 --set seeds=[0]: {seconds:.2f} s")
            seq = tmp / "sequential" / "sweep"
            for label, other in (("vectorized vs sequential", tmp / "vectorized" / "sweep"),
                                 ("sequential, 2 threads vs 1, seed 0 (the yardstick)", tmp / "sequential2" / "sweep")):
                found = differences(other, seq)
                print(f"relative difference (median, worst over runs), {label}: "
                      + ", ".join(f"{k} {median:.1e}, {worst:.1e}" for k, (median, worst) in found.items()))


if __name__ == "__main__":
    main()
