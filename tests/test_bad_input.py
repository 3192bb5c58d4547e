"""Issue 12's bad configs, one by one, as a user meets them: `optcmp run` (and `plan`) exit
with status 2 and one line naming the file, the key and what is allowed — no traceback,
no output folder — before anything trains."""
from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

from optcmp.cli import app

BASE = """\
name: bad
seeds: [0]
device: cpu
model: {kind: mlp, hidden: [8], norm: layernorm}
data: {kind: quadratic}
train: {steps: 5}
log: {every: 5, histograms: {every: 0}}
"""

# case → (the config's tail, the key the message must name, a phrase of what is allowed or found)
CASES = {
    "amsgrad as a quoted string": ("optimizer: {name: adam, amsgrad: 'false'}\n", "optimizer.amsgrad", "true or false"),
    "lr: yes": ("optimizer: {name: adam, lr: yes}\n", "optimizer.lr", "a YAML boolean"),
    "seeds as booleans": ("seeds_: x\n", "seeds_", "unknown key"),
    "train.steps: true": ("train: {steps: true}\n", "train.steps", "a YAML boolean"),
    "a group's negative lr": ("optimizer: {name: adam, groups: [{params: bias, lr: -0.1}]}\n",
                              "optimizer.groups[0].lr", "> 0"),
    "betas of one": ("optimizer: {name: adam, betas: [0.9]}\n", "optimizer.betas", "a list of 2 numbers"),
    "a seed of 2**64": ("seeds: [18446744073709551616]\n", "seeds[0]", "an integer in [0, "),
    "a seed of 2**64 - 1": ("seeds: [18446744073709551615]\n", "seeds[0]", "an integer in [0, "),
    "a billion seeds": ("seeds: 1000000000\n", "seeds", "max_runs"),
    "model.hidden nested 5,000 deep": ("model: {kind: mlp, hidden: " + "[" * 5000 + "1" + "]" * 5000 + "}\n",
                                       "model.hidden", "deep"),
    "StepLR step_size: ten": ("optimizer: {name: sgd, lr: 0.1}\nscheduler: {name: steplr, step_size: ten}\n",
                              "scheduler.step_size", "an integer"),
    "StepLR step_size: 0": ("optimizer: {name: sgd, lr: 0.1}\nscheduler: {name: steplr, step_size: 0}\n",
                            "scheduler.step_size", "other than 0"),
    "CosineAnnealingLR T_max: 0": ("optimizer: {name: sgd, lr: 0.1}\nscheduler: {name: cosineannealinglr, T_max: 0}\n",
                                   "scheduler.T_max", "other than 0"),
    "a group's weight_decay: big": ("optimizer: {name: adam, groups: [{params: bias, weight_decay: big}]}\n",
                                    "optimizer.groups[0].weight_decay", "a number"),
    "an output that does not fit the target": ("model: {kind: tests.test_preflight:three_outputs}\n", "model",
                                               "does not fit"),
    "an unknown summary.primary": ("summary: {primary: bogus}\n", "summary.primary", "allowed:"),
    "an empty --set value": (None, "optimizer.lr", "nothing after `=`; allowed: a value (null for the default)"),
}


def one_line_error(result, path, key: str, phrase: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("import paths ")]
    assert len(lines) == 1, result.output
    line = lines[0]
    where = rf"({re.escape(str(path))}(:\d+)?: {re.escape(key)}(\[0\])*…?|--set {re.escape(key)}=\S*)"
    assert re.match(rf"error: {where}: ", line), line
    assert phrase in line, line
    return line


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_config_is_one_line_and_writes_nothing(write_config, tmp_path, case):
    tail, key, phrase = CASES[case]
    if case == "seeds as booleans":
        text, key, phrase = BASE.replace("seeds: [0]", "seeds: [true, false]"), "seeds[0]", "a YAML boolean"
    elif tail is None:
        text = BASE + "optimizer: {name: adam}\n"
    else:
        text = BASE + tail
        for section in ("seeds", "model", "train", "optimizer", "summary"):
            if tail.startswith(f"{section}:"):
                text = "\n".join(line for line in BASE.splitlines() if not line.startswith(f"{section}:")) + "\n" + tail
    path = write_config(text)
    extra = ["--set", "optimizer.lr="] if tail is None else []
    for command in ("run", "plan"):
        out = tmp_path / f"out-{command}"
        result = CliRunner().invoke(app, [command, str(path), "--out", str(out), *extra])
        one_line_error(result, path, key, phrase)
        assert not out.exists()


def test_an_empty_config_is_an_error(write_config, tmp_path):
    path = write_config("# nothing here\n")
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output == f"error: {path}: the config is empty; give at least one key (see configs/ for examples)\n"
    assert not (tmp_path / "out").exists()


def hostile_text(case: str) -> str:
    """A config of hostile size: a YAML alias bomb (9 levels × 9 aliases), a sweep of 10^7 runs,
    or a 32 MB file (benchmarks/refusals.py times the same ones)."""
    if case == "alias bomb":
        levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
        for i in range(1, 9):
            levels.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
        return "\n".join(levels) + "\n"
    if case == "10^7 runs":
        text = BASE.replace("seeds: [0]", "seeds: 10") + "sweep:\n" + "".join(
            f"  optimizer.{k}: [{', '.join(str(v) for v in range(1, 11))}]\n" for k in ("lr", "weight_decay", "momentum"))
        return text + "  train.steps: [" + ", ".join(str(v) for v in range(1, 1001)) + "]\n"
    return BASE + "junk: '" + "x" * (32 << 20) + "'\n"


HOSTILE = ["alias bomb", "10^7 runs", "32 MB"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_sizes_are_refused_without_hanging(write_config, tmp_path, case):
    text = hostile_text(case)
    path = write_config(text)
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    seconds = time.perf_counter() - start
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.output.splitlines()) == 1 and result.output.startswith(f"error: {path}"), result.output
    # a guard against the hang (each ran past 60 s before), not a timing goal: the seconds against
    # the 2 s asked for are measured by benchmarks/refusals.py
    assert seconds < 15, seconds
    assert not (tmp_path / "out").exists()


def test_a_text_csv_column_is_reported_with_the_offending_value(write_config, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,3\n4,x,6\n")
    path = write_config("name: t\ndata: {kind: csv, path: d.csv, target: y}\n")
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert result.output == (f"error: {path}:2: data.columns: column `b` is not numeric: 'x' on line 3 of d.csv; "
                             "optcmp does not encode features: list the numeric `columns`, or encode it in the file\n")


def test_a_factory_returning_an_empty_dict_says_so(write_config):
    path = write_config("name: t\ndata: {kind: 'builtins:dict'}\n")
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"error: {path}:2: data.kind: `builtins:dict` returned an empty dict; expected (x, y), "
        "(x_train, y_train, x_val, y_val) or a dict with those keys")


def test_summary_metric_names_the_option(write_config, tmp_path):
    path = write_config(BASE + "optimizer: {name: adam}\n")
    assert CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")]).exit_code == 0
    result = CliRunner().invoke(app, ["summary", str(tmp_path / "out" / "bad"), "--metric", "bogus"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --metric: unknown metric `bogus`; allowed: train_loss, best_train_loss, ")
