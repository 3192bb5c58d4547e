"""`seeds: auto` / `--seeds-until`: add seeds in rounds until every pair's verdict is settled.

The runner trains the design's `first` seeds, calls `seeds_until(runs, design)` on the runs so
far, and, while the answer is "add", trains the `add` next seeds and asks again. The design
(`optcmp.stats.SequentialDesign`: first seeds, seeds per round, rounds, alpha, margin) is fixed
before the first run; that is what makes the error rate hold:

- at look j (the first `design.seeds_at(j)` seeds in seed order) each pair gets `compare`'s
  test at level alpha / rounds, Holm-corrected over the pairs of that look;
- a pair is settled "different" at the first look where it is significant there, and stays
  settled (a verdict is never revised by later seeds added for other pairs);
- with a margin, a pair whose t test's (1 - 2·alpha/(rounds·pairs)) interval of the difference
  lies inside ±margin·|mean_b| is settled "equivalent" (two one-sided tests); rank tests
  (pairs with diverged runs) can only settle "different";
- a pair still open after the last planned round is "undecided", with the smallest difference
  its seeds could detect.

Guarantee: the probability of calling any pair of identically distributed configs different,
over all rounds and pairs, is at most alpha (Bonferroni over the planned looks, Holm within
one); likewise for calling a pair equivalent whose true difference exceeds the margin. The
verdicts are those of the tests they rest on: t tests assume roughly normal seed-to-seed
variation; the rank tests do not.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from optcmp.compare import _p_phrase, compare_configs, outcome_runs
from optcmp.stats import SequentialDesign, t_quantile


@dataclass
class PairVerdict:
    config_a: str
    config_b: str
    state: str  # "different" | "equivalent" | "undecided"
    look: int | None  # the look at which it settled
    seeds: int  # seeds at that look (or at the current look, when undecided)
    p_holm: float  # Holm-corrected p at that look; significant means < design.look_alpha
    sentence: str


@dataclass
class SeedsDecision:
    look: int  # looks completed: 0 before the first seeds are in
    seeds: int  # seeds the runs have
    action: str  # "add" | "stop"
    add: int  # seeds to train next (0 when stopping)
    pairs: list[PairVerdict] = field(default_factory=list)
    sentence: str = ""

    def settled(self) -> dict[tuple[str, str], str]:
        return {(p.config_a, p.config_b): p.state for p in self.pairs}


def guarantee(design: SequentialDesign) -> str:
    """The error rate the design holds, in words."""
    text = (f"the chance of calling any two equal configs different is at most {design.alpha:g} over all "
            f"{design.rounds} rounds (each round tests at {design.look_alpha:.3g}, Holm over the pairs)")
    if design.margin is not None:
        text += (f"; likewise for calling a pair equivalent (within ±{design.margin:.0%}) whose true "
                 "difference is larger")
    return text


def seeds_until(runs: pd.DataFrame, design: SequentialDesign, metric: str | None = None,
                baseline: str | None = None) -> SeedsDecision:
    """Per pair settled or undecided, and whether to add seeds or stop, from the runs so far."""
    seeds = sorted(pd.unique(outcome_runs(runs)["seed"]))
    look = design.look_of(len(seeds))
    if look == 0:
        need = design.first - len(seeds)
        return SeedsDecision(0, len(seeds), "add", need, [], f"add {need} seeds: the first round has "
                             f"{design.first}, there are {len(seeds)}")
    verdicts: dict[frozenset, PairVerdict] = {}  # a look may list a pair the other way round
    for j in range(1, look + 1):
        n = design.seeds_at(j)
        frame = compare_configs(runs[runs["seed"].isin(seeds[:n])], metric, baseline, alpha=design.look_alpha)
        level = design.look_alpha / max(1, len(frame))  # Bonferroni over the pairs for equivalence
        for _, row in frame.iterrows():
            key = frozenset((row["config_a"], row["config_b"]))
            if key in verdicts and verdicts[key].state != "undecided":
                continue
            state = "undecided"  # which pair, its p, then what its seeds could have detected
            sentence = (f"{row['config_a']} and {row['config_b']}, {_p_phrase(row['p_holm'], len(frame))}: "
                        f"{row['power_sentence']}" if row["power_sentence"] else row["sentence"])
            if row["significant"]:
                state, sentence = "different", row["sentence"]
            elif design.margin is not None and _equivalent(row, design.margin, level):
                state = "equivalent"
                sentence = (f"{row['config_a']} and {row['config_b']} are equivalent in {row['metric']} within "
                            f"±{design.margin:.0%} of {row['config_b']}'s mean ({n} seeds, two one-sided tests)")
            settled_at = j if state != "undecided" else None
            verdicts[key] = PairVerdict(row["config_a"], row["config_b"], state, settled_at, n,
                                        float(row["p_holm"]), sentence)
    pairs = list(verdicts.values())
    open_pairs = [p for p in pairs if p.state == "undecided"]
    if not open_pairs:
        return SeedsDecision(look, len(seeds), "stop", 0, pairs, "stop: every pair is settled; " + guarantee(design))
    if look == design.rounds:
        return SeedsDecision(look, len(seeds), "stop", 0, pairs,
                             f"stop: the planned maximum of {design.max_seeds} seeds is reached with "
                             f"{len(open_pairs)} pair(s) undecided; " + guarantee(design))
    add = design.seeds_at(look + 1) - len(seeds)
    return SeedsDecision(look, len(seeds), "add", add, pairs,
                         f"add {add} seeds (round {look + 1} of {design.rounds}): {len(open_pairs)} of "
                         f"{len(pairs)} pair(s) undecided")


def _equivalent(row: pd.Series, margin: float, level: float) -> bool:
    """Two one-sided t tests at `level`: the (1 - 2·level) interval of the difference inside ±margin."""
    if row["note"] == "identical":
        return True
    if row["test"] not in ("paired t", "Welch t") or np.isnan(row["diff_se"]) or row["mean_b"] == 0:
        return False
    bound = margin * abs(row["mean_b"])
    half = t_quantile(row["df"], 1 - level) * row["diff_se"]
    return -bound < row["diff"] - half and row["diff"] + half < bound
