"""Name → data set: `quadratic`, `random_classification`, real data sets, csv, imports.

Seeding contract: data generation and the train/validation split use a generator
seeded with the run's seed; batch shuffling uses its own generator (see `shuffle_generator`),
so changing the batch size never changes the data.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from optcmp.config import DataConfig
from optcmp.errors import ConfigError

BUILTIN = ("quadratic", "random_classification")
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
        return self.x_train.shape[1]

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


def build_data(cfg: DataConfig, seed: int, base_dir: Path | None = None) -> Dataset:
    """The run's data set, split into train/validation, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    if cfg.kind == "quadratic":
        x, y = quadratic()
        task = "regression"
    elif cfg.kind == "random_classification":
        x, y = random_classification(cfg.samples, cfg.features, cfg.classes, gen)
        task = "classification"
    else:
        raise ConfigError("data.kind", f"unknown data set `{cfg.kind}`; allowed: {', '.join(BUILTIN)}")
    x_tr, y_tr, x_va, y_va = _split(x, y, cfg.val_fraction, gen)
    n_out = int(y.max().item()) + 1 if task == "classification" else 1
    if task == "classification" and cfg.kind == "random_classification":
        n_out = cfg.classes
    return Dataset(x_tr, y_tr, x_va, y_va, task, n_out)


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
