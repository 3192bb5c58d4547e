"""A CNN-on-digits sweep, vectorized against sequential, as whole `optcmp run` processes.

24 runs: Adam, AdamW, SGD with momentum and pytorch_optimizer's Lion × 2 learning rates ×
3 seeds, on scikit-learn's digits as one-channel 8×8 images (`data.shape: [1, 8, 8]`),
batches of 64, a 20 % validation split per seed, 600 steps, logging as the shipped
configs/digits_cnn.yaml (scalars and both splits' full-set loss every 10 steps, histograms
every 100). Those evaluation passes (1,798 samples each, every 10 steps of 64) are about
half the arithmetic, and a stack does the same arithmetic as the runs one by one. Under
vmap they sped up far less than the step; `optcmp/stacked_eval.py` now runs both without
vmap for such plain CNN Sequentials: each seed's members share the first convolution of
the evaluation inputs as one im2col product, pooled with it (phase timers around the
engines' members, in one process, 200 steps, load 0.9 on the shared 2 cores:
evaluation 3.96 s sequential → 0.73 s vectorized, steps with updates 5.4 s → 1.2 s; under
vmap it was 2.1 s and 1.6 s). The model is the built-in `cnn`: with `--channels 8` (the default) Conv2d 1→8 → ReLU → MaxPool2d → Linear,
the CNN of tests/userlib.py:DigitsCNN that benchmarks/functional_stack.py times; with
`--channels 16 32` the two-block CNN of configs/digits_cnn.yaml, whose convolutions make
the step arithmetic-bound (a stack saves dispatch, not arithmetic).

    python benchmarks/digits_cnn.py                     # 24 runs × 600 steps, both engines
    python benchmarks/digits_cnn.py --channels 16 32
    python benchmarks/digits_cnn.py --quick             # 24 runs × 60 steps: a check that it runs
    python benchmarks/digits_cnn.py --log-every 100     # the training step's share: fewer evaluation passes

Measured (load 1.0 on 2 cores, medians of 3): vectorized 7.44 s against sequential
30.63 s, 4.12× (before stacked_eval.py and the digits read without importing
scikit-learn, the same day: 15.37 s against 34.49 s, 2.24×); `--channels 16 32 --steps
200`, one each: 8.13 s against 30.49 s, 3.75× (under vmap 15.27 s against 31.44 s, 2.06×).

Both engines run with the same `--jobs` (default 1) and one torch thread per process.
The vectorized engine trains the 24 runs as one stack (the four optimizers' members under
their own batched optimizers). The engines' final weights are compared run by run.
Other work on the machine makes the figures noisy: the load average is printed, and each
time is the median of `--repeats` runs, the engines alternating.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load, timed  # noqa: E402
from scaling import optcmp_env  # noqa: E402

GOAL = 3.0  # issue 16: the digits CNN sweep ≥ 3× faster vectorized than sequential

CONFIG = """\
name: digits-cnn-sweep
seeds: 3
device: cpu
model: {{kind: cnn, channels: {channels}, activation: relu}}
data: {{kind: sklearn, name: digits, shape: [1, 8, 8], standardize: true, val_fraction: 0.2, batch_size: 64}}
train: {{steps: {steps}}}
optimizers:
  adam: {{name: adam}}
  adamw: {{name: adamw, weight_decay: 0.01}}
  sgdm: {{name: sgd, momentum: 0.9}}
  lion: {{name: "pytorch_optimizer:Lion", weight_decay: 0.01}}
sweep:
  optimizers.adam.lr: [0.001, 0.003]
  optimizers.adamw.lr: [0.001, 0.003]
  optimizers.sgdm.lr: [0.01, 0.03]
  optimizers.lion.lr: [0.0001, 0.0003]
log: {{every: {every}, histograms: {{every: 100}}}}
summary: {{chaos: off}}  # the 24 runs alone: probes would be trained by the vectorized engine only
"""


def run(config: Path, out: Path, engine: str, jobs: int):
    shutil.rmtree(out, ignore_errors=True)
    return timed([sys.executable, "-m", "optcmp", "run", str(config), "--out", str(out), "--engine", engine,
                  "--jobs", str(jobs)], cwd=ROOT, env=optcmp_env())


def worst_difference(a: Path, b: Path) -> tuple[float, float]:
    """(median, worst) over runs of the largest relative difference of a parameter tensor."""
    found = []
    for result in sorted(a.glob("*/result.json")):
        run_id = result.parent.name
        assert json.loads(result.read_text())["status"] == "ok", run_id
        wa, wb = np.load(a / run_id / "weights.npz"), np.load(b / run_id / "weights.npz")
        found.append(max(float(np.linalg.norm(wa[n] - wb[n]) / np.linalg.norm(wb[n])) for n in wb.files))
    return statistics.median(found), max(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[8], help="the cnn's widths (default: 8)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--jobs", type=int, default=1, help="optcmp's --jobs for both engines")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10,
                    help="log.every: scalars and both splits' full-set loss every N steps (default 10, as shipped); "
                         "the evaluation passes are arithmetic in both engines, so a larger N shows the step's ratio")
    ap.add_argument("--quick", action="store_true", help="60 steps")
    args = ap.parse_args()
    if args.quick:
        args.steps = 60
    print(f"digits CNN sweep: 24 runs (4 optimizers × 2 lrs × 3 seeds), channels {args.channels}, {args.steps} steps, "
          f"--jobs {args.jobs}, log.every {args.log_every}; {load()}")
    with tempfile.TemporaryDirectory(prefix="optcmp-digits-") as tmp:
        tmp = Path(tmp)
        config = tmp / "digits.yaml"
        config.write_text(CONFIG.format(channels=list(args.channels), steps=args.steps, every=args.log_every))
        times: dict[str, list] = {"vectorized": [], "sequential": []}
        for _ in range(args.repeats):
            for engine in times:  # alternating, so the machine's drift hits both alike
                t = run(config, tmp / engine, engine, args.jobs)
                if "24 of 24 runs: 24 ok" not in t.stdout:
                    sys.exit(f"--engine {engine} did not train 24 runs ok:\n{t.stdout}")
                times[engine].append(t)
        med = {e: sorted(ts, key=lambda t: t.seconds)[len(ts) // 2] for e, ts in times.items()}
        for engine, t in med.items():
            print(f"optcmp run --engine {engine}: {t.seconds:.2f} s (median of "
                  f"{', '.join(f'{x.seconds:.2f}' for x in times[engine])}), peak {t.peak_mib:.0f} MiB")
        ratio = med["sequential"].seconds / med["vectorized"].seconds
        print(f"vectorized {med['vectorized'].seconds:.2f} s against sequential {med['sequential'].seconds:.2f} s: "
              f"{ratio:.2f}× (goal ≥ {GOAL:g}×: {'met' if ratio >= GOAL else 'NOT met'})")
        median, worst = worst_difference(tmp / "vectorized" / "digits-cnn-sweep", tmp / "sequential" / "digits-cnn-sweep")
        print(f"final weights, vectorized against sequential, relative difference: median {median:.1e}, worst {worst:.1e} "
              f"(float32 rounding, grown over {args.steps} steps); {load()}")


if __name__ == "__main__":
    main()
