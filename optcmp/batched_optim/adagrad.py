"""Adagrad: learning-rate decay, initial accumulator, coupled weight decay."""
from __future__ import annotations

from typing import Any

import torch

from optcmp.batched_optim._base import Family, apply_decay, column, decay_constants, per_member, torch_checks


class Adagrad(Family):
    """`torch.optim.Adagrad` (dense gradients), op for op as
    `torch.optim.adagrad._single_tensor_adagrad`:

        g ← g + λ·θ                          weight_decay λ ≠ 0
        s ← s + g·g                          s starts at initial_accumulator_value
        η_t ← η / (1 + (t − 1)·lr_decay)
        θ ← θ + (−η_t·g) / (√s + ε)

    torch starts s from the constructor's initial_accumulator_value in every parameter
    group, whatever the group says (`not_per_group`).
    """

    name = "adagrad"
    names = ("adagrad",)
    classes = ("torch.optim.adagrad.Adagrad",)
    defaults = {"lr": 1e-2, "lr_decay": 0, "weight_decay": 0, "initial_accumulator_value": 0, "eps": 1e-10}
    per_member = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")
    # Adagrad.__init__ fills every accumulator from its own argument, not the group's
    not_per_group = {"initial_accumulator_value": "torch's Adagrad fills its accumulators from the "
                                                  "constructor's value and ignores a parameter group's"}

    def invalid(self, o: dict[str, Any]) -> str | None:
        return torch_checks(o, "lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def constants(self, options, decoupled, like):
        return {**decay_constants(options, decoupled, like), "lr_decay": per_member(options, "lr_decay"),
                "initial": per_member(options, "initial_accumulator_value"),
                "eps": column(per_member(options, "eps"), like)}

    def state(self, k):
        return {"sum": k["initial"] if k["initial"].any() else None}  # torch.full_like(p, init_value)

    def schedule(self, k, lr, steps):
        return {"neg_clr": -(lr / (1 + (steps[:, None] - 1) * k["lr_decay"]))}  # value=-clr

    def update(self, param, grad, state, k, row, scratch, t):
        decayed, scaled, std = scratch
        state_sum = state["sum"]
        grad = apply_decay(param, grad, k, row, out=decayed)
        state_sum.addcmul_(grad, grad, value=1)
        torch.sqrt(state_sum, out=std).add_(k["eps"])
        param.addcdiv_(torch.mul(grad, row["neg_clr"], out=scaled), std)  # param.addcdiv_(grad, std, value=-clr)
