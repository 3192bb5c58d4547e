"""A study (issue 13): every optimizer variant tuned with the same budget, the tuned winners
compared on fresh seeds.

    loaded = load_config("study.yaml")                  # tune: validated
    protocol = Protocol.of(loaded)                      # preflight: nothing trains, nothing is written
    outcome = Study(protocol, exp_dir).run()            # study_run: trials, final runs, verdict.json

The protocol, per *arm* (a variant, on a workload where there are several):
1. `tune.budget` trials, each a point of the arm's space (`tune.space`, the variant's own
   `space:` in place of its keys) drawn by Optuna's sampler (`sampling`), trained on each
   tuning seed and scored on the tuning metric (`trials.score`); trials that share an
   architecture train together in the vectorized engine, across arms too: all of a batch's
   trials at once (every trial for grid, random and QMC; TPE in rounds, `sampling.batch_ends`).
2. The best trial of each arm (`trials.rank_key`) rerun on `tune.final_seeds`, seeds that
   played no part in the tuning.
3. The verdict (`verdict`): the tuned variants compared on the final seeds.

Ids: trial k of arm `adam` trains runs `adam-t<k>-s<seed>` (config id `adam-t<k>`, role
"trial"); its final runs are `adam-s<seed>` (config id `adam`, role "final"), so `summary`
and `compare` of the folder see the tuned variants. With workloads the arm is
`<workload>-<variant>`. Every run is an ordinary run folder, kept on resume by config hash;
the Optuna storage (`study.db` in the folder, or `--storage URL`) holds the trials, one
Optuna study per arm named `<name>/<arm>`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optcmp.config import ExperimentConfig, LoadedConfig
from optcmp.errors import ConfigError, OptcmpError
from optcmp.results import FINISHED, read_result
from optcmp.schema_checks import variant_spaces
from optcmp.space import Distribution
from optcmp.summary import HIGHER_IS_BETTER
from optcmp.sweep import RunSpec, config_hash, resolve, short_name
from optcmp.trials import INTERMEDIATE
from optcmp.units import Events, Execution
from optcmp.values import shown

DEFAULT_METRICS = ("best_val_loss", "best_train_loss")  # the summary's default ranking metric
DEFAULT_REASON = ("the summary's default ranking metric: best-so-far at the evaluation points, the least chaotic "
                  "loss on the reference MLP (benchmarks/chaos_probe.py: the 10 % tail mean is the most chaotic)")
STUDY_FILES = ("trials.csv", "verdict.json", "verdict.md", "study.json")


@dataclass(frozen=True)
class Arm:
    """One variant on one workload: its own Optuna study, budget, best trial and final runs."""

    label: str  # the run ids' prefix and the final runs' config id: `adam`, or `digits-adam`
    variant: str | None
    workload: str | None
    space: dict[str, Distribution]

    def where(self, config: ExperimentConfig, key: str) -> str:
        """The config key that gave this arm's space its `key`."""
        own = self.variant is not None and key in config.optimizers[self.variant].space
        return f"optimizers.{self.variant}.space.{key}" if own else f"tune.space.{key}"


def arms_of(config: ExperimentConfig) -> list[Arm]:
    spaces = variant_spaces(config)
    arms = []
    for workload in list(config.workloads) or [None]:
        for variant, space in spaces.items():
            name = variant if variant is not None else short_name(config.optimizer.name)
            label = name if workload is None else f"{workload}-{name}"
            arms.append(Arm(label, variant, workload, space))
    return arms


def arm_config(config: ExperimentConfig, arm: Arm, values: dict[str, Any], seed: int) -> ExperimentConfig:
    """A run's config: the arm's variant on its workload, with the trial's values, for `seed`."""
    if arm.workload is None:
        return resolve(config, arm.variant, values, seed)
    workload = config.workloads[arm.workload].model_dump(mode="python")
    merged = resolve(config, arm.variant, None, seed).model_dump(mode="python")
    merged.update(workload)
    return resolve(ExperimentConfig.model_validate(merged), None, values, seed)


def trial_spec(config: ExperimentConfig, arm: Arm, k: int, values: dict[str, Any], seed: int,
               final: bool = False) -> RunSpec:
    """Run `seed` of trial k (or, `final`, of the arm's final runs with trial k's values)."""
    resolved = arm_config(config, arm, values, seed)
    config_id = arm.label if final else f"{arm.label}-t{k}"
    params: dict[str, Any] = {"variant": arm.variant} if arm.variant is not None else {}
    if arm.workload is not None:
        params["workload"] = arm.workload
    params.update(trial=k, **values)
    role = "final" if final else "trial"
    return RunSpec(f"{config_id}-s{seed}", config_id, seed, params, resolved, config_hash(resolved, arm.variant, role),
                   arm.variant, role)


@dataclass
class Protocol:
    """A study checked and resolved before anything trains or is written (`Protocol.of`)."""

    loaded: LoadedConfig
    arms: list[Arm]
    budget: int
    metric: str
    metric_default: bool
    maximize: bool
    resolver: Any  # resolve.Resolver: each distinct config built once
    totals: dict[str, int] = field(default_factory=dict)  # arm → steps (or epochs) a run trains

    @property
    def config(self) -> ExperimentConfig:
        return self.loaded.config

    @property
    def tune(self):
        return self.config.tune

    @classmethod
    def of(cls, loaded: LoadedConfig, execution: Execution | None = None) -> Protocol:
        """Check the study as `optcmp run` does before the first run: the space's keywords
        against each variant's class, both ends of each range (and of each list) built and
        taken through preflight's dry step, the metric, and the run ids."""
        from optcmp.resolve import Resolver
        from optcmp.tuning import check_space_keywords

        config, tune = loaded.config, loaded.config.tune
        check_space_keywords(loaded)
        arms = arms_of(config)
        budget = tune.budget or math.prod(len(d.points()) for d in arms[0].space.values())  # the whole grid
        resolver = Resolver(loaded.base_dir)
        shapes = [cls._preflight(loaded, resolver, arm) for arm in arms]
        metric = tune.metric or DEFAULT_METRICS[0 if all(s.n_val > 0 for s in shapes) else 1]
        maximize = metric in HIGHER_IS_BETTER
        if "accuracy" in metric and any(s.task != "classification" for s in shapes):
            raise loaded.source.error("tune.metric", f"`{metric}` needs a classification data set; allowed here: a loss")
        if tune.direction != "auto" and (tune.direction == "maximize") != maximize:
            natural = "maximize" if maximize else "minimize"
            raise loaded.source.error("tune.direction", f"{tune.direction} disagrees with `{metric}`, which the "
                                      f"verdict ranks {'higher' if maximize else 'lower'} first; allowed: auto or {natural}")
        if tune.prune == "halving":
            _check_halving(loaded, arms, metric, execution)
        protocol = cls(loaded, arms, budget, metric, tune.metric is None, maximize, resolver)
        trains = {a.label: arm_config(config, a, {}, tune.seeds[0]).train for a in arms}
        protocol.totals = {label: train.steps or train.epochs for label, train in trains.items()}
        _check_ids(loaded, protocol)
        return protocol

    @staticmethod
    def _preflight(loaded: LoadedConfig, resolver, arm: Arm):
        config, seed = loaded.config, loaded.config.tune.seeds[0]
        ends = {k: d.endpoints() for k, d in arm.space.items()}
        first = {k: e[0] for k, e in ends.items()}
        corners = [first, *({**first, k: e[-1]} for k, e in ends.items() if len(e) > 1)]
        shape = None
        for values in corners:
            try:
                run = resolver(trial_spec(config, arm, 0, values, seed))
            except ConfigError as e:
                raise locate(loaded, e, arm, values) from None
            shape = shape or run.data
        return shape

    def resolve(self, spec: RunSpec, arm: Arm):
        try:
            return self.resolver(spec)
        except ConfigError as e:
            raise locate(self.loaded, e, arm, {k: spec.params[k] for k in arm.space}) from None


def locate(loaded: LoadedConfig, err: ConfigError, arm: Arm, values: dict[str, Any]) -> OptcmpError:
    """A trial config's error at the space key whose value caused it, or where the value was given."""
    for key, value in values.items():
        if err.key == key or err.key.startswith((key + ".", key + "[")):
            return loaded.source.error(arm.where(loaded.config, key), f"{shown(value)}: {err.message}")
    if arm.workload is not None and err.key.split(".")[0] in ("model", "data", "train"):
        return loaded.source.error(f"workloads.{arm.workload}.{err.key}", err.message)
    return loaded.locate(err, {}, arm.variant)


def _check_halving(loaded: LoadedConfig, arms: list[Arm], metric: str, execution: Execution | None) -> None:
    if metric not in INTERMEDIATE:
        raise loaded.source.error("tune.prune", f"halving judges trials at the evaluation points, where `{metric}` "
                                  f"has no value; allowed with halving: {', '.join(INTERMEDIATE)}")
    for arm in arms:
        for key in ("train.steps", "train.epochs"):
            if key in arm.space:
                raise loaded.source.error(arm.where(loaded.config, key), "halving compares trials at the same steps, so "
                                          "it cannot tune how long they train; allowed with halving: a space without "
                                          "train.steps or train.epochs (or prune: none)")
    if execution is not None and (execution.executor != "local" or execution.jobs > 1):
        raise OptcmpError("prune: halving decides at every evaluation point in this process; allowed with it: the "
                          "local executor with --jobs 1")


def _check_ids(loaded: LoadedConfig, protocol: Protocol) -> None:
    """Refuse arms whose run ids would collide: workload a-b with variant c and workload a with
    variant b-c. Nothing else can collide: a trial's id ends in -t<k>-s<tuning seed>, a final
    run's in -s<final seed>, and the two kinds of seed are disjoint."""
    labels: dict[str, Arm] = {}
    for arm in protocol.arms:
        if arm.label in labels:
            other = labels[arm.label]
            raise loaded.source.error(f"workloads.{arm.workload}", f"workload {arm.workload} with variant {arm.variant} "
                                      f"and workload {other.workload} with variant {other.variant} are both named "
                                      f"{arm.label} in run ids; give one of them another name")
        labels[arm.label] = arm


# --- the driver ------------------------------------------------------------------------


@dataclass
class StudyEvents(Events):
    """`Events` and a line for each phase ("round 1 of 5: …", "final runs: …")."""

    phase: Any = lambda text: None
    total: int = 0  # runs in the whole study


@dataclass
class StudyOutcome:
    exp_dir: Path
    results: list[dict[str, Any]]  # every run's, in plan order
    kept: set[str]  # run ids an earlier attempt had finished
    trained: int = 0  # runs trained in this attempt
    interrupted: bool = False
    failed: int = 0
    verdict: dict[str, Any] | None = None
    seconds: float = 0.0


def default_storage(exp_dir: Path) -> str:
    return f"sqlite:///{(Path(exp_dir) / 'study.db').resolve()}"


def total_runs(protocol: Protocol) -> int:
    tune = protocol.tune
    return len(protocol.arms) * (protocol.budget * len(tune.seeds) + len(tune.final_seeds))


def study_record(protocol: Protocol, storage: str) -> dict[str, Any]:
    """study.json: what the study is (written from its first round on, before any verdict),
    so `report` and `board` read a study in progress: the metric, the sampler, the seeds,
    each arm's space as written, and where its Optuna storage is (`study.db`, or the
    --storage URL with its password masked)."""
    tune = protocol.tune
    return {"name": protocol.config.name, "metric": protocol.metric,
            "direction": "maximize" if protocol.maximize else "minimize", "sampler": tune.sampler,
            "budget": protocol.budget, "prune": tune.prune, "sampler_seed": tune.seed,
            "tuning_seeds": list(tune.seeds), "final_seeds": list(tune.final_seeds), "storage": storage,
            "arms": [{"label": a.label, "variant": a.variant, "workload": a.workload,
                      "space": {k: d.model_dump() for k, d in a.space.items()}} for a in protocol.arms]}


def kept_result(exp_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The run's result on disk when it finished with this very config, else None."""
    result = read_result(Path(exp_dir) / spec.run_id)
    if result is not None and result.get("status") in FINISHED and result.get("config_hash") == spec.config_hash:
        return result
    return None



