"""Adam and AdamW (coupled or decoupled weight decay per member), with AMSGrad."""
from __future__ import annotations

from typing import Any

import torch

from optcmp.batched_optim._base import (Family, apply_decay, decay_constants, moment_constants, scalar_table, torch_checks,
                                        update_moments)


class Adam(Family):
    """`torch.optim.Adam` and `AdamW`, op for op as `torch.optim.adam._single_tensor_adam`
    (AdamW is Adam with `decoupled_weight_decay=True`):

        θ ← θ·(1 − η·λ)                  decoupled (AdamW, decoupled_weight_decay)
        g ← g + λ·θ                      coupled (Adam)
        m ← m + (1 − β1)·(g − m)         exp_avg.lerp_(grad, 1 - beta1)
        v ← β2·v + ((1 − β2)·g)·g
        v̂ ← max(v̂, v)                    amsgrad (structural: equal within a segment)
        θ ← θ + (−η / (1 − β1^t))·m / (√v / √(1 − β2^t) + ε)     (v̂ for amsgrad)

    Adam and AdamW members share a segment: each member's decay is one of the two.
    """

    name = "adam"
    names = ("adam", "adamw")
    classes = ("torch.optim.adam.Adam", "torch.optim.adamw.AdamW")
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
                "decoupled_weight_decay": False}
    per_member = ("lr", "betas", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay")
    structural = ("amsgrad",)

    def invalid(self, o: dict[str, Any]) -> str | None:
        problem = torch_checks(o, "lr", "eps", "betas", "weight_decay")
        if problem is None and not all(isinstance(b, float) for b in o["betas"]):
            return "betas must be either both floats or both Tensors"
        return problem

    def decoupled(self, o, by_class):
        return by_class or bool(o["decoupled_weight_decay"])

    def constants(self, options, decoupled, like):
        return {**decay_constants(options, decoupled, like), **moment_constants(options, like),
                "amsgrad": bool(options[0]["amsgrad"])}

    def state(self, k):
        return {"exp_avg": None, "exp_avg_sq": None, **({"max_exp_avg_sq": None} if k["amsgrad"] else {})}

    def schedule(self, k, lr, steps):
        bc1 = scalar_table(lambda t, b1: 1 - b1**t, steps, k["b1"])
        return {"neg_step": -lr / bc1,  # value=-step_size, step_size = lr / bias_correction1
                "bc2_sqrt": scalar_table(lambda t, b2: (1 - b2**t) ** 0.5, steps, k["b2"]),
                "decay_factor": 1 - lr * k["decoupled_wd"]}

    def update(self, param, grad, state, k, row, scratch, t):
        decayed, scaled, denom = scratch
        grad = apply_decay(param, grad, k, row, out=decayed)
        update_moments(grad, state, k, out=scaled)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        second = exp_avg_sq
        if k["amsgrad"]:
            second = state["max_exp_avg_sq"]
            torch.maximum(second, exp_avg_sq, out=second)
        torch.sqrt(second, out=denom).div_(row["bc2_sqrt"]).add_(k["eps"])
        # param.addcdiv_(exp_avg, denom, value=-step_size): (value·exp_avg)/denom
        param.addcdiv_(torch.mul(exp_avg, row["neg_step"], out=scaled), denom)
