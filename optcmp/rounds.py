"""`seeds: auto`: train the seeds in rounds until every pair of configs is settled.

The config's seeds are every seed the design may train (0 … max − 1, `optcmp.autoseeds`);
round 1 trains the first `design.first` of them (and the chaos probes, which are of seed 0),
then, after each round, `sequential.seeds_until` decides from runs.csv: stop, or add the next
round's seeds. The decision is printed, written to `rounds.json` and carried into
summary.json (`seeds_auto`) and summary.md, with the error rate the design holds.

Resume: a round is an ordinary sweep of its seeds, so a rerun keeps every finished run and
replays the decisions from the same runs (they are deterministic), training only what a
stopped attempt left undone; a finished experiment trains nothing more. A round with failed
or interrupted runs ends the rounds (the next run retries them and goes on).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optcmp.results import Status, atomic_write_text
from optcmp.stats import SequentialDesign
from optcmp.summary import ROUNDS_FILE, write_summary


def round_runs(runs: list, n_seeds: int) -> list:
    """The resolved runs of the first `n_seeds` seeds (seeds: auto numbers them 0, 1, …), probes included."""
    return [run for run in runs if run.spec.seed < n_seeds]


def record(design: SequentialDesign, decision, metric: str | None) -> dict[str, Any]:
    """rounds.json: the design, the last decision and each pair's verdict."""
    from optcmp.sequential import guarantee

    return {
        "design": {"first": design.first, "per_round": design.per_round, "rounds": design.rounds,
                   "alpha": design.alpha, "margin": design.margin, "max_seeds": design.max_seeds},
        "metric": metric, "look": decision.look, "seeds": decision.seeds, "action": decision.action,
        "add": decision.add, "sentence": decision.sentence, "guarantee": guarantee(design),
        "look_alpha": design.look_alpha,
        "pairs": [{"config_a": p.config_a, "config_b": p.config_b, "state": p.state, "look": p.look,
                   "seeds": p.seeds, "p_holm": p.p_holm, "sentence": p.sentence} for p in decision.pairs],
    }


def forget(exp_dir: Path) -> None:
    """A run with a fixed list of seeds: no decision of an earlier `seeds: auto` stays behind.
    Where the folder is no folder or cannot be written, nothing is done here: the sweep's own
    checks say so in one line before anything is written."""
    path = Path(exp_dir) / ROUNDS_FILE
    try:
        if path.is_file():
            path.unlink()
    except OSError:
        pass


def round_lines(decision, design: SequentialDesign) -> list[str]:
    """What a round prints: its decision, then the verdicts of the pairs it settled and of those
    still open (after the last round: every pair's)."""
    head = (f"round {decision.look} of {design.rounds} ({decision.seeds} seeds, each pair tested at "
            f"{design.look_alpha:.3g}, Holm over the pairs): {decision.sentence}")
    shown = [p for p in decision.pairs if decision.action == "stop" or p.look in (None, decision.look)]
    earlier = len(decision.pairs) - len(shown)
    return [head, *(f"  {p.state}: {p.sentence}" for p in shown),
            *([f"  ({earlier} pair{'s' if earlier != 1 else ''} settled in an earlier round)"] if earlier else [])]


def _combined(outcomes: list) -> Any:
    """One outcome for the rounds of this attempt: the last round's results; kept, the runs that
    an earlier attempt had finished (not those an earlier round of this one trained)."""
    from optcmp.runner import SweepOutcome

    kept: set[str] = set()
    trained: set[str] = set()
    for outcome in outcomes:
        kept |= outcome.kept - trained
        trained |= {r["run_id"] for r in outcome.results} - outcome.kept
    last = outcomes[-1]
    return SweepOutcome(last.results, kept, last.interrupted, sum(o.todo for o in outcomes), sum(o.seconds for o in outcomes))


def train_in_rounds(design: SequentialDesign, runs: list, exp_dir: Path,
                    train: Callable[[list, bool], Any], metric: str | None = None,
                    on_round: Callable[[Any], None] = lambda decision: None) -> tuple[Any, Any, int]:
    """Train `runs` (resolved, every seed the design may train) round by round; `train(runs,
    first)` is one sweep (`first`: the first round of this attempt, where --fresh applies) and
    returns its `runner.SweepOutcome`. Returns (the last outcome, the last decision or None
    where a round was interrupted or had failed runs, the runs planned in the last round)."""
    from optcmp.sequential import seeds_until
    from optcmp.summary import default_primary, read_runs

    n_seeds, outcomes = design.first, []
    while True:
        planned = round_runs(runs, n_seeds)
        outcomes.append(train(planned, not outcomes))
        outcome = _combined(outcomes)
        if outcome.interrupted or any(r["status"] in (Status.FAILED, Status.INTERRUPTED) for r in outcome.results):
            return outcome, None, len(planned)
        table = read_runs(exp_dir)
        used = metric or default_primary(table)
        decision = seeds_until(table, design, used)
        atomic_write_text(Path(exp_dir) / ROUNDS_FILE, json.dumps(record(design, decision, used), indent=2) + "\n")
        write_summary(exp_dir, metric)  # summary.json and .md now carry the decision
        on_round(decision)
        if decision.action == "stop":
            return outcome, decision, len(planned)
        n_seeds = decision.seeds + decision.add


def run_experiment(design: SequentialDesign | None, runs: list, exp_dir: Path, train: Callable[[list, bool], Any],
                   metric: str | None = None, say: Callable[[str], None] = lambda line: None) -> tuple[Any, int]:
    """The sweep of `runs` (`train(runs, True)`), or with a design its rounds, each decision
    said line by line: (the last outcome, the runs its sweep planned)."""
    if design is None:
        forget(exp_dir)
        return train(runs, True), len(runs)
    from optcmp.autoseeds import describe

    say(describe(design))
    outcome, _, planned = train_in_rounds(design, runs, exp_dir, train, metric,
                                          lambda decision: [say(line) for line in round_lines(decision, design)])
    return outcome, planned
