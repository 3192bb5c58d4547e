"""RAdam: Adam with the variance rectification, coupled or decoupled decay."""
from __future__ import annotations

from typing import Any

import torch

from optcmp.batched_optim._base import (Family, apply_decay, decay_constants, moment_constants, scalar_table, torch_checks,
                                        update_moments)


def _scalars(t: float, beta1: float, beta2: float) -> tuple[float, float, float, float]:
    """1 − β1^t, √(1 − β2^t), the rectification r_t and whether it applies (ρ_t > 5), as
    `_single_tensor_radam` computes them (r_t = 1 where it does not apply)."""
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * (beta2**t) / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        return bias_correction1, bias_correction2**0.5, rect, 1.0
    return bias_correction1, bias_correction2**0.5, 1.0, 0.0


class RAdam(Family):
    """`torch.optim.RAdam`, op for op as `torch.optim.radam._single_tensor_radam`:

        θ ← θ·(1 − η·λ)   decoupled_weight_decay,   else g ← g + λ·θ
        m ← m + (1 − β1)·(g − m),   v ← β2·v + ((1 − β2)·g)·g
        ρ∞ = 2 / (1 − β2) − 1,   ρ_t = ρ∞ − 2t·β2^t / (1 − β2^t)
        x ← (m / (1 − β1^t))·η
        ρ_t > 5:  x ← (x·(√(1 − β2^t)·(1 / (√v + ε))))·r_t,
                  r_t = √((ρ_t − 4)(ρ_t − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρ_t))
        θ ← θ − x

    Whether ρ_t > 5 depends on β2 and t: the host knows it for every member and step, so a
    step where all members rectify (or none) runs one branch, and a mixed step gives the
    others an adaptive factor of exactly 1.
    """

    name = "radam"
    names = ("radam",)
    classes = ("torch.optim.radam.RAdam",)
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "decoupled_weight_decay": False}
    per_member = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay")

    def invalid(self, o: dict[str, Any]) -> str | None:
        return torch_checks(o, "lr", "eps", "betas", "weight_decay")

    def decoupled(self, o, by_class):
        return by_class or bool(o["decoupled_weight_decay"])

    def constants(self, options, decoupled, like):
        return {**decay_constants(options, decoupled, like), **moment_constants(options, like)}

    def state(self, k):
        return {"exp_avg": None, "exp_avg_sq": None}

    def schedule(self, k, lr, steps):
        table = scalar_table(_scalars, steps, k["b1"], k["b2"])  # [S, M, 4]
        rectified = table[..., 3] == 1.0
        return {"bc1": table[..., 0], "lr": lr, "bc2_sqrt": table[..., 1], "rect": table[..., 2],
                "plain": ~rectified, "any_rect": rectified.any(axis=1), "all_rect": rectified.all(axis=1),
                "decay_factor": 1 - lr * k["decoupled_wd"]}

    def update(self, param, grad, state, k, row, scratch, t):
        decayed, step, adaptive = scratch
        grad = apply_decay(param, grad, k, row, out=decayed)
        update_moments(grad, state, k, out=step)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        torch.div(exp_avg, row["bc1"], out=step).mul_(row["lr"])  # bias_corrected_exp_avg * lr
        if row["any_rect"]:
            # (bias_correction2**0.5) / (√v + ε) is Tensor.__rtruediv__: reciprocal, then times the scalar
            torch.sqrt(exp_avg_sq, out=adaptive).add_(k["eps"]).reciprocal_().mul_(row["bc2_sqrt"])
            if not row["all_rect"]:
                adaptive.masked_fill_(row["plain"], 1.0)
            step.mul_(adaptive).mul_(row["rect"])
        param.add_(step, alpha=-1.0)
