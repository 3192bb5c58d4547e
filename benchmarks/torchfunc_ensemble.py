"""The reference sweep as a skilled PyTorch user writes an ensemble by hand with torch.func:
the members' weights stacked (`stack_module_state`), one `vmap(grad(functional_call))`
for every member's gradients, and Adam/AdamW with per-member weight decay as a few batched
tensor ops. No logging, no run folders, no checks: the training alone. optcmp's vectorized
engine is measured against it (benchmarks/scaling.py).

    python benchmarks/torchfunc_ensemble.py --members 64 --steps 1000

Members cycle as in ../shared/baselines/handwritten_sweep.py: Adam/AdamW, eight
weight_decay values, seeds 0, 1, …
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

DECAYS = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2, width), nn.LayerNorm(width),
        nn.Linear(width, width), nn.LayerNorm(width),
        nn.Linear(width, width), nn.LayerNorm(width),
        nn.Linear(width, width), nn.LayerNorm(width),
        nn.Linear(width, 1),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--width", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()

    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    x = torch.stack([x1, x2], dim=1)
    y = 2 * x1 - x2**2 + 1

    start = time.perf_counter()
    models, decoupled, decays = [], [], []
    for i in range(args.members):
        decoupled.append(i % 2 == 1)  # AdamW
        decays.append(DECAYS[(i // 2) % len(DECAYS)])
        torch.manual_seed(i // (2 * len(DECAYS)))
        models.append(mlp(args.width))
    params, buffers = stack_module_state(models)
    params = {k: p.detach() for k, p in params.items()}
    base = copy.deepcopy(models[0]).to("meta")

    def loss_of(p, b, x, y):
        return F.mse_loss(functional_call(base, (p, b), (x,)).squeeze(-1), y)

    step_fn = vmap(grad_and_value(loss_of), in_dims=(0, 0, None, None))

    names = list(params)
    weights = [params[k] for k in names]
    shape = lambda p: (args.members,) + (1,) * (p.dim() - 1)  # noqa: E731
    wd = torch.tensor(decays)
    dec = torch.tensor(decoupled)
    coupled_wd = [torch.where(dec, 0.0, wd).view(shape(p)) for p in weights]  # Adam: L2 in the gradient
    shrink = [torch.where(dec, 1 - args.lr * wd, 1.0).view(shape(p)) for p in weights]  # AdamW: decay the weights
    exp_avg = [torch.zeros_like(p) for p in weights]
    exp_avg_sq = [torch.zeros_like(p) for p in weights]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    with torch.no_grad():
        for t in range(1, args.steps + 1):
            grads, losses = step_fn(params, buffers, x, y)
            g = [grads[k] for k in names]
            g = torch._foreach_add(g, torch._foreach_mul(weights, coupled_wd))
            torch._foreach_mul_(weights, shrink)
            torch._foreach_lerp_(exp_avg, g, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, g, g, 1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, math.sqrt(1 - beta2**t))
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(weights, exp_avg, denom, -args.lr / (1 - beta1**t))
    print(f"members {args.members} train_seconds {time.perf_counter() - start:.2f} "
          f"mean_final_loss {losses.mean().item():.4f}")


if __name__ == "__main__":
    main()
