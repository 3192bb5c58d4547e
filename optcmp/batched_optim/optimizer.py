"""`BatchedOptimizer`: one family's update of M runs' stacked parameters, segment by segment."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from optcmp.batched_optim._base import TABLE_STEPS, Segment, column
from optcmp.batched_optim.catalogue import CATALOGUE


class BatchedOptimizer:
    """The update of M runs' parameters `params` ([M, P], updated in place) from their
    gradients ([M, P]), per segment with per-member options, by the catalogue entry
    `family` (`family_of`'s answer)."""

    def __init__(self, family: str, params: torch.Tensor, segments: list[Segment],
                 lr_at: Callable[[np.ndarray], np.ndarray] | None = None, table_steps: int = TABLE_STEPS) -> None:
        """`lr_at(steps)`, when given, is the learning rate of every member and segment at
        those (1-based) optimizer steps, `[len(steps), M, segments]`: a schedule. Without
        it each member keeps its options' `lr`. `table_steps`: how many steps' scalars
        each block of tables holds (preflight's one-step dry run needs one, not 512)."""
        self.family = family
        self.table_steps = table_steps
        self.entry = entry = CATALOGUE[family]
        self.params = params
        self.segments = segments
        self.step_count = 0
        M = params.shape[0]
        options = [[entry.all_options(o) for o in seg.options] for seg in segments]
        base = np.array([[o["lr"] for o in opts] for opts in options], dtype=np.float64).T  # [M, segments]
        self._lr_at = lr_at or (lambda steps: np.broadcast_to(base, (len(steps), *base.shape)))
        self._k = []
        for seg, opts in zip(segments, options):
            by_class = seg.decoupled or [False] * M
            decoupled = np.array([entry.decoupled(o, bool(c)) for o, c in zip(opts, by_class)], dtype=bool)
            self._k.append(entry.constants(opts, decoupled, params))
        # State buffers [M, P] (one for each name any segment needs), each segment's columns
        # started at its initial values; views per segment, made once.
        needs = [entry.state(k) for k in self._k]
        self.state = {name: torch.zeros_like(params) for need in needs for name in need}
        for seg, need in zip(segments, needs):
            for name, initial in need.items():
                if initial is not None:
                    self.state[name][:, seg.start:seg.stop] = column(initial, params)
        # Scratch buffers for the update's temporaries: allocating [M, P] tensors every step
        # costs page faults, as much as the arithmetic for small models.
        scratch = [torch.empty_like(params) for _ in range(entry.scratch)]
        self._views = []
        for seg in segments:
            cols = slice(seg.start, seg.stop)
            self._views.append((cols, params[:, cols], {n: b[:, cols] for n, b in self.state.items()},
                                [b[:, cols] for b in scratch]))
        self._table_start = 0
        self._tables: list[dict[str, tuple]] = []
        self._table_lrs = np.empty((0, M, len(segments)))

    def lrs(self) -> np.ndarray:
        """Each member's learning rate of each parameter group at the latest step (before
        the first: the first step's), `[M, groups]`, as logged (`lr/group<i>`)."""
        row = self._table_row()  # first: it may build the block's tables
        return self._table_lrs[row]

    @torch.no_grad()
    def step(self, grads: torch.Tensor) -> None:
        """One update of every member from `grads` ([M, P]; left unchanged)."""
        self.step_count += 1
        t, r = self.step_count, self._table_row()
        update = self.entry.update
        for (cols, param, state, scratch), k, tables in zip(self._views, self._k, self._tables):
            update(param, grads[:, cols], state, k, {name: rows[r] for name, rows in tables.items()}, scratch, t)

    def _table_row(self) -> int:
        """The current step's row in the tables, after building the tables of its block:
        each segment's step-dependent scalars (`Family.schedule`) for `table_steps` steps,
        computed in float64 on the host like torch's Python-float arithmetic and copied to
        the device once, so a step costs no host→device copy."""
        t = max(self.step_count, 1)
        n = self.table_steps
        if not self._tables or t >= self._table_start + n:
            self._table_start = t
            steps = np.arange(t, t + n, dtype=np.float64)
            self._table_lrs = np.asarray(self._lr_at(np.arange(t, t + n)), dtype=np.float64)
            self._tables = [self._rows(self.entry.schedule(k, self._table_lrs[:, :, j], steps))
                            for j, k in enumerate(self._k)]
        return t - self._table_start

    def _rows(self, table: dict[str, np.ndarray]) -> dict[str, tuple]:
        """Per name, a tuple of every step's value: `[M, 1]` tensors of the parameters'
        dtype (floats) or bool masks, or Python bools (host flags, `[S]`)."""
        out = {}
        for name, values in table.items():
            if values.ndim == 1:
                out[name] = tuple(values.tolist())
            elif values.dtype == bool:
                out[name] = torch.as_tensor(values, device=self.params.device).view(self.table_steps, -1, 1).unbind(0)
            else:
                out[name] = column(values, self.params).view(self.table_steps, -1, 1).unbind(0)
        return out
