"""Training steps per second of the torch.func stacked model (optcmp.functional) against
what it would replace, in one process (no logging, no run folders: the step alone):

  cnn   the digits CNN (tests.userlib.DigitsCNN: Conv2d → ReLU → MaxPool2d → Flatten →
        Linear), batch 64, 24 members with Adam: FunctionalStack + BatchedOptimizer against
        24 runs of nn.Module + torch.optim.Adam one after another (the sequential engine)
  mlp   the reference MLP (Linear(2,20), LayerNorm, 3 × (Linear(20,20), LayerNorm),
        Linear(20,1)), 20 samples full batch, 64 members with Adam: FunctionalStack against
        the hand-written batched_model.StackedModel

Each variant is timed over `--steps` steps after `--warmup` steps, `--reps` times,
interleaved; the medians and their ratio are printed.

    python benchmarks/functional_stack.py            # 200 steps, 3 repetitions
    python benchmarks/functional_stack.py --quick    # a check that it runs
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optcmp.batched_model import StackedModel, member_losses  # noqa: E402
from optcmp.batched_optim import BatchedOptimizer, Segment  # noqa: E402
from optcmp.functional import FunctionalStack, member_generator  # noqa: E402
from tests.userlib import DigitsCNN  # noqa: E402

ADAM = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}


def reference_mlp() -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(2, 20), nn.LayerNorm(20)]
    for _ in range(3):
        layers += [nn.Linear(20, 20), nn.LayerNorm(20)]
    return nn.Sequential(*layers, nn.Linear(20, 1))


class Stacked:
    """M members in a flat [M, P] buffer, one stacked model over views into it, Adam."""

    def __init__(self, make, members: int, kind: str, input_dims: int) -> None:
        models, generators = [], []
        for seed in range(members):
            torch.manual_seed(seed)
            models.append(make())
            generators.append(member_generator())
        template = models[0]
        shapes = {n: p.shape for n, p in template.named_parameters()}
        self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
        views, at = {}, 0
        for n, s in shapes.items():
            views[n] = self.flat[:, at:at + s.numel()].view(members, *s)
            at += s.numel()
        self.names = list(shapes)
        if kind == "functional":
            self.model = FunctionalStack(template, views, None, generators, input_dims=input_dims)
        else:
            self.model = StackedModel(template, views)
        lrs = [1e-3 * (1 + m % 4) for m in range(members)]
        self.opt = BatchedOptimizer("adam", self.flat, [Segment(0, at, [{**ADAM, "lr": lr} for lr in lrs], [False] * members)])
        self.grads = torch.empty_like(self.flat)

    def step(self, x, y, loss_fn, task) -> None:
        out, saved = self.model.forward(x, keep=True, train=True)
        _, grad_out = member_losses(loss_fn, out, y, task, grad=True)
        named = self.model.backward(saved, grad_out)
        torch.cat([named[n].reshape(len(self.flat), -1) for n in self.names], 1, out=self.grads)
        self.opt.step(self.grads)


class Sequential:
    """M runs of nn.Module + torch.optim.Adam, stepped one after another."""

    def __init__(self, make, members: int) -> None:
        self.runs = []
        for seed in range(members):
            torch.manual_seed(seed)
            model = make()
            self.runs.append((model, torch.optim.Adam(model.parameters(), lr=1e-3 * (1 + seed % 4))))

    def step(self, x, y, loss_fn, task) -> None:
        for m, (model, opt) in enumerate(self.runs):
            opt.zero_grad(set_to_none=True)
            out = model(x[m])
            loss_fn(out.squeeze(-1) if task == "regression" else out, y[m]).backward()
            opt.step()


def steps_per_second(engine, batches, loss_fn, task, steps: int, warmup: int) -> float:
    for i in range(warmup):
        engine.step(*batches[i % len(batches)], loss_fn, task)
    start = time.perf_counter()
    for i in range(steps):
        engine.step(*batches[i % len(batches)], loss_fn, task)
    return steps / (time.perf_counter() - start)


def cnn_batches(members: int, n: int = 8) -> list:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):  # each member its own batch of 64, as in a sweep
        idx = torch.stack([torch.randperm(len(x), generator=gen)[:64] for _ in range(members)])
        out.append((x[idx], y[idx]))
    return out


def mlp_batches(members: int) -> list:
    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    x, y = torch.stack([x1, x2], 1), 2 * x1 - x2 ** 2 + 1
    return [(x, y.expand(members, -1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--quick", action="store_true", help="a few steps, once: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.reps = 5, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    cnn, mlp = cnn_batches(24), mlp_batches(64)
    variants = {  # name: (engine, batches, loss, task)
        "cnn functional (24 stacked)": (Stacked(DigitsCNN, 24, "functional", 2), cnn, F.cross_entropy, "classification"),
        "cnn sequential (24 runs)": (Sequential(DigitsCNN, 24), cnn, F.cross_entropy, "classification"),
        "mlp functional (64 stacked)": (Stacked(reference_mlp, 64, "functional", 2), mlp, F.mse_loss, "regression"),
        "mlp hand-written (64 stacked)": (Stacked(reference_mlp, 64, "handwritten", 2), mlp, F.mse_loss, "regression"),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.reps):  # interleaved, so that the machine's drift hits every variant alike
        for name, (engine, batches, loss_fn, task) in variants.items():
            rates[name].append(steps_per_second(engine, batches, loss_fn, task, args.steps, args.warmup))
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in median.items():
        print(f"{name:32s} {rate:9.1f} group steps/s")
    cnn_ratio = median["cnn functional (24 stacked)"] / median["cnn sequential (24 runs)"]
    mlp_ratio = median["mlp functional (64 stacked)"] / median["mlp hand-written (64 stacked)"]
    print(f"cnn: functional ÷ sequential      {cnn_ratio:.2f}×  (issue 16's goal for the whole sweep: ≥ 3×)")
    print(f"mlp: functional ÷ hand-written    {mlp_ratio:.2f}×  (below 1: the hand-written path is faster)")


if __name__ == "__main__":
    main()
