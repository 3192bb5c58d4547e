"""The command line of a study: `optcmp run` (or `optcmp tune`) of a config with `tune:`.
Progress while the trials and final runs train, then the verdict; cli.py exits with the
status `study_command` returns (0 done, 1 runs failed, 130 interrupted)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from optcmp.errors import OptcmpError


def study_command(loaded, exp_dir: Path, execution, fresh: bool, storage: str | None, console: Console,
                  err_console: Console, ready: Callable[[], None] = lambda: None) -> int:
    """Check the study, run what is left of it, print the verdict; the exit status."""
    from optcmp.study import Protocol, StudyEvents
    from optcmp.study_run import Study

    if loaded.config.tune is None:
        raise OptcmpError(f"{loaded.source.path}: `optcmp tune` runs a study, and this config has no tune: section; "
                          "`optcmp run` trains its sweep")
    protocol = Protocol.of(loaded, execution)  # a mistake stops here, before anything is written
    ready()
    in_process = execution.executor == "local" and execution.jobs == 1
    where = "" if in_process else " on Ray" if execution.executor == "ray" else f" in {execution.jobs} processes"
    display = study_progress(err_console, protocol, where)
    with display:
        events = StudyEvents(display.plan, display.unit_start, display.step, display.run_end, board=display.attach,
                             phase=display.print)
        study = Study(protocol, exp_dir, storage, execution, events)
        outcome = study.run(fresh)
    return finish(outcome, events.total, console)


def study_progress(console: Console, protocol, where: str = "", **kw):
    """The sweep's display (`progress.SweepProgress`: the overall bar with its ETA, a line per
    unit in training, plain lines off a terminal) for a study, whose runs are not known at
    the start: its totals are the study's at most (every trial on every tuning seed, every
    final run), each run's steps its arm's, known as each round is planned."""
    from optcmp.progress import SweepProgress
    from optcmp.study import total_runs

    class StudyProgress(SweepProgress):
        def __init__(self) -> None:
            super().__init__(console, [], where, **kw)
            tune = protocol.tune
            per_arm = protocol.budget * len(tune.seeds) + len(tune.final_seeds)
            self.n_runs = total_runs(protocol)
            self.todo_work = sum(per_arm * self._arm_steps(a.label) for a in protocol.arms)
            self.progress.update(self.overall, description=f"study runs{where}")
            self._update_overall()

        def _arm_steps(self, label: str) -> int:
            return max(1, protocol.totals.get(label) or 1)

        def _steps_of(self, run_id: str, role: str, config_id: str) -> int:
            label = config_id.rsplit("-t", 1)[0] if role == "trial" else config_id
            return self.steps.setdefault(run_id, self._arm_steps(label))

        def plan(self, todo: list, kept: list) -> None:
            with self.lock:
                for spec in todo:
                    self._steps_of(spec.run_id, spec.role, spec.config_id)
                for result in kept:  # finished in an earlier attempt
                    run_id = result["run_id"]
                    if run_id not in self.ended:
                        self.ended.add(run_id)
                        self.done_runs += 1
                        self.done_work += self._steps_of(run_id, result.get("role", "trial"), result["config_id"])
                self._update_overall()

    return StudyProgress()


def looking_hint(exp_dir: Path) -> str:
    """How to look at a study: its report, and optuna-dashboard where that extra is installed."""
    import importlib.util

    board = (f"optcmp board --study {exp_dir}" if importlib.util.find_spec("optuna_dashboard") is not None
             else f"pip install 'optcmp[dashboard]', then optcmp board --study {exp_dir}")
    return f"Pictures: optcmp report {exp_dir} (report.html); the trials in optuna-dashboard: {board}"


def finish(outcome, planned: int, console: Console) -> int:
    """Print the verdict (or what is left to do) and return the exit status."""
    from optcmp.verdict import verdict_lines

    if outcome.verdict is not None:
        console.print(f"Verdict ({outcome.exp_dir.name}):", soft_wrap=True)
        for line in verdict_lines(outcome.verdict):
            console.print(line, soft_wrap=True)
    finished = sum(r["status"] in ("ok", "diverged", "pruned") for r in outcome.results)
    kept = f" ({len(outcome.kept)} kept from an earlier attempt)" if outcome.kept else ""
    console.print(f"{finished} of {planned} runs finished{kept}; {outcome.trained} trained in {outcome.seconds:.1f} s")
    console.print(f"Results in {outcome.exp_dir}/ (verdict.json, verdict.md, trials.csv, runs.csv, study.db)",
                  soft_wrap=True)
    console.print(looking_hint(outcome.exp_dir), soft_wrap=True)
    if outcome.interrupted:
        console.print("Interrupted; run the same command again to go on (finished runs and told trials are kept)")
        return 130
    if outcome.failed:
        console.print(f"{outcome.failed} run(s) failed (see the error column of runs.csv); running the same command "
                      "again retries them")
        return 1
    return 0


def _space_text(space) -> str:
    """`lr log_uniform [0.0001, 0.03], weight_decay log_uniform [1e-05, 0.1]`."""
    out = []
    for key, d in space.items():
        form = {k: v for k, v in d.model_dump(exclude_none=True).items() if v not in (False, None)}
        out.append(f"{key.removeprefix('optimizer.')} " + ", ".join(f"{k} {v}" for k, v in form.items()))
    return "; ".join(out)


def plan_study(loaded, exp_dir: Path, execution, console: Console) -> None:
    """`optcmp plan` of a study: what it tunes and compares, and how many runs at most, checked
    as `optcmp tune` checks it (the space's ends built and dry-stepped), without training."""
    from rich.table import Table

    from optcmp.sampling import batch_ends
    from optcmp.study import Protocol, total_runs
    from optcmp.verdict import _seeds

    protocol = Protocol.of(loaded, execution)
    tune = protocol.tune
    arms = protocol.arms
    ends = batch_ends(tune.sampler, protocol.budget)
    console.print(f"study {loaded.config.name} → {exp_dir} (nothing trains; `optcmp tune` runs it)", soft_wrap=True)
    console.print(f"metric {protocol.metric} ({'higher' if protocol.maximize else 'lower'} is better"
                  f"{', the default' if protocol.metric_default else ''}); sampler {tune.sampler} (seed {tune.seed}, "
                  f"the same for every variant); prune {tune.prune}", soft_wrap=True)
    console.print(f"budget {protocol.budget} trials per arm, on tuning seed{'s' if len(tune.seeds) > 1 else ''} "
                  f"{_seeds(list(tune.seeds))}; the best trial of each arm rerun on final seeds "
                  f"{_seeds(list(tune.final_seeds))}", soft_wrap=True)
    trials = len(arms) * protocol.budget * len(tune.seeds)
    console.print(f"{len(arms)} arm{'s' if len(arms) != 1 else ''}: at most {total_runs(protocol)} runs "
                  f"({trials} trial runs in {len(ends)} round{'s' if len(ends) != 1 else ''} of "
                  f"{', '.join(str(b - a) for a, b in zip([0, *ends], ends))} trials per arm, "
                  f"{len(arms) * len(tune.final_seeds)} final runs)", soft_wrap=True)
    workloads = any(a.workload for a in arms)
    table = Table(header_style="bold")
    for col in ["arm", *(["workload"] if workloads else []), "optimizer", "space", "steps"]:
        table.add_column(col, overflow="fold")
    config = loaded.config
    for arm in arms:
        opt = config.optimizers[arm.variant] if arm.variant else config.optimizer
        options = opt.model_dump(exclude_none=True, exclude={"space"}, exclude_defaults=True)
        name = options.pop("name", getattr(opt, "name", ""))
        text = name + (" " + ", ".join(f"{k}={v}" for k, v in options.items()) if options else "")
        total = protocol.totals.get(arm.label)
        table.add_row(arm.label, *([arm.workload or ""] if workloads else []), text, _space_text(arm.space),
                      "" if total is None else str(total))
    console.print(table)
