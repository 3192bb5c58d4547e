"""Data sets: the built-in ones, scikit-learn's bundled ones, csv files, user factories;
the split, standardization fitted on the training split only, and the mistakes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from optcmp.cli import app
from optcmp.config import DataConfig
from optcmp.data import SKLEARN, build_data
from optcmp.errors import ConfigError
from tests.helpers import train_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, shape, task, outputs", [
    ("breast_cancer", (569, 30), "classification", 2),
    ("digits", (1797, 64), "classification", 10),
    ("wine", (178, 13), "classification", 3),
    ("iris", (150, 4), "classification", 3),
    ("diabetes", (442, 10), "regression", 1),
    ("linnerud", (20, 3), "regression", 3),
])
def test_sklearn_data_sets(name, shape, task, outputs):
    data = build_data(DataConfig(kind="sklearn", name=name), seed=0)
    assert tuple(data.x_train.shape) == shape
    assert (data.task, data.n_outputs) == (task, outputs)
    assert data.x_train.dtype == torch.float32
    assert data.y_train.dtype == (torch.long if task == "classification" else torch.float32)
    assert data.x_val is None


def test_every_listed_sklearn_name_is_tested():
    assert set(SKLEARN) == {"breast_cancer", "digits", "wine", "iris", "diabetes", "linnerud"}


def test_shape_makes_images_of_the_samples():
    from sklearn.datasets import load_digits

    data = build_data(DataConfig(kind="sklearn", name="digits", shape=[1, 8, 8], val_fraction=0.2), seed=1)
    flat = build_data(DataConfig(kind="sklearn", name="digits", val_fraction=0.2), seed=1)
    assert tuple(data.x_train.shape[1:]) == data.sample_shape == (1, 8, 8) and data.n_features == 1
    assert torch.equal(data.x_train, flat.x_train.reshape(-1, 1, 8, 8))
    assert torch.equal(data.x_val, flat.x_val.reshape(-1, 1, 8, 8))
    images = load_digits().images  # [1797, 8, 8]: the same pixels, row by row
    first = int(torch.nonzero((torch.as_tensor(images, dtype=torch.float32) == data.x_train[0, 0]).all(2).all(1))[0])
    assert np.array_equal(images[first], data.x_train[0, 0].numpy())


def test_a_shape_of_other_size_is_refused():
    with pytest.raises(ConfigError) as caught:
        build_data(DataConfig(kind="random_classification", samples=10, features=6, shape=[2, 2]), seed=0)
    assert (caught.value.key, caught.value.message) == (
        "data.shape", "[2, 2] holds 4 values, but each sample of `random_classification` has 6; allowed: a shape of "
        "6 values, e.g. [6]")


def test_standardize_is_fitted_on_the_training_split_only():
    raw = build_data(DataConfig(kind="sklearn", name="wine", val_fraction=0.25), seed=3)
    scaled = build_data(DataConfig(kind="sklearn", name="wine", val_fraction=0.25, standardize=True), seed=3)
    scaler = StandardScaler().fit(raw.x_train.double().numpy())
    assert np.allclose(scaled.x_train.numpy(), scaler.transform(raw.x_train.double().numpy()), atol=1e-5)
    assert np.allclose(scaled.x_val.numpy(), scaler.transform(raw.x_val.double().numpy()), atol=1e-5)
    assert torch.equal(scaled.y_val, raw.y_val)  # the same split
    assert scaled.x_train.mean(0).abs().max() < 1e-5
    assert scaled.x_val.mean(0).abs().max() > 0.01  # the validation split's own mean was not used


def test_the_split_follows_the_seed():
    a, b, c = (build_data(DataConfig(kind="sklearn", name="iris", val_fraction=0.2), seed=s) for s in (0, 0, 1))
    assert len(a.x_val) == 30 and len(a.x_train) == 120
    assert torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)


@pytest.mark.parametrize("cfg, key, message", [
    (dict(kind="sklearn", name="breast-cancer"), "data.name",
     "unknown scikit-learn data set `breast-cancer` (did you mean `breast_cancer`?); allowed: breast_cancer, digits, "
     "wine, iris, diabetes, linnerud (the ones that ship with the package; fetch_* ones need a download)"),
    (dict(kind="sklearn"), "data.name", "give the scikit-learn data set: breast_cancer, digits, wine, iris, diabetes, linnerud"),
    (dict(kind="sklearn", name="diabetes", task="classification"), "data.task", "`diabetes` is a regression data set"),
    (dict(kind="sklaern"), "data.kind", "unknown data set `sklaern` (did you mean `sklearn`?); allowed: quadratic, "
     "random_classification, sklearn, csv or package.module:factory"),
])
def test_data_mistakes(cfg, key, message):
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(**cfg), seed=0)
    assert (e.value.key, e.value.message) == (key, message)


# --- csv ---------------------------------------------------------------------------


def write_csv(path: Path, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    species = np.where(a > 0, "setosa", np.where(b > 0, "versicolor", "virginica"))
    lines = ["a,b,count,species,price"] + [
        f"{a[i]:.4f},{b[i]:.4f},{i % 3},{species[i]},{10 * a[i] + 3:.3f}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_string_target_is_classification_with_sorted_labels(tmp_path):
    write_csv(tmp_path / "plants.csv")
    data = build_data(DataConfig(kind="csv", path="plants.csv", target="species", columns=["a", "b"]), 0, tmp_path)
    assert data.task == "classification" and data.n_outputs == 3
    labels = np.where(data.x_train[:, 0] > 0, 0, np.where(data.x_train[:, 1] > 0, 1, 2))  # setosa < versicolor < virginica
    assert np.array_equal(data.y_train.numpy(), labels)


def test_csv_float_target_is_regression_and_columns_default_to_the_rest(tmp_path):
    write_csv(tmp_path / "plants.csv")
    cfg = DataConfig(kind="csv", path="plants.csv", target="price", columns=None)
    with pytest.raises(ConfigError, match="column `species` is not numeric"):
        build_data(cfg, 0, tmp_path)
    (tmp_path / "numbers.csv").write_text("x,y,z\n1,2,0.5\n3,4,1.5\n5,6,2.5\n")
    data = build_data(DataConfig(kind="csv", path="numbers.csv", target="z"), 0, tmp_path)
    assert data.task == "regression" and data.n_features == 2
    assert data.y_train.tolist() == [0.5, 1.5, 2.5]


def test_csv_integer_target_few_values_is_classification_unless_told(tmp_path):
    write_csv(tmp_path / "plants.csv")
    cfg = dict(kind="csv", path=str(tmp_path / "plants.csv"), target="count", columns=["a", "b"])  # an absolute path
    assert build_data(DataConfig(**cfg), 0).task == "classification"
    data = build_data(DataConfig(**cfg, task="regression"), 0)
    assert data.task == "regression" and data.y_train.dtype == torch.float32


@pytest.mark.parametrize("cfg, key, message", [
    (dict(path="nope.csv", target="a"), "data.path", "no such file: {tmp}/nope.csv"),
    (dict(path="plants.csv", target="specis"), "data.target",
     "no column `specis` in plants.csv (did you mean `species`?); columns: a, b, count, species, price"),
    (dict(path="plants.csv", target="species", columns=["a", "bb"]), "data.columns",
     "no column `bb` in plants.csv (did you mean `b`?); columns: a, b, count, species, price"),
    (dict(path="plants.csv", target="species", columns=["a", "species"]), "data.columns",
     "`species` is the target; it cannot also be a feature"),
    (dict(path="plants.csv", target="species", columns=["a"], task="regression"), "data.task",
     "regression needs a numeric target; `species` holds e.g. 'setosa'"),
    (dict(target="species"), "data.path", "give the csv file (relative to the config file's folder)"),
    (dict(path="plants.csv"), "data.target", "give the column to predict"),
])
def test_csv_mistakes(tmp_path, cfg, key, message):
    write_csv(tmp_path / "plants.csv")
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(kind="csv", **cfg), 0, tmp_path)
    assert (e.value.key, e.value.message) == (key, message.format(tmp=tmp_path))


def test_csv_empty_cells_name_the_line(tmp_path):
    (tmp_path / "holes.csv").write_text("x,y\n1,2\n3,\n5,6\n")
    with pytest.raises(ConfigError, match=r"1 row\(s\) of holes.csv have empty cells in the used columns \(first on line 3\)"):
        build_data(DataConfig(kind="csv", path="holes.csv", target="y"), 0, tmp_path)


# --- the user's own data factory ---------------------------------------------------


def test_factory_returning_x_y_gets_the_seed_and_the_split():
    cfg = DataConfig(kind="tests.userlib:regression_data", kwargs={"samples": 50}, val_fraction=0.2)
    a, b = build_data(cfg, seed=1), build_data(cfg, seed=2)
    assert (len(a.x_train), len(a.x_val), a.task, a.n_outputs) == (40, 10, "regression", 1)
    assert not torch.equal(a.x_train, b.x_train)  # the factory drew from the run's seed


def test_factory_with_its_own_split_and_task():
    data = build_data(DataConfig(kind="tests.userlib:split_data"), seed=0)
    assert (len(data.x_train), len(data.x_val), data.task, data.n_outputs) == (20, 10, "classification", 2)
    assert data.y_train.dtype == torch.long and data.x_train.dtype == torch.float32
    data = build_data(DataConfig(kind="tests.userlib:labelled_tuple"), seed=0)
    assert (data.task, data.n_outputs) == ("classification", 3)


@pytest.mark.parametrize("cfg, key, message", [
    (dict(kind="tests.userlib:bad_data"), "data.kind",
     "`tests.userlib:bad_data` returned str; expected (x, y), (x_train, y_train, x_val, y_val) or a dict with those keys"),
    (dict(kind="tests.userlib:split_data", val_fraction=0.2), "data.val_fraction",
     "`tests.userlib:split_data` returns its own validation split; leave val_fraction at 0"),
    (dict(kind="tests.userlib:regression_data", kwargs={"n": 3}), "data.kwargs.n",
     "`regression_data` takes no argument `n`; allowed: samples"),
    (dict(kind="tests.nosuch:data"), "data.kind",
     "cannot import module `tests.nosuch` (from `tests.nosuch:data`): not installed and not on the Python path"),
])
def test_factory_mistakes(cfg, key, message):
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(**cfg), seed=0)
    assert (e.value.key, e.value.message) == (key, message)


def test_data_mistake_exits_2_with_file_and_line(write_config, tmp_path):
    path = write_config("name: d\ndata:\n  kind: sklearn\n  name: iriss\n")
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}:4: data.name: unknown scikit-learn data set `iriss` (did you mean `iris`?)")


# --- the shipped configs -----------------------------------------------------------


def test_real_data_config_reaches_a_sensible_validation_accuracy(tmp_path):
    """configs/real_data.yaml as shipped, one seed: logistic regression on breast_cancer."""
    results = train_config(ROOT / "configs" / "real_data.yaml", tmp_path / "out", ["seeds=[0]"])
    assert [(r["params"]["optimizer.name"], r["status"], r["decay"]) for r in results] == [
        ("adam", "ok", "coupled"), ("adamw", "ok", "decoupled")]
    for r in results:
        assert r["metrics"]["val_accuracy"] >= 0.95, r["metrics"]
        assert r["metrics"]["train_accuracy"] >= 0.97, r["metrics"]
        assert r["param_groups"][1] == {"params": ["bias"], "lr": 0.01, "weight_decay": 0.0}


def test_lr_schedule_config_runs(tmp_path):
    results = train_config(ROOT / "configs" / "lr_schedule.yaml", tmp_path / "out", ["seeds=[0]", "train.steps=80"])
    assert len(results) == 4 and all(r["status"] == "ok" for r in results)
    assert all(r["metrics"]["val_loss"] < 1.5 for r in results)  # ln 10 ≈ 2.3 at the start


def test_the_digits_are_read_as_load_digits_reads_them_without_importing_sklearn():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from optcmp.data import _bundled_digits

    data, target = _bundled_digits()
    bunch = load_digits()
    assert data.dtype == bunch.data.dtype and target.dtype == bunch.target.dtype
    assert np.array_equal(data, bunch.data) and np.array_equal(target, bunch.target)
    code = ("import sys; from optcmp.config import DataConfig; from optcmp.data import build_data; "
            "d = build_data(DataConfig(kind='sklearn', name='digits'), seed=0); "
            "print(len(d.x_train), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1797", "False"]
