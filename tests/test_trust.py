"""The trust model (issue 12.9): import paths run code; `plan` lists every one a config
names; `--no-imports` refuses them all before anything is imported or written."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.config import import_paths, load_config
from optcmp.errors import OptcmpError
from tests.refusals import refused

EVERYWHERE = """\
model: {kind: "tests.userlib:make_model"}
data: {kind: "tests.userlib:regression_data"}
optimizer: {name: "tests.userlib:SignSGD"}
scheduler: {name: lambdalr, lr_lambda: "tests.userlib:halve_every_two"}
optimizers:
  lion: {name: "pytorch_optimizer:Lion", scheduler: {name: "tests.userlib:HalvingLR"}}
  adam: {name: adam}
sweep:
  model.kind: [mlp, "tests.userlib:sequential_model"]
"""


def test_import_paths_lists_every_one(write_config):
    assert import_paths(load_config(write_config(EVERYWHERE)).config) == [
        ("model.kind", "tests.userlib:make_model"),
        ("data.kind", "tests.userlib:regression_data"),
        ("optimizer.name", "tests.userlib:SignSGD"),
        ("scheduler.lr_lambda", "tests.userlib:halve_every_two"),
        ("optimizers.lion.name", "pytorch_optimizer:Lion"),
        ("optimizers.lion.scheduler.name", "tests.userlib:HalvingLR"),
        ("optimizers.adam.scheduler.lr_lambda", "tests.userlib:halve_every_two"),  # inherited, so it runs there too
        ("sweep.model.kind[1]", "tests.userlib:sequential_model"),
    ]


def test_import_paths_in_a_study_space(write_config):
    path = write_config("tune:\n  space: {optimizer.name: {choice: [adam, 'pytorch_optimizer:Lion']}}\n  budget: 2\n")
    assert import_paths(load_config(path).config) == [("tune.space.optimizer.name[1]", "pytorch_optimizer:Lion")]


@pytest.mark.parametrize("text, message", [
    ('model: {kind: "tests.userlib:make_model"}', "1: model.kind: `tests.userlib:make_model` is an import path: it "
                                                 "would import and run code from `tests.userlib`"),
    ("optimizers:\n  lion: {name: 'pytorch_optimizer:Lion'}", "2: optimizers.lion.name: `pytorch_optimizer:Lion` is "
                                                              "an import path: it would import and run code from `pytorch_optimizer`"),
    ("sweep:\n  scheduler.name: [steplr, 'tests.userlib:HalvingLR']", "2: sweep.scheduler.name[1]: "
     "`tests.userlib:HalvingLR` is an import path: it would import and run code from `tests.userlib`"),
])
def test_no_imports_refuses_each(write_config, text, message):
    path = write_config(text + "\n")
    with pytest.raises(OptcmpError) as exc:
        load_config(path, imports=False)
    assert str(exc.value) == f"{path}:{message}; --no-imports refuses import paths"


def test_no_imports_counts_the_others(write_config):
    with pytest.raises(OptcmpError) as exc:
        load_config(write_config(EVERYWHERE), imports=False)
    assert str(exc.value).endswith("from `tests.userlib` (and 7 more); --no-imports refuses import paths")


SHELL = 'device: cpu\ndata: {kind: "os:system", kwargs: {command: "touch %s"}}\n'


@pytest.mark.parametrize("command", ["run", "plan"])
def test_no_imports_runs_nothing(write_config, tmp_path, command):
    marker = tmp_path / "ran"
    path = write_config(SHELL % marker)
    assert refused(path, tmp_path / "out", "--no-imports", command=command) == (
        f"{path}:2: data.kind: `os:system` is an import path: it would import and run code from `os`; "
        "--no-imports refuses import paths")
    assert not marker.exists()


def test_plan_says_which_import_paths_run_code(write_config, tmp_path):
    path = write_config("device: cpu\ntrain: {steps: 2}\nmodel: {kind: 'tests.userlib:make_model', kwargs: {width: 3}}\n")
    result = CliRunner().invoke(app, ["plan", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == ("import paths (they run code; --no-imports refuses them): "
                                             "model.kind = tests.userlib:make_model")
    assert not (tmp_path / "out").exists()


def test_a_config_without_imports_passes_no_imports(write_config, tmp_path):
    result = CliRunner().invoke(app, ["plan", str(write_config()), "--no-imports", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "import paths" not in result.output
