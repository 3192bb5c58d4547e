"""What the benchmarks share: where the baselines are, whole-process timing with peak
memory, the reference sweep's config, and printing a figure beside its baseline."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DECAYS = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]  # the baseline's weight decays

# The baseline's sweep (../shared/baselines/handwritten_sweep.py): Adam and AdamW × weight
# decays × seeds, lr 0.01, the reference LayerNorm MLP, full batch; with optcmp's shipped
# logging (scalars every 10 steps, histograms of every weight and gradient every 100).
REFERENCE_SWEEP = """\
name: sweep
seeds: {seeds}
device: cpu
model: {{kind: mlp, hidden: [20, 20, 20, 20], norm: layernorm, activation: none}}
data: {{kind: quadratic}}
train: {{steps: {steps}, loss: mse}}
optimizer: {{name: adam, lr: 0.01}}
sweep:
  optimizer.name: [adam, adamw]
  optimizer.weight_decay: {decays}
log: {{every: 10, histograms: {{every: 100}}}}
"""
# No chaos probes (`summary.chaos: auto` adds one run a config trained vectorized): the
# figures are of `members` runs, as the baselines train. Trees older than the probes do not
# know the key: `reference_sweep(..., probes_key=False)` for them.
NO_PROBES = "summary: {chaos: off}\n"


def reference_sweep(members: int, steps: int, probes_key: bool = True) -> str:
    """The reference sweep's config with `members` runs: as the baseline cycles through
    them, Adam/AdamW × the first weight decays for one seed, or all 8 × `members / 16` seeds."""
    tail = NO_PROBES if probes_key else ""
    if members < 16:
        if members % 2:
            sys.exit(f"--members {members}: the sweep pairs Adam with AdamW; give an even count")
        return REFERENCE_SWEEP.format(seeds=1, steps=steps, decays=DECAYS[:members // 2]) + tail
    if members % 16:
        sys.exit(f"--members {members}: give a multiple of 16 (2 optimizers × 8 weight decays × seeds)")
    return REFERENCE_SWEEP.format(seeds=members // 16, steps=steps, decays=DECAYS) + tail


def baselines_dir(given: str | None) -> Path:
    """`--baselines`, else the first of ROOT/../shared/baselines (from the main checkout),
    ROOT/shared/baselines and ROOT/../../shared/baselines (from a worktree at
    <work>/wt/<name>) that exists."""
    if given:
        return Path(given)
    candidates = [ROOT.parent / "shared" / "baselines", ROOT / "shared" / "baselines",
                  ROOT.parents[1] / "shared" / "baselines"]
    for path in candidates:
        if path.is_dir():
            return path
    sys.exit("no baselines folder found (looked in " + ", ".join(map(str, candidates)) + "); give --baselines")


@dataclass
class Timed:
    seconds: float  # wall clock, the whole process
    peak_mib: float  # the largest resident set of the process or of any child it waited for
    stdout: str


def timed(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, bytecode: bool = True) -> Timed:
    """Run `cmd` as a child process; its wall time and peak memory (`wait4`'s rusage, which
    covers the child and the descendants it waited for: the largest one's resident set).

    With `bytecode` (the default) the child runs as an installed package does, with Python's
    bytecode cache, even where PYTHONDONTWRITEBYTECODE=1 is set: without the cache every
    process compiles each module it imports from source (0.03-0.1 s for optcmp's)."""
    env = dict(os.environ if env is None else env)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return Timed(seconds, usage.ru_maxrss / 1024, stdout)


def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def side_by_side(what: str, ours: float, baseline_label: str, baseline: float, goal: float | None = None) -> str:
    """One line: our figure, the baseline's, their ratio (and the goal)."""
    goal_text = f" (goal ≥ {goal:g}×)" if goal is not None else ""
    return f"{what}: {ours:.2f} s against {baseline_label} {baseline:.2f} s: {baseline / ours:.2f}×{goal_text}"
