"""The command line: the only place that prints tables or exits.

Heavy modules (torch, pandas, tensorboard) are imported inside the commands, so
`optcmp --help` answers at once.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from optcmp.errors import OptcmpError

# Markup off: what is printed is printed as it is, so `pip install 'optcmp[report]'` keeps
# its `[report]` and a config id with brackets stays whole; styles are given as Text.
console = Console(markup=False, highlight=False)
if not console.is_terminal and "COLUMNS" not in os.environ:  # piped or captured: a wide page, not 80
    console = Console(width=200, markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


class _Group(TyperGroup):
    """Turns the one user-facing error into a message on stderr and its exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OptcmpError as e:
            err_console.print(Text.assemble(("error:", "red"), f" {e}"), soft_wrap=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(
    cls=_Group,
    help="Compare PyTorch optimizers and their hyperparameters from one YAML file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CONFIG_ARG = typer.Argument(..., help="The experiment's YAML config.", show_default=False)
SET_OPT = typer.Option([], "--set", help="Override a config value: KEY=VALUE with a dotted key, e.g. optimizer.lr=1e-3.")
SWEEP_OPT = typer.Option([], "--sweep", help="Replace a sweep axis: KEY=V1,V2, e.g. optimizer.weight_decay=0.01,0.1.")
ENGINE_OPT = typer.Option("auto", "--engine", help="auto: train runs of one architecture together where the vectorized engine can, the rest one by one; sequential: every run on its own; vectorized: as auto, but refuse (exit 2) when a run cannot be vectorized.")
JOBS_OPT = typer.Option(1, "--jobs", "-j", help="Local processes training runs in parallel; a vectorized group is split across them.")
OUT_OPT = typer.Option(Path("runs"), "--out", help="Output root; the experiment goes to OUT/<name>/.")
NO_IMPORTS_OPT = typer.Option(False, "--no-imports", help="Refuse every import path (package.module:Name) in the config: they run code. For configs from elsewhere; `plan` lists them.")
NAME_OPT = typer.Option(None, "--name", help="The experiment's name (its folder under --out), as --set name=NAME.", show_default=False)


def _version(value: bool) -> None:
    if value:
        from optcmp import __version__

        console.print(f"optcmp {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print optcmp's version and exit.")) -> None:
    """Compare PyTorch optimizers and their hyperparameters from one YAML file."""


def _imports_done() -> None:
    """`main` runs a command's first imports with the cyclic garbage collector paused:
    importing torch builds about 250,000 objects, and the collector's passes over
    them cost about a tenth of that second. Once a command has what it needs, collection
    resumes, with the objects built so far left out of its passes (`gc.freeze`), which also
    keeps forked workers from copying those pages. A no-op where `main` paused nothing."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


_gc_paused = False


def _print_summary(table, title: str, wide: bool = False) -> None:
    """The summary at the console's width (display.py decides the columns); `wide`: every
    column, however wide the lines get."""
    from optcmp.display import summary_view, view_width

    out, width = console, view_width(table, console.width, wide)
    if width > console.width:
        out = Console(file=console.file, width=width, markup=False, highlight=False, color_system=console.color_system)
    out.print(summary_view(table, width, wide, title), crop=False)


@app.command()
def plan(config: Path = CONFIG_ARG, set_: list[str] = SET_OPT, sweep: list[str] = SWEEP_OPT, out: Path = OUT_OPT,
         engine: str = ENGINE_OPT, jobs: int = JOBS_OPT, name: Optional[str] = NAME_OPT,
         no_imports: bool = NO_IMPORTS_OPT) -> None:
    """List the runs a config expands to, their parameter groups, and which runs train
    together as one vectorized model, without training."""
    from rich.table import Table

    from optcmp.api import load_checked, load_specs
    from optcmp.autoseeds import describe
    from optcmp.config import import_paths
    from optcmp.planning import cheap_probes
    from optcmp.runner import Execution, experiment_dir, plan_units, preflight

    Execution(engine, jobs=jobs)  # checks the values

    loaded = load_checked(config, set_, sweep, name, imports=not no_imports)
    if loaded.config.tune is not None:
        from optcmp.cli_study import plan_study

        plan_study(loaded, experiment_dir(out, loaded.config.name), Execution(engine, jobs=jobs), console)
        return
    loaded, specs = load_specs(loaded, imports=not no_imports)
    paths = import_paths(loaded.config)
    if paths:  # before preflight imports them
        console.print("import paths (they run code; --no-imports refuses them): "
                      + ", ".join(f"{k} = {p}" for k, p in paths), soft_wrap=True)
    runs = cheap_probes(preflight(loaded, specs), engine)
    specs = [r.spec for r in runs]
    _imports_done()
    units = plan_units(runs, engine, jobs)  # before any output: --engine vectorized may refuse
    exp_dir = experiment_dir(out, loaded.config.name)
    keys = list(dict.fromkeys(k for s in specs for k in s.params))  # a variant's own axes: its runs only
    auto = loaded.config.seeds_auto  # seeds: auto lists every seed it may train
    table = Table(title=f"{len(specs)} runs → {exp_dir}", header_style="bold", caption=auto and describe(auto))
    for col in ["run_id", *keys, "seed"]:
        table.add_column(col)
    for s in specs:
        table.add_row(s.run_id, *(str(s.params.get(k, "")) for k in keys), str(s.seed))
    console.print(table)
    _print_groups(runs)
    _print_units(units, engine, jobs)


def _print_units(units, engine: str, jobs: int) -> None:
    """How `run --engine ENGINE --jobs JOBS` trains the runs (`units`, from `plan_units`):
    vectorized groups (split across processes), and runs on their own with the reason."""
    if engine == "sequential":
        console.print(f"engine sequential: {len(units)} runs one by one")
        return
    from optcmp.planning import describe_units

    where = f" on {jobs} processes" if jobs > 1 else ""
    console.print(f"engine {engine}: {len(units)} work unit{'s' if len(units) != 1 else ''}{where}")
    for line in describe_units(units):
        console.print(f"  {line}", soft_wrap=True)


def _print_groups(runs) -> None:
    """The resolved optimizer parameter groups and schedule of the first run of each config,
    as preflight resolved them (nothing is built again)."""
    from optcmp.optimizers import describe_schedule

    shown = set()
    for r in runs:
        s = r.spec
        if s.config_id in shown:
            continue
        shown.add(s.config_id)
        console.print(Text.assemble((s.config_id, "bold"), f": {r.optimizer_class.__name__}, decay {r.decay}"),
                      soft_wrap=True)
        for i, g in enumerate(r.groups_record):
            opts = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            names = g["params"]
            listed = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
            count = f"{len(names)} tensor{'s' if len(names) != 1 else ''}"
            console.print(f"  group {i}: {opts + '; ' if opts else ''}{count}: {listed}", soft_wrap=True)
        schedule = describe_schedule(s.config.scheduler, r.schedule_length)
        if schedule:
            console.print(f"  schedule: {schedule}", soft_wrap=True)


@app.command()
def run(
    ctx: typer.Context,
    config: Path = CONFIG_ARG,
    out: Path = OUT_OPT,
    set_: list[str] = SET_OPT,
    sweep: list[str] = SWEEP_OPT,
    engine: str = ENGINE_OPT,
    jobs: int = JOBS_OPT,
    threads: int = typer.Option(1, "--threads", help="Torch threads per run, the same under --jobs and Ray (the thread count can change the last bits of some results; --jobs cannot)."),
    executor: str = typer.Option("local", "--executor", help="local (this machine) or ray (a Ray cluster; see --address)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to use, e.g. auto or ray://head:10001; default: a local Ray instance."),
    gpus_per_run: Optional[float] = typer.Option(None, "--gpus-per-run", help="Ray: GPUs each run asks for (0.25 lets four share one); default 1 for device cuda, or auto on a cluster with GPUs, else 0."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard this experiment's earlier results and start over (default: keep finished runs, do the rest)."),
    name: Optional[str] = NAME_OPT,
    no_imports: bool = NO_IMPORTS_OPT,
    storage: Optional[str] = typer.Option(None, "--storage", help="A study's Optuna storage, any SQLAlchemy URL Optuna supports (default: sqlite study.db in the experiment folder)."),
) -> None:
    """Train every run of the config and write the summary (a config with tune: runs its study); a rerun skips runs that finished.

    Exit status: 0 all runs ok or diverged, 1 some failed, 2 a mistake in the input, 130 interrupted."""
    import optcmp.stopping as stopping
    from optcmp.api import load_checked, prepare
    from optcmp.progress import run_with_progress
    from optcmp.compare_view import wrapped
    from optcmp.rounds import run_experiment
    from optcmp.runner import Execution, experiment_dir

    execution = Execution(engine, executor, jobs, threads, address, gpus_per_run)
    _warn_oversubscribed(execution)
    try:
        # SIGTERM (`kill`, a job scheduler) stops like Ctrl-C. Before the sweep either one
        # stops at once (nothing is written yet); from the sweep on it is recorded and
        # acted on where every folder is whole (see optcmp.stopping): runs marked, summary written.
        with stopping.handled():
            loaded = load_checked(config, set_, sweep, name, imports=not no_imports)
            exp_dir = experiment_dir(out, loaded.config.name)
            if loaded.config.tune is not None or ctx.info_name == "tune":
                from optcmp.cli_study import study_command

                raise typer.Exit(study_command(loaded, exp_dir, execution, fresh, storage, console, err_console, _imports_done))
            loaded, specs, runs = prepare(loaded, engine=engine)
            _imports_done()
            with stopping.deferred():
                outcome, planned = run_experiment(  # the sweep, or with seeds: auto its rounds, each decision said
                    loaded.config.seeds_auto, runs, exp_dir, lambda planned, first: run_with_progress(
                        err_console, loaded, [r.spec for r in planned], planned, exp_dir, execution, fresh and first,
                        resuming=first),
                    loaded.config.summary.primary,  # a round's lines, wrapped deeper than the pair lines under it
                    lambda line: [console.print(part, soft_wrap=True) for part in wrapped([line], console.width, hang=4)])
                _finish(exp_dir, outcome, planned, loaded.config.summary.primary, stopping.requested)
    except KeyboardInterrupt:  # before the sweep began: nothing to summarize
        err_console.print("interrupted")
        raise typer.Exit(130) from None


app.command("tune", help="Run a study (a config with tune:): each variant tuned with the same budget, compared on fresh seeds.")(run)


def _warn_oversubscribed(execution) -> None:
    from optcmp.executors import available_cores

    wanted, cores = execution.jobs * execution.threads, available_cores()
    if execution.executor == "local" and wanted > cores:
        err_console.print(f"warning: --jobs {execution.jobs} × --threads {execution.threads} = {wanted} threads "
                          f"on {cores} cores: the runs will slow each other down")


def _finish(exp_dir: Path, outcome, planned: int, primary: Optional[str], stopped=lambda: False) -> None:
    """The summary table and the counts; exit 130 when the sweep was stopped (`stopped()`:
    also by a signal that came while this was printing), 1 when runs failed."""
    from optcmp.display import title
    from optcmp.summary import aggregate, read_run_table

    results = outcome.results
    if results:  # the table the sweep wrote last (summary.csv), else built again from runs.csv
        table = outcome.summary if outcome.summary is not None else \
            aggregate(read_run_table(exp_dir), primary)
        _print_summary(table, title(exp_dir.name, table))
    from optcmp.results import Status

    counts = {s.value: sum(r["status"] == s for r in results) for s in Status}
    new = [r for r in results if r["run_id"] not in outcome.kept]
    seconds = sum((r["metrics"] or {}).get("seconds") or 0 for r in new)
    probes = sum(r.get("role") == "ulp" for r in results)
    said = [f"{probes} chaos probe{'s' if probes != 1 else ''}"] * bool(probes) + [f"{len(outcome.kept)} kept from an earlier attempt"] * bool(outcome.kept)
    kept = f" ({'; '.join(said)})" if said else ""
    console.print(
        f"{len(results)} of {planned} runs: " + (", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none finished")
        + kept + (f"; {seconds:.1f} s of training in {outcome.seconds:.1f} s" if outcome.todo else ""),
    )
    troubled = [r for r in results if r["status"] in ("failed", "diverged")]
    for r in troubled[:10]:
        console.print(f"  {r['status']}: {r['run_id']}: {r['error']}", soft_wrap=True)
    if len(troubled) > 10:
        console.print(f"  … and {len(troubled) - 10} more (see the error column of runs.csv)")
    if results:
        console.print(f"Results in {exp_dir}/ (summary.csv, summary.md, summary.json, runs.csv)")
        console.print(tensorboard_hint(exp_dir), soft_wrap=True)
    if outcome.interrupted or stopped():
        left = planned - len(results) + counts["interrupted"]
        if left:
            console.print(f"Interrupted with {left} of {planned} runs left to do; "
                          "run the same command again to do them (finished runs are kept)")
        else:
            console.print("Interrupted as the last runs finished: none is left to do")
        raise typer.Exit(130)
    if counts["failed"]:
        console.print(f"{counts['failed']} run(s) failed; running the same command again retries them")
        raise typer.Exit(1)


def tensorboard_hint(exp_dir: Path) -> str:
    """How to look at the run's TensorBoard logs: the command where TensorBoard is installed,
    else how to install it (the logs are written either way)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        return f"TensorBoard: tensorboard --logdir {exp_dir}"
    return f"TensorBoard logs written; to view them: pip install 'optcmp[tensorboard]', then optcmp board {exp_dir}"


@app.command()
def summary(exp_dir: Path = typer.Argument(..., help="An experiment folder, e.g. runs/weight-decay."),
            primary: Optional[str] = typer.Option(None, "--metric", help="Rank by this metric, and print only: the files keep their ranking unless --write."),
            write: bool = typer.Option(False, "--write", help="With --metric: rewrite summary.csv/.md/.json ranked by it (the next `run` ranks by the config's summary.primary again)."),
            wide: bool = typer.Option(False, "--wide", help="Every column, however wide (default: what carries information, fitted to the terminal).")) -> None:
    """Re-render the summary from the results on disk (no training).

    Rebuilds runs.csv and summary.csv/.md/.json from the run folders, ranked as the files
    were; --metric M shows another ranking and writes nothing (unless --write)."""
    from optcmp.api import summarize
    from optcmp.display import title

    _imports_done()
    dry = primary is not None and not write
    table = summarize(exp_dir, primary, write=not dry, asked_by="--metric")
    note = " (files unchanged; --write saves this ranking)" if dry else ""
    _print_summary(table, title(exp_dir.name, table) + note, wide)


@app.command()
def compare(exp_dir: Path = typer.Argument(..., help="An experiment folder, e.g. runs/weight-decay."),
            metric: Optional[str] = typer.Option(None, "--metric", help="Compare on this metric (default: best_val_loss where there is a validation split, else best_train_loss)."),
            baseline: Optional[str] = typer.Option(None, "--baseline", help="Compare each config against this config_id instead of every pair.")) -> None:
    """Test whether configs really differ or only by seed noise; write compare.csv (no training)."""
    from optcmp.compare import compare_notes, read_runs, write_compare
    from optcmp.compare_view import compare_lines, compare_table, wrapped

    _imports_done()
    frame = write_compare(exp_dir, metric, baseline)
    if frame.empty:
        console.print(f"{exp_dir}: one config only; nothing to compare")
        return
    lines = compare_lines(frame, compare_notes(read_runs(exp_dir), frame["metric"].iloc[0]), exp_dir)
    for line in wrapped(lines, console.width):
        console.print(line, soft_wrap=True)
    console.print(compare_table(frame, console.width))
    console.print(f"Written {exp_dir / 'compare.csv'}")


@app.command()
def report(exp_dir: Path = typer.Argument(..., help="An experiment folder, e.g. runs/weight-decay.")) -> None:
    """Write report.html, one self-contained file: the verdict, loss, weight and per-seed plots, the tables (no training); a study folder gets its sensitivity, budget and final curves."""
    from optcmp.study_report import write_report

    _imports_done()
    console.print(f"Report: {write_report(exp_dir)}")


@app.command()
def board(
    directory: Path = typer.Argument(Path("runs"), help="An output folder or one experiment's, e.g. runs/weight-decay."),
    port: Optional[int] = typer.Option(None, "--port", help="Port to serve on (default 6006; 8080 with --study)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 serves other machines too."),
    study: bool = typer.Option(False, "--study", help="optuna-dashboard on the study in DIRECTORY (its study.db) instead."),
    storage: Optional[str] = typer.Option(None, "--storage", help="With --study: the study's storage URL (`tune --storage`)."),
) -> None:
    """Start TensorBoard on an output folder (scalars, histograms, HParams), or with --study optuna-dashboard on a study."""
    import importlib.util

    from optcmp.board import check_port, serve, serve_dashboard, study_storage

    if study or storage:
        if importlib.util.find_spec("optuna_dashboard") is None:
            err_console.print("optuna-dashboard is not installed: pip install 'optcmp[dashboard]'")
            raise typer.Exit(2)
        url = study_storage(directory, storage)
        port = 8080 if port is None else port
        check_port(host, port)
        console.print(f"optuna-dashboard for {directory} on http://{host}:{port}/ (Ctrl-C stops it)")
        raise typer.Exit(serve_dashboard(url, host, port))
    port = 6006 if port is None else port
    if importlib.util.find_spec("tensorboard") is None:  # an optional extra
        err_console.print("tensorboard is not installed: pip install 'optcmp[tensorboard]'")
        raise typer.Exit(2)
    if not directory.is_dir():
        raise OptcmpError(f"{directory}: no such folder (give the --out folder of `optcmp run`, default runs/)")
    check_port(host, port)  # TensorBoard itself would exit 255 with a page of its log
    console.print(f"TensorBoard for {directory} on http://{host}:{port}/ (Ctrl-C stops it)")
    raise typer.Exit(serve(directory, host, port))


def main() -> None:
    """Entry point of the `optcmp` console script.

    Once a command is done and everything it wrote is closed, the process ends at once
    (`os._exit`) rather than tearing the interpreter down: with torch loaded, the teardown
    alone costs about 0.2–0.4 s, a tenth of a small sweep. Only where nothing is left
    behind: no other thread still running, no child process, no Ray.

    The garbage collector is paused until the command's imports are done (`_imports_done`)."""
    global _gc_paused
    if gc.isenabled():
        gc.disable()
        _gc_paused = True
    try:
        app()
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    else:
        code = 0
    _exit_now(code)


def _exit_now(code) -> None:
    import os
    import sys
    import threading

    if not isinstance(code, int) or "ray" in sys.modules:
        sys.exit(code)
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.active_children():
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be said anyway
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
