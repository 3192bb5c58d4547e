"""The Python API: `optcmp.run(...)` and `optcmp.load(dir)` give an `Experiment` whose runs
and summary are pandas DataFrames, for notebooks and scripts.

The same path as the command line (cli.py calls `prepare` and `summarize` from here): the
config is loaded, overridden and validated once, every run is built before the first one
trains (`runner.preflight`), and `runner.run_sweep` trains them; a mistake raises the same
`OptcmpError` with the same message the CLI prints after `error: `. Nothing is printed
unless `quiet=False`.

Heavy modules (torch, pandas) are imported inside the functions: `import optcmp` stays light.
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from optcmp.errors import OptcmpError

ConfigLike = Union[str, "os.PathLike[str]", Mapping[str, Any]]
Overrides = Union[Sequence[str], Mapping[str, Any], None]


def _is_yaml_text(text: str) -> bool:
    """A string is the YAML itself when it spans lines or reads `key: value` and names no
    existing file; otherwise it is a path (and a missing file is the usual error)."""
    if "\n" in text:
        return True
    return ": " in text and not Path(text).exists()


def _parsed(config: ConfigLike):
    """(the name messages give the config, its parsed form — or None for a file)."""
    from optcmp.yamlio import Parsed, parse_yaml

    if isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
        data.setdefault("name", "experiment")
        return Path("<dict>"), Parsed(data)  # no lines: messages name the key alone
    if isinstance(config, str) and _is_yaml_text(config):
        parsed = parse_yaml(config, "<yaml>")
        if isinstance(parsed.value, dict):
            parsed.value.setdefault("name", "experiment")
        return Path("<yaml>"), parsed
    if isinstance(config, (str, os.PathLike)):
        return Path(config), None
    raise OptcmpError(f"config: expected a path, a YAML string or a dict, got {type(config).__name__}")


def _as_sets(overrides: Overrides, option: str) -> list[str]:
    """`KEY=VALUE` strings from a list of them or a dict (values written as JSON, which YAML
    reads back as the same value); for `--sweep`, a dict's values are lists."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise OptcmpError(f"{option}: expected a list of KEY=VALUE strings or a dict, got the string {overrides!r}")
    if isinstance(overrides, Mapping):
        if option == "--sweep":
            bad = next((k for k, v in overrides.items() if isinstance(v, str) or not isinstance(v, Sequence)), None)
            if bad is not None:
                raise OptcmpError(f"sweeps: {bad}: expected a list of values, got {overrides[bad]!r}")
            return [f"{k}={','.join(json.dumps(v) for v in values)}" for k, values in overrides.items()]
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return [str(o) for o in overrides]


def load_checked(config: ConfigLike, overrides: Overrides = None, sweeps: Overrides = None, name: str | None = None,
                 imports: bool = True):
    """Load and validate a config (a path, YAML text or a dict) with its overrides, importing
    nothing yet: a LoadedConfig. `imports=False` (`--no-imports`) refuses every import path
    the config names."""
    from optcmp.config import LoadedConfig, load_config

    if isinstance(config, LoadedConfig):
        return config
    sets = _as_sets(overrides, "--set")
    if name is not None:  # the last --set: it wins; quoted, so `2024` stays a string
        sets.append(f"name={json.dumps(name)}")
    path, parsed = _parsed(config)
    return load_config(path, sets, _as_sets(sweeps, "--sweep"), imports=imports, parsed=parsed)


def load_specs(config: ConfigLike, overrides: Overrides = None, sweeps: Overrides = None, name: str | None = None,
               imports: bool = True):
    """`load_checked`, then the sweep expanded: (LoadedConfig, [RunSpec])."""
    from optcmp.sweep import expand

    loaded = load_checked(config, overrides, sweeps, name, imports)
    return loaded, expand(loaded.config)


def prepare(config: ConfigLike, overrides: Overrides = None, sweeps: Overrides = None, name: str | None = None,
            imports: bool = True, engine: str = "auto"):
    """`load_specs`, then build every run once without training (the preflight, dry step
    included): (LoadedConfig, [RunSpec], [ResolvedRun]), without the chaos probes of
    `summary.chaos: auto` that `engine` would train one by one (`planning.cheap_probes`).
    `config` may be a LoadedConfig."""
    from optcmp.planning import cheap_probes
    from optcmp.runner import preflight

    loaded, specs = load_specs(config, overrides, sweeps, name, imports)
    runs = cheap_probes(preflight(loaded, specs), engine)
    kept = {run.spec.run_id for run in runs}
    return loaded, [s for s in specs if s.run_id in kept], runs


def run(config: ConfigLike, out: str | os.PathLike = "runs", *, overrides: Overrides = None, sweeps: Overrides = None,
        name: str | None = None, engine: str = "auto", jobs: int = 1, threads: int = 1, executor: str = "local",
        fresh: bool = False, quiet: bool = True, imports: bool = True, storage: str | None = None) -> Experiment:
    """Train every run of `config` into `out/<name>/`, as `optcmp run` does, and return the
    Experiment. A rerun keeps the runs that finished (`fresh=True` starts over);
    `imports=False` refuses import paths, as `--no-imports` does.

    `overrides`: `["optimizer.lr=0.001"]` or `{"optimizer.lr": 0.001}` (as `--set`);
    `sweeps`: `["optimizer.weight_decay=0.01,0.1"]` or `{"optimizer.weight_decay": [0.01, 0.1]}`
    (as `--sweep`). Failed runs are in `.runs` with status `failed`; Ctrl-C stops the sweep
    (runs.csv and the summary are written first) and raises KeyboardInterrupt.

    A config with `tune:` runs its study (`optcmp.study`; `storage`: an SQLAlchemy URL for
    the Optuna storage, default `study.db` in the folder): the experiment's `.verdict` and
    `.trials` hold the outcome."""
    from optcmp.rounds import run_experiment
    from optcmp.runner import Events, Execution, experiment_dir, run_sweep

    execution = Execution(engine, executor, jobs, threads)
    loaded = load_checked(config, overrides, sweeps, name, imports)
    exp_dir = experiment_dir(Path(out), loaded.config.name)
    if loaded.config.tune is not None:
        return _run_study(loaded, exp_dir, execution, fresh, quiet, storage)
    loaded, specs, runs = prepare(loaded, engine=engine)
    events = Events() if quiet else Events(run_end=_say_run)
    # the sweep, or with seeds: auto its rounds (their decisions printed unless quiet)
    outcome, _ = run_experiment(
        loaded.config.seeds_auto, runs, exp_dir,
        lambda planned, first: run_sweep(loaded, [r.spec for r in planned], exp_dir, events, execution, fresh and first, planned),
        loaded.config.summary.primary, (lambda line: None) if quiet else print)
    experiment = Experiment(exp_dir)
    if not quiet and outcome.results:
        experiment.show()
    if outcome.interrupted:
        raise KeyboardInterrupt(f"{exp_dir}: interrupted; run again to do the runs left (finished ones are kept)")
    return experiment


def _run_study(loaded, exp_dir: Path, execution, fresh: bool, quiet: bool, storage: str | None) -> Experiment:
    from optcmp.study import StudyEvents
    from optcmp.study_run import run_study
    from optcmp.verdict import verdict_lines

    events = StudyEvents() if quiet else StudyEvents(run_end=_say_run, phase=print)
    outcome = run_study(loaded, exp_dir, storage, execution, events, fresh)
    if not quiet and outcome.verdict is not None:
        print("\n".join(verdict_lines(outcome.verdict)))
    if outcome.interrupted:
        raise KeyboardInterrupt(f"{exp_dir}: interrupted; run again to go on (finished runs and told trials are kept)")
    return Experiment(exp_dir)


def _say_run(result: dict[str, Any]) -> None:
    print(f"{result['status']:<11} {result['run_id']}" + (f": {result['error']}" if result.get("error") else ""))


def load(directory: str | os.PathLike) -> Experiment:
    """Open a finished (or stopped) experiment folder, e.g. `runs/weight-decay`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise OptcmpError(f"{directory}: no such experiment folder")
    if not (directory / "runs.csv").is_file():
        raise OptcmpError(f"{directory}: no runs.csv here; run `optcmp run CONFIG` first")
    return Experiment(directory)


def summarize(exp_dir: Path, primary: str | None = None, write: bool = True, asked_by: str = "primary"):
    """The summary rebuilt from the run folders (what `optcmp summary` does): with `write`,
    runs.csv and summary.csv/.md/.json are rewritten, ranked by `primary` or else as the
    files were; without, nothing is written."""
    from optcmp.results import collect_results, flatten, planned_ids, write_runs_csv
    from optcmp.summary import RunTable, aggregate, write_summary

    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise OptcmpError(f"{exp_dir}: no such experiment folder")
    results = collect_results(exp_dir)
    if not results:
        raise OptcmpError(f"{exp_dir}: no finished runs here (no */result.json); run `optcmp run CONFIG` first")
    order = {run_id: i for i, run_id in enumerate(planned_ids(exp_dir))}  # [] for a damaged plan.json
    results.sort(key=lambda r: order.get(r["run_id"], len(order)))
    if not write:
        return aggregate(RunTable.of([flatten(r) for r in results]), primary, asked_by)
    write_runs_csv(exp_dir, results)
    written = _read_json(exp_dir / "summary.json", {})
    if primary is not None:
        return write_summary(exp_dir, primary, asked_by)
    return write_summary(exp_dir, written.get("primary") if isinstance(written, dict) else None)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


@dataclass(frozen=True)
class Experiment:
    """An experiment folder: what `optcmp run` wrote, read from the disk on each access."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def runs(self):
        """runs.csv as a DataFrame: one row per run (config × seed); a damaged one is
        rebuilt from the run folders first."""
        from optcmp.summary import read_runs

        return read_runs(self.dir)

    @property
    def summary(self):
        """summary.csv as a DataFrame: one row per config, best first."""
        return self._csv("summary.csv")

    @property
    def trials(self):
        """A study's trials.csv as a DataFrame: one row per trial (variant, trial, status, its
        values, the tuning metric, rank …)."""
        return self._csv("trials.csv")

    @property
    def verdict(self) -> dict[str, Any]:
        """A study's verdict.json: the tuned variants compared on the final seeds."""
        path = self.dir / "verdict.json"
        if not path.is_file():
            raise OptcmpError(f"{path}: missing; a study writes it once its final runs are done (run it again to go on)")
        return json.loads(path.read_text())

    def _csv(self, name: str):
        import pandas as pd

        path = self.dir / name
        if not path.is_file():
            raise OptcmpError(f"{path}: missing; `optcmp summary {self.dir}` rebuilds it from the run folders")
        return pd.read_csv(path)

    def compare(self, metric: str | None = None, baseline: str | None = None):
        """`optcmp compare` as a DataFrame (one row per pair of configs, Holm-corrected
        t-tests; the `sentence` column says it in words); writes nothing."""
        from optcmp.compare import compare_configs

        return compare_configs(self.runs, metric, baseline)

    def report(self) -> Path:
        """Write report.html (one self-contained file) and return its path."""
        from optcmp.study_report import write_report

        return write_report(self.dir)

    def table(self, width: int = 100, wide: bool = False, metric: str | None = None) -> str:
        """The summary as the terminal shows it, `width` characters wide (`metric`: ranked
        by it instead, without writing anything)."""
        from optcmp.display import render_text, summary_view, title, view_width

        table = self._table(metric)
        width = view_width(table, width, wide)
        return render_text(summary_view(table, width, wide, title(self.name, table)), width)

    def show(self, width: int | None = None, wide: bool = False, metric: str | None = None) -> None:
        """Print `table()` (at the terminal's width by default)."""
        import shutil

        print(self.table(width or shutil.get_terminal_size().columns, wide, metric), end="")

    def _table(self, metric: str | None):
        from optcmp.summary import aggregate, read_run_table

        written = _read_json(self.dir / "summary.json", {})
        primary = metric or (written.get("primary") if isinstance(written, dict) else None)
        return aggregate(read_run_table(self.dir), primary)

    def __repr__(self) -> str:
        return f"Experiment({str(self.dir)!r})"

    def _repr_html_(self) -> str:
        """A notebook cell's view: the summary's columns that carry information."""
        import html

        from optcmp.display import html_summary, title

        table = self._table(None)
        ranking = title("", table).removeprefix(": ")
        return (f"<div><p><b>optcmp experiment {html.escape(self.name)}</b> (<code>{html.escape(str(self.dir))}</code>), "
                f"{html.escape(ranking)}</p>{html_summary(table, 160)}</div>")
