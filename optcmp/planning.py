"""Which runs train together: the final work units, decided once, before anything trains.

`plan_units(runs, engine, jobs)` partitions resolved runs (`resolve.ResolvedRun`) into
`units.Unit`s in plan order: every vectorizable group (runs with equal `group_key`), cut
into pieces for `--jobs` processes and into chunks that fit the device's memory, and every
other run on its own. The engines execute the units as given.
"""
from __future__ import annotations

import math
import os

import torch

from optcmp.errors import OptcmpError
from optcmp.resolve import ResolvedRun, resolve_device
from optcmp.units import Unit

MAX_MEMBERS = 512  # members per unit at most: beyond this a step is arithmetic-bound anyway
# On the CPU, fewer: a unit's stacked tensors outgrow the caches, and each member's step costs
# more (the reference MLP: about 15 % more a member-step at 512 members than at 128).
CPU_MEMBERS = 128
MIN_SPLIT = 8  # members per piece at least when --jobs splits a group across processes
MEMORY_SHARE = 0.5  # share of the free device memory (CPU: available RAM) one unit may use
ALONE = "no other run shares its architecture, data and training config"
STACKED = {"hand-written": "hand-written stacked MLP", "plain": "stacked CNN without vmap",
           "torch.func": "stacked with torch.func"}


def plan_units(runs: list[ResolvedRun], engine: str = "auto", jobs: int = 1, max_members: int = MAX_MEMBERS) -> list[Unit]:
    """The work units of `runs` for `--engine ENGINE --jobs JOBS`, in plan order. A group
    of one trains sequentially; `--engine vectorized` refuses runs that cannot be vectorized."""
    if engine == "sequential":
        return [Unit((run,), "sequential") for run in runs]
    groups: dict[str, list[ResolvedRun]] = {}
    for run in runs:
        groups.setdefault(run.group_key or run.spec.run_id, []).append(run)
    units = []
    for members in groups.values():
        # the runs of one batched optimizer next to each other: each piece holds them as row ranges
        blocks: dict[str | None, list[ResolvedRun]] = {}
        for run in members:
            blocks.setdefault(run.block_key, []).append(run)
        members = [run for block in blocks.values() for run in block]
        if len(members) == 1:
            units.append(Unit((members[0],), "sequential", members[0].why_not or ALONE))
            continue
        device = resolve_device(members[0].config.device)
        size = min(max_members, CPU_MEMBERS) if device.type == "cpu" else max_members
        split = min(jobs, len(members) // MIN_SPLIT)
        if split > 1:
            size = min(size, math.ceil(len(members) / split))
        fits = max(1, memory_budget(device) // member_bytes(members[0]))
        for piece in pieces(members, size):
            units += [Unit(tuple(chunk), "vectorized") for chunk in pieces(piece, min(size, fits))]
    order = {run.spec.run_id: i for i, run in enumerate(runs)}
    units.sort(key=lambda unit: order[unit[0].run_id])
    if engine == "vectorized":  # insist: say which runs cannot be, rather than train them one by one
        refused = [(u[0].run_id, u.runs[0].why_not) for u in units if u.runs[0].why_not]
        if refused:
            shown = "; ".join(f"{run_id}: {why}" for run_id, why in refused[:3])
            more = f"; and {len(refused) - 3} more" if len(refused) > 3 else ""
            raise OptcmpError(f"--engine vectorized: {len(refused)} of {len(runs)} runs cannot be vectorized "
                              f"({shown}{more}); --engine auto trains them one by one")
    return units


def cheap_probes(runs: list[ResolvedRun], engine: str = "auto") -> list[ResolvedRun]:
    """`runs` without the chaos probes that `summary.chaos: auto` asks for only where they are
    cheap: a probe (role "ulp") of such a config is kept where it joins its seeds' vectorized
    group (it shares their group key), and dropped where its config's runs train one by one
    (a run that cannot be vectorized, or `--engine sequential`). `on` keeps every probe."""
    def wanted(run: ResolvedRun) -> bool:
        spec = run.spec
        if spec.role != "ulp" or spec.config.summary.chaos != "auto":
            return True
        return engine != "sequential" and run.group_key is not None

    return [run for run in runs if wanted(run)]


def pieces(members: list, size: int) -> list[list]:
    """`members` cut into the fewest near-equal consecutive pieces of at most `size`."""
    n = math.ceil(len(members) / max(size, 1))
    return [members[i * len(members) // n:(i + 1) * len(members) // n] for i in range(n)]


def memory_budget(device: torch.device) -> int:
    """The bytes one unit may use on `device`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_SHARE)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * MEMORY_SHARE)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def member_bytes(run: ResolvedRun) -> int:
    """A generous estimate of one member's memory in a vectorized group: about ten copies of
    its parameters (weights, gradients, optimizer state, temporaries) and four of its
    activations (`ResolvedRun.activations`) for all its samples, plus its data when it has
    its own."""
    shape = run.data
    rows = shape.n_train + shape.n_val
    data = rows * (math.prod(shape.sample_shape) + 1) if shape.seeded else 0
    return 4 * (10 * run.n_params + 4 * rows * run.activations + data)


def describe_units(units: list[Unit]) -> list[str]:
    """One line per unit for `optcmp plan`: which runs train together, or why one trains alone."""
    lines = []
    for unit in units:
        if unit.engine == "vectorized":
            ids = ", ".join(s.run_id for s in unit[:3]) + (f", … {unit[-1].run_id}" if len(unit) > 3 else "")
            blocks = len({run.block_key for run in unit.runs})
            optimizers = f", {blocks} batched optimizers" if blocks > 1 else ""
            lines.append(f"vectorized group of {len(unit)}: {ids} ({STACKED[unit.runs[0].stacking]}{optimizers})")
        else:
            lines.append(f"sequential: {unit[0].run_id} ({unit.reason or ALONE})")
    return lines
