"""Lion as pytorch-optimizer implements it (`pytorch_optimizer.Lion`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optcmp.batched_optim._base import Family, apply_decay, column, decay_constants, per_member


class Lion(Family):
    """`pytorch_optimizer.Lion` (Chen et al. 2023, "Symbolic Discovery of Optimization
    Algorithms"), op for op as its `_step_per_param` and `_step_foreach` (the same ops):

        θ ← θ·(1 − λ·η)  weight_decouple (the default),  θ·(1 − λ) with fixed_decay
        g ← g + λ·θ      weight_decouple false
        u ← sign(m + (1 − β1)·(g − m))
        m ← m + (1 − β2)·(g − m)
        θ ← θ − η·u

    Its `weight_decouple` alone decides a member's decay (Segment.decoupled is not read).
    The options it takes through **kwargs for its variants (gradient centralization,
    AdaNorm, cautious updates) are not batched.
    """

    name = "lion"
    paths = ("pytorch_optimizer:Lion",)
    classes = ("pytorch_optimizer.optimizer.lion.Lion",)
    defaults = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0, "weight_decouple": True, "fixed_decay": False}
    per_member = ("lr", "betas", "weight_decay", "weight_decouple", "fixed_decay")
    refused = {
        "use_gc": ((None, False), "Lion's gradient centralization"),
        "adanorm": ((None, False), "Lion's AdaNorm variant"),
        "adanorm_r": ((None,), "Lion's AdaNorm variant"),
        "cautious": ((None, False), "Lion's cautious updates"),
    }
    scratch = 2

    def invalid(self, o: dict[str, Any]) -> str | None:
        # BaseOptimizer.validate_learning_rate, validate_betas, validate_non_negative
        lr, betas, wd = o["lr"], o["betas"], o["weight_decay"]
        if lr is not None and lr < 0.0:
            return f"learning rate must be positive. ({lr} > 0)"
        if betas[0] is not None and not 0.0 <= betas[0] < 1.0:
            return "beta1 must be in the range [0.0, 1.0)"
        if not 0.0 <= betas[1] < 1.0:
            return "beta2 must be in the range [0.0, 1.0)"
        if wd is not None and wd < 0.0:
            return "weight_decay must be non-negative"
        return None

    def decoupled(self, o, by_class):
        return bool(o["weight_decouple"])

    def constants(self, options, decoupled, like):
        return {**decay_constants(options, decoupled, like),
                "fixed": np.array([bool(o["fixed_decay"]) for o in options]),
                "one_minus_b1": column(1 - per_member(options, "beta1"), like),
                "one_minus_b2": column(1 - per_member(options, "beta2"), like)}

    def state(self, k):
        return {"exp_avg": None}

    def schedule(self, k, lr, steps):
        # p.mul_(1.0 - weight_decay * (1.0 if fixed_decay else lr))
        return {"neg_lr": -lr, "decay_factor": 1.0 - k["decoupled_wd"] * np.where(k["fixed"], 1.0, lr)}

    def update(self, param, grad, state, k, row, scratch, t):
        decayed, update = scratch
        exp_avg = state["exp_avg"]
        grad = apply_decay(param, grad, k, row, out=decayed)
        torch.lerp(exp_avg, grad, k["one_minus_b1"], out=update).sign_()
        exp_avg.lerp_(grad, k["one_minus_b2"])
        param.addcmul_(update, row["neg_lr"])  # p.add_(update, alpha=-lr)
