"""What fits in this machine's memory, checked before a model or data set is allocated.

A width or sample count typed one order of magnitude too large (or on purpose) would
otherwise reach torch's allocator and end in a traceback, or in the kernel's OOM killer
after the machine swapped; the estimate is made from the config's numbers alone.
"""
from __future__ import annotations

import os

from optcmp.errors import ConfigError

# Copies of the parameters a run holds at once: weights, gradients, two optimizer moments,
# the dry step's throwaway copy and temporaries.
PARAMETER_COPIES = 8
FLOAT_BYTES = 4


def available_bytes() -> int:
    """Memory the system can still give (physical pages available), or 4 GiB when unknown."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _gib(n: int | float) -> str:
    gib = n / (1 << 30)
    return f"{gib:,.0f} GiB" if gib >= 100 else f"{gib:.3g} GiB"


def check_fits(key: str, what: str, values: int, copies: int = 1) -> None:
    """Refuse, as a config error on `key`, `values` float32 numbers (held `copies` times)
    that exceed the memory available now."""
    need = values * FLOAT_BYTES * copies
    have = available_bytes()
    if need > have:
        raise ConfigError(key, f"{what} needs about {_gib(need)} of memory, more than the {_gib(have)} available; "
                               "allowed: sizes that fit this machine's memory")
