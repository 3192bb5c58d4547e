"""Optimizer updates for many runs at once, one catalogue entry per optimizer family.

All members' parameters live in one `[M, P]` tensor (member × flattened parameters), laid
out optimizer parameter group after group, so a group is a column range (a `Segment`) and
each hyperparameter is an `[M, 1]` column: one update is a dozen batched ops, whatever M.

The families (`catalogue.py`, one module each): SGD, Adam/AdamW, RMSprop, Adagrad, Adamax,
NAdam, RAdam and pytorch-optimizer's Lion. Each follows its optimizer's single-tensor
implementation operation for operation (named in its docstring, with the update formula),
with every per-member constant rounded to the parameters' dtype as PyTorch rounds a Python
scalar, and its step-dependent scalars computed on the host with Python's arithmetic: the
results equal torch.optim's up to the rounding of the forward and backward pass.
"""
from optcmp.batched_optim._base import DEFAULT_ONLY, TABLE_STEPS, Family, Segment
from optcmp.batched_optim.catalogue import (
    CATALOGUE, FAMILIES, PER_MEMBER, STRUCTURAL, SUPPORTED, VARYING, family_of, invalid_value, unsupported_option,
)
from optcmp.batched_optim.optimizer import BatchedOptimizer

__all__ = [
    "CATALOGUE", "DEFAULT_ONLY", "FAMILIES", "PER_MEMBER", "STRUCTURAL", "SUPPORTED", "TABLE_STEPS", "VARYING",
    "BatchedOptimizer", "Family", "Segment", "family_of", "invalid_value", "unsupported_option",
]
