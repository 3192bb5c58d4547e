"""A study's Optuna side: search spaces as Optuna distributions, Optuna's samplers (grid,
random, TPE, QMC), the storage, one Optuna study per arm (a variant on a workload), and
asking and telling trials so that a study killed at any moment resumes exactly.

Common random numbers: trial k's value of the i-th space key is drawn by a sampler seeded
from (`tune.seed`, k, i), the same for every arm, so arms with the same space draw the same
candidates (their differences are the optimizer's, not the draw's), and the same again
after a resume (a sampler made anew would otherwise start its generator over). The grid
sampler visits its grid in one order shuffled by `tune.seed`: trial k gets point k of it.
QMC draws from one scrambled Sobol sequence seeded by `tune.seed` (its counter lives in the
storage); its first trial is drawn at random, as Optuna's QMCSampler does (it learns the
space from that trial). TPE learns from the trials told before each batch (see
`batch_ends`), and treats the batch's earlier trials as bad guesses (Optuna's constant
liar), so one batch does not crowd one spot.

Asking writes to the storage one step at a time (the trial, then each value): a trial a
killed process asked but did not finish asking is completed on resume (the values it stored
are kept, the rest drawn as they would have been; under QMC, the rest come from the next
point of the sequence), and a trial asked but not told is trained again with its stored
values, never sampled anew.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from optcmp.errors import OptcmpError
from optcmp.space import Distribution

TPE_STARTUP = 10  # TPE's random first trials (Optuna's default n_startup_trials), asked as one batch
TPE_ROUNDS = 4  # the trials after them, in this many batches: see `batch_ends`
HALVING_RATE = 3  # successive halving's reduction factor η: a third of a rung's trials go on
HALVING_RUNGS = 3  # rungs before the end, at T/27, T/9 and T/3 of the T steps (or epochs)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial: the CLI says what happens


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class Space:
    """One arm's search space as Optuna distributions, in the space's key order. A choice of
    lists or mappings (`model.hidden: {choice: [[8], [8, 8]]}`) is stored as JSON text."""

    def __init__(self, space: dict[str, Distribution]) -> None:
        self.space = space
        self.choices = {k: [v if _scalar(v) else json.dumps(v) for v in d.values]
                        for k, d in space.items() if d.values is not None}
        self.dists: dict[str, BaseDistribution] = {}
        for key, d in space.items():
            if key in self.choices:
                self.dists[key] = CategoricalDistribution(self.choices[key])
            elif d.kind == "int":
                self.dists[key] = IntDistribution(int(d.low), int(d.high), log=d.log)
            else:
                self.dists[key] = FloatDistribution(float(d.low), float(d.high), log=d.log)

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's points per key."""
        return {k: self.choices.get(k) or self.space[k].points() for k in self.space}

    def suggest(self, trial: optuna.Trial, key: str) -> None:
        d = self.dists[key]
        if isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(key, d.choices)
        elif isinstance(d, IntDistribution):
            trial.suggest_int(key, d.low, d.high, log=d.log)
        else:
            trial.suggest_float(key, d.low, d.high, log=d.log)

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """The config values of a trial's Optuna params (JSON text decoded, the choice's own type)."""
        out = {}
        for key in self.space:
            value = params[key]
            if key in self.choices:
                i = next(i for i, c in enumerate(self.choices[key]) if c == value and type(c) is type(value))
                value = self.space[key].values[i]
            out[key] = value
        return out


def draw_seed(seed: int, k: int, i: int) -> int:
    """The seed of trial k's draw of the i-th key."""
    return int(np.random.SeedSequence([seed, k, i]).generate_state(1)[0])


def sampler_factory(kind: str, seed: int, space: Space) -> Callable[[int, int], optuna.samplers.BaseSampler]:
    """(k, i) → the sampler that draws trial k's i-th key (see the module docstring)."""
    if kind == "grid":
        grid = optuna.samplers.GridSampler(space.grid(), seed=seed)
        return lambda k, i: grid
    if kind == "random":
        return lambda k, i: optuna.samplers.RandomSampler(seed=draw_seed(seed, k, i))
    if kind == "tpe":
        return lambda k, i: optuna.samplers.TPESampler(seed=draw_seed(seed, k, i), n_startup_trials=TPE_STARTUP)
    if kind == "qmc":
        def qmc(k: int, i: int) -> optuna.samplers.BaseSampler:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # since Optuna 3.0
                return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False,
                                                  independent_sampler=optuna.samplers.RandomSampler(draw_seed(seed, k, i)))
        return qmc
    raise ValueError(f"unknown sampler {kind}")


def batch_ends(kind: str, budget: int) -> list[int]:
    """Where each batch of trials ends (trial counts). Grid, random and QMC draw nothing from
    the results: one batch of all `budget` trials, trained together. TPE: its
    `TPE_STARTUP` random trials first, then the rest in `TPE_ROUNDS` batches. A batch's
    trials are drawn from what the trials before it scored, so TPE with batches of b learns
    b times less often than one trial at a time: it needs more trials for the same
    precision, and takes `TPE_ROUNDS` + 1 rounds of training instead of `budget`."""
    if kind != "tpe" or budget <= TPE_STARTUP:
        return [budget]
    step = math.ceil((budget - TPE_STARTUP) / TPE_ROUNDS)
    return [TPE_STARTUP, *range(TPE_STARTUP + step, budget, step), budget]


def halving_pruner(total: int) -> optuna.pruners.BasePruner:
    """Optuna's successive halving (asynchronous, ASHA) with rungs at total/η^3, total/η^2, total/η."""
    first = max(1, total // HALVING_RATE ** HALVING_RUNGS)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=HALVING_RATE)


def rung_steps(total: int) -> list[int]:
    """The steps (or epochs) where halving judges a trial: total/η^3, total/η^2, total/η (rounded
    down); the trial is judged at the first evaluation point at or past each."""
    first = max(1, total // HALVING_RATE ** HALVING_RUNGS)
    return [first * HALVING_RATE ** r for r in range(HALVING_RUNGS) if first * HALVING_RATE ** r < total]


# --- storage ---------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_connection, record) -> None:
    # WAL: the dashboard reads while the study writes; NORMAL: no fsync per commit, which a
    # killed process does not need (the data is the kernel's once written; only a power cut
    # could drop the last commits, never corrupt the file)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def shown_url(url: str) -> str:
    """A storage URL for messages: its password masked."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: nothing to hide in it
        return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage at a SQLAlchemy URL (`sqlite:///path/study.db`, `postgresql://…`)."""
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable server
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptcmpError(f"--storage {shown_url(url)}: cannot open it as an Optuna storage: {message}") from None
    if url.startswith("sqlite"):
        import sqlalchemy

        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # connections made from now on get the pragmas
    return storage


def fingerprint(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ArmStudy:
    """The Optuna study of one arm: its trials, asked and told as the module docstring says."""

    def __init__(self, storage, name: str, space: Space, sampler: str, seed: int, direction: str,
                 pruner: optuna.pruners.BasePruner | None, protocol: dict[str, Any], where: str) -> None:
        self.space, self.name = space, name
        self.factory = sampler_factory(sampler, seed, space)
        self.study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                         pruner=pruner or optuna.pruners.NopPruner(),
                                         sampler=self.factory(0, 0), load_if_exists=True)
        stored = self.study.user_attrs.get("optcmp_fingerprint")
        mark = fingerprint(protocol)
        if stored is None and not self.study.trials:
            self.study.set_user_attr("optcmp_fingerprint", mark)
            self.study.set_user_attr("optcmp_protocol", protocol)
        elif stored != mark:
            raise OptcmpError(f"{where} holds study `{name}` of another config (its space, sampler, seeds, metric or "
                              "training differ); run with --fresh to discard it, or give this config another `name`")

    def trials(self) -> list[FrozenTrial]:
        """The arm's trials in order (trial k is Optuna's number k)."""
        return sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)

    def ask(self, frozen: FrozenTrial | None = None) -> optuna.Trial:
        """A new trial, or `frozen` (asked before, perhaps not completely) with all its values."""
        if frozen is None:
            self.study.sampler = self.factory(len(self.study.get_trials(deepcopy=False)), 0)
            trial = self.study.ask()
        else:
            trial = optuna.Trial(self.study, frozen._trial_id)  # Optuna's way to reopen a running trial
        # Values drawn jointly (TPE's model, QMC's point) come first, by the trial's first sampler,
        # whether its first value is drawn now or was stored before a kill
        self.study.sampler = self.factory(trial.number, 0)
        trial.relative_params  # noqa: B018 - drawn (and cached on the trial) here
        for i, key in enumerate(self.space.dists):
            self.study.sampler = self.factory(trial.number, i)
            self.space.suggest(trial, key)
        return trial

    def tell(self, number: int, value: float | None, pruned: bool) -> None:
        """Finish trial `number`: its score (±inf for a diverged one), or PRUNED."""
        # GridSampler.after_trial calls study.stop() once the grid is done, which raises
        # outside study.optimize; no sampler needs after_trial here, so tell under a plain one
        self.study.sampler = optuna.samplers.RandomSampler(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if pruned:
                self.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                self.study.tell(number, value, skip_if_finished=True)


def delete_studies(storage, names: list[str]) -> None:
    existing = set(optuna.get_all_study_names(storage))
    for name in names:
        if name in existing:
            optuna.delete_study(study_name=name, storage=storage)
