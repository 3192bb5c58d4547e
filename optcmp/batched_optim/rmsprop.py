"""RMSprop: smoothing α, centered, momentum, coupled weight decay."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optcmp.batched_optim._base import Family, apply_decay, column, decay_constants, mask, per_member, torch_checks


class RMSprop(Family):
    """`torch.optim.RMSprop`, op for op as `torch.optim.rmsprop._single_tensor_rmsprop`:

        g ← g + λ·θ                          weight_decay λ ≠ 0
        v ← α·v + ((1 − α)·g)·g
        ḡ ← ḡ + (1 − α)·(g − ḡ)              centered (structural)
        a ← √(v − ḡ·ḡ) + ε  (centered), else √v + ε
        b ← μ·b + g / a,  θ ← θ − η·b        momentum μ > 0
        θ ← θ + (−η·g) / a                   momentum 0

    Members may mix momentum 0 and > 0: the buffer is kept for all, and each member's
    step is chosen from the two as torch computes it.
    """

    name = "rmsprop"
    names = ("rmsprop",)
    classes = ("torch.optim.rmsprop.RMSprop",)
    defaults = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0, "momentum": 0, "centered": False}
    per_member = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    structural = ("centered",)

    def invalid(self, o: dict[str, Any]) -> str | None:
        return torch_checks(o, "lr", "eps", "momentum", "weight_decay", "alpha")

    def constants(self, options, decoupled, like):
        alpha, mom = per_member(options, "alpha"), per_member(options, "momentum")
        return {**decay_constants(options, decoupled, like), "momentum_np": mom,
                "alpha": column(alpha, like), "one_minus_alpha": column(1 - alpha, like),
                "eps": column(per_member(options, "eps"), like), "momentum": column(mom, like),
                "with_momentum": mask(mom > 0, like), "any_momentum": bool((mom > 0).any()),
                "all_momentum": bool((mom > 0).all()), "centered": bool(options[0]["centered"])}

    def state(self, k):
        return {"square_avg": None, **({"grad_avg": None} if k["centered"] else {}),
                **({"momentum_buffer": None} if k["any_momentum"] else {})}

    def schedule(self, k, lr, steps):
        # a member with momentum steps by the buffer with factor −η, one without by its
        # (−η·g)/a with factor 1
        return {"neg_lr": -lr, "buffer_factor": np.where(k["momentum_np"] > 0, -lr, 1.0)}

    def update(self, param, grad, state, k, row, scratch, t):
        decayed, scaled, avg = scratch
        square_avg = state["square_avg"]
        grad = apply_decay(param, grad, k, row, out=decayed)
        square_avg.mul_(k["alpha"]).addcmul_(torch.mul(grad, k["one_minus_alpha"], out=scaled), grad)
        if k["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg.lerp_(grad, k["one_minus_alpha"])
            torch.addcmul(square_avg, grad_avg, grad_avg, value=-1, out=avg).sqrt_()
        else:
            torch.sqrt(square_avg, out=avg)
        avg.add_(k["eps"])
        if not k["any_momentum"]:
            param.addcdiv_(torch.mul(grad, row["neg_lr"], out=scaled), avg)  # param.addcdiv_(grad, avg, value=-lr)
            return
        buf = state["momentum_buffer"]
        buf.mul_(k["momentum"]).addcdiv_(grad, avg)
        if k["all_momentum"]:
            param.addcmul_(buf, row["neg_lr"])  # param.add_(buf, alpha=-lr)
            return
        plain = torch.mul(grad, row["neg_lr"], out=scaled).div_(avg)
        param.addcmul_(torch.where(k["with_momentum"], buf, plain), row["buffer_factor"])
