"""One run: the training loop, as a function.

`execute(spec, exp_dir)` is what every executor calls for a run: it trains, writes the
run's folder (config.yaml, events, metrics.csv, weights.npz, result.json — the last one
last, atomically) and returns the result. A run that raises is `failed`, a NaN/inf or
too-large loss is `diverged`, Ctrl-C is `interrupted`; none of them stops a sweep.
"""
from __future__ import annotations

import math
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from optcmp.config import ExperimentConfig
from optcmp.data import Dataset, batch_size_of, build_data, epoch_batches, shuffle_generator, steps_per_epoch
from optcmp.errors import ConfigError, OptcmpError
from optcmp.models import build_model
from optcmp.optimizers import (build_optimizer, build_scheduler, decay_semantics, group_names, needs_closure, resolved_kwargs,
                               schedule_length, step_scheduler, takes_metric)
from optcmp.results import atomic_write_bytes, atomic_write_text, write_result
from optcmp.sweep import RunSpec
from optcmp.tb.logger import RunLogger
from optcmp.yamlio import dump_yaml

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)

LOSSES = {
    "mse": nn.functional.mse_loss,
    "l1": nn.functional.l1_loss,
    "smooth_l1": nn.functional.smooth_l1_loss,
    "huber": nn.functional.huber_loss,
    "cross_entropy": nn.functional.cross_entropy,
    "nll": nn.functional.nll_loss,
    "bce_with_logits": nn.functional.binary_cross_entropy_with_logits,
}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for a device that is not there is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"`{name}` asked for, but this machine has no CUDA device; allowed here: auto, cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError("device", f"`{name}` asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device", "`mps` asked for, but it is not available here; allowed here: auto, cpu")
    return torch.device(name)


def loss_function(config: ExperimentConfig, task: str) -> Callable:
    name = config.train.loss
    if name == "auto":
        name = "cross_entropy" if task == "classification" else "mse"
    if task == "classification" and name in ("mse", "l1", "smooth_l1", "huber", "bce_with_logits"):
        raise ConfigError("train.loss", f"`{name}` does not fit a classification data set; use cross_entropy or nll")
    if task == "regression" and name in ("cross_entropy", "nll"):
        raise ConfigError("train.loss", f"`{name}` does not fit a regression data set; use mse, l1, smooth_l1 or huber")
    return LOSSES[name]


def predict(model: nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    out = model(x)
    return out.squeeze(-1) if task == "regression" and out.dim() > 1 else out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, loss_fn: Callable) -> tuple[float, float | None]:
    """(loss, accuracy or None) of the model on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    out = predict(model, x, task)
    loss = loss_fn(out, y).item()
    acc = (out.argmax(-1) == y).float().mean().item() if task == "classification" else None
    model.train(was_training)
    return loss, acc


def layer_of(param_name: str) -> str:
    return param_name.rpartition(".")[0] or param_name


def weight_scalars(names: list[str], squared: list[float]) -> dict[str, float]:
    """Global and per-layer L2 weight norms from each parameter's squared norm."""
    out = {"weight_norm": math.sqrt(sum(squared))}
    per_layer: dict[str, float] = {}
    for name, sq in zip(names, squared):
        per_layer[layer_of(name)] = per_layer.get(layer_of(name), 0.0) + sq
    out.update({f"weight_norm/{k}": math.sqrt(v) for k, v in per_layer.items()})
    return out


def squared_norms(tensors: list[torch.Tensor]) -> list[float]:
    """Each tensor's squared L2 norm, in one batched call and one host sync."""
    return (torch.stack(torch._foreach_norm(tensors)).double() ** 2).tolist() if tensors else []


def final_weight_stats(named: list[tuple[str, torch.Tensor]], near_zero: float) -> dict[str, float]:
    flat = torch.cat([p.detach().reshape(-1).double() for _, p in named])
    return {
        "weight_norm": flat.norm().item(),
        "near_zero_frac": (flat.abs() < near_zero).double().mean().item(),
    }


def histogram_tensors(named, config: ExperimentConfig, grads: list[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
    """The tensors to histogram by tag; `grads` (in `named` order) default to each `p.grad`."""
    h = config.log.histograms
    out = {}
    if h.weights:
        out.update({f"weights/{n}": p.detach() for n, p in named})
    if h.grads:
        grads = [p.grad for _, p in named] if grads is None else grads
        out.update({f"grads/{n}": g for (n, _), g in zip(named, grads) if g is not None})
    return out


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


class Diverged(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss {loss} at step {step}")
        self.step = step
        self.loss = loss

    def record(self) -> dict[str, Any]:
        """The result.json fields of a run this divergence stopped."""
        return {"status": "diverged", "diverged_step": self.step, "error": f"loss became {self.loss} at step {self.step}"}


def _check(loss: float, step: int, threshold: float | None) -> None:
    if not math.isfinite(loss) or (threshold is not None and loss > threshold):
        raise Diverged(step, loss)


def train(
    spec: RunSpec,
    run_dir: Path,
    logger: RunLogger,
    data: Dataset,
    device: torch.device,
    progress: Progress | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one run; return its final metrics. Raises Diverged or KeyboardInterrupt.

    `record`, when given, receives the resolved parameter groups (`param_groups`)."""
    config = spec.config
    loss_fn = loss_function(config, data.task)
    torch.manual_seed(spec.seed)  # the seeding contract: right before the model is built
    model = build_model(config.model, data.n_features, data.n_outputs).to(device)
    opt = build_optimizer(model, config.optimizer)
    sched = build_scheduler(opt, config.scheduler, schedule_length(config, len(data.x_train)))
    if record is not None:
        record["param_groups"] = group_names(model, config.optimizer)
    named = [(n, p) for n, p in model.named_parameters()]
    params = [p for _, p in named]
    names = [n for n, _ in named]
    detached = [p.detach() for p in params]  # views of the live weights, made once

    n_train = len(data.x_train)
    bs = batch_size_of(config.data, n_train)
    per_epoch = steps_per_epoch(config.data, n_train)
    by_epoch = config.train.epochs is not None
    total = config.train.epochs * per_epoch if by_epoch else config.train.steps
    every, hist_every = config.log.every, config.log.histograms.every
    closure_opt = needs_closure(opt)
    gen = shuffle_generator(spec.seed, device if device.type == "cuda" else "cpu")
    threshold = config.train.diverge_threshold
    best = Bests()

    def log_point(x: int, loss: float, grads_norm: float | None, ratio: float | None, extra: dict,
                  weights_sq: list[float] | None = None) -> None:
        values = {"train/loss": loss}
        if data.x_val is not None:
            vl, va = evaluate(model, data.x_val, data.y_val, data.task, loss_fn)
            values["val/loss"] = vl
            if va is not None:
                values["val/accuracy"] = va
        values.update({f"lr/group{i}": lr for i, lr in enumerate(lrs)})
        if grads_norm is not None:
            values["grad_norm"] = grads_norm
        values.update(weight_scalars(names, weights_sq if weights_sq is not None else squared_norms(detached)))
        if ratio is not None:
            values["update_ratio"] = ratio
        values.update(extra)
        best.update(values)
        logger.scalars(x, values)

    step = 0
    epoch = 0
    lrs = [float(g["lr"]) for g in opt.param_groups]  # the rates of the latest step, as logged
    start = time.perf_counter()
    model.train()
    while step < total:
        epoch_sum, epoch_n = 0.0, 0
        for idx in epoch_batches(n_train, bs, gen):
            if step >= total:
                break
            xb, yb = (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])
            log_step = not by_epoch and (step % every == 0 or step == total - 1)
            hist_step = hist_every > 0 and not by_epoch and step % hist_every == 0

            first: list[torch.Tensor] = []  # the loss at the step's start, however often a closure runs

            @torch.enable_grad()
            def closure():
                opt.zero_grad(set_to_none=True)
                batch_loss = loss_fn(predict(model, xb, data.task), yb)
                batch_loss.backward()
                if not first:
                    first.append(batch_loss.detach())
                return batch_loss

            lrs = [float(g["lr"]) for g in opt.param_groups]
            if closure_opt:
                before = list(torch._foreach_mul(detached, 1.0)) if log_step else None
                opt.step(closure)
            else:
                closure()
                before = list(torch._foreach_mul(detached, 1.0)) if log_step else None  # copies
            loss = first[0].item()
            _check(loss, step, threshold)
            grads = [p.grad for p in params if p.grad is not None] if log_step else []
            if hist_step:
                logger.histograms(step, histogram_tensors(named, config))
            if not closure_opt:
                opt.step()
            if sched is not None and config.scheduler.interval == "step":
                step_scheduler(sched, loss)
            epoch_sum += loss * (len(yb))
            epoch_n += len(yb)
            if log_step:
                # grads, weights before and after, and the update: one batched norm, one sync
                k, n = len(grads), len(params)
                sq = squared_norms([*grads, *before, *torch._foreach_sub(detached, before), *detached])
                grads_norm = math.sqrt(sum(sq[:k]))
                ratio = math.sqrt(sum(sq[k + n:k + 2 * n])) / max(math.sqrt(sum(sq[k:k + n])), 1e-12)
                log_point(step, loss, grads_norm, ratio, {}, weights_sq=sq[k + 2 * n:])
                if progress is not None:
                    progress(step + 1, total, loss)
            step += 1
        epoch += 1
        if sched is not None and config.scheduler.interval == "epoch":
            # ReduceLROnPlateau watches the validation loss where there is one
            metric = None
            if takes_metric(sched):
                metric = evaluate(model, data.x_val, data.y_val, data.task, loss_fn)[0] if data.x_val is not None \
                    else epoch_sum / max(epoch_n, 1)
            step_scheduler(sched, metric)
        if by_epoch:
            mean_loss = epoch_sum / max(epoch_n, 1)
            if epoch % every == 0 or step >= total:
                log_point(epoch, mean_loss, None, None, {"epoch": epoch})
                if progress is not None:
                    progress(step, total, mean_loss)
            if hist_every > 0 and (epoch % hist_every == 0 or epoch == 1):
                logger.histograms(epoch, histogram_tensors(named, config))
    seconds = time.perf_counter() - start

    train = evaluate(model, data.x_train, data.y_train, data.task, loss_fn)
    _check(train[0], step, threshold)
    val = evaluate(model, data.x_val, data.y_val, data.task, loss_fn) if data.x_val is not None else None
    metrics = final_metrics(best, train, val, named, config.summary.near_zero, step, seconds)
    save_weights(run_dir, named)
    return metrics


def save_weights(run_dir: Path, named: list[tuple[str, torch.Tensor]]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{n: p.detach().float().cpu().numpy() for n, p in named})
    atomic_write_bytes(Path(run_dir) / "weights.npz", buf.getvalue())


def base_result(spec: RunSpec) -> dict[str, Any]:
    """The fields of result.json known before training."""
    return {
        "run_id": spec.run_id,
        "config_id": spec.config_id,
        "seed": spec.seed,
        "status": None,
        "params": spec.params,
        "decay": decay_semantics(spec.config.optimizer),
        "engine": "sequential",
        "device": None,
        "config_hash": spec.config_hash,
        "error": None,
        "diverged_step": None,
        "optimizer": resolved_kwargs(spec.config.optimizer),
        "metrics": {},
    }


def prepare_run_dir(run_dir: Path, spec: RunSpec) -> str:
    """Start the run's folder clean (a rerun never appends to old events); write config.yaml."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    text = dump_yaml(spec.config.model_dump(mode="json"))
    atomic_write_text(run_dir / "config.yaml", text)
    return text


def hparams_of(spec: RunSpec, decay: str) -> dict[str, Any]:
    hp: dict[str, Any] = {"optimizer.name": spec.config.optimizer.name, "decay": decay, "seed": spec.seed}
    for k, v in spec.params.items():
        hp[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return hp


def execute(spec: RunSpec, exp_dir: Path, base_dir: Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Train one run and write its folder; always returns a result, whatever happened."""
    run_dir = Path(exp_dir) / spec.run_id
    result = base_result(spec)
    yaml_text = prepare_run_dir(run_dir, spec)
    logger = None
    start = time.perf_counter()
    try:
        device = resolve_device(spec.config.device)
        result["device"] = str(device)
        data = build_data(spec.config.data, spec.seed, base_dir).to(device)
        logger = open_logger(run_dir, spec, yaml_text)
        result["metrics"] = train(spec, run_dir, logger, data, device, progress, record=result)
        result["status"] = "ok"
    except Diverged as d:
        result.update(d.record())
    except KeyboardInterrupt:
        result.update(status="interrupted", error="interrupted by the user")
    except OptcmpError:
        raise  # a config mistake is the user's to fix, not a failed run
    except Exception as e:  # noqa: BLE001 - a run that raises must not stop the sweep
        result.update(status="failed", error=f"{type(e).__name__}: {e}")
        (run_dir / "error.txt").write_text(traceback.format_exc())
    finally:
        finish_run(run_dir, spec, logger, result, time.perf_counter() - start)
    return result


def open_logger(run_dir: Path, spec: RunSpec, yaml_text: str) -> RunLogger:
    """The run's logger, with its resolved config as TensorBoard text."""
    logger = RunLogger(run_dir, histogram_bins=spec.config.log.histograms.bins)
    logger.text("config", f"```yaml\n{yaml_text}```")
    return logger


def finish_run(run_dir: Path, spec: RunSpec, logger: RunLogger | None, result: dict[str, Any], seconds: float) -> None:
    """Register the run's HParams entry, close its logger, then write result.json (last,
    atomically). A run without a status (a config error stopped it) gets no result."""
    if logger is not None:
        if result["status"] is not None:
            metrics = {f"final/{k}": v for k, v in result["metrics"].items() if isinstance(v, (int, float)) and math.isfinite(v)}
            logger.hparams(hparams_of(spec, result["decay"]), metrics, status=result["status"])
        logger.close()
    result["metrics"].setdefault("seconds", seconds)
    if result["status"] is not None:
        write_result(run_dir, result)
