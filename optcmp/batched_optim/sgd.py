"""SGD: momentum, dampening, Nesterov, coupled weight decay."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optcmp.batched_optim._base import Family, apply_decay, column, decay_constants, mask, per_member


class SGD(Family):
    """`torch.optim.SGD`, op for op as `torch.optim.sgd._single_tensor_sgd`:

        g ← g + λ·θ                                   weight_decay λ ≠ 0
        b ← g (first step), else b ← μ·b + (1 − τ)·g  momentum μ ≠ 0, dampening τ
        g ← g + μ·b (nesterov), else g ← b            momentum μ ≠ 0
        θ ← θ − η·g

    Members may mix momentum 0 and ≠ 0 and Nesterov on and off: a member without momentum
    gets b ← 0·b + 1·g = g (its τ taken as 0), which is torch's update without a buffer.
    """

    name = "sgd"
    names = ("sgd",)
    classes = ("torch.optim.sgd.SGD",)
    defaults = {"lr": 1e-3, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False}
    per_member = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    scratch = 2

    def invalid(self, o: dict[str, Any]) -> str | None:
        lr, momentum, dampening, wd = o["lr"], o["momentum"], o["dampening"], o["weight_decay"]
        if lr < 0.0:
            return f"Invalid learning rate: {lr}"
        if momentum < 0.0:
            return f"Invalid momentum value: {momentum}"
        if wd < 0.0:
            return f"Invalid weight_decay value: {wd}"
        if o["nesterov"] and (momentum <= 0 or dampening != 0):
            return "Nesterov momentum requires a momentum and zero dampening"
        return None

    def constants(self, options, decoupled, like):
        mom = per_member(options, "momentum")
        damp = np.where(mom != 0, per_member(options, "dampening"), 0.0)
        nesterov = np.array([bool(o["nesterov"]) for o in options])
        return {**decay_constants(options, decoupled, like),
                "momentum": column(mom, like), "one_minus_damp": column(1 - damp, like), "nesterov": mask(nesterov, like),
                "any_momentum": bool((mom != 0).any()), "all_nesterov": bool(nesterov.all()),
                "any_nesterov": bool(nesterov.any())}

    def state(self, k):
        return {"momentum_buffer": None} if k["any_momentum"] else {}

    def update(self, param, grad, state, k, row, scratch, t):
        grad = apply_decay(param, grad, k, row, out=scratch[0])
        if k["any_momentum"]:
            buf = state["momentum_buffer"]
            if t == 1:
                buf.copy_(grad)  # buf = grad.detach().clone()
            else:
                buf.mul_(k["momentum"]).addcmul_(grad, k["one_minus_damp"])  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            if k["all_nesterov"]:
                grad = torch.addcmul(grad, buf, k["momentum"], out=scratch[1])  # grad.add(buf, alpha=momentum)
            elif k["any_nesterov"]:
                grad = torch.where(k["nesterov"], torch.addcmul(grad, buf, k["momentum"], out=scratch[1]), buf)
            else:
                grad = buf
        param.addcmul_(grad, row["neg_lr"])  # param.add_(grad, alpha=-lr)
