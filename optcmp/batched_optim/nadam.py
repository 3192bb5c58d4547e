"""NAdam: Adam with Nesterov momentum and momentum decay, coupled or decoupled decay."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optcmp.batched_optim._base import (Family, apply_decay, decay_constants, moment_constants, per_member, scalar_table,
                                        torch_checks, update_moments)


class NAdam(Family):
    """`torch.optim.NAdam`, op for op as `torch.optim.nadam._single_tensor_nadam`:

        θ ← θ·(1 − η·λ)   decoupled_weight_decay,   else g ← g + λ·θ
        μ_t ← β1·(1 − ½·0.96^(t·ψ))           momentum_decay ψ
        Π_t ← Π_{t−1}·μ_t                    a tensor of torch's scalar dtype (float32 unless
                                             the default dtype is float64), rounded each step
        m ← m + (1 − β1)·(g − m),   v ← β2·v + ((1 − β2)·g)·g
        d ← √(v / (1 − β2^t)) + ε
        θ ← θ + (−η·(1 − μ_t) / (1 − Π_t))·g / d
        θ ← θ + (−η·μ_{t+1} / (1 − Π_t·μ_{t+1}))·m / d
    """

    name = "nadam"
    names = ("nadam",)
    classes = ("torch.optim.nadam.NAdam",)
    defaults = {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "momentum_decay": 4e-3,
                "decoupled_weight_decay": False}
    per_member = ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay")

    def invalid(self, o: dict[str, Any]) -> str | None:
        return torch_checks(o, "lr", "eps", "betas", "weight_decay", "momentum_decay")

    def decoupled(self, o, by_class):
        return by_class or bool(o["decoupled_weight_decay"])

    def constants(self, options, decoupled, like):
        # torch.optim.optimizer._get_scalar_dtype(): the dtype of the `mu_product` state
        scalar = np.float64 if torch.get_default_dtype() == torch.float64 else np.float32
        return {**decay_constants(options, decoupled, like), **moment_constants(options, like),
                "momentum_decay": per_member(options, "momentum_decay"), "scalar": scalar, "products": {}}

    def state(self, k):
        return {"exp_avg": None, "exp_avg_sq": None}

    def schedule(self, k, lr, steps):
        mu, mu_next, product = self._mus(k, steps)
        product_next = product * mu_next  # _get_value(mu_product) * mu_next
        return {"bc2": scalar_table(lambda t, b2: 1 - b2**t, steps, k["b2"]),
                "grad_step": -lr * (1.0 - mu) / (1.0 - product),
                "avg_step": (-lr * mu_next) / (1.0 - product_next),
                "decay_factor": 1 - lr * k["decoupled_wd"]}

    @staticmethod
    def _mus(k: dict[str, Any], steps: np.ndarray) -> tuple[np.ndarray, ...]:
        """μ_t, μ_{t+1} and Π_t of each member at `steps`, `[S, M]` each. Π is carried from
        block to block (`k["products"]`: per (β1, ψ), the last step and Π there), and
        recomputed from step 1 for a block that does not continue the last one."""
        scalar, first, last = k["scalar"], int(steps[0]), int(steps[-1])
        keys = list(zip(k["b1"].tolist(), k["momentum_decay"].tolist()))
        rows = {}
        for key in dict.fromkeys(keys):
            beta1, psi = key
            done, product = k["products"].get(key, (0, scalar(1.0)))
            if done != first - 1:
                done, product = 0, scalar(1.0)
            out = []
            for t in range(done + 1, last + 1):
                step = float(t)
                mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * psi)))
                mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * psi)))
                product = scalar(product * scalar(mu))  # mu_product *= mu
                if t >= first:
                    out.append((mu, mu_next, float(product)))
            k["products"][key] = (last, product)
            rows[key] = out
        table = np.array([rows[key] for key in keys], dtype=np.float64).transpose(1, 0, 2)  # [S, M, 3]
        return table[..., 0], table[..., 1], table[..., 2]

    def update(self, param, grad, state, k, row, scratch, t):
        decayed, scaled, denom = scratch
        grad = apply_decay(param, grad, k, row, out=decayed)
        update_moments(grad, state, k, out=scaled)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        torch.div(exp_avg_sq, row["bc2"], out=denom).sqrt_().add_(k["eps"])  # exp_avg_sq.div(bias_correction2).sqrt()
        param.addcdiv_(torch.mul(grad, row["grad_step"], out=scaled), denom)
        param.addcdiv_(torch.mul(exp_avg, row["avg_step"], out=scaled), denom)
