"""What a catalogue entry is made of, and the pieces entries share.

A family (`Family`) is one optimizer's batched update over a segment: columns
`start:stop` of every member's flattened parameters, `[M, cols]`, with each member's own
options. An entry declares

- which optimizer classes select it (`names`: torch.optim names, matched case-insensitively;
  `paths`: import paths; `classes`: the classes' `module.qualname`),
- its options: `defaults` (the constructor's, filled in when an option is not given),
  `per_member` (batched with any value), `structural` (of those, the ones that change
  which ops run, so must be equal within a segment), `refused` (options that must keep
  their default, with the reason; `DEFAULT_ONLY` holds the ones every family shares),
  `not_per_group` (options the optimizer reads from its constructor only, so that a
  parameter group's own value has no effect in torch and must not in the batch),
- `invalid(options)`: what the constructor would refuse, in its order and with its message,
- `constants(options, decoupled, like)`: the segment's per-member constants, each an
  `[M, 1]` column rounded as PyTorch rounds a Python float that meets a tensor, and the
  Python flags that choose which ops run,
- `state(k)`: the `[M, P]` buffers it needs and their initial values,
- `schedule(k, lr, steps)`: its step-dependent scalars for a block of steps, computed on
  the host in float64 exactly as torch's Python-float arithmetic does (a bias correction,
  a decayed rate), so that a step costs no host→device copy,
- `update(param, grad, state, k, row, scratch, t)`: one step, in place, with the ops of
  the torch function it mirrors (named in the entry's docstring), op for op.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

TABLE_STEPS = 512  # step-dependent scalars are precomputed on the host for this many steps at a time
# Options every family refuses unless they keep these values (torch.optim's defaults):
# they change the maths (maximize) or only how torch.optim computes it.
DEFAULT_ONLY = {"foreach": (None, False), "maximize": (False,), "capturable": (False,), "differentiable": (False,),
                "fused": (None, False)}
# torch.optim's wording of `Invalid …: value` by option; the others say `Invalid <option> value`.
LABELS = {"lr": "learning rate", "eps": "epsilon value"}


@dataclass
class Segment:
    """One optimizer parameter group: columns `start:stop` of the flat buffer, and each
    member's resolved options for it (the optimizer's keyword arguments with the group's).

    `decoupled[m]`: member m's optimizer decays decoupled by its class (AdamW), which its
    options cannot say. A family with its own switch also reads it from the options
    (`decoupled_weight_decay`; Lion's `weight_decouple` alone decides for Lion)."""

    start: int
    stop: int
    options: list[dict[str, Any]]
    decoupled: list[bool] | None = None


def column(values, like: torch.Tensor) -> torch.Tensor:
    """Per-member constants as a [M, 1] column of `like`'s dtype, each rounded from float64
    as PyTorch rounds a Python float that meets a tensor of that dtype."""
    return torch.as_tensor(np.array(values, dtype=np.float64), device=like.device).to(like.dtype).reshape(-1, 1)


def mask(values, like: torch.Tensor) -> torch.Tensor:
    """Per-member switches as a [M, 1] bool column on `like`'s device."""
    return torch.as_tensor(np.asarray(values, dtype=bool), device=like.device).reshape(-1, 1)


def scalar_table(fn: Callable[..., Any], steps: np.ndarray, *per_member: np.ndarray) -> np.ndarray:
    """`fn(step, *member's values)` for every step and member, `[steps, M]` (or `[steps, M, n]`
    when fn returns n values), evaluated with Python floats once per distinct tuple of
    member values: torch computes these scalars in Python (libm's pow), and numpy's vector
    pow differs from it in the last bit."""
    keys = list(zip(*(np.asarray(v, dtype=np.float64).tolist() for v in per_member)))
    distinct = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    values = np.array([[fn(t, *key) for key in distinct] for t in np.asarray(steps, dtype=np.float64).tolist()],
                      dtype=np.float64)
    return values[:, [distinct[key] for key in keys]]


def torch_checks(o: dict[str, Any], *keys: str) -> str | None:
    """torch.optim's constructor checks `not 0.0 <= value` (betas: `not 0.0 <= beta < 1.0`)
    in the order given, and its message for the first that fails."""
    for key in keys:
        if key == "betas":
            betas = o["betas"]
            for i in (0, 1):
                if not 0.0 <= betas[i] < 1.0:
                    return f"Invalid beta parameter at index {i}: {betas[i]}"
        elif not 0.0 <= o[key]:
            return f"Invalid {LABELS.get(key, key + ' value')}: {o[key]}"
    return None


def per_member(options: list[dict[str, Any]], key: str) -> np.ndarray:
    """Every member's value of `key` as float64 (`betas` keys: `beta1`, `beta2`)."""
    if key in ("beta1", "beta2"):
        return np.array([o["betas"][key == "beta2"] for o in options], dtype=np.float64)
    return np.array([o[key] for o in options], dtype=np.float64)


class Family:
    """One catalogue entry (see the module docstring). `k`, the segment's constants, is a
    dict of [M, 1] columns, float64 arrays for the schedule, and Python flags."""

    name: ClassVar[str]
    names: ClassVar[tuple[str, ...]] = ()
    paths: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]]
    per_member: ClassVar[tuple[str, ...]]
    structural: ClassVar[tuple[str, ...]] = ()
    refused: ClassVar[dict[str, tuple[tuple, str]]] = {}  # option → (the values it may keep, what it is)
    not_per_group: ClassVar[dict[str, str]] = {}  # options a parameter group may not set itself → why
    scratch: ClassVar[int] = 3  # [M, P] temporaries the update needs

    def invalid(self, o: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def decoupled(self, o: dict[str, Any], by_class: bool) -> bool:
        """Whether this member's weight decay is decoupled (θ ← θ·(1 − η·λ)); families
        that have a decoupled variant say so."""
        return False

    def constants(self, options: list[dict[str, Any]], decoupled: np.ndarray, like: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def state(self, k: dict[str, Any]) -> dict[str, np.ndarray | None]:
        """The buffers this segment needs: name → per-member initial value (None: zeros)."""
        return {}

    def schedule(self, k: dict[str, Any], lr: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
        """Step-dependent scalars of the steps `steps` (`[S]`, float64) from the members'
        learning rates there (`lr`, `[S, M]`): `[S, M]` floats become `[M, 1]` rows of the
        parameters' dtype, `[S, M]` bools `[M, 1]` masks, `[S]` bools stay host flags."""
        return {"neg_lr": -lr}

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], k: dict[str, Any],
               row: dict[str, Any], scratch: list[torch.Tensor], t: int) -> None:
        raise NotImplementedError

    def all_options(self, o: dict[str, Any]) -> dict[str, Any]:
        """The member's options with the constructor's defaults filled in."""
        return {**self.defaults, **o}


def decay_constants(options: list[dict[str, Any]], decoupled: np.ndarray, like: torch.Tensor) -> dict[str, Any]:
    """The weight decay of a segment, split by member into the coupled part (added to the
    gradient: `g ← g + λ·θ`, a column) and the decoupled part (`θ ← θ·(1 − η·λ)`, whose
    factor depends on the step's learning rate: float64 for the schedule)."""
    wd = per_member(options, "weight_decay")
    coupled = np.where(decoupled, 0.0, wd)
    decoupled_wd = np.where(decoupled, wd, 0.0)
    return {"coupled_wd": column(coupled, like), "coupled": bool((coupled != 0).any()),
            "decoupled_wd": decoupled_wd, "decoupled": bool((decoupled_wd != 0).any())}


def apply_decay(param: torch.Tensor, grad: torch.Tensor, k: dict[str, Any], row: dict[str, Any],
                out: torch.Tensor) -> torch.Tensor:
    """`param.mul_(1 - lr * weight_decay)` for decoupled members, then the gradient
    `grad.add(param, alpha=weight_decay)` for coupled ones (into `out`); each member gets
    one of the two, the other is an exact no-op for it (a factor 1, a decay 0). Returns the
    gradient to use. addcmul with a column computes the fused g + θ·λ that add(alpha=)
    computes."""
    if k["decoupled"]:
        param.mul_(row["decay_factor"])
    if k["coupled"]:
        grad = torch.addcmul(grad, param, k["coupled_wd"], out=out)
    return grad


def moment_constants(options: list[dict[str, Any]], like: torch.Tensor) -> dict[str, Any]:
    """β1, β2 and ε of the Adam-like families: β1, β2 in float64 for the schedule's bias
    corrections, and the columns their moment updates use."""
    b1, b2 = per_member(options, "beta1"), per_member(options, "beta2")
    return {"b1": b1, "b2": b2, "one_minus_b1": column(1 - b1, like), "b2_col": column(b2, like),
            "one_minus_b2": column(1 - b2, like), "eps": column(per_member(options, "eps"), like)}


def update_moments(grad: torch.Tensor, state: dict[str, torch.Tensor], k: dict[str, Any], out: torch.Tensor) -> None:
    """`exp_avg.lerp_(grad, 1 - beta1)` and `exp_avg_sq.mul_(beta2).addcmul_(grad, grad,
    value=1 - beta2)` as Adam, NAdam and RAdam write them: the addcmul kernel computes
    (value·grad)·grad, and so does this (`out` holds value·grad)."""
    state["exp_avg"].lerp_(grad, k["one_minus_b1"])
    state["exp_avg_sq"].mul_(k["b2_col"]).addcmul_(torch.mul(grad, k["one_minus_b2"], out=out), grad)
