"""Studies (issue 13): variants trained with exactly their options, samplers inside their
spaces with common random numbers, equal budgets, disjoint seeds, divergence ranked last,
batches trained as one vectorized group, the known answers of the verdict, and the API."""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from torch import nn

from optcmp.config import Distribution, ModelConfig, load_config
from optcmp.models import build_model
from optcmp.sampling import ArmStudy, Space, batch_ends, sampler_factory
from optcmp.study_run import run_study
from optcmp.units import Execution

HEAD = """\
name: {name}
device: cpu
model: {{kind: mlp, hidden: [8, 8], norm: layernorm, activation: none}}
data: {{kind: quadratic}}
train: {{steps: {steps}, loss: mse}}
log: {{every: 5, histograms: {{every: 0}}}}
"""


def study(write_config, tmp_path, body: str, name: str = "st", steps: int = 30, engine: str = "auto", **kw):
    path = write_config(HEAD.format(name=name, steps=steps) + body, name=f"{name}.yaml")
    outcome = run_study(load_config(path), tmp_path / "out" / name, execution=Execution(engine), **kw)
    return outcome, tmp_path / "out" / name


def plain_run(seed: int, steps: int, make_optimizer) -> dict[str, np.ndarray]:
    """The quadratic regression with the study's MLP, as a plain PyTorch script trains it, on
    one torch thread as optcmp's runs train (LayerNorm's backward sums by thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _plain_run(seed, steps, make_optimizer)
    finally:
        torch.set_num_threads(threads)


def _plain_run(seed: int, steps: int, make_optimizer) -> dict[str, np.ndarray]:
    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    x, y = torch.stack([x1, x2], dim=1), 2 * x1 - x2**2 + 1
    torch.manual_seed(seed)
    model = build_model(ModelConfig(hidden=[8, 8], norm="layernorm", activation="none"), 2, 1)
    opt = make_optimizer(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
        opt.step()
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


VARIANTS = """\
optimizers:
  sgdn: {name: sgd, momentum: 0.9, nesterov: true, dampening: 0.0}
  adamw: {name: adamw, betas: [0.8, 0.99], weight_decay: 0.05}
tune:
  space: {optimizer.lr: {log_uniform: [1.0e-4, 1.0e-3]}}
  budget: 2
  final_seeds: [7]
"""


def test_variants_train_with_exactly_their_own_options(write_config, tmp_path):
    outcome, exp = study(write_config, tmp_path, VARIANTS, engine="sequential")
    verdict = outcome.verdict
    builders = {
        "sgdn": lambda lr: (lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True, dampening=0.0)),
        "adamw": lambda lr: (lambda p: torch.optim.AdamW(p, lr=lr, betas=(0.8, 0.99), weight_decay=0.05)),
    }
    for variant, make in builders.items():
        lr = verdict["variants"][variant]["best_params"]["optimizer.lr"]
        result = json.loads((exp / f"{variant}-s7" / "result.json").read_text())
        assert (result["role"], result["variant"], result["optimizer"]["lr"]) == ("final", variant, lr)
        expected = plain_run(7, 30, make(lr))
        weights = np.load(exp / f"{variant}-s7" / "weights.npz")
        for name, value in expected.items():
            assert weights[name].tobytes() == value.tobytes(), (variant, name)  # bit for bit
    sgdn = json.loads((exp / "sgdn-s7" / "result.json").read_text())["optimizer"]
    assert (sgdn["momentum"], sgdn["nesterov"], sgdn["dampening"]) == (0.9, True, 0.0)
    adamw = json.loads((exp / "adamw-s7" / "result.json").read_text())["optimizer"]
    assert (adamw["betas"], adamw["weight_decay"]) == ([0.8, 0.99], 0.05)


SPACES = {
    "optimizer.lr": {"log_uniform": [1.0e-4, 1.0e-1]},
    "optimizer.momentum": {"uniform": [0.5, 0.9]},
    "train.steps": {"int": [10, 20]},
    "model.hidden": {"choice": [[8], [8, 8]]},
    "optimizer.weight_decay": {"choice": [0, 0.01]},
}
GRID = {"optimizer.lr": [0.1, 0.01, 0.001], "train.steps": {"int": [10, 11]}, "model.hidden": {"choice": [[8], [4, 4]]}}


def asked(kind: str, space: dict, budget: int, scale: float = 1.0) -> list[dict]:
    """The values a sampler draws for `budget` trials (told a score each, so TPE learns)."""
    dists = {k: Distribution.model_validate(v) for k, v in space.items()}
    arm = ArmStudy(optuna.storages.InMemoryStorage(), "s", Space(dists), kind, 3, "minimize", None, {}, "mem")
    out = []
    for _ in range(budget):
        trial = arm.ask()
        values = arm.space.values(trial.params)
        out.append(values)
        arm.tell(trial.number, float(np.log(values.get("optimizer.lr", 1.0)) ** 2 * scale), False)
    return out


@pytest.mark.parametrize("kind", ["random", "tpe", "qmc"])
def test_every_sampler_draws_inside_its_space(kind):
    dists = {k: Distribution.model_validate(v) for k, v in SPACES.items()}
    drawn = asked(kind, SPACES, 14)  # past TPE's 10 random trials
    for values in drawn:
        assert list(values) == list(SPACES)
        assert all(dists[k].contains(v) for k, v in values.items()), values
        assert 1e-4 <= values["optimizer.lr"] <= 1e-1 and isinstance(values["optimizer.lr"], float)
        assert type(values["train.steps"]) is int and type(values["optimizer.weight_decay"]) in (int, float)
        assert values["model.hidden"] in ([8], [8, 8]) and values["optimizer.weight_decay"] in (0, 0.01)
    assert len({json.dumps(v) for v in drawn}) == 14  # no candidate drawn twice
    lrs = np.log10([v["optimizer.lr"] for v in drawn])
    assert lrs.min() < -2.5 and lrs.max() > -1.5  # log-uniform: spread over the decades


def test_the_grid_sampler_visits_each_point_once():
    drawn = asked("grid", GRID, 12)
    points = {(v["optimizer.lr"], v["train.steps"], tuple(v["model.hidden"])) for v in drawn}
    assert points == {(lr, s, h) for lr in (0.1, 0.01, 0.001) for s in (10, 11) for h in ((8,), (4, 4))}


def test_common_random_numbers_and_draws_that_survive_a_new_sampler():
    """Two arms with one space draw the same candidates; an arm with its own range draws the
    same quantiles of it; a sampler made anew (a resumed study) draws trial k as before."""
    shared = asked("random", {"optimizer.lr": {"log_uniform": [1.0e-4, 1.0e-1]}}, 5)
    assert shared == asked("random", {"optimizer.lr": {"log_uniform": [1.0e-4, 1.0e-1]}}, 5, scale=2.0)
    own = asked("random", {"optimizer.lr": {"log_uniform": [1.0e-7, 1.0e-4]}}, 5)
    np.testing.assert_allclose([v["optimizer.lr"] * 1000 for v in own], [v["optimizer.lr"] for v in shared], rtol=1e-9)
    space = Space({"optimizer.lr": Distribution.model_validate({"log_uniform": [1.0e-4, 1.0e-1]})})
    first, again = sampler_factory("random", 3, space)(4, 0), sampler_factory("random", 3, space)(4, 0)
    assert first is not again  # made anew for every draw: nothing depends on what it drew before


def test_tpe_batches():
    assert batch_ends("random", 16) == [16]
    assert batch_ends("tpe", 8) == [8]
    assert batch_ends("tpe", 30) == [10, 15, 20, 25, 30]
    assert batch_ends("tpe", 16) == [10, 12, 14, 16]


SGD_LRS = """\
optimizers:
  adam: {{name: adam}}
  sgd: {{name: sgd, space: {{optimizer.lr: {sgd}}}}}
tune:
  space: {{optimizer.lr: {{choice: [1.0e-3, 1.0e-2, 3.0e-2]}}}}
  sampler: grid
  seeds: [0, 1]
  final_seeds: 3
"""


def test_equal_budgets_disjoint_seeds_and_a_diverged_trial_ranked_last(write_config, tmp_path):
    body = SGD_LRS.format(sgd="{choice: [1.0e-4, 10.0, 1.0e-3]}")  # sgd at lr 10 diverges
    outcome, exp = study(write_config, tmp_path, body)
    trials = pd.read_csv(exp / "trials.csv")
    assert trials.groupby("variant").size().to_dict() == {"adam": 3, "sgd": 3}
    runs = pd.read_csv(exp / "runs.csv")
    assert set(runs[runs.role == "trial"].seed) == {0, 1} and set(runs[runs.role == "final"].seed) == {2, 3, 4}
    assert runs.groupby("role").size().to_dict() == {"final": 6, "trial": 12}
    sgd = trials[trials.variant == "sgd"].set_index("optimizer.lr")
    assert sgd.at[10.0, "status"] == "diverged" and sgd.at[10.0, "n_diverged"] == 2
    assert sgd.at[10.0, "best_train_loss"] == math.inf and sgd.at[10.0, "rank"] == 3
    assert sgd.loc[sgd["rank"] == 1].index.tolist() == [sgd.drop(10.0)["best_train_loss"].idxmin()]
    stored = optuna.load_study(study_name="st/sgd", storage=f"sqlite:///{exp / 'study.db'}")
    told = trials[trials.variant == "sgd"].sort_values("trial")
    assert [t.value for t in stored.trials] == told["best_train_loss"].tolist()  # Optuna was told the same, inf too
    assert [t.params["optimizer.lr"] for t in stored.trials] == told["optimizer.lr"].tolist()
    assert outcome.verdict["variants"]["sgd"]["trials"] == {"n": 3, "ok": 2, "diverged": 1, "pruned": 0}
    assert outcome.verdict["tuning_seeds"] == [0, 1] and outcome.verdict["final_seeds"] == [2, 3, 4]


def test_a_variant_whose_every_trial_diverges_is_counted_and_ranked_last(write_config, tmp_path):
    outcome, exp = study(write_config, tmp_path, SGD_LRS.format(sgd="[10.0, 20.0, 30.0]").replace("seeds: [0, 1]", "seeds: [0]"))
    verdict = outcome.verdict
    assert verdict["ranking"] == ["adam", "sgd"]
    final = verdict["variants"]["sgd"]["final"]
    assert (final["n"], final["diverged"], final["mean"], final["values"]) == (3, 3, None, [None, None, None])
    assert verdict["variants"]["sgd"]["trials"] == {"n": 3, "ok": 0, "diverged": 3, "pruned": 0}
    assert verdict["variants"]["sgd"]["best_value"] is None  # inf: JSON has none

    def refuse(constant):
        raise ValueError(f"verdict.json holds {constant}")

    assert json.loads((exp / "verdict.json").read_text(), parse_constant=refuse) == verdict
    (pair,) = verdict["comparisons"]
    assert pair["significant"] is False and pair["diverged_b"] == 3  # three final seeds cannot reach p<0.05
    assert "diverged: adam 0 of 3, sgd 3 of 3" in pair["sentence"]


KNOWN = """\
data: {kind: random_classification, samples: 100, features: 5}
train: {steps: 100}
log: {every: 10, histograms: {every: 0}}
optimizers:
  good: {name: adam, space: {optimizer.lr: {log_uniform: [1.0e-3, 1.0e-2]}}}
  twin: {name: adam, space: {optimizer.lr: {log_uniform: [1.0e-3, 1.0e-2]}}}
  tiny: {name: adam, space: {optimizer.lr: {log_uniform: [1.0e-6, 1.0e-5]}}}
tune:
  budget: 4
  final_seeds: 5
"""


def test_known_answers_identical_twins_and_a_space_1000x_too_small(write_config, tmp_path):
    path = write_config(KNOWN.replace("data:", "name: known\ndevice: cpu\nmodel: {hidden: [8, 8]}\ndata:"))
    outcome = run_study(load_config(path), tmp_path / "known")
    trials = pd.read_csv(tmp_path / "known" / "trials.csv")
    good, twin = (trials[trials.variant == v].drop(columns=["variant", "config_id"]).reset_index(drop=True)
                  for v in ("good", "twin"))
    pd.testing.assert_frame_equal(good, twin)  # common random numbers: the same trials, the same scores
    pairs = {(c["a"], c["b"]): c for c in outcome.verdict["comparisons"]}
    twins = pairs[("good", "twin")]
    assert (twins["significant"], twins["better"]) == (False, None)
    assert twins["sentence"] == "no difference between good and twin in best_train_loss: identical values over 5 paired seeds"
    for winner in ("good", "twin"):
        pair = pairs[(winner, "tiny")]
        assert (pair["significant"], pair["better"], pair["test"]) == (True, winner, "paired t")
        assert pair["sentence"].startswith(f"{winner} has 31% lower best_train_loss than tiny, p<0.001 (Holm)")
    assert outcome.verdict["ranking"][-1] == "tiny"
    assert outcome.verdict["metric"] == "best_train_loss" and "metric_reason" in outcome.verdict


def test_trials_of_every_variant_train_as_one_vectorized_group(write_config, tmp_path):
    body = ("optimizers:\n  adam: {name: adam}\n  amsgrad: {name: adam, amsgrad: false, eps: 1.0e-7}\n"
            "tune:\n  space: {optimizer.lr: {log_uniform: [1.0e-3, 1.0e-2]}}\n  budget: 4\n  seeds: 2\n  final_seeds: 2\n")
    _, exp = study(write_config, tmp_path, body)
    runs = pd.read_csv(exp / "runs.csv")
    trial_runs = runs[runs.role == "trial"]
    assert len(trial_runs) == 16 and set(trial_runs.engine) == {"vectorized"} and set(trial_runs.group_size) == {16}
    assert set(runs[runs.role == "final"].group_size) == {4}


def test_the_api_gives_the_verdict_and_the_trials(tmp_path):
    import optcmp

    config = HEAD.format(name="api", steps=20) + ("tune:\n  space: {optimizer.lr: [0.01, 0.001]}\n  sampler: grid\n"
                                                   "  final_seeds: 2\n")
    exp = optcmp.run(config, out=tmp_path)
    assert exp.verdict == json.loads((tmp_path / "api" / "verdict.json").read_text())
    pd.testing.assert_frame_equal(exp.trials, pd.read_csv(tmp_path / "api" / "trials.csv"))
    assert exp.trials["optimizer.lr"].tolist() in ([0.01, 0.001], [0.001, 0.01])
    assert list(exp.verdict["variants"]) == ["adam"] and exp.verdict["comparisons"] == []
    assert set(exp.runs.role) == {"trial", "final"} and exp.summary["config_id"].tolist() == ["adam"]
