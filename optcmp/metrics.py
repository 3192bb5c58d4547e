"""result.json's metrics: running bests of the logged values, and the final metrics."""
from __future__ import annotations

import math
from typing import Any

import torch


class Bests:
    """Running bests of the logged losses and accuracy, for the `best_*` metrics."""

    def __init__(self) -> None:
        self.values = {"train/loss": math.inf, "val/loss": math.inf, "val/accuracy": -math.inf}

    def update(self, logged: dict[str, float]) -> None:
        for tag, current in self.values.items():
            if tag in logged:
                better = max if tag.endswith("accuracy") else min
                self.values[tag] = better(current, logged[tag])

    def __getitem__(self, tag: str) -> float:
        return self.values[tag]


def final_weight_stats(named: list[tuple[str, torch.Tensor]], near_zero: float) -> dict[str, float]:
    flat = torch.cat([p.detach().reshape(-1).double() for _, p in named])
    return {
        "weight_norm": flat.norm().item(),
        "near_zero_frac": (flat.abs() < near_zero).double().mean().item(),
    }


def final_metrics(best: Bests, train: tuple[float, float | None], val: tuple[float, float | None] | None,
                  named: list[tuple[str, torch.Tensor]], near_zero: float, steps: int, seconds: float) -> dict[str, Any]:
    """result.json's metrics from the final (loss, accuracy) on train and validation data."""
    train_loss, train_acc = train
    metrics: dict[str, Any] = {"train_loss": train_loss, "best_train_loss": min(best["train/loss"], train_loss)}
    if train_acc is not None:
        metrics["train_accuracy"] = train_acc
    if val is not None:
        vl, va = val
        metrics["val_loss"], metrics["best_val_loss"] = vl, min(best["val/loss"], vl)
        if va is not None:
            metrics["val_accuracy"], metrics["best_val_accuracy"] = va, max(best["val/accuracy"], va)
    metrics.update(final_weight_stats(named, near_zero))
    metrics.update({"steps": steps, "seconds": seconds, "steps_per_second": steps / seconds if seconds > 0 else None})
    return metrics
