"""`seeds: auto`: the config's form of the sequential design (`optcmp.stats.SequentialDesign`).

    seeds: auto                      # the defaults below
    seeds:
      auto: {first: 3, per_round: 3, rounds: 4, margin: null, alpha: 0.05}

`first` seeds are trained, then `per_round` more per round, at most `rounds` rounds in all
(`first + (rounds - 1) * per_round` seeds at most), until every pair of configs is settled
(`optcmp.sequential.seeds_until`); `margin` (a share of the second config's mean, e.g. 0.05)
also lets a pair settle as equivalent; `alpha` is the error rate the design holds over all
rounds and pairs. The seeds are 0, 1, 2, …: the config's seeds list is every seed the design
may train, and `optcmp.rounds` trains them round by round.

Checked here, before anything else, each mistake as one keyed line (`seeds.auto.first: …`).
No torch, no pandas.
"""
from __future__ import annotations

from typing import Any

from optcmp.stats import SequentialDesign
from optcmp.values import did_you_mean, got, is_number, keyed

DEFAULTS = {"first": 3, "per_round": 3, "rounds": 4, "margin": None, "alpha": 0.05}
LEAST = {"first": 2, "per_round": 1, "rounds": 1}  # the first round needs a spread: two seeds
MAX_ROUNDS = 100
MAX_SEEDS = 1_000_000  # schema.MAX_SEED_COUNT: no more seeds than a count may give


def is_auto(value: Any) -> bool:
    """Whether a raw `seeds` value asks for rounds: `auto`, or a mapping (which must be {auto: …})."""
    return value == "auto" or isinstance(value, dict)


def design_of(value: Any) -> SequentialDesign:
    """The design a raw `seeds: auto` / `seeds: {auto: {...}}` asks for; a keyed ValueError otherwise."""
    if value == "auto":
        options: Any = {}
    else:
        if "auto" not in value:
            raise keyed("seeds", f"expected a list of seeds, a count, auto or {{auto: {{first: 3, per_round: 3, rounds: 4}}}}, "
                        f"{got(value)}")
        for key in value:
            if key != "auto":
                raise keyed(f"seeds.{key}", f"unknown key{did_you_mean(key, ['auto'])}; allowed: auto "
                            "(seeds: {auto: {first: 3, per_round: 3, rounds: 4}}), or give seeds as a list or a count")
        options = value.get("auto")
        options = {} if options is None else options
    if not isinstance(options, dict):
        raise keyed("seeds.auto", f"expected a mapping of {', '.join(DEFAULTS)} (or nothing, for the defaults), "
                    f"{got(options)}")
    for key in options:
        if key not in DEFAULTS:
            raise keyed(f"seeds.auto.{key}", f"unknown key{did_you_mean(key, list(DEFAULTS))}; allowed: {', '.join(DEFAULTS)}")
    chosen = {**DEFAULTS, **options}
    for key, least in LEAST.items():
        v = chosen[key]
        most = MAX_ROUNDS if key == "rounds" else MAX_SEEDS
        if isinstance(v, bool) or not isinstance(v, int) or not least <= v <= most:
            why = " (the first round needs a seed-to-seed spread)" if key == "first" else ""
            raise keyed(f"seeds.auto.{key}", f"expected an integer in [{least}, {most:,}]{why}, {got(v)}")
    margin, alpha = chosen["margin"], chosen["alpha"]
    if margin is not None and (not is_number(margin) or isinstance(margin, bool) or not 0 < margin < 10):
        raise keyed("seeds.auto.margin", "expected null or a share of the second config's mean in (0, 10), "
                    f"e.g. 0.05 for ±5 %, {got(margin)}")
    if not is_number(alpha) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise keyed("seeds.auto.alpha", f"expected a number in (0, 1), the error rate over all rounds, {got(alpha)}")
    design = SequentialDesign(chosen["first"], chosen["per_round"], chosen["rounds"], float(alpha),
                              None if margin is None else float(margin))
    if design.max_seeds > MAX_SEEDS:
        raise keyed("seeds.auto", f"up to {design.max_seeds:,} seeds; allowed: at most {MAX_SEEDS:,} "
                    "(first + (rounds - 1) · per_round)")
    return design


def max_seeds(value: Any) -> int:
    """The seeds a raw `seeds: auto` may train (1 where the value is malformed: its error comes later)."""
    try:
        return design_of(value).max_seeds
    except ValueError:
        return 1


def describe(design: SequentialDesign) -> str:
    """e.g. "seeds: auto: 3 seeds, then 3 more per round while a pair is undecided, at most 4 rounds (12 seeds)"."""
    margin = "" if design.margin is None else f", equivalence within ±{design.margin:.0%}"
    return (f"seeds: auto: {design.first} seeds, then {design.per_round} more per round while a pair is undecided, "
            f"at most {design.rounds} rounds ({design.max_seeds} seeds){margin}, error rate {design.alpha:g}")
