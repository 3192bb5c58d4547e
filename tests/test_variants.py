"""Named optimizer variants (issue 13.1): each a full optimizer section with its own
options, groups and schedule; a sweep axis `variant` without `tune:`; keys that address
one variant or every one; short ids; runs that train with exactly their variant's options."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from optcmp.config import load_config
from optcmp.errors import OptcmpError
from optcmp.models import mlp
from optcmp.sweep import expand
from tests.refusals import refused

FOUR = """\
name: four
seeds: [0]
device: cpu
model: {kind: mlp, hidden: [6, 6], norm: layernorm}
train: {steps: 7}
optimizers:
  adam:  {name: adam, lr: 1.0e-3}
  adamw: {name: adamw, lr: 1.0e-3, weight_decay: 0.01}
  sgdm:  {name: sgd, lr: 0.1, momentum: 0.9, nesterov: true}
  lion:  {name: "pytorch_optimizer:Lion", lr: 1.0e-4}
"""


def specs_of(path, sets=(), sweeps=()):
    return expand(load_config(path, list(sets), list(sweeps)).config)


def error_of(path, sets=(), sweeps=()) -> str:
    with pytest.raises(OptcmpError) as exc:
        specs_of(path, sets, sweeps)
    return str(exc.value)


def test_variants_are_an_axis_with_their_own_options(write_config):
    specs = specs_of(write_config(FOUR))
    assert [(s.run_id, s.variant, s.params) for s in specs] == [
        ("adam-s0", "adam", {"variant": "adam"}), ("adamw-s0", "adamw", {"variant": "adamw"}),
        ("sgdm-s0", "sgdm", {"variant": "sgdm"}), ("lion-s0", "lion", {"variant": "lion"})]
    sgdm = specs[2].config
    assert sgdm.optimizer.name == "sgd" and sgdm.optimizer.kwargs() == {"momentum": 0.9, "nesterov": True, "lr": 0.1}
    assert sgdm.optimizers == {} and sgdm.tune is None  # a run's config is a plain config
    assert specs[3].config.optimizer.name == "pytorch_optimizer:Lion"
    assert len({s.config_hash for s in specs}) == 4


def test_two_identical_variants_are_two_configs(write_config):
    specs = specs_of(write_config("optimizers:\n  a: {name: adam}\n  b: {name: adam}\n"))
    assert [s.config_id for s in specs] == ["a", "b"] and specs[0].config == specs[1].config
    assert specs[0].config_hash != specs[1].config_hash  # resume keeps them apart


def test_optimizer_holds_defaults_every_variant_inherits(write_config):
    path = write_config("optimizer: {lr: 0.01, weight_decay: 0.1, no_decay: [bias]}\n"
                        "optimizers:\n  adam: {name: adam}\n  sgd: {name: sgd, lr: 0.5, no_decay: []}\n")
    adam, sgd = (s.config.optimizer for s in specs_of(path))
    assert (adam.lr, adam.weight_decay, adam.no_decay) == (0.01, 0.1, ["bias"])
    assert (sgd.lr, sgd.weight_decay, sgd.no_decay) == (0.5, 0.1, [])  # its own keys win; lists are replaced


def test_a_variant_schedule_replaces_the_top_level_one(write_config):
    path = write_config("scheduler: {name: steplr, step_size: 3}\noptimizers:\n  a: {name: adam}\n"
                        "  b: {name: adam, scheduler: {name: cosineannealinglr}}\n  c: {name: adam, scheduler: null}\n")
    a, b, c = (s.config.scheduler for s in specs_of(path))
    assert (a.name, a.kwargs()) == ("steplr", {"step_size": 3})
    assert (b.name, b.kwargs()) == ("cosineannealinglr", {})
    assert c is None


def test_a_variant_must_name_its_optimizer(write_config):
    path = write_config("optimizers:\n  adam: {lr: 0.1}\n")
    assert error_of(path) == (f"{path}:2: optimizers.adam: give the variant's optimizer `name` (e.g. adam, sgd or "
                              "package.module:Class), or one `optimizer.name` every variant inherits")
    path = write_config("optimizer: {name: sgd}\noptimizers:\n  slow: {lr: 0.01}\n  fast: {lr: 0.1}\n")
    assert [s.config.optimizer.name for s in specs_of(path)] == ["sgd", "sgd"]


def test_variant_names_are_run_id_safe(write_config):
    path = write_config("optimizers:\n  'adam w': {name: adamw}\n")
    assert error_of(path) == (f"{path}:2: optimizers.adam w: a variant's name is part of its run ids: letters, "
                              "digits, '.', '_', '+' or '-', at most 40, starting with a letter or digit")


SWEPT = "optimizers:\n  adam: {name: adam, lr: 1.0e-3}\n  sgdm: {name: sgd, lr: 0.1, momentum: 0.9}\n"


def test_a_variant_key_sweeps_that_variant_only(write_config):
    path = write_config(SWEPT + "sweep:\n  optimizers.sgdm.lr: [0.1, 0.01]\n  optimizer.weight_decay: [0, 0.1]\n")
    specs = specs_of(path)
    assert [s.run_id for s in specs] == [  # labels in the sweep's order of keys
        "adam-wd0-s0", "adam-wd0.1-s0",
        "sgdm-lr0.1-wd0-s0", "sgdm-lr0.1-wd0.1-s0", "sgdm-lr0.01-wd0-s0", "sgdm-lr0.01-wd0.1-s0"]
    assert specs[4].params == {"variant": "sgdm", "optimizer.lr": 0.01, "optimizer.weight_decay": 0}
    assert (specs[4].config.optimizer.lr, specs[4].config.optimizer.weight_decay) == (0.01, 0)
    assert specs[0].config.optimizer.lr == 1.0e-3


def test_an_optimizer_key_sweeps_every_variant_over_its_own_value(write_config):
    specs = specs_of(write_config(SWEPT), sweeps=["optimizer.lr=0.5,0.05"])
    assert [(s.run_id, s.config.optimizer.lr) for s in specs] == [
        ("adam-lr0.5-s0", 0.5), ("adam-lr0.05-s0", 0.05), ("sgdm-lr0.5-s0", 0.5), ("sgdm-lr0.05-s0", 0.05)]


def test_set_addresses_one_variant_or_all(write_config):
    path = write_config(SWEPT)
    assert [s.config.optimizer.lr for s in specs_of(path, ["optimizers.sgdm.lr=0.05"])] == [1.0e-3, 0.05]
    assert [s.config.optimizer.lr for s in specs_of(path, ["optimizer.lr=0.05"])] == [0.05, 0.05]
    specs = specs_of(path, sweeps=["optimizers.sgdm.lr=0.1,0.01"])
    assert [s.run_id for s in specs] == ["adam-s0", "sgdm-lr0.1-s0", "sgdm-lr0.01-s0"]
    assert error_of(path, ["optimizers.sgdm.lr=-1"]) == (
        "--set optimizers.sgdm.lr=-1: optimizers.sgdm.lr: expected a number > 0 or null, got -1")


def test_a_variant_axis_picks_and_orders_variants(write_config):
    specs = specs_of(write_config(SWEPT + "sweep: {variant: [sgdm]}\n"))
    assert [s.run_id for s in specs] == ["sgdm-s0"]
    assert [s.variant for s in specs_of(write_config(SWEPT), sweeps=["variant=sgdm,adam"])] == ["sgdm", "adam"]


@pytest.mark.parametrize("sweep, message", [
    ("optimizers.sgmd.lr: [0.1]", "sweep.optimizers.sgmd.lr: no variant `sgmd` (did you mean `sgdm`?); allowed: adam, sgdm"),
    ("optimizers.sgdm: [{name: sgd}]", "sweep.optimizers.sgdm: `optimizers.sgdm` cannot be swept (sweep a variant's "
                                       "key, e.g. optimizers.NAME.lr)"),
    ("variant: [adam, lion]", "sweep.variant: no variant 'lion'; allowed: adam, sgdm"),
    ("optimizers.sgdm.space.optimizer.lr: [[0.1]]", "sweep.optimizers.sgdm.space.optimizer.lr: a variant's search "
                                                    "space cannot be swept"),
])
def test_bad_variant_sweeps(write_config, sweep, message):
    path = write_config(SWEPT + f"sweep:\n  {sweep}\n")
    assert error_of(path) == f"{path}:5: {message}"


def test_a_key_swept_for_all_and_for_one_is_refused(write_config):
    path = write_config(SWEPT + "sweep:\n  optimizer.lr: [0.1, 0.2]\n  optimizers.sgdm.lr: [0.3]\n")
    assert error_of(path) == (f"{path}:6: sweep.optimizers.sgdm.lr: sweep.optimizer.lr sets it for every variant "
                              "already; keep one of the two")


def test_a_variant_without_optimizers_is_refused(write_config):
    path = write_config("sweep: {variant: [a]}\n")
    assert error_of(path) == f"{path}:1: sweep.variant: a sweep over `variant` needs named variants (optimizers:)"


def test_variant_errors_name_the_variant_key(write_config, tmp_path):
    path = write_config("device: cpu\noptimizers:\n  adam: {name: adam, momentum: 0.9}\n")
    assert refused(path, tmp_path / "out", command="plan").startswith(
        f"{path}:3: optimizers.adam.momentum: `Adam` takes no argument `momentum`; allowed: amsgrad")
    path = write_config("device: cpu\noptimizer: {momentum: 0.9}\noptimizers:\n  sgd: {name: sgd}\n  adam: {name: adam}\n")
    assert refused(path, tmp_path / "out", command="plan").startswith(
        f"{path}:2: optimizer.momentum: (inherited by variant adam) `Adam` takes no argument `momentum`; allowed:")
    path = write_config("device: cpu\noptimizers:\n  sgdm: {name: sgd, lr: 0.1, betas: [0.9]}\n"
                        "sweep: {optimizers.sgdm.momentum: [0.9, 0.5]}\n")
    assert refused(path, tmp_path / "out", command="plan").startswith(
        f"{path}:3: optimizers.sgdm.betas: `SGD` takes no argument `betas`")
    path = write_config("device: cpu\noptimizers:\n  sgdm: {name: sgd, lr: 0.1, momentum: 0.9}\n"
                        "sweep: {optimizers.sgdm.nesterov: [true, 'no']}\n")
    assert refused(path, tmp_path / "out", command="plan") == (
        f"{path}:4: sweep.optimizers.sgdm.nesterov: 'no': expected true or false (`SGD`'s nesterov), got 'no' (a string)")


def _by_hand(seed: int, make_optimizer, steps: int) -> dict[str, np.ndarray]:
    """The quadratic regression trained in plain PyTorch, seeded as optcmp seeds."""
    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    x, y = torch.stack([x1, x2], dim=1), 2 * x1 - x2**2 + 1
    torch.manual_seed(seed)
    model = mlp(2, 1, [6, 6], "layernorm", "none")
    opt = make_optimizer(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        opt.step()
    return {n: p.detach().numpy() for n, p in model.named_parameters()}


def test_variants_train_with_exactly_their_options(write_config, tmp_path):
    from tests.helpers import train_config

    path = write_config(FOUR.replace("  lion:  {name: \"pytorch_optimizer:Lion\", lr: 1.0e-4}\n", "")
                        .replace("adamw, lr: 1.0e-3, weight_decay: 0.01}", "adamw, lr: 1.0e-3, weight_decay: 0.05, betas: [0.8, 0.99]}")
                        .replace("sgd, lr: 0.1,", "sgd, lr: 1.0e-4,"))  # the quadratic's targets reach −360
    results = train_config(path, tmp_path / "out")
    by_hand = {
        "adam-s0": lambda p: torch.optim.Adam(p, lr=1e-3),
        "adamw-s0": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05, betas=(0.8, 0.99)),
        "sgdm-s0": lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9, nesterov=True),
    }
    assert [(r["run_id"], r["status"]) for r in results] == [(run_id, "ok") for run_id in by_hand]
    for r in results:
        saved = np.load(tmp_path / "out" / r["run_id"] / "weights.npz")
        expected = _by_hand(0, by_hand[r["run_id"]], 7)
        assert set(saved.files) == set(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(saved[name], value)
    adamw = json.loads((tmp_path / "out" / "adamw-s0" / "result.json").read_text())
    assert adamw["params"] == {"variant": "adamw"}
    assert (adamw["optimizer"]["weight_decay"], adamw["optimizer"]["betas"]) == (0.05, [0.8, 0.99])
    assert adamw["decay"] == "decoupled"


def test_runs_csv_has_the_variant_column(write_config, tmp_path):
    import pandas as pd

    from optcmp.results import write_runs_csv
    from tests.helpers import train_config

    path = write_config("device: cpu\ntrain: {steps: 2}\nmodel: {hidden: [4]}\n" + SWEPT
                        + "sweep: {optimizers.sgdm.lr: [0.1, 0.01]}\n")
    write_runs_csv(tmp_path / "out", train_config(path, tmp_path / "out"))
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs[["run_id", "variant"]].values.tolist() == [
        ["adam-s0", "adam"], ["sgdm-lr0.1-s0", "sgdm"], ["sgdm-lr0.01-s0", "sgdm"]]
    assert runs["optimizer.lr"].tolist()[1:] == [0.1, 0.01]


def test_plan_lists_each_variant_with_its_own_axes(write_config, tmp_path):
    from typer.testing import CliRunner

    from optcmp.cli import app

    path = write_config("device: cpu\ntrain: {steps: 2}\nmodel: {hidden: [4]}\n" + SWEPT
                        + "sweep: {optimizers.sgdm.lr: [0.1, 0.01]}\n")
    result = CliRunner().invoke(app, ["plan", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines() if line.startswith("│")]
    assert rows == [["adam-s0", "adam", "", "0"], ["sgdm-lr0.1-s0", "sgdm", "0.1", "0"], ["sgdm-lr0.01-s0", "sgdm", "0.01", "0"]]
