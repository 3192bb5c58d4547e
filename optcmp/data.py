"""Name → data set: `quadratic`, `random_classification`, real data sets, csv, imports.

Seeding contract: data generation and the train/validation split use a generator
seeded with the run's seed; batch shuffling uses its own generator (see `shuffle_generator`),
so changing the batch size never changes the data. `standardize` is fitted on the
training split only, so no statistic of the validation samples leaks into training.

`data.kind: package.module:factory` calls `factory(**data.kwargs)`, adding `seed=` when
the factory takes a `seed` argument (use it for any randomness, to keep the contract).
It returns one of
- `(x, y)`: optcmp splits off `val_fraction` for validation;
- `(x_train, y_train, x_val, y_val)`: its own split (`val_fraction` must stay 0);
- a dict with keys `x`, `y` or `x_train`, `y_train`, `x_val`, `y_val`;
and may add the task, `"classification"` or `"regression"`, as a last tuple element or a
dict key `task`. Arrays may be tensors or numpy arrays, with samples along the first
axis. Without a task (here or in `data.task`), an integer `y` means classification with
labels 0…k−1 and a floating-point `y` regression.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optcmp.config import DataConfig, _did_you_mean
from optcmp.errors import ConfigError
from optcmp.limits import check_fits
from optcmp.imports import check_kwargs, colon_hint, is_import_path, load_object, signature_of

BUILTIN = ("quadratic", "random_classification", "sklearn", "csv")
# The data sets that ship inside scikit-learn (no download), with their task.
SKLEARN = {
    "breast_cancer": "classification",  # 569 × 30, 2 classes
    "digits": "classification",  # 1797 × 64, 10 classes
    "wine": "classification",  # 178 × 13, 3 classes
    "iris": "classification",  # 150 × 4, 3 classes
    "diabetes": "regression",  # 442 × 10
    "linnerud": "regression",  # 20 × 3, three targets
}
MAX_INFERRED_CLASSES = 20  # an integer csv target with more distinct values is a regression
SHUFFLE_STREAM = 0x5EED  # offset so the shuffle stream differs from the data stream


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    task: str  # "regression" | "classification"
    n_outputs: int  # 1 for regression, the number of classes for classification

    @property
    def n_features(self) -> int:
        """The features of a flat sample (of an image `[C, H, W]`: its channels)."""
        return self.x_train.shape[1]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> "Dataset":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Dataset(move(self.x_train), move(self.y_train), move(self.x_val), move(self.y_val), self.task, self.n_outputs)


def quadratic() -> tuple[torch.Tensor, torch.Tensor]:
    """The reference regression: x1 = −10…9, x2 = 0…19, y = 2·x1 − x2² + 1 (20 samples)."""
    x1 = torch.arange(-10, 10).float()
    x2 = torch.arange(0, 20).float()
    return torch.stack([x1, x2], dim=1), 2 * x1 - x2**2 + 1


def random_classification(samples: int, features: int, classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal features with labels drawn uniformly from the classes."""
    x = torch.randn(samples, features, generator=gen)
    y = torch.randint(0, classes, (samples,), generator=gen)
    return x, y


def _split(x: torch.Tensor, y: torch.Tensor, fraction: float, gen: torch.Generator):
    if fraction == 0:
        return x, y, None, None
    n_val = max(1, round(len(x) * fraction))
    if n_val >= len(x):
        raise ConfigError("data.val_fraction", f"{fraction} leaves no training sample out of {len(x)}")
    perm = torch.randperm(len(x), generator=gen)
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def standardize(x_train: torch.Tensor, x_val: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale each feature to mean 0 and std 1 with the training split's statistics (as
    sklearn's StandardScaler: population std, constant features left unscaled)."""
    mean = x_train.mean(0)
    std = x_train.std(0, correction=0)
    std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    scale = lambda t: None if t is None else (t - mean) / std  # noqa: E731
    return scale(x_train), scale(x_val)


def sklearn_dataset(name: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """One of the data sets bundled with scikit-learn, as float32 features and labels/targets."""
    allowed = ", ".join(SKLEARN)
    if name is None:
        raise ConfigError("data.name", f"give the scikit-learn data set: {allowed}")
    if name not in SKLEARN:
        raise ConfigError("data.name", f"unknown scikit-learn data set `{name}`{_did_you_mean(name, SKLEARN)}; "
                          f"allowed: {allowed} (the ones that ship with the package; fetch_* ones need a download)")
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:  # (not imported here: see _bundled_digits)
        raise ConfigError("data.kind", "`sklearn` data sets need scikit-learn: pip install 'optcmp[sklearn]'") from None
    data, target = _sklearn_arrays(name)
    task = SKLEARN[name]
    x = torch.tensor(data, dtype=torch.float32)  # copies: the cached arrays stay as loaded
    y = torch.tensor(target, dtype=torch.long if task == "classification" else torch.float32)
    return x, y, task


@lru_cache(maxsize=None)
def _sklearn_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled data set's features and targets, read from disk once a process (0.1 s
    each for the digits: a sweep builds every run's data, in preflight and in training)."""
    if name == "digits":
        found = _bundled_digits()
        if found is not None:
            return found
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    return bunch.data, bunch.target


def _bundled_digits() -> tuple[np.ndarray, np.ndarray] | None:
    """`sklearn.datasets.load_digits()`' data and target, read from the file it reads
    (`sklearn/datasets/data/digits.csv.gz`) as it reads it, without importing scikit-learn:
    that import (scipy.stats included) is 1.4 s of every process that trains on the digits,
    a tenth of a vectorized sweep of them. None where the file is not found there."""
    import gzip
    import importlib.util

    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int, copy=False)
    return None


def infer_task(target) -> str:
    """Classification for a text, boolean or integer target with few distinct values."""
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    if pd.api.types.is_integer_dtype(target) and target.nunique() <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def csv_dataset(cfg: DataConfig, base_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Features and target from a csv file with a header row; labels encoded 0…k−1 in
    sorted order of their values."""
    import pandas as pd

    if not cfg.path:
        raise ConfigError("data.path", "give the csv file (relative to the config file's folder)")
    if not cfg.target:
        raise ConfigError("data.target", "give the column to predict")
    path = Path(cfg.path).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if not path.is_file():
        raise ConfigError("data.path", f"no such file: {path}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ConfigError("data.path", f"cannot read {path} as csv: {str(e).strip()}") from None
    frame.columns = [str(c) for c in frame.columns]
    have = list(frame.columns)
    if cfg.target not in have:
        raise ConfigError("data.target", f"no column `{cfg.target}` in {path.name}{_did_you_mean(cfg.target, have)}; "
                          f"columns: {', '.join(have)}")
    features = cfg.columns if cfg.columns is not None else [c for c in have if c != cfg.target]
    for c in features:
        if c not in have:
            raise ConfigError("data.columns", f"no column `{c}` in {path.name}{_did_you_mean(c, have)}; columns: {', '.join(have)}")
        if c == cfg.target:
            raise ConfigError("data.columns", f"`{c}` is the target; it cannot also be a feature")
        if not pd.api.types.is_numeric_dtype(frame[c]):
            text = pd.to_numeric(frame[c], errors="coerce").isna() & frame[c].notna()
            row = int(text.to_numpy().nonzero()[0][0]) if text.any() else 0
            raise ConfigError("data.columns", f"column `{c}` is not numeric: {frame[c].iloc[row]!r} on line {row + 2} of "
                              f"{path.name}; optcmp does not encode features: list the numeric `columns`, or encode it "
                              "in the file")
    if not features:
        raise ConfigError("data.columns", f"{path.name} has no feature column besides the target `{cfg.target}`")
    used = frame[[*features, cfg.target]]
    empty = used.isna().any(axis=1).to_numpy().nonzero()[0]
    if len(empty):
        raise ConfigError("data.path", f"{len(empty)} row(s) of {path.name} have empty cells in the used columns "
                          f"(first on line {empty[0] + 2}); drop or fill them")
    target = frame[cfg.target]
    task = infer_task(target) if cfg.task == "auto" else cfg.task
    x = torch.as_tensor(frame[features].to_numpy(dtype="float64", copy=True), dtype=torch.float32)
    if task == "classification":
        codes, _ = pd.factorize(target, sort=True)
        y = torch.as_tensor(codes, dtype=torch.long)
    else:
        if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
            raise ConfigError("data.task", f"regression needs a numeric target; `{cfg.target}` holds e.g. {target.iloc[0]!r}")
        y = torch.as_tensor(target.to_numpy(dtype="float64", copy=True), dtype=torch.float32)
    return x, y, task


def _unpack(out: Any, kind: str) -> tuple[list[Any], str | None]:
    """The arrays a data factory returned — [x, y] or [x_train, y_train, x_val, y_val] — and its task."""
    expected = "(x, y), (x_train, y_train, x_val, y_val) or a dict with those keys"
    task = None
    if isinstance(out, dict):
        task = out.get("task")
        keys = ("x_train", "y_train", "x_val", "y_val") if "x_train" in out else ("x", "y")
        if not all(k in out for k in keys[:2]):
            keys = f"a dict with keys {', '.join(map(str, out))}" if out else "an empty dict"
            raise ConfigError("data.kind", f"`{kind}` returned {keys}; expected {expected}")
        arrays = [out.get(k) for k in keys]
    elif isinstance(out, (tuple, list)):
        arrays = list(out)
        if arrays and isinstance(arrays[-1], str):
            task = arrays.pop()
        if len(arrays) not in (2, 4):
            raise ConfigError("data.kind", f"`{kind}` returned {len(arrays)} arrays; expected {expected}")
    else:
        raise ConfigError("data.kind", f"`{kind}` returned {type(out).__name__}; expected {expected}")
    if task not in (None, "classification", "regression"):
        raise ConfigError("data.kind", f"`{kind}` returned task {task!r}; allowed: classification, regression")
    if len(arrays) == 4 and arrays[2] is None:
        arrays = arrays[:2]
    return arrays, task


def imported_dataset(cfg: DataConfig, seed: int) -> tuple[list[torch.Tensor], str]:
    """Call the user's data factory (see the module docstring for the protocol)."""
    factory = load_object(cfg.kind, "data.kind")
    kwargs = dict(cfg.kwargs)
    sig = signature_of(factory)
    if sig is not None and "seed" in sig.parameters:
        kwargs["seed"] = seed
    check_kwargs("data.kwargs", factory, kwargs, supplied=("seed",))
    try:
        out = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as e:  # the user's code failed: one line, not a traceback
        raise ConfigError("data.kind", f"`{cfg.kind}` raised {type(e).__name__}: {e}") from None
    arrays, task = _unpack(out, cfg.kind)
    try:
        tensors = [a if isinstance(a, torch.Tensor) else torch.tensor(np.asarray(a)) for a in arrays]
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError("data.kind", f"`{cfg.kind}` returned something that is not an array: {e}") from None
    for x, y in zip(tensors[::2], tensors[1::2]):
        if x.dim() < 2 or len(x) != len(y):
            raise ConfigError("data.kind", f"`{cfg.kind}` returned x of shape {tuple(x.shape)} and y of shape "
                              f"{tuple(y.shape)}; expected x as (samples, features…) and y with as many samples")
    task = task or (cfg.task if cfg.task != "auto" else None)
    task = task or ("regression" if tensors[1].is_floating_point() else "classification")
    tensors[::2] = [x.float() for x in tensors[::2]]
    if task == "classification":
        for y in tensors[1::2]:
            if (y.is_floating_point() and not torch.equal(y, y.round())) or y.dim() != 1 or (len(y) and y.min() < 0):
                raise ConfigError("data.kind", f"`{cfg.kind}`: classification labels must be integers 0…k−1, one per sample")
        tensors[1::2] = [y.long() for y in tensors[1::2]]
    else:
        tensors[1::2] = [y.float() for y in tensors[1::2]]
    return tensors, task


def build_data(cfg: DataConfig, seed: int, base_dir: Path | None = None) -> Dataset:
    """The run's data set, split into train/validation, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    given_split = None
    fixed_task = True  # the kind decides the task; `data.task` may only agree
    if cfg.kind == "quadratic":
        x, y = quadratic()
        task = "regression"
    elif cfg.kind == "random_classification":
        # the features, their standardized and split copies, and the labels
        check_fits("data.samples", f"{cfg.samples:,} samples of {cfg.features:,} features", cfg.samples * (cfg.features + 1), 4)
        x, y = random_classification(cfg.samples, cfg.features, cfg.classes, gen)
        task = "classification"
    elif cfg.kind == "sklearn":
        x, y, task = sklearn_dataset(cfg.name)
    elif cfg.kind == "csv":
        x, y, task = csv_dataset(cfg, base_dir)
        fixed_task = False
    elif is_import_path(cfg.kind):
        tensors, task = imported_dataset(cfg, seed)
        x, y = tensors[:2]
        given_split = tensors if len(tensors) == 4 else None
        fixed_task = False
    else:
        raise ConfigError("data.kind", f"unknown data set `{cfg.kind}`{_did_you_mean(cfg.kind, BUILTIN)}; "
                          f"allowed: {', '.join(BUILTIN)} or package.module:factory{colon_hint(cfg.kind)}")
    if fixed_task and cfg.task not in ("auto", task):
        what = f"`{cfg.name}`" if cfg.kind == "sklearn" else f"`{cfg.kind}`"
        raise ConfigError("data.task", f"{what} is a {task} data set")
    if given_split is not None:
        if cfg.val_fraction:
            raise ConfigError("data.val_fraction", f"`{cfg.kind}` returns its own validation split; leave val_fraction at 0")
        x_tr, y_tr, x_va, y_va = given_split
    else:
        x_tr, y_tr, x_va, y_va = _split(x, y, cfg.val_fraction, gen)
    if cfg.standardize:
        x_tr, x_va = standardize(x_tr, x_va)
    if cfg.shape is not None:
        x_tr, x_va = (None if x is None else reshaped(x, cfg) for x in (x_tr, x_va))
    if task == "regression":
        n_out = 1 if y_tr.dim() == 1 else y_tr.shape[1]
    elif cfg.kind == "random_classification":
        n_out = cfg.classes
    else:  # labels are 0…k−1 over both splits together
        n_out = int(max(t.max() for t in (y_tr, y_va) if t is not None and len(t))) + 1
    return Dataset(x_tr, y_tr, x_va, y_va, task, n_out)


def reshaped(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Each sample of `x` reshaped (row-major) to `data.shape`."""
    have, want = math.prod(x.shape[1:]), math.prod(cfg.shape)
    if have != want:
        what = f"`{cfg.name}`" if cfg.kind == "sklearn" else f"`{cfg.kind}`"
        raise ConfigError("data.shape", f"{list(cfg.shape)} holds {want} values, but each sample of {what} has {have}; "
                          f"allowed: a shape of {have} values, e.g. [{have}]")
    return x.reshape(len(x), *cfg.shape)


def batch_size_of(cfg: DataConfig, n_train: int) -> int:
    return n_train if cfg.batch_size == "full" else min(int(cfg.batch_size), n_train)


def steps_per_epoch(cfg: DataConfig, n_train: int) -> int:
    return math.ceil(n_train / batch_size_of(cfg, n_train))


def shuffle_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed + SHUFFLE_STREAM)


def epoch_batches(n_train: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor | None]:
    """Index tensors of one shuffled epoch (the last batch may be smaller); None = full batch."""
    if batch_size >= n_train:
        yield None
        return
    perm = torch.randperm(n_train, generator=gen, device=gen.device)
    yield from perm.split(batch_size)
