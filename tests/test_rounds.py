"""`seeds: auto`: the config's design, checked in one line; rounds of seeds until every pair is
settled, each decision said and written with the error rate it holds; resume across rounds."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

import optcmp
from optcmp import cli
from optcmp.cli import app
from optcmp.config import load_config
from optcmp.errors import OptcmpError
from optcmp.stats import SequentialDesign
from optcmp.sweep import expand

runner = CliRunner()

BASE = """\
name: rounds
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm, activation: none}
data: {kind: quadratic}
train: {steps: 10}
optimizer: {name: adam, lr: 0.01}
log: {every: 5, histograms: {every: 0}}
"""
# Two configs that train identically: a divergence threshold no run comes near.
SAME = BASE + "sweep: {train.diverge_threshold: [1.0e+9, 1.0e+10]}\n"
# Two configs far apart: Adam at lr 0.1 against 0.0001, 10 steps.
APART = BASE + "sweep: {optimizer.lr: [0.1, 0.0001]}\n"


def error_of(write_config, text: str, sets=()) -> str:
    path = write_config(text)
    with pytest.raises(OptcmpError) as e:
        load_config(path, list(sets))
    return str(e.value).replace(str(path), "CFG")


@pytest.mark.parametrize("seeds, message", [
    ("{auto: {first: 1}}", "CFG:9: seeds.auto.first: expected an integer in [2, 1,000,000] (the first round needs a "
                           "seed-to-seed spread), got 1"),
    ("{auto: {rounds: true}}", "CFG:9: seeds.auto.rounds: expected an integer in [1, 100], got true (a YAML boolean)"),
    ("{auto: {frist: 3}}", "CFG:9: seeds.auto.frist: unknown key (did you mean `first`?); allowed: first, per_round, "
                           "rounds, margin, alpha"),
    ("{auto: {margin: 0}}", "CFG:9: seeds.auto.margin: expected null or a share of the second config's mean in (0, 10), "
                            "e.g. 0.05 for ±5 %, got 0"),
    ("{auto: {alpha: 1}}", "CFG:9: seeds.auto.alpha: expected a number in (0, 1), the error rate over all rounds, got 1"),
    ("{auto: 3}", "CFG:9: seeds.auto: expected a mapping of first, per_round, rounds, margin, alpha (or nothing, "
                  "for the defaults), got 3"),
    ("{}", "CFG:9: seeds: expected a list of seeds, a count, auto or {auto: {first: 3, per_round: 3, rounds: 4}}, got {}"),
    ("{atuo: {}, auto: {}}", "CFG:9: seeds.atuo: unknown key (did you mean `auto`?); allowed: auto (seeds: {auto: {first: 3, "
                   "per_round: 3, rounds: 4}}), or give seeds as a list or a count"),
])
def test_a_bad_design_is_one_line_naming_the_key(write_config, seeds, message):
    assert error_of(write_config, SAME + f"seeds: {seeds}\n") == message


def test_a_study_keeps_its_own_seeds(write_config):
    text = BASE + "tune: {space: {optimizer.lr: [0.1, 0.01]}, sampler: grid}\n"
    assert error_of(write_config, text, ["seeds=auto"]) == (
        "--set seeds=auto: seeds: `auto` is for sweeps; a study (tune:) has its own tune.seeds and tune.final_seeds")


def test_the_design_expands_to_every_seed_it_may_train(write_config):
    config = load_config(write_config(SAME + "seeds: {auto: {first: 2, per_round: 3, rounds: 3}}\n")).config
    assert config.seeds_auto == SequentialDesign(first=2, per_round=3, rounds=3, alpha=0.05, margin=None)
    assert config.seeds == list(range(8)) and "seeds_auto" not in config.model_dump()
    specs = expand(config)
    assert [s.seed for s in specs if s.config_id == specs[0].config_id] == [*range(8), 0]  # the probe: seed 0
    default = load_config(write_config(SAME + "seeds: auto\n", "default.yaml")).config
    assert default.seeds_auto == SequentialDesign(first=3, per_round=3, rounds=4) and len(default.seeds) == 12
    fixed = load_config(write_config(SAME + "seeds: [0, 1]\n", "fixed.yaml")).config
    assert fixed.seeds_auto is None
    # a run's config is the same whatever the design: its hash (resume) does not depend on it
    assert specs[0].config_hash == expand(fixed)[0].config_hash


def flat(text: str) -> str:
    """`text` with its line breaks and indents as single spaces: a sentence however it was wrapped."""
    return " ".join(text.split())


def run(path, out, *extra):
    result = runner.invoke(app, ["run", str(path), "--out", str(out), *map(str, extra)])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_large_effect_stops_after_the_first_round_as_different(write_config, tmp_path):
    path = write_config(APART + "seeds: {auto: {first: 3, per_round: 2, rounds: 2}}\n")
    output = run(path, tmp_path)
    exp = tmp_path / "rounds"
    rounds = json.loads((exp / "rounds.json").read_text())
    assert (rounds["look"], rounds["seeds"], rounds["action"], rounds["metric"]) == (1, 3, "stop", "best_train_loss")
    [pair] = rounds["pairs"]
    assert (pair["config_a"], pair["config_b"], pair["state"], pair["look"]) == ("adam-lr0.1", "adam-lr0.0001", "different", 1)
    assert pair["p_holm"] < 0.025 and pair["sentence"].startswith("adam-lr0.1 has ")
    guarantee = ("the chance of calling any two equal configs different is at most 0.05 over all 2 rounds "
                 "(each round tests at 0.025, Holm over the pairs)")
    assert rounds["sentence"] == "stop: every pair is settled; " + guarantee and rounds["guarantee"] == guarantee
    lines = output.splitlines()
    assert max(map(len, lines)) <= cli.console.width  # wrapped between words (captured: 200 columns)
    start = lines.index("round 1 of 2 (3 seeds, each pair tested at 0.025, Holm over the pairs): stop: every pair is "
                        "settled; the chance of calling any two equal configs different is at most 0.05 over all 2 "
                        "rounds (each round")
    assert lines[start + 1] == "    tests at 0.025, Holm over the pairs)"
    assert flat(f"  different: {pair['sentence']}") in flat(output)
    runs = pd.read_csv(exp / "runs.csv")
    assert sorted(set(runs["seed"])) == [0, 1, 2] and len(runs) == 8  # 2 configs × 3 seeds + 2 chaos probes
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["seeds_auto"] == rounds
    assert (exp / "summary.md").read_text().endswith(f"\nSeeds: auto, round 1 of 2 (3 seeds): {rounds['sentence']}.\n")
    compared = runner.invoke(app, ["compare", str(exp)])
    assert flat(compared.output).startswith(flat(
        f"seeds: auto chose these 3 seeds: {rounds['sentence']}; its verdicts (rounds.json) hold that error rate, "
        "the tests below are one more look at alpha 0.05 •"))


def test_identical_configs_settle_as_equivalent_with_a_margin(write_config, tmp_path):
    path = write_config(SAME + "seeds: {auto: {first: 2, per_round: 1, rounds: 3, margin: 0.05}}\n")
    run(path, tmp_path)
    rounds = json.loads((tmp_path / "rounds" / "rounds.json").read_text())
    assert (rounds["look"], rounds["action"]) == (1, "stop")
    assert [p["state"] for p in rounds["pairs"]] == ["equivalent"]


def test_identical_configs_without_a_margin_use_every_round_and_are_never_called_different(write_config, tmp_path):
    path = write_config(SAME + "seeds: {auto: {first: 2, per_round: 1, rounds: 3}}\n")
    output = run(path, tmp_path)
    exp = tmp_path / "rounds"
    rounds = json.loads((exp / "rounds.json").read_text())
    assert (rounds["look"], rounds["seeds"], rounds["action"]) == (3, 4, "stop")
    assert [p["state"] for p in rounds["pairs"]] == ["undecided"]
    assert rounds["sentence"].startswith("stop: the planned maximum of 4 seeds is reached with 1 pair(s) undecided; ")
    assert [line.split(" (")[0] for line in output.splitlines() if line.startswith("round ")] == [
        "round 1 of 3", "round 2 of 3", "round 3 of 3"]
    assert "different:" not in output
    assert "10 of 10 runs: 10 ok (2 chaos probes);" in output  # 2 configs × 4 seeds + 2 probes, all new

    # a stopped attempt: the last round's runs of one config never finished; a rerun keeps the
    # rest, replays the decisions and trains only those
    lost = sorted(p for p in exp.iterdir() if p.is_dir() and p.name.endswith("-s3"))
    assert [p.name for p in lost] == ["adam-diverge_threshold1e+09-s3", "adam-diverge_threshold1e+10-s3"]
    shutil.rmtree(lost[0])
    again = run(path, tmp_path)
    assert "10 of 10 runs: 10 ok (2 chaos probes; 9 kept from an earlier attempt);" in again
    assert json.loads((exp / "rounds.json").read_text()) == rounds
    assert (lost[0] / "result.json").exists()
    third = run(path, tmp_path)  # finished: nothing more to train
    assert "10 of 10 runs: 10 ok (2 chaos probes; 10 kept from an earlier attempt)" in third

    fixed = run(path, tmp_path, "--set", "seeds=[0, 1, 2, 3]")  # no longer auto: no decision stays behind
    assert "round " not in fixed and not (exp / "rounds.json").exists()
    assert "seeds_auto" not in json.loads((exp / "summary.json").read_text())


def test_plan_and_the_api_know_the_design(write_config, tmp_path):
    path = write_config(APART + "seeds: {auto: {first: 2, per_round: 1, rounds: 2}}\n")
    shown = runner.invoke(app, ["plan", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "seeds: auto: 2 seeds, then 1 more per round while a pair is undecided, at most 2 rounds (3 seeds)" in \
        " ".join(shown.output.split())
    experiment = optcmp.run(path, out=tmp_path)
    rounds = json.loads((experiment.dir / "rounds.json").read_text())
    assert rounds["design"] == {"first": 2, "per_round": 1, "rounds": 2, "alpha": 0.05, "margin": None, "max_seeds": 3}
    assert set(experiment.runs["seed"]) == set(range(rounds["seeds"]))
