"""Models: the built-in mlp and linear, the user's own factories by import path, and the
mistakes, down to the one-line message and exit status of `optcmp run`."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.config import ModelConfig
from optcmp.errors import ConfigError
from optcmp.models import build_model
from tests.userlib import TwoLayer


def test_mlp_is_the_reference_model_layer_for_layer():
    torch.manual_seed(0)
    got = build_model(ModelConfig(), 2, 1)
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(2, 20), nn.LayerNorm(20), nn.Linear(20, 20), nn.LayerNorm(20),
                              nn.Linear(20, 20), nn.LayerNorm(20), nn.Linear(20, 20), nn.LayerNorm(20), nn.Linear(20, 1))
    assert [type(m) for m in got] == [type(m) for m in reference]
    for (n1, p1), (n2, p2) in zip(got.named_parameters(), reference.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_mlp_options_and_linear():
    model = build_model(ModelConfig(hidden=[5], norm="batchnorm", activation="relu"), 3, 4)
    assert [type(m) for m in model] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linear = build_model(ModelConfig(kind="linear"), 10, 2)
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (10, 2)


def test_cnn_is_convolution_blocks_then_a_linear_head_layer_for_layer():
    torch.manual_seed(0)
    got = build_model(ModelConfig(kind="cnn", channels=[4, 6], activation="relu"), 1, 10, (1, 8, 8))
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 10))
    assert str(got) == str(reference)
    for (n1, p1), (n2, p2) in zip(got.named_parameters(), reference.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(got(x), reference(x))
    plain = build_model(ModelConfig(kind="cnn", channels=[3]), 2, 4, (2, 5, 7))  # activation none: conv, pool
    assert [type(m) for m in plain] == [nn.Conv2d, nn.MaxPool2d, nn.Flatten, nn.Linear]
    assert plain[-1].in_features == 3 * 2 * 3


def test_cnn_with_more_blocks_than_the_image_halves():
    with pytest.raises(ConfigError) as caught:
        build_model(ModelConfig(kind="cnn", channels=[4, 4, 4, 4]), 1, 10, (1, 8, 8))
    assert (caught.value.key, caught.value.message) == (
        "model.channels", "4 blocks of a convolution and a 2×2 max-pool halve 8×8 images below 1×1; allowed: at most 3 widths")


def test_factory_gets_the_sample_shape_when_it_takes_it():
    model = build_model(ModelConfig(kind="tests.userlib:DigitsCNN"), 64, 10, (64,))
    assert model.net[-1].out_features == 10
    seen = {}

    def factory(in_features, out_features, in_shape):
        seen.update(in_features=in_features, out_features=out_features, in_shape=in_shape)
        return nn.Linear(1, 1)

    import tests.userlib as userlib

    userlib.shape_factory = factory
    try:
        build_model(ModelConfig(kind="tests.userlib:shape_factory"), 1, 10, (1, 8, 8))
    finally:
        del userlib.shape_factory
    assert seen == {"in_features": 1, "out_features": 10, "in_shape": (1, 8, 8)}


def test_factory_gets_the_data_shape_and_its_kwargs():
    model = build_model(ModelConfig(kind="tests.userlib:make_model", kwargs={"width": 5}), 3, 2)
    assert isinstance(model, TwoLayer)
    assert tuple(model.body.weight.shape) == (5, 3) and tuple(model.head.weight.shape) == (2, 5)


def test_module_class_and_factory_without_shape_arguments():
    assert isinstance(build_model(ModelConfig(kind="tests.userlib:TwoLayer"), 3, 2), TwoLayer)
    model = build_model(ModelConfig(kind="tests.userlib:fixed_width_model", kwargs={"width": 6}), 2, 1)
    assert tuple(model[0].weight.shape) == (6, 2)


@pytest.mark.parametrize("cfg, message", [
    (dict(kind="nosuch.module:f"),
     "cannot import module `nosuch` (from `nosuch.module:f`): not installed and not on the Python path"),
    (dict(kind="tests.userlib:make_modle"), "module `tests.userlib` has no `make_modle` (did you mean `make_model`?)"),
    (dict(kind="tests.userlib"), "unknown model `tests.userlib`; allowed: mlp, linear, cnn or package.module:factory "
                                 "(an import path names the object after a colon: `tests.userlib:Name`)"),
    (dict(kind="tests.userlib:not_a_model"), "`tests.userlib:not_a_model` returned int, expected a torch.nn.Module"),
    (dict(kind="tests.userlib:broken_model"), "`tests.userlib:broken_model` raised RuntimeError: out of coffee"),
    (dict(kind="mpl"), "unknown model `mpl` (did you mean `mlp`?); allowed: mlp, linear, cnn or package.module:factory"),
])
def test_model_kind_mistakes(cfg, message):
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(**cfg), 3, 2)
    assert (e.value.key, e.value.message) == ("model.kind", message)


def test_factory_argument_mistakes_name_the_kwarg():
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(kind="tests.userlib:make_model", kwargs={"widht": 5}), 3, 2)
    assert (e.value.key, e.value.message) == (
        "model.kwargs.widht", "`make_model` takes no argument `widht` (did you mean `width`?); allowed: width")


def test_a_module_that_fails_to_import_is_told_apart_from_a_missing_one(tmp_path, monkeypatch):
    (tmp_path / "needs_dep.py").write_text("import nosuchdependency\n")
    (tmp_path / "raises.py").write_text("raise ValueError('bad settings')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for kind, message in [("needs_dep:f", "importing `needs_dep` failed: no module named `nosuchdependency`"),
                          ("raises:f", "importing `raises` failed: ValueError: bad settings")]:
        with pytest.raises(ConfigError) as e:
            build_model(ModelConfig(kind=kind), 3, 2)
        assert e.value.message == message


def test_a_module_in_the_current_folder_imports(tmp_path, monkeypatch):
    """The `optcmp` script does not put the current folder on sys.path as `python -m` does."""
    (tmp_path / "mynets.py").write_text("from torch import nn\ndef net(in_features, out_features):\n"
                                        "    return nn.Linear(in_features, out_features, bias=False)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    model = build_model(ModelConfig(kind="mynets:net"), 3, 2)
    assert model.bias is None


def test_missing_model_module_exits_2_with_file_and_line(write_config, tmp_path):
    path = write_config("name: m\nseeds: [0]\nmodel:\n  kind: nosuch.module:f\ntrain: {steps: 2}\n")
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.output == (f"error: {path}:4: model.kind: cannot import module `nosuch` (from `nosuch.module:f`): "
                             "not installed and not on the Python path\n")


def test_user_model_trains_through_the_cli(write_config, tmp_path):
    path = write_config("name: m\nseeds: [0]\ndevice: cpu\nmodel: {kind: 'tests.userlib:make_model'}\n"
                        "data: {kind: sklearn, name: iris, standardize: true}\ntrain: {steps: 30}\n"
                        "optimizer: {name: adam, lr: 0.05, no_decay: [norm]}\nlog: {every: 10, histograms: {every: 0}}\n")
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    import json

    saved = json.loads((tmp_path / "runs" / "m" / "adam-s0" / "result.json").read_text())
    assert saved["status"] == "ok"
    assert saved["metrics"]["train_accuracy"] > 0.8
    assert saved["param_groups"][1]["params"] == ["norm.gain"]
