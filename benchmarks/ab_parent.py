"""A/B: the 64-run reference sweep through `optcmp run`, this tree against the commit
before the engine redesign (de51958), whole processes, alternating, several repeats.

    python benchmarks/ab_parent.py                  # 64 runs × 1000 steps, 5 repeats each
    python benchmarks/ab_parent.py --quick          # 16 runs × 200 steps, 2 repeats

`python -m optcmp` puts the working directory first on sys.path, so each tree runs from its
own directory (PYTHONPATH pointing at another tree would be ignored). The other tree is
`--tree` (default /tmp/ab-de51958), unpacked there with `git archive` when it is missing
(or give any checkout of the commit). Both run `--engine vectorized --jobs N`
(N = the cores by default) on the same config, with optcmp's shipped logging on.

Both trees run as an installed package does: with Python's bytecode cache. Each tree runs
once untimed first, which writes its `__pycache__` and warms the file cache. Without the
cache (PYTHONDONTWRITEBYTECODE=1, set on some machines), every process compiles every
optcmp module it imports from source, and the tree with more code pays more. On
2026-12-02 this tree compiled 53 modules before its workers forked, against 24 for
de51958, and each forked worker compiled about 30 more: 0.97-0.99x with the variable set,
1.01x without it (before the workers shared the engines' modules: `engines.preload`).
`--no-bytecode` measures that setting.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load, reference_sweep, timed  # noqa: E402

PARENT = "de51958"


def ensure_tree(tree: Path, commit: str) -> Path:
    """A checkout of `commit` at `tree`: `git archive` into it when it has none (no git
    worktree is registered)."""
    if not (tree / "optcmp" / "__init__.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run(tree: Path, config: Path, out: Path, jobs: int, bytecode: bool = True):
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t = timed([sys.executable, "-m", "optcmp", "run", str(config), "--out", str(out), "--engine", "vectorized",
               "--jobs", str(jobs)], cwd=tree, env=env, bytecode=bytecode)
    said = re.search(r"(\d+) of (\d+) runs: (\d+) ok", t.stdout)
    if said is None or said.group(1) != said.group(3):
        sys.exit(f"{tree}: not every run ok:\n{t.stdout}")
    return t, int(said.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", default=PARENT)
    ap.add_argument("--tree", type=Path, default=Path(f"/tmp/ab-{PARENT}"), help="a checkout of --commit")
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="16 runs × 200 steps, 2 repeats")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="run both trees with PYTHONDONTWRITEBYTECODE=1: every module compiled from source")
    args = ap.parse_args()
    if args.quick:
        args.members, args.steps, args.repeats = 16, 200, 2
    trees = {"this tree": ROOT, args.commit: ensure_tree(args.tree, args.commit)}
    print(f"reference sweep, {args.members} runs × {args.steps} steps, --engine vectorized --jobs {args.jobs}; "
          f"{'no bytecode cache (PYTHONDONTWRITEBYTECODE=1)' if args.no_bytecode else 'with the bytecode cache'}; "
          f"{load()}")
    with tempfile.TemporaryDirectory(prefix="optcmp-ab-") as tmp:
        tmp = Path(tmp)
        configs = {"this tree": tmp / "sweep.yaml", args.commit: tmp / "sweep-parent.yaml"}
        configs["this tree"].write_text(reference_sweep(args.members, args.steps))  # no chaos probes
        configs[args.commit].write_text(reference_sweep(args.members, args.steps, probes_key=False))  # none yet
        times: dict[str, list[float]] = {label: [] for label in trees}
        bytecode = not args.no_bytecode
        for label, tree in trees.items():  # untimed: writes the bytecode cache, warms the file cache
            run(tree, configs[label], tmp / "out", args.jobs, bytecode)
        for _ in range(args.repeats):
            for label, tree in trees.items():  # alternating
                t, runs = run(tree, configs[label], tmp / "out", args.jobs, bytecode)
                if runs != args.members:
                    sys.exit(f"{label} trained {runs} runs, not {args.members}")
                times[label].append(t.seconds)
        med = {label: statistics.median(ts) for label, ts in times.items()}
        for label, ts in times.items():
            print(f"{label:10s} ({trees[label]}): median {med[label]:.2f} s of {', '.join(f'{x:.2f}' for x in ts)}")
        ratio = med[args.commit] / med["this tree"]
        print(f"this tree {med['this tree']:.2f} s against {args.commit} {med[args.commit]:.2f} s: {ratio:.2f}× "
              f"({'no slower' if ratio >= 1 else 'SLOWER'}); {load()}")


if __name__ == "__main__":
    main()
