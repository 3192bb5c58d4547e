"""The study driver (see `study` for the protocol): rounds of trials asked from Optuna,
trained, told; then each arm's best trial on the final seeds and the verdict. runs.csv,
trials.csv and plan.json are rewritten after every round, so a stopped or killed study is
readable, and run again it resumes: run folders that finished with the same config are
kept, trials Optuna holds are never drawn again (a trial asked but not told trains its
unfinished runs with its stored values, then is told), and the budget counts the stored
trials.
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from optcmp.config import LoadedConfig
from optcmp.errors import OptcmpError
from optcmp.locking import experiment_lock
from optcmp.results import Status, atomic_write_text, read_result, write_runs_csv
from optcmp.runner import clear_experiment, write_plan
from optcmp.sampling import (DONE, ArmStudy, Space, batch_ends, delete_studies, halving_pruner, open_storage, rung_steps,
                             shown_url)
from optcmp.study import (STUDY_FILES, Arm, Protocol, StudyEvents, StudyOutcome, arm_config, default_storage,
                          kept_result, study_record, total_runs, trial_spec)
from optcmp.sweep import RunSpec
from optcmp.trials import Halving, Outcome, rank_key, ranks, score, trial_row
from optcmp.units import Execution, Unit, stand_in


def run_study(loaded: LoadedConfig, exp_dir: Path, storage: str | None = None, execution: Execution | None = None,
              events: StudyEvents | None = None, fresh: bool = False) -> StudyOutcome:
    """Check, then run (or resume) the study of `loaded` into `exp_dir`."""
    execution = execution or Execution()
    protocol = Protocol.of(loaded, execution)
    return Study(protocol, Path(exp_dir), storage, execution, events or StudyEvents()).run(fresh)


class Study:
    """One attempt at a study: `run()` does what is left of it."""

    def __init__(self, protocol: Protocol, exp_dir: Path, storage: str | None = None, execution: Execution | None = None,
                 events: StudyEvents | None = None) -> None:
        self.p, self.exp_dir = protocol, Path(exp_dir)
        self.execution, self.events = execution or Execution(), events or StudyEvents()
        self.url = storage or default_storage(exp_dir)
        self.storage_shown = "study.db" if self.url == default_storage(exp_dir) else shown_url(self.url)
        self.events.total = total_runs(protocol)
        self.specs: dict[str, RunSpec] = {}
        self.place: dict[str, tuple] = {}  # run id → its place in plan order
        self.arm_of: dict[str, Arm] = {}
        self.runs_of: dict[tuple[str, int], list[str]] = {}  # (arm, trial) → its run ids
        self.finals: dict[str, list[str]] = {}  # arm → its final run ids
        self.results: dict[str, dict[str, Any]] = {}
        self.kept: set[str] = set()
        self.trained = self.rounds = 0
        self.stop: str | None = None  # "interrupted" | "failed"
        self.verdict: dict[str, Any] | None = None

    def study_name(self, arm: Arm) -> str:
        return f"{self.p.config.name}/{arm.label}"

    def run(self, fresh: bool = False) -> StudyOutcome:
        start = time.perf_counter()
        tune = self.p.tune
        default = self.url == default_storage(self.exp_dir)
        storage = None if default else open_storage(self.url)  # a bad URL stops here, before anything is written
        with experiment_lock(self.exp_dir):
            if fresh:
                clear_experiment(self.exp_dir)
                for name in STUDY_FILES:
                    (self.exp_dir / name).unlink(missing_ok=True)
            storage = storage or open_storage(self.url)
            if fresh:
                delete_studies(storage, [self.study_name(a) for a in self.p.arms])
            where = str(self.exp_dir / "study.db") if default else shown_url(self.url)
            self.studies = {
                a.label: ArmStudy(storage, self.study_name(a), Space(a.space), tune.sampler, tune.seed,
                                  "maximize" if self.p.maximize else "minimize",
                                  halving_pruner(self.p.totals[a.label]) if tune.prune == "halving" else None,
                                  self._protocol(a), where)
                for a in self.p.arms}
            try:
                self._known()
                while self.stop is None and self._round():
                    pass
                if self.stop is None:
                    self._final_runs()
            except KeyboardInterrupt:
                self.stop = "interrupted"
            finally:
                self._write()
        results = [self.results[i] for i in sorted(self.results, key=self.place.__getitem__)]
        return StudyOutcome(self.exp_dir, results, self.kept, self.trained, self.stop == "interrupted",
                            sum(r["status"] == Status.FAILED for r in results), self.verdict, time.perf_counter() - start)

    def _protocol(self, arm: Arm) -> dict[str, Any]:
        """What the arm's stored trials were made under: a resume must find the same."""
        tune, config = self.p.tune, self.p.config
        base = arm_config(config, arm, {}, tune.seeds[0]).model_dump(mode="json", exclude={"name", "device", "seeds"})
        return {"space": {k: d.model_dump() for k, d in arm.space.items()}, "sampler": tune.sampler, "seed": tune.seed,
                "seeds": tune.seeds, "metric": self.p.metric, "maximize": self.p.maximize, "prune": tune.prune,
                "config": base}

    # --- trials -----------------------------------------------------------------------

    def _register(self, arm: Arm, k: int, values: dict[str, Any], final: bool = False) -> list[str]:
        """The runs of trial k (or the arm's final runs with its values), with any result kept."""
        tune = self.p.tune
        seeds = tune.final_seeds if final else tune.seeds
        ids = []
        arm_index = self.p.arms.index(arm)
        for j, seed in enumerate(seeds):
            spec = trial_spec(self.p.config, arm, k, values, seed, final)
            self.specs[spec.run_id], self.arm_of[spec.run_id] = spec, arm
            self.place[spec.run_id] = (int(final), arm_index, k, j)
            kept = kept_result(self.exp_dir, spec)
            if kept is not None and spec.run_id not in self.results:
                self.results[spec.run_id] = kept
                self.kept.add(spec.run_id)
            ids.append(spec.run_id)
        if final:
            self.finals[arm.label] = ids
        else:
            self.runs_of[(arm.label, k)] = ids
        return ids

    def _known(self) -> None:
        """The trials the storage holds (for the files, and to refuse a smaller budget)."""
        for arm in self.p.arms:
            study = self.studies[arm.label]
            trials = study.trials()
            if len(trials) > self.p.budget:
                raise OptcmpError(f"tune.budget: the storage holds {len(trials)} trials of {arm.label}, more than the "
                                  f"budget of {self.p.budget}; allowed: a budget ≥ {len(trials)}, or --fresh")
            failed = [t.number for t in trials if t.state == TrialState.FAIL]
            if failed:
                raise OptcmpError(f"{study.name}: trial {failed[0]} is marked failed in the Optuna storage (not by "
                                  "optcmp); run with --fresh to start the study over")
            for t in trials:
                if set(t.params) >= set(arm.space):
                    self._register(arm, t.number, study.space.values(t.params))

    def outcome(self, arm: Arm, k: int) -> Outcome:
        return score([self.results.get(i) for i in self.runs_of[(arm.label, k)]], self.p.metric, self.p.maximize)

    def _round(self) -> bool:
        """Ask, train and tell one batch of trials of every arm; False when all are told."""
        tune = self.p.tune
        ends = batch_ends(tune.sampler, self.p.budget)
        batch = []  # (arm, optuna.Trial, steps it reported a value at already)
        for arm in self.p.arms:
            study = self.studies[arm.label]
            trials = study.trials()
            told = sum(t.state in DONE for t in trials)
            if told >= self.p.budget:
                continue
            end = next(e for e in ends if e > told)
            batch += [(arm, study.ask(t), tuple(t.intermediate_values)) for t in trials if t.state not in DONE]
            batch += [(arm, study.ask(), ()) for _ in range(len(trials), end)]
        if not batch:
            return False
        self.rounds += 1
        halving = Halving(self.p.metric, self.p.maximize) if tune.prune == "halving" else None
        ids = []
        for arm, trial, reported in batch:
            trial_ids = self._register(arm, trial.number, self.studies[arm.label].space.values(trial.params))
            ids += trial_ids
            if halving is not None:
                halving.add((arm.label, trial.number), trial, trial_ids, rung_steps(self.p.totals[arm.label]), reported)
        self.events.phase(f"round {self.rounds}" + (f" of {len(ends)}" if len(ends) > 1 else "") +
                          f": {len(batch)} trials, {len(ids)} runs")
        self._train(ids, halving)
        for arm, trial, _ in batch:  # in trial order within each arm
            outcome = self.outcome(arm, trial.number)
            if outcome.told:
                self.studies[arm.label].tell(trial.number, outcome.value, outcome.status == "pruned")
        self._write()
        return self.stop is None

    def _ranked(self, arm: Arm) -> list[tuple[Any, Outcome, int | None]]:
        """Every stored trial of the arm with its outcome and rank."""
        trials = [t for t in self.studies[arm.label].trials() if (arm.label, t.number) in self.runs_of]
        outcomes = [self.outcome(arm, t.number) for t in trials]
        last = [t.intermediate_values.get(t.last_step) if t.last_step is not None else None for t in trials]
        keys = [rank_key(o, t.number, self.p.maximize, v) for t, o, v in zip(trials, outcomes, last)]
        return list(zip(trials, outcomes, ranks(keys)))

    # --- final runs and the verdict ---------------------------------------------------

    def _final_runs(self) -> None:
        from optcmp.verdict import build_verdict

        tune = self.p.tune
        best: dict[str, tuple[Any, Outcome, list[tuple]]] = {}
        ids = []
        for arm in self.p.arms:
            ranked = self._ranked(arm)
            trial, outcome, _ = next(item for item in ranked if item[2] == 1)
            best[arm.label] = (trial, outcome, ranked)
            ids += self._register(arm, trial.number, self.studies[arm.label].space.values(trial.params), final=True)
        self.events.phase(f"final runs: the best trial of each of {len(self.p.arms)} arms on "
                          f"{len(tune.final_seeds)} fresh seeds")
        self._train(ids, None)
        if self.stop is not None:
            return
        arms = []
        for arm in self.p.arms:
            trial, outcome, ranked = best[arm.label]
            counts = {s: sum(o.status == s for _, o, _ in ranked) for s in ("ok", "diverged", "pruned")}
            arms.append({"arm": arm, "best_trial": trial.number, "best_params": self.studies[arm.label].space.values(trial.params),
                         "best_value": outcome.value, "trials": {"n": len(ranked), **counts},
                         "finals": [self.results[i] for i in self.finals[arm.label]]})
        self.verdict = build_verdict(self.p, arms)

    # --- training -----------------------------------------------------------------------

    def _train(self, ids: list[str], halving: Halving | None) -> None:
        from optcmp.runner import plan_units

        todo = [self.specs[i] for i in ids if i not in self.results]
        self.events.plan(todo, [self.results[i] for i in ids if i in self.results])
        if not todo:
            return
        runs = [self.p.resolve(s, self.arm_of[s.run_id]) for s in todo]
        jobs = self.execution.jobs if self.execution.executor == "local" else 1
        units = plan_units(runs, self.execution.engine, jobs)
        if halving is None:
            self._on_executor(units)
        else:
            self._in_process(units, halving)

    def _record(self, unit: Unit, reported: list[dict[str, Any]], stopped: bool = False) -> None:
        done = {r["run_id"] for r in reported}
        for run in unit.runs:
            run_id = run.spec.run_id
            result = read_result(self.exp_dir / run_id) if run_id in done else None
            if result is None and stopped:
                result = stand_in(self.exp_dir, run, Status.INTERRUPTED, "interrupted by the user")
            if result is None:
                continue
            self.results[run_id] = result
            self.trained += 1
            if result["status"] == Status.INTERRUPTED:
                self.stop = "interrupted"
            elif result["status"] == Status.FAILED and self.stop is None:
                self.stop = "failed"
            self.events.run_end(result)

    def _on_executor(self, units: list[Unit]) -> None:
        """Train the units on the chosen executor (as `runner.run_sweep` does)."""
        from optcmp.executors import make_executor

        executor = make_executor(self.execution, self.exp_dir, self.p.loaded.base_dir, self.events)
        interrupted = False
        try:
            try:
                for unit, out in executor.results(units):
                    self._record(unit, out)
                    if self.stop == "interrupted":
                        break
            except KeyboardInterrupt:
                interrupted = True
            except BaseException:
                executor.stop()
                raise
            if interrupted or self.stop == "interrupted":
                for unit, out in executor.stop():
                    self._record(unit, out, stopped=True)
                self.stop = "interrupted"
        finally:
            executor.close()

    def _in_process(self, units: list[Unit], halving: Halving) -> None:
        """Train the units here, one after another, each with the halving hook."""
        import torch

        from optcmp.engines import run_unit

        before = torch.get_num_threads()
        torch.set_num_threads(self.execution.threads)
        try:
            for unit in units:
                self.events.unit_start(unit)
                progress = lambda s, t, loss, unit=unit: self.events.step(unit, s, t, loss)  # noqa: E731
                self._record(unit, run_unit(unit, self.exp_dir, self.p.loaded.base_dir, progress, halving.for_unit(unit)))
                if self.stop == "interrupted":
                    break
        finally:
            torch.set_num_threads(before)

    # --- files ------------------------------------------------------------------------

    def _write(self) -> None:
        """runs.csv, plan.json, trials.csv, the summary and the verdict, from what is known."""
        from optcmp.summary import write_summary

        order = sorted(self.specs, key=self.place.__getitem__)
        write_plan(self.exp_dir, [self.specs[i] for i in order])
        results = [self.results[i] for i in order if i in self.results]
        if results:
            write_runs_csv(self.exp_dir, results)
        atomic_write_text(self.exp_dir / "trials.csv", self._trials_csv())
        atomic_write_text(self.exp_dir / "study.json", json.dumps(study_record(self.p, self.storage_shown), indent=2) + "\n")
        if any(self.results.get(i) for ids in self.finals.values() for i in ids):
            write_summary(self.exp_dir, self.p.metric)
        if self.verdict is not None:
            from optcmp.verdict import verdict_markdown

            atomic_write_text(self.exp_dir / "verdict.json", json.dumps(self.verdict, indent=2) + "\n")
            atomic_write_text(self.exp_dir / "verdict.md", verdict_markdown(self.verdict))

    def _trials_csv(self) -> str:
        rows = []
        for arm in self.p.arms:
            for trial, outcome, rank in self._ranked(arm):
                last = trial.intermediate_values.get(trial.last_step) if trial.last_step is not None else None
                values = self.studies[arm.label].space.values(trial.params)
                rows.append(trial_row(arm.variant, arm.workload, trial.number, outcome, values, self.p.metric, rank,
                                      f"{arm.label}-t{trial.number}", last))
        columns = list(dict.fromkeys(k for row in rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

