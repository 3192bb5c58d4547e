"""The reference sweep at 8, 64, 256 and 1024 members: `optcmp run` (whole process, its
shipped logging on: scalars every 10 steps, histograms of every weight and gradient every
100 steps, every run's folder, runs.csv and the summary) against a plain torch.func
ensemble (benchmarks/torchfunc_ensemble.py: vmap + a batched Adam, no logging) and against
the hand-written loop (../shared/baselines/handwritten_sweep.py).

    python benchmarks/scaling.py                  # 8, 64, 256, 1024 members × 1000 steps
    python benchmarks/scaling.py --members 64 256 --repeats 3
    python benchmarks/scaling.py --quick          # 8 and 32 members × 100 steps: a check that it runs
    python benchmarks/scaling.py --whole-machine  # every core each: optcmp --jobs <cores>, baselines torch's default threads

The hand-written loop trains one member after another, so its time grows linearly: it is
timed on `--hand-members` members (default 16) and scaled to each size — its training
loop's own seconds × members / 16, plus its process's start-up — and printed as such.
Both baselines run with `--baseline-threads` torch threads (default 1, as each optcmp
process: on a loaded machine torch's default thread pool makes a tiny model's step several
times slower, which would flatter optcmp; 0: torch's default), and optcmp with `--jobs 1`
(default; `--jobs 2` spreads the units over two processes): one core each. `--whole-machine` gives each side the
whole machine instead, as a user runs them: optcmp `--jobs` the number of cores, the
baselines torch's default thread pool (the hand-written loop's tiny ops stay on about one
core; the ensemble's batched matmuls can use several). Peak memory is
the largest resident set of the process (with `--jobs`, of its largest worker). Other work
on the machine makes every figure noisy: the load average is printed before and after;
each time is the median of `--repeats` runs.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Timed, baselines_dir, load, reference_sweep, timed  # noqa: E402

GOALS = {"hand": {64: 20.0, 1024: 50.0}, "torch.func": {64: 1.3, 256: 1.3}}  # issue 16's acceptance


def optcmp_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_optcmp(config: Path, out: Path, jobs: int) -> Timed:
    shutil.rmtree(out, ignore_errors=True)  # a first run, as a user's: no results to resume
    return timed([sys.executable, "-m", "optcmp", "run", str(config), "--out", str(out), "--engine", "vectorized",
                  "--jobs", str(jobs)], cwd=ROOT, env=optcmp_env())


def median_of(repeats: int, measure) -> Timed:
    runs = [measure() for _ in range(repeats)]
    middle = sorted(runs, key=lambda t: t.seconds)[len(runs) // 2]
    return Timed(middle.seconds, max(t.peak_mib for t in runs), middle.stdout)


def threads_env(threads: int) -> dict[str, str] | None:
    """The environment that gives a baseline `threads` torch threads (0: torch's default)."""
    if threads == 0:
        return None
    return {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}


def hand_loop(baselines: Path, members: int, steps: int, env: dict[str, str] | None) -> tuple[float, float, float]:
    """(whole-process seconds, training-loop seconds, peak MiB) of the hand-written loop."""
    t = timed([sys.executable, str(baselines / "handwritten_sweep.py"), "--members", str(members), "--steps", str(steps)],
              env=env)
    return t.seconds, float(re.search(r"train_seconds ([\d.]+)", t.stdout).group(1)), t.peak_mib


def goal_text(kind: str, members: int, ratio: float) -> str:
    goal = GOALS[kind].get(members)
    if goal is None:
        return ""
    return f" (goal ≥ {goal:g}×: {'met' if ratio >= goal else 'NOT met'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, nargs="+", default=[8, 64, 256, 1024])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=1, help="optcmp's --jobs (default 1: one core, as the baselines)")
    ap.add_argument("--hand-members", type=int, default=16, help="members the hand-written loop is timed on")
    ap.add_argument("--repeats", type=int, default=1, help="runs of optcmp and of the ensemble to take the median of")
    ap.add_argument("--baseline-threads", type=int, default=1,
                    help="torch threads of the hand-written loop and the torch.func ensemble (0: torch's default)")
    ap.add_argument("--baselines", help="the folder of handwritten_sweep.py (default: ../shared/baselines)")
    ap.add_argument("--quick", action="store_true", help="8 and 32 members × 100 steps")
    ap.add_argument("--whole-machine", action="store_true",
                    help="--jobs the number of cores and --baseline-threads 0 (torch's default)")
    args = ap.parse_args()
    if args.whole_machine:
        from optcmp.executors import available_cores

        args.jobs, args.baseline_threads = available_cores(), 0
    if args.quick:
        args.members, args.steps, args.hand_members = [8, 32], 100, 4
    baselines = baselines_dir(args.baselines)
    env = threads_env(args.baseline_threads)
    threads = "torch's default threads" if env is None else f"{args.baseline_threads} torch thread(s)"
    print(f"reference sweep, {args.steps} steps; optcmp run --engine vectorized --jobs {args.jobs} (1 thread each); "
          f"baselines with {threads}; {load()}")

    hand_whole, hand_train, hand_peak = hand_loop(baselines, args.hand_members, args.steps, env)
    start_up = hand_whole - hand_train
    print(f"hand-written loop ({baselines / 'handwritten_sweep.py'}), {args.hand_members} members: {hand_whole:.2f} s "
          f"(its loop {hand_train:.2f} s, {hand_train / args.hand_members * 1000:.0f} ms a member); scaled below "
          f"to each size as loop × members / {args.hand_members} + {start_up:.2f} s of start-up")
    rows = []
    with tempfile.TemporaryDirectory(prefix="optcmp-scaling-") as tmp:
        tmp = Path(tmp)
        for members in args.members:
            config = tmp / f"sweep{members}.yaml"
            config.write_text(reference_sweep(members, args.steps))
            ours = median_of(args.repeats, lambda: run_optcmp(config, tmp / "out", args.jobs))
            said = re.search(r"(\d+) of (\d+) runs: (\d+) ok", ours.stdout)
            if said is None or said.group(1) != said.group(3) or int(said.group(1)) != members:
                sys.exit(f"optcmp did not train {members} runs ok:\n{ours.stdout}")
            ensemble = median_of(args.repeats, lambda: timed(
                [sys.executable, str(ROOT / "benchmarks" / "torchfunc_ensemble.py"), "--members", str(members),
                 "--steps", str(args.steps)], env=env))
            hand = hand_train * members / args.hand_members + start_up
            rows.append((members, ours, ensemble, hand))
            vs_func, vs_hand = ensemble.seconds / ours.seconds, hand / ours.seconds
            print(f"{members:5d} members: optcmp {ours.seconds:7.2f} s ({ours.seconds / members * 1000:6.1f} ms a member, "
                  f"peak {ours.peak_mib:6.0f} MiB) | torch.func ensemble {ensemble.seconds:7.2f} s (peak "
                  f"{ensemble.peak_mib:5.0f} MiB): {vs_func:5.2f}×{goal_text('torch.func', members, vs_func)} | "
                  f"hand-written loop, scaled from {args.hand_members}, {hand:8.1f} s: "
                  f"{vs_hand:6.1f}×{goal_text('hand', members, vs_hand)}", flush=True)
    print()
    print("| members | optcmp s | ms a member | peak MiB | torch.func s | ratio | hand loop s (scaled) | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for members, ours, ensemble, hand in rows:
        print(f"| {members} | {ours.seconds:.2f} | {ours.seconds / members * 1000:.1f} | {ours.peak_mib:.0f} | "
              f"{ensemble.seconds:.2f} | {ensemble.seconds / ours.seconds:.2f}× | {hand:.1f} | {hand / ours.seconds:.1f}× |")
    print(f"hand-written loop peak {hand_peak:.0f} MiB at {args.hand_members} members; {load()}")


if __name__ == "__main__":
    main()
