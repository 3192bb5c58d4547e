"""The vectorized engine on models the hand-written stacked MLP does not cover: through
`optcmp.functional.FunctionalStack` (torch.func), planned at preflight, trained through the
one loop, and compared with the sequential engine run by run (results, metrics.csv,
weights.npz) at 1e-4 relative after 30 steps.

The sequential engine's Dropout masks are drawn from torch's generator right after the
model is built; each stacked member draws from a generator in that state, so the masks
are the same and the bound needs no statistics.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.config import load_config
from optcmp.planning import describe_units, member_bytes, plan_units
from optcmp.resolve import resolve_runs
from optcmp.sweep import expand
from tests.test_vectorized import compare_engines, group_specs

TOLERANCE = 1e-4  # relative, per parameter tensor and metric, after 30 steps

DIGITS_CNN = """\
name: cnn
seeds: 2
device: cpu
model: {kind: cnn, channels: [8, 16], activation: relu}
data: {kind: sklearn, name: digits, shape: [1, 8, 8], standardize: true, val_fraction: 0.2, batch_size: 32}
train: {steps: 30}
optimizer: {name: adam, lr: 0.003}
sweep: {optimizer.weight_decay: [0.0, 0.1]}
log: {every: 5, histograms: {every: 10}}
summary: {chaos: off}  # no ulp probes: the runs are counted
"""

TRANSFORMER = """\
name: transformer
seeds: 2
device: cpu
model: {kind: "tests.userlib:TokenTransformer", kwargs: {dropout: 0.1}}
data: {kind: "tests.userlib:token_data", batch_size: 16, val_fraction: 0.25}
train: {steps: 30, loss: cross_entropy}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
sweep: {optimizer.weight_decay: [0.0, 0.01]}
log: {every: 5, histograms: {every: 10}}
summary: {chaos: off}  # no ulp probes: the runs are counted
"""

DROPOUT_CNN = """\
name: dropout
seeds: 3
device: cpu
model: {kind: "tests.userlib:DigitsCNN", kwargs: {dropout: 0.3, batchnorm: true}}
data: {kind: sklearn, name: digits, standardize: true, batch_size: 32}
train: {steps: 30}
optimizer: {name: adamw, lr: 0.003, weight_decay: 0.01}
log: {every: 5, histograms: {every: 10}}
summary: {chaos: off}  # no ulp probes: the runs are counted
"""


def specs_of(write_config, text: str, name: str = "config.yaml"):
    return expand(load_config(write_config(text, name)).config)


def test_a_cnn_trains_vectorized_like_sequential(write_config, tmp_path):
    specs = specs_of(write_config, DIGITS_CNN)
    units = group_specs(specs)
    assert [len(u) for u in units] == [4]
    # a plain Sequential of convolutions, pools and Linear layers on the CPU: the CNN stack
    # without vmap (stacked_eval.PlainStack; the label said "torch.func" until the plan
    # told them apart)
    assert describe_units(units) == ["vectorized group of 4: adam-wd0-s0, adam-wd0-s1, adam-wd0.1-s0, … adam-wd0.1-s1 "
                                     "(stacked CNN without vmap)"]
    vec, seq = compare_engines(specs, tmp_path, rtol=TOLERANCE)
    assert [r["metrics"]["group_size"] for r in vec] == [4] * 4
    weights = np.load(tmp_path / "vec" / specs[0].run_id / "weights.npz")
    assert {n: weights[n].shape for n in weights.files} == {
        "0.weight": (8, 1, 3, 3), "0.bias": (8,), "3.weight": (16, 8, 3, 3), "3.bias": (16,),
        "7.weight": (10, 64), "7.bias": (10,)}
    assert all(r["metrics"]["val_accuracy"] > 0.3 for r in vec)  # it learns in 30 steps


def test_a_transformer_with_dropout_trains_vectorized_like_sequential(write_config, tmp_path):
    specs = specs_of(write_config, TRANSFORMER)
    assert [len(u) for u in group_specs(specs)] == [4]
    compare_engines(specs, tmp_path, rtol=TOLERANCE)


def test_dropout_and_batchnorm_members_equal_their_sequential_runs(write_config, tmp_path):
    """Each member's Dropout masks are its sequential run's (on the CPU), BatchNorm2d's
    running statistics and batch count its own."""
    specs = specs_of(write_config, DROPOUT_CNN)
    vec, seq = compare_engines(specs, tmp_path, rtol=TOLERANCE)
    assert len({r["metrics"]["train_loss"] for r in vec}) == 3  # the seeds differ


def test_parameters_without_a_gradient_are_left_as_they_are(write_config, tmp_path):
    """torch.optim skips a parameter whose gradient is None (here one the output never uses,
    and a frozen one): no weight decay, no momentum. The stack does too."""
    text = DIGITS_CNN.replace("{kind: cnn, channels: [8, 16], activation: relu}", '{kind: "tests.userlib:Unreached"}')
    text = text.replace("shape: [1, 8, 8], ", "").replace("adam, lr: 0.003", "adamw, lr: 0.01")
    specs = specs_of(write_config, text)
    runs = resolve_runs(specs)
    assert runs[0].unreached == ("spare.weight", "spare.bias", "head.bias")
    assert runs[0].stacking == "torch.func"
    compare_engines(specs, tmp_path, rtol=TOLERANCE)
    from tests.userlib import Unreached

    torch.manual_seed(specs[0].seed)
    initial = Unreached(64, 10)
    weights = np.load(tmp_path / "vec" / specs[0].run_id / "weights.npz")
    for name in runs[0].unreached:
        assert np.array_equal(weights[name], dict(initial.named_parameters())[name].detach().numpy()), name
    logged = (tmp_path / "vec" / specs[0].run_id / "metrics.csv").read_text().splitlines()[0]
    assert "weight_norm/spare" in logged


def test_a_model_vmap_cannot_take_trains_sequentially_and_plan_names_the_layer(write_config, tmp_path):
    text = TRANSFORMER.replace('"tests.userlib:TokenTransformer", kwargs: {dropout: 0.1}', '"tests.userlib:gated_model"')
    path = write_config(text.replace("tests.userlib:token_data", "random_classification"), "gated.yaml")
    specs = expand(load_config(path).config)
    units = plan_units(resolve_runs(specs))
    reason = ("model `tests.userlib:gated_model`: layer 1 (SignGate) does not run under torch.func.vmap: It looks like "
              "you're attempting to use a Tensor in some data-dependent control flow.")
    assert [u.engine for u in units] == ["sequential"] * 4
    assert describe_units(units)[0] == f"sequential: sgd-wd0-s0 ({reason})"
    shown = CliRunner().invoke(app, ["plan", str(path), "--out", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert f"sequential: sgd-wd0-s0 ({reason})" in " ".join(shown.output.split())


def test_the_plan_says_which_stacked_model_a_group_uses(write_config, tmp_path):
    shown = CliRunner().invoke(app, ["plan", str(write_config(DIGITS_CNN)), "--out", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "(stacked CNN without vmap)" in shown.output
    # BatchNorm2d and Dropout that draws: torch.func's vmap, as on a GPU
    for text, name in ((DROPOUT_CNN, "dropout.yaml"), (DIGITS_CNN.replace("device: cpu", "device: cuda"), "cuda.yaml")):
        if "cuda" in name and not torch.cuda.is_available():
            continue
        shown = CliRunner().invoke(app, ["plan", str(write_config(text, name)), "--out", str(tmp_path)])
        assert shown.exit_code == 0, shown.output
        assert "(stacked with torch.func)" in shown.output, name
    mlp = DIGITS_CNN.replace("{kind: cnn, channels: [8, 16], activation: relu}", "{kind: mlp, hidden: [16], norm: none}")
    shown = CliRunner().invoke(app, ["plan", str(write_config(mlp.replace("shape: [1, 8, 8], ", ""), "mlp.yaml")),
                                     "--out", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "(hand-written stacked MLP)" in shown.output


def test_each_group_trains_the_stacked_model_its_plan_names(write_config):
    """`Stack` builds the model the plan's label names, decided once at preflight."""
    from optcmp.batched_model import StackedModel
    from optcmp.functional import FunctionalStack
    from optcmp.stacked_eval import PlainStack
    from optcmp.vectorized import Stack

    built = {}
    for text, name in ((DIGITS_CNN, "cnn"), (DROPOUT_CNN, "dropout"),
                       (DIGITS_CNN.replace("{kind: cnn, channels: [8, 16], activation: relu}",
                                           "{kind: mlp, hidden: [16], norm: none}").replace("shape: [1, 8, 8], ", ""), "mlp")):
        runs = resolve_runs(expand(load_config(write_config(text, name + ".yaml")).config))[:2]
        built[name] = (runs[0].stacking, type(Stack(runs, None, torch.device("cpu")).model))
    assert built == {"cnn": ("plain", PlainStack), "dropout": ("torch.func", FunctionalStack),
                     "mlp": ("hand-written", StackedModel)}


def test_the_memory_estimate_counts_what_a_forward_pass_allocates(write_config):
    run = resolve_runs(specs_of(write_config, DIGITS_CNN))[0]
    # per sample: conv 8×8×8, relu 8×8×8, pool 8×4×4, conv 16×4×4, relu 16×4×4, pool 16×2×2,
    # (flatten: a view), linear 10, and the 1×8×8 input
    assert run.activations == 512 + 512 + 128 + 256 + 256 + 64 + 10 + 64
    n_params = 8 * 9 + 8 + 16 * 8 * 9 + 16 + 64 * 10 + 10
    rows = 1797  # the training and validation split, each member its own (split by its seed)
    assert member_bytes(run) == 4 * (10 * n_params + 4 * rows * run.activations + rows * (64 + 1))


@pytest.mark.parametrize("change, message", [
    ("shape: [1, 8, 8]", "shape: [1, 8, 9]"),
    ("shape: [1, 8, 8], ", ""),
])
def test_image_shapes_are_checked_in_one_line(write_config, tmp_path, change, message):
    text = DIGITS_CNN.replace(change, message)
    done = CliRunner().invoke(app, ["run", str(write_config(text)), "--out", str(tmp_path)])
    expected = {
        "shape: [1, 8, 9]": "data.shape: [1, 8, 9] holds 72 values, but each sample of `digits` has 64; allowed: a "
                            "shape of 64 values, e.g. [64]",
        "": "data.shape: model `cnn` takes images [channels, height, width], but the data's samples have shape [64]; "
            "give data.shape, e.g. [1, 8, 8]",
    }[message]
    assert done.exit_code == 2, done.output
    assert expected in " ".join(done.output.split())
    assert len(done.output.strip().splitlines()) == 1, done.output
    assert not (tmp_path / "cnn").exists()


def test_flat_models_refuse_image_samples(write_config, tmp_path):
    text = DIGITS_CNN.replace("{kind: cnn, channels: [8, 16], activation: relu}", "{kind: mlp, hidden: [16]}")
    done = CliRunner().invoke(app, ["run", str(write_config(text)), "--out", str(tmp_path)])
    assert done.exit_code == 2, done.output
    assert ("model.kind: model `mlp` takes flat samples of features, but the data's samples have shape [1, 8, 8]; "
            "allowed for such samples: cnn (images) or package.module:factory") in " ".join(done.output.split())
