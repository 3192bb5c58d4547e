"""Adamax: Adam with the infinity norm, coupled weight decay."""
from __future__ import annotations

from typing import Any

import torch

from optcmp.batched_optim._base import Family, apply_decay, decay_constants, moment_constants, scalar_table, torch_checks


class Adamax(Family):
    """`torch.optim.Adamax`, op for op as `torch.optim.adamax._single_tensor_adamax`:

        g ← g + λ·θ                          weight_decay λ ≠ 0
        m ← m + (1 − β1)·(g − m)
        u ← max(β2·u, |g| + ε)
        θ ← θ + (−η / (1 − β1^t))·m / u
    """

    name = "adamax"
    names = ("adamax",)
    classes = ("torch.optim.adamax.Adamax",)
    defaults = {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0}
    per_member = ("lr", "betas", "eps", "weight_decay")

    def invalid(self, o: dict[str, Any]) -> str | None:
        return torch_checks(o, "lr", "eps", "betas", "weight_decay")

    def constants(self, options, decoupled, like):
        return {**decay_constants(options, decoupled, like), **moment_constants(options, like)}

    def state(self, k):
        return {"exp_avg": None, "exp_inf": None}

    def schedule(self, k, lr, steps):
        clr = lr / scalar_table(lambda t, b1: 1 - b1**t, steps, k["b1"])  # lr / bias_correction
        return {"neg_clr": -clr}

    def update(self, param, grad, state, k, row, scratch, t):
        decayed, norm, scaled = scratch
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        grad = apply_decay(param, grad, k, row, out=decayed)
        exp_avg.lerp_(grad, k["one_minus_b1"])
        torch.maximum(exp_inf.mul_(k["b2_col"]), torch.abs(grad, out=norm).add_(k["eps"]), out=exp_inf)
        param.addcdiv_(torch.mul(exp_avg, row["neg_clr"], out=scaled), exp_inf)  # value=-clr
