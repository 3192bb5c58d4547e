"""What logging every histogram at every step costs: optcmp against tensorboardX by hand.

Runs, as whole processes (Python start-up and imports included), interleaved so that
drift in the machine's load hits every variant alike:

  optcmp        `optcmp run` of the reference experiment (LayerNorm MLP regression, Adam
                weight_decay 0.1, 1000 steps, 36 histograms — every weight and gradient —
                at every step, every scalar at every step)
  optcmp-nohist the same with histograms off (what optcmp's own overhead is)
  baseline      ../shared/baselines/handwritten_histograms.py, `add_histogram` per tensor
  baseline-nohist  the same script with --no-histograms: the floor

and prints the medians side by side with two ratios and their goals:

  time:  optcmp ÷ baseline-nohist      (goal ≤ 1.25)
  bytes: optcmp's event bytes ÷ the baseline's   (goal ≤ 0.1)

    python benchmarks/histograms.py                  # 5 repetitions, the slow baseline once
    python benchmarks/histograms.py --reps 3 --baseline-reps 1 --json out.json
    python benchmarks/histograms.py --omp-threads 1     # on a machine shared with other work
    python benchmarks/histograms.py --in-process        # RunLogger's cost alone, in one process
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, baselines_dir  # noqa: E402

BASELINE = Path("handwritten_histograms.py")  # in --baselines (set in main)
STEPS = 1000

# The baseline script's experiment, as an optcmp config.
CONFIG = f"""\
name: bench-histograms
seeds: [0]
device: cpu
model: {{kind: mlp, hidden: [20, 20, 20, 20], norm: layernorm, activation: none}}
data: {{kind: quadratic, val_fraction: 0.0, batch_size: full}}
train: {{steps: {STEPS}, loss: mse}}
optimizer: {{name: adam, lr: 0.01, weight_decay: 0.1}}
log:
  every: 1
  histograms: {{every: HIST_EVERY, weights: true, grads: true}}
"""


def event_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("events.out.tfevents.*"))


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def variants(work: Path) -> dict[str, tuple[list[str], Path]]:
    """Name → (command, folder its events go to). Each run starts from an empty folder."""
    out = {}
    for name, every in (("optcmp", 1), ("optcmp-nohist", 0)):
        config = work / f"{name}.yaml"
        config.write_text(CONFIG.replace("HIST_EVERY", str(every)))
        folder = work / name
        out[name] = ([sys.executable, "-m", "optcmp", "run", str(config), "--out", str(folder), "--fresh"], folder)
    for name, extra in (("baseline", []), ("baseline-nohist", ["--no-histograms"])):
        folder = work / name
        out[name] = ([sys.executable, str(BASELINE), "--logdir", str(folder), "--steps", str(STEPS), *extra], folder)
    return out


def in_process(reps: int) -> None:
    """The baseline's training loop logging through RunLogger, histograms on and off, in one
    process: RunLogger's own cost, without start-up or the rest of `optcmp run`."""
    import importlib.util

    import torch
    from torch import nn

    from optcmp.tb.logger import RunLogger

    spec = importlib.util.spec_from_file_location("baseline", BASELINE)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)  # for its model, exactly
    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    x, y = torch.stack([x1, x2], dim=1), 2 * x1 - x2**2 + 1

    def loop(histograms: bool, logdir: Path) -> tuple[float, float]:
        torch.manual_seed(0)
        model = baseline.mlp(20, 4)
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1)
        named = list(model.named_parameters())
        logger = RunLogger(logdir)
        wall, cpu = time.perf_counter(), time.process_time()
        for step in range(STEPS):
            loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
            loss.backward()
            if histograms:
                tensors = {f"weights/{n}": p.detach() for n, p in named}
                tensors.update({f"grads/{n}": p.grad for n, p in named})
                logger.histograms(step, tensors)
            logger.scalars(step, {"train/loss": loss.item()})
            opt.step()
            opt.zero_grad()
        logger.close()  # included: everything is on disk when the clock stops
        return time.perf_counter() - wall, time.process_time() - cpu

    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="optcmp-bench-") as tmp:
        for rep in range(reps):
            for histograms in (True, False):
                results[histograms].append(loop(histograms, Path(tmp) / f"{histograms}-{rep}"))
    for histograms in (False, True):
        walls, cpus = zip(*results[histograms])
        print(f"RunLogger, {'36 histograms + loss' if histograms else 'loss only':20s} per step, {STEPS} steps: "
              f"median {statistics.median(walls):.3f} s wall, {statistics.median(cpus):.3f} s cpu (n={reps})")
    ratio = statistics.median(w for w, _ in results[True]) / statistics.median(w for w, _ in results[False])
    print(f"with ÷ without histograms: {ratio:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the fast variants (median taken)")
    ap.add_argument("--baseline-reps", type=int, default=1, help="repetitions of the ~1 min add_histogram baseline")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--omp-threads", type=int,
                    help="set OMP_NUM_THREADS for every process (default: unset, as users run them; "
                         "1 keeps a loaded machine from stalling torch's thread pool)")
    ap.add_argument("--in-process", action="store_true",
                    help="instead: time the training loop alone, logging through RunLogger with and without histograms")
    ap.add_argument("--baselines", help="the folder of handwritten_histograms.py (default: ../shared/baselines)")
    args = ap.parse_args()
    global BASELINE
    BASELINE = baselines_dir(args.baselines) / "handwritten_histograms.py"
    if args.in_process:
        in_process(args.reps)
        return
    env = dict(os.environ)
    if args.omp_threads:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)

    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="optcmp-bench-") as tmp:
        work = Path(tmp)
        commands = variants(work)
        for rep in range(max(args.reps, args.baseline_reps)):
            for name, (cmd, folder) in commands.items():
                if rep >= (args.baseline_reps if name == "baseline" else args.reps):
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                seconds, cpu_seconds = timed(cmd, ROOT, env)
                times.setdefault(name, []).append(seconds)
                cpu.setdefault(name, []).append(cpu_seconds)
                sizes[name] = event_bytes(folder)
                print(f"  rep {rep + 1} {name:16s} {seconds:7.2f} s  {cpu_seconds:7.2f} cpu s  "
                      f"{sizes[name]:>12,} event bytes", flush=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    load = max(load_before, os.getloadavg()[0])
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"\nwarning: load average {load:.1f} on {os.cpu_count()} cores: other processes share the CPUs, "
              "so the times say little (torch's thread pool suffers most: the baseline uses every core)")
    print(f"\n{'variant':16s} {'median s':>9s} {'min s':>7s} {'median cpu s':>13s} {'n':>2s} {'event bytes':>13s}")
    for name in commands:
        print(f"{name:16s} {median[name]:9.2f} {min(times[name]):7.2f} {statistics.median(cpu[name]):13.2f} "
              f"{len(times[name]):2d} {sizes[name]:13,}")
    time_ratio = median["optcmp"] / median["baseline-nohist"]
    bytes_ratio = sizes["optcmp"] / sizes["baseline"]
    hist_cost = median["optcmp"] - median["optcmp-nohist"]
    print(f"\ntime:  optcmp ÷ baseline-nohist = {time_ratio:.3f}  (goal ≤ 1.25: {'met' if time_ratio <= 1.25 else 'NOT met'})")
    print(f"bytes: optcmp ÷ baseline        = {bytes_ratio:.4f} (goal ≤ 0.1: {'met' if bytes_ratio <= 0.1 else 'NOT met'})")
    print(f"histograms cost optcmp {hist_cost:+.2f} s over its own run without them; "
          f"add_histogram costs the baseline {median['baseline'] - median['baseline-nohist']:+.2f} s")
    if args.json:
        args.json.write_text(json.dumps(
            {"times": times, "cpu_seconds": cpu, "median": median, "event_bytes": sizes, "load_average": load,
             "time_ratio": time_ratio, "bytes_ratio": bytes_ratio}, indent=2))


if __name__ == "__main__":
    main()
