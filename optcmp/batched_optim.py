"""Optimizer updates for many runs at once: SGD, Adam and AdamW over stacked parameters.

All members' parameters live in one `[M, P]` tensor (member × flattened parameters), laid
out optimizer parameter group after group, so a group is a column range and each
hyperparameter is an `[M, 1]` column: one update is a dozen batched ops, whatever M.

The maths follow `torch.optim`'s single-tensor implementations operation for operation
(torch 2.x `_single_tensor_adam` and `_single_tensor_sgd`), with every per-run constant
rounded to float32 as PyTorch rounds a Python scalar: the results equal `torch.optim`'s up
to the rounding of the forward and backward pass. Coupled (L2, Adam) and decoupled
(AdamW) decay are both per-member coefficients, so Adam and AdamW runs share one update.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# The optimizers this module can batch, by lower-case torch.optim name.
FAMILIES = {"adam": "adam", "adamw": "adam", "sgd": "sgd"}
# Per-run options each family batches (any value), and options that must keep their default.
PER_MEMBER = {
    "adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay"),
    "sgd": ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
}
DEFAULT_ONLY = {"foreach": (None, False), "maximize": (False,), "capturable": (False,), "differentiable": (False,),
                "fused": (None, False)}
# Options whose value must be equal across a group: they change which ops run.
STRUCTURAL = {"adam": ("amsgrad",), "sgd": ()}
TABLE_STEPS = 512  # bias corrections are precomputed on the host for this many steps at a time


def family_of(name: str) -> str | None:
    return FAMILIES.get(name.lower())


def unsupported_option(name: str, options: dict[str, Any]) -> str | None:
    """Why an optimizer with these resolved options cannot be batched, or None."""
    family = family_of(name)
    if family is None:
        return f"optimizer `{name}` has no batched update (supported: {', '.join(sorted(FAMILIES))})"
    for key, value in options.items():
        if key in PER_MEMBER[family]:
            continue
        if key in DEFAULT_ONLY:
            if value not in DEFAULT_ONLY[key]:
                return f"optimizer option {key}={value!r} is not batched"
            continue
        return f"optimizer option `{key}` is not batched"
    return None


def invalid_value(family: str, options: dict[str, Any]) -> str | None:
    """What `torch.optim.Adam`/`SGD`'s constructor would refuse in these resolved options (its
    own message), or None. Lets a run be checked without building a torch.optim optimizer,
    whose first construction costs a second of importing torch._dynamo."""
    lr, wd = options["lr"], options.get("weight_decay", 0)
    if not 0.0 <= lr:
        return f"Invalid learning rate: {lr}"
    if family == "adam":
        eps, betas = options["eps"], options["betas"]
        if not 0.0 <= eps:
            return f"Invalid epsilon value: {eps}"
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                return f"Invalid beta parameter at index {i}: {betas[i]}"
        if not 0.0 <= wd:
            return f"Invalid weight_decay value: {wd}"
        if not all(isinstance(b, float) for b in betas):
            return "betas must be either both floats or both Tensors"
        return None
    momentum = options.get("momentum", 0)
    if momentum < 0.0:
        return f"Invalid momentum value: {momentum}"
    if wd < 0.0:
        return f"Invalid weight_decay value: {wd}"
    if options.get("nesterov") and (momentum <= 0 or options.get("dampening", 0) != 0):
        return "Nesterov momentum requires a momentum and zero dampening"
    return None


@dataclass
class Segment:
    """One optimizer parameter group: columns `start:stop` of the flat buffer, and each
    member's resolved options for it (the optimizer's keyword arguments with the group's)."""

    start: int
    stop: int
    options: list[dict[str, Any]]
    decoupled: list[bool]  # per member: decay applied to the weights (AdamW) or to the gradient


def _column(values, like: torch.Tensor) -> torch.Tensor:
    """Per-member constants as a [M, 1] column of `like`'s dtype, each rounded from float64
    as PyTorch rounds a Python float that meets a tensor of that dtype."""
    return torch.as_tensor(np.asarray(values, dtype=np.float64), device=like.device).to(like.dtype).reshape(-1, 1)


class BatchedOptimizer:
    """The update of M runs' parameters `params` ([M, P], updated in place) from their
    gradients ([M, P]), per segment with per-member options."""

    def __init__(self, family: str, params: torch.Tensor, segments: list[Segment],
                 lr_at: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """`lr_at(steps)`, when given, is the learning rate of every member and segment at
        those (1-based) optimizer steps, `[len(steps), M, segments]`: a schedule. Without
        it each member keeps its options' `lr`."""
        self.family = family
        self.params = params
        self.segments = segments
        self.step_count = 0
        base = np.array([[o["lr"] for o in seg.options] for seg in segments], dtype=np.float64).T  # [M, segments]
        self._lr_at = lr_at or (lambda steps: np.broadcast_to(base, (len(steps), *base.shape)))
        self._cols: list[dict[str, torch.Tensor]] = []
        self._any: list[dict[str, bool]] = []
        for seg in segments:
            opts = seg.options
            wd = np.array([o.get("weight_decay", 0.0) for o in opts], dtype=np.float64)
            dec = np.array(seg.decoupled, dtype=bool)
            coupled = np.where(dec, 0.0, wd)
            cols = {"coupled_wd": _column(coupled, params)}
            flags = {"coupled": bool((coupled != 0).any())}
            if family == "adam":
                b1 = np.array([o["betas"][0] for o in opts], dtype=np.float64)
                b2 = np.array([o["betas"][1] for o in opts], dtype=np.float64)
                decoupled = np.where(dec, wd, 0.0)
                cols.update(
                    b1=b1, b2=b2, decoupled_wd=decoupled,
                    one_minus_b1=_column(1 - b1, params),
                    b2_col=_column(b2, params),
                    one_minus_b2=_column(1 - b2, params),
                    eps=_column([o["eps"] for o in opts], params),
                )
                flags["decoupled"] = bool((decoupled != 0).any())
                flags["amsgrad"] = bool(opts[0].get("amsgrad", False))
            else:
                mom = np.array([o.get("momentum", 0.0) for o in opts], dtype=np.float64)
                damp = np.where(mom != 0, [o.get("dampening", 0.0) for o in opts], 0.0)
                nesterov = np.array([bool(o.get("nesterov", False)) for o in opts])
                cols.update(
                    momentum=_column(mom, params),
                    one_minus_damp=_column(1 - damp, params),
                    nesterov=torch.as_tensor(nesterov, device=params.device).reshape(-1, 1),
                )
                flags.update(momentum=bool((mom != 0).any()), nesterov_all=bool(nesterov.all()),
                             nesterov_any=bool(nesterov.any()))
            self._cols.append(cols)
            self._any.append(flags)
        zeros = lambda: torch.zeros_like(params)  # noqa: E731
        if family == "adam":
            self.exp_avg, self.exp_avg_sq = zeros(), zeros()
            self.max_exp_avg_sq = zeros() if any(f["amsgrad"] for f in self._any) else None
        else:
            self.momentum_buffer = zeros() if any(f["momentum"] for f in self._any) else None
        self._table_start = 0
        self._tables: list[dict[str, torch.Tensor]] = []
        self._table_lrs = np.empty((0, params.shape[0], len(segments)))
        # Scratch buffers for the update's temporaries: allocating [M, P] tensors every step
        # costs page faults, as much as the arithmetic for small models.
        self._scratch = [torch.empty_like(params) for _ in range(3)]

    def lrs(self) -> np.ndarray:
        """Each member's learning rate of each parameter group at the latest step (before
        the first: the first step's), `[M, groups]`, as logged (`lr/group<i>`)."""
        k = self._table_row()
        return self._table_lrs[k]

    @torch.no_grad()
    def step(self, grads: torch.Tensor) -> None:
        """One update of every member from `grads` ([M, P]; left unchanged)."""
        self.step_count += 1
        for i, seg in enumerate(self.segments):
            cols = slice(seg.start, seg.stop)
            if self.family == "adam":
                self._adam(i, cols, grads[:, cols])
            else:
                self._sgd(i, cols, grads[:, cols])

    def _row(self, i: int) -> dict[str, torch.Tensor]:
        """Segment i's per-step constants of step t as [M, 1] columns: the learning rate's
        terms (−lr, or Adam's −lr / (1 − β1^t) and 1 − lr·weight_decay) and √(1 − β2^t).

        Computed in float64 on the host like torch's Python-float arithmetic, a block of
        steps at a time, so a step costs no host→device copy."""
        k = self._table_row()
        return {name: table[k] for name, table in self._tables[i].items()}

    def _table_row(self) -> int:
        """The current step's row in the tables, after building the tables of its block."""
        t = max(self.step_count, 1)
        if not self._tables or t >= self._table_start + TABLE_STEPS:
            self._table_start = t
            steps = np.arange(t, t + TABLE_STEPS, dtype=np.float64)[:, None]
            self._table_lrs = np.asarray(self._lr_at(np.arange(t, t + TABLE_STEPS)), dtype=np.float64)
            as_rows = lambda values: _column(values, self.params).view(TABLE_STEPS, -1, 1)  # noqa: E731
            self._tables = []
            for j, c in enumerate(self._cols):
                lr = self._table_lrs[:, :, j]  # [steps, M]
                if self.family == "adam":
                    self._tables.append({
                        "neg_step": as_rows(-lr / (1 - c["b1"] ** steps)),
                        "bc2_sqrt": as_rows((1 - c["b2"] ** steps) ** 0.5),
                        "decay_factor": as_rows(1 - lr * c["decoupled_wd"]),
                    })
                else:
                    self._tables.append({"neg_lr": as_rows(-lr)})
        return t - self._table_start

    def _adam(self, i: int, cols: slice, grad: torch.Tensor) -> None:
        c, flags = self._cols[i], self._any[i]
        param, exp_avg, exp_avg_sq = self.params[:, cols], self.exp_avg[:, cols], self.exp_avg_sq[:, cols]
        decayed, scaled, denom = (buf[:, cols] for buf in self._scratch)
        row = self._row(i)
        neg_step, bc2_sqrt = row["neg_step"], row["bc2_sqrt"]
        if flags["decoupled"]:
            param.mul_(row["decay_factor"])  # param.mul_(1 - lr * weight_decay)
        if flags["coupled"]:
            grad = torch.addcmul(grad, param, c["coupled_wd"], out=decayed)  # grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, c["one_minus_b1"])
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2): the kernel computes
        # (value·grad)·grad, and so does this
        exp_avg_sq.mul_(c["b2_col"]).addcmul_(torch.mul(grad, c["one_minus_b2"], out=scaled), grad)
        second = exp_avg_sq
        if flags["amsgrad"]:
            second = self.max_exp_avg_sq[:, cols]
            torch.maximum(second, exp_avg_sq, out=second)
        torch.sqrt(second, out=denom).div_(bc2_sqrt).add_(c["eps"])
        # param.addcdiv_(exp_avg, denom, value=-step_size): (value·exp_avg)/denom
        param.addcdiv_(torch.mul(exp_avg, neg_step, out=scaled), denom)

    def _sgd(self, i: int, cols: slice, grad: torch.Tensor) -> None:
        c, flags = self._cols[i], self._any[i]
        param = self.params[:, cols]
        decayed, nesterov = self._scratch[0][:, cols], self._scratch[1][:, cols]
        if flags["coupled"]:
            grad = torch.addcmul(grad, param, c["coupled_wd"], out=decayed)
        if flags["momentum"]:
            # A member without momentum gets buf = 0·buf + 1·grad = grad, which is what
            # torch.optim does for it without a buffer.
            buf = self.momentum_buffer[:, cols]
            if self.step_count == 1:
                buf.copy_(grad)
            else:
                buf.mul_(c["momentum"]).addcmul_(grad, c["one_minus_damp"])
            if flags["nesterov_all"]:
                grad = torch.addcmul(grad, buf, c["momentum"], out=nesterov)
            elif flags["nesterov_any"]:
                grad = torch.where(c["nesterov"], torch.addcmul(grad, buf, c["momentum"], out=nesterov), buf)
            else:
                grad = buf
        param.addcmul_(grad, self._row(i)["neg_lr"])  # param.add_(grad, alpha=-lr)
