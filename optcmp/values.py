"""How a value is named in a message, and what a strict value of each kind is.

The vocabulary every config message uses: `expected a number, got yes (a YAML boolean)`.
Strict means: a boolean is not a number, a string is not a boolean, a number in a string
is not a number, and a number with a fraction is not an integer. No pydantic, no torch:
the config models and the keyword checks of `imports` both lean on this module.
"""
from __future__ import annotations

import difflib
import json
import math
from typing import Any

SHOWN_CHARS = 60  # a value quoted in a message is cut after this many characters


def did_you_mean(word: Any, choices) -> str:
    """` (did you mean `x`?)` for the closest of `choices`, or ""."""
    word = str(word)
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=3, cutoff=0.6)
    if not close:
        return ""
    # difflib ranks `adamax` above `adam` for `adma`; a typo rarely changes the length
    best = min(close, key=lambda c: (abs(len(c) - len(word)), -difflib.SequenceMatcher(None, word, c).ratio()))
    return f" (did you mean `{best}`?)"


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or a finite float, never a bool (YAML's `yes` is not a learning rate)."""
    return is_int(v) or (isinstance(v, float) and math.isfinite(v))


def kind_of(v: Any) -> str:
    """What YAML made of a value, for `got X (kind)`."""
    if isinstance(v, bool):
        return "a YAML boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number" if math.isfinite(v) else "not a finite number"
    if isinstance(v, str):
        return "a string"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def _flow(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return ".nan" if v != v else (".inf" if v > 0 else "-.inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items()) + "}"
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def shown(v: Any, text: str | None = None) -> str:
    """The value as the user wrote it where known (`yes`), else in YAML's flow style
    (`true`, `'0.1'`, `[0.9]`), cut to a readable length. Strings are quoted, so that
    `'0.1'` (a string) and `0.1` (a number) look different."""
    if text is not None and not isinstance(v, str) and not isinstance(v, (list, dict)):
        out = text
    else:
        out = _flow(v)
    return out if len(out) <= SHOWN_CHARS else out[: SHOWN_CHARS - 1] + "…"


def got(v: Any, text: str | None = None, kind: bool = True) -> str:
    """`got yes (a YAML boolean)`; lists and mappings without their kind (their brackets say it)."""
    if not kind or isinstance(v, (list, tuple, dict)) or (is_number(v) and not isinstance(v, bool)):
        return f"got {shown(v, text)}"
    return f"got {shown(v, text)} ({kind_of(v)})"


def fmt(x: Any) -> str:
    """A bound in a message: 0, 1, 0.5, 9223372036854751602."""
    return format(x, "g") if isinstance(x, float) else str(x)


def interval(low: Any = None, high: Any = None, low_open: bool = False, high_open: bool = False) -> str:
    """` > 0`, ` ≥ 1`, ` in [0, 1)`, ` ≤ 10` or "" for the bounds of a number."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '≥'} {fmt(low)}"
    if high is not None:
        return f" {'<' if high_open else '≤'} {fmt(high)}"
    return ""


def within(v: float, low: Any = None, high: Any = None, low_open: bool = False, high_open: bool = False) -> bool:
    if low is not None and (v < low or (low_open and v == low)):
        return False
    if high is not None and (v > high or (high_open and v == high)):
        return False
    return True


def keyed(sub: str, message: str) -> ValueError:
    """A validator's error about `sub`, a key below the model being validated (e.g.
    `groups[0].lr`): the loader puts the model's own dotted key in front of it."""
    return ValueError(f"\x1f{sub}\x1f{message}")


def split_keyed(message: str) -> tuple[str, str]:
    """(sub-key, message) of a `keyed` error; ("", message) for any other."""
    if message.startswith("\x1f"):
        sub, _, rest = message[1:].partition("\x1f")
        return sub, rest
    return "", message
