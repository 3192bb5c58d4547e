"""Forward and backward passes of many copies of one small network, as batched ops.

M runs of one architecture (an `nn.Sequential` of Linear, LayerNorm and activation
layers, or a bare Linear) become one stacked model: a Linear is a `baddbmm` over weights
`[M, out, in]`, a LayerNorm normalizes and then scales and shifts per member. The backward
pass is written out — activations with the ATen kernels autograd would call
(`threshold_backward`, `gelu_backward`, …) — which skips building an autograd graph: for
models this small a step costs about what its kernel launches cost, so fewer is faster.
Results equal nn.Module's up to rounding (other summation orders in some kernels).

Each member's loss is its own mean over its own batch, and its gradients are those of its
loss alone: members never mix.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

aten = torch.ops.aten

# Activation module → (forward(x, module), backward(grad, x, y, module)): the backward
# kernels are the ones autograd uses, so gradients are computed the same way.
ACTIVATIONS: dict[type, tuple[Callable, Callable]] = {
    nn.ReLU: (lambda x, m: torch.relu(x), lambda g, x, y, m: aten.threshold_backward(g, y, 0)),
    nn.Tanh: (lambda x, m: torch.tanh(x), lambda g, x, y, m: aten.tanh_backward(g, y)),
    nn.Sigmoid: (lambda x, m: torch.sigmoid(x), lambda g, x, y, m: aten.sigmoid_backward(g, y)),
    nn.GELU: (lambda x, m: F.gelu(x, approximate=m.approximate),
              lambda g, x, y, m: aten.gelu_backward(g, x, approximate=m.approximate)),
    nn.SiLU: (lambda x, m: F.silu(x), lambda g, x, y, m: aten.silu_backward(g, x)),
    nn.ELU: (lambda x, m: F.elu(x, m.alpha), lambda g, x, y, m: aten.elu_backward(g, m.alpha, 1, 1, False, x)),
    nn.LeakyReLU: (lambda x, m: F.leaky_relu(x, m.negative_slope),
                   lambda g, x, y, m: aten.leaky_relu_backward(g, x, m.negative_slope, False)),
    nn.Softplus: (lambda x, m: F.softplus(x, m.beta, m.threshold),
                  lambda g, x, y, m: aten.softplus_backward(g, x, m.beta, m.threshold)),
}


def _mean_column(width: int, like: torch.Tensor) -> torch.Tensor:
    """A [width, 1] column of 1/width: `x @ column` is the mean over the last dimension
    (kept), for short rows a third of the cost of `mean` (a sum, a division and a copy on
    the CPU)."""
    return torch.full((width, 1), 1.0 / width, dtype=like.dtype, device=like.device)


def _layer_norm(x: torch.Tensor, eps: float, column: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x − mean) / √(var + eps) over the last dimension, and 1/√(var + eps).

    Written out rather than `native_layer_norm`: for rows as short as a small MLP's (20),
    its per-row kernel costs more than these few ops over all rows at once."""
    centered = x - x @ column
    rstd = (centered.square() @ column).add_(eps).rsqrt_()
    return centered * rstd, rstd


def _layer_norm_backward(grad: torch.Tensor, normed: torch.Tensor, rstd: torch.Tensor,
                         column: torch.Tensor) -> torch.Tensor:
    """The input gradient of `_layer_norm` for the gradient `grad` of its output:
    (g − mean(g) − normed · mean(g · normed)) / √(var + eps)."""
    removed = torch.addcmul(grad @ column, normed, (grad * normed) @ column)
    return (grad - removed).mul_(rstd)


def _batch_norm(x: torch.Tensor, eps: float, stats: tuple[torch.Tensor, torch.Tensor], momentum: float,
                train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm1d's normalization of each member's batch `[M, B, n]` per feature, and
    1/√(var + eps): in training by the batch's mean and (biased) variance, which also move
    the running statistics `stats` (`[M, 1, n]`, with the unbiased variance) as torch does;
    in evaluation by the running statistics."""
    running_mean, running_var = stats
    if not train:
        rstd = (running_var + eps).rsqrt()
        return (x - running_mean) * rstd, rstd
    n = x.shape[1]
    if n < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {n}")
    mean = x.mean(1, keepdim=True)
    centered = x - mean
    var = centered.square().mean(1, keepdim=True)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        running_var.mul_(1 - momentum).add_(var, alpha=momentum * n / (n - 1))
    rstd = (var + eps).rsqrt()
    return centered * rstd, rstd


def _batch_norm_backward(grad: torch.Tensor, normed: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """The input gradient of a training-mode `_batch_norm` for the gradient `grad` of its
    output: (g − mean_B(g) − normed · mean_B(g · normed)) / √(var + eps)."""
    removed = torch.addcmul(grad.mean(1, keepdim=True), normed, (grad * normed).mean(1, keepdim=True))
    return (grad - removed).mul_(rstd)


def _normalization(m: nn.Module, prefix: str, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]):
    """(normalize(x, train) → (normed, 1/√(var + eps)), its input gradient(grad, normed, rstd))
    of a LayerNorm (over each sample's features) or BatchNorm1d (over the batch, per feature)."""
    if isinstance(m, nn.LayerNorm):
        eps, column = m.eps, _mean_column(m.normalized_shape[0], next(iter(params.values())))
        return (lambda x, train: _layer_norm(x, eps, column),
                lambda grad, normed, rstd: _layer_norm_backward(grad, normed, rstd, column))
    eps, momentum = m.eps, m.momentum
    stats = (buffers[prefix + "running_mean"].unsqueeze(1), buffers[prefix + "running_var"].unsqueeze(1))
    return lambda x, train: _batch_norm(x, eps, stats, momentum, train), _batch_norm_backward


def layers_of(model: nn.Module) -> list[nn.Module]:
    return list(model) if isinstance(model, nn.Sequential) else [model]


def unsupported_layer(model: nn.Module) -> str | None:
    """Why this model cannot be stacked, or None."""
    for i, layer in enumerate(layers_of(model)):
        if isinstance(layer, nn.Linear):
            continue
        if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) == 1:
            continue
        if type(layer) is nn.BatchNorm1d:
            if not layer.track_running_stats or layer.momentum is None:
                return f"layer {i} (BatchNorm1d) without running statistics or with a cumulative average is not stacked"
            continue
        if type(layer) in ACTIVATIONS and not getattr(layer, "inplace", False):
            continue
        return (f"layer {i} ({type(layer).__name__}) has no stacked implementation "
                "(stacked: Linear, LayerNorm, BatchNorm1d, activations)")
    if any(p.dim() == 0 for p in model.parameters()):
        return "scalar parameters are not stacked"
    return None


_LINEAR, _NORM, _ACTIVATION = range(3)


class StackedModel:
    """M copies of `template`'s architecture; `params[name]` is the `[M, *shape]` tensor of
    parameter `name` (a view into the flat buffer the optimizer updates, in place).

    Every view a step needs (transposed weights, per-member scales as `[M, 1, n]`) is made
    once here: at a millisecond a step, a few dozen Python-level view calls are measurable."""

    def __init__(self, template: nn.Module, params: dict[str, torch.Tensor],
                 buffers: dict[str, torch.Tensor] | None = None) -> None:
        """`buffers[name]`: the `[M, *shape]` running statistics of BatchNorm layers, updated
        in place by training-mode forward passes."""
        self.params = params
        buffers = buffers or {}
        self.members = next(iter(params.values())).shape[0]
        prefixed = [(m, f"{i}.") for i, m in enumerate(template)] if isinstance(template, nn.Sequential) else [(template, "")]
        self.layers: list[tuple] = []
        for m, prefix in prefixed:
            w, b = params.get(prefix + "weight"), params.get(prefix + "bias")
            if isinstance(m, nn.Linear):
                self.layers.append((_LINEAR, prefix, w, w.transpose(1, 2), None if b is None else b.unsqueeze(1), b is not None))
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                normalize, norm_backward = _normalization(m, prefix, params, buffers)
                self.layers.append((_NORM, prefix, normalize, None if w is None else w.unsqueeze(1),
                                    None if b is None else b.unsqueeze(1), norm_backward))
            else:
                forward, backward = ACTIVATIONS[type(m)]
                self.layers.append((_ACTIVATION, prefix, m, forward, backward))

    def forward(self, x: torch.Tensor, keep: bool = False, train: bool = False) -> tuple[torch.Tensor, list]:
        """Outputs `[M, B, out]` for inputs `[M, B, in]` (or `[B, in]` shared by all members),
        and what `backward` needs when `keep`. `train` is nn.Module's training mode:
        BatchNorm normalizes by the batch's statistics and updates its running ones."""
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        saved = []
        for layer in self.layers:
            kind = layer[0]
            if kind == _LINEAR:
                _, _, _, w_t, b, _ = layer
                y = torch.bmm(x, w_t) if b is None else torch.baddbmm(b, x, w_t)
                if keep:
                    saved.append(x)
            elif kind == _NORM:
                _, _, normalize, w, b, _ = layer
                normed, rstd = normalize(x, train)
                if w is not None:
                    y = torch.addcmul(b, normed, w) if b is not None else normed * w
                else:
                    y = normed + b if b is not None else normed
                if keep:
                    saved.append((normed, rstd))
            else:
                y = layer[3](x, layer[2])
                if keep:
                    saved.append((x, y))
            x = y
        return x, saved

    def backward(self, saved: list, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradients `[M, *shape]` of every parameter, given the gradient of the summed
        member losses with respect to the outputs `[M, B, out]`."""
        grads: dict[str, torch.Tensor] = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer, s = self.layers[i], saved[i]
            kind, name = layer[0], layer[1]
            if kind == _LINEAR:
                w, has_bias = layer[2], layer[5]
                grads[name + "weight"] = torch.bmm(grad.transpose(1, 2), s)
                if has_bias:
                    grads[name + "bias"] = grad.sum(1)
                if i > 0:
                    grad = torch.bmm(grad, w)
            elif kind == _NORM:
                _, _, _, w, b, norm_backward = layer
                normed, rstd = s
                if w is not None:
                    grads[name + "weight"] = (grad * normed).sum(1)
                if b is not None:
                    grads[name + "bias"] = grad.sum(1)
                if i > 0:
                    grad = norm_backward(grad * w if w is not None else grad, normed, rstd)
            elif i > 0:
                x, y = s
                grad = layer[4](grad, x, y, layer[2])
        return grads


def member_losses(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor, task: str,
                  grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each member's mean loss `[M]` for outputs `[M, B, out]` and targets `[M, B, …]`, and
    with `grad` the gradient of their sum with respect to the outputs.

    MSE and cross-entropy are written out with the kernels their autograd backward uses;
    any other loss goes through autograd on the outputs alone.
    """
    members = out.shape[0]
    pred = out.squeeze(-1) if task == "regression" else out  # trainer.predict, per member
    if loss_fn is F.mse_loss:
        diff = pred - y
        losses = diff.square().reshape(members, -1).mean(1)
        # mse_loss_backward: (input - target) · 2/n
        return losses, (diff * (2.0 / diff[0].numel())).view_as(out) if grad else None
    if loss_fn is F.cross_entropy and pred.dim() == 3:
        logp = torch.log_softmax(pred, -1)
        target = y.unsqueeze(-1)
        losses = -logp.gather(-1, target).squeeze(-1).mean(1)
        if not grad:
            return losses, None
        # nll_loss_backward puts −1/n at each target; then log_softmax's own backward
        g = torch.zeros_like(logp).scatter_(-1, target, -1.0 / target.shape[1])
        return losses, torch._log_softmax_backward_data(g, logp, -1, logp.dtype)
    with torch.enable_grad():
        o = pred.detach().requires_grad_(grad)
        if pred.dim() == 3 and y.dim() == 2:  # class scores: the class dimension goes second
            per_sample = loss_fn(o.reshape(-1, o.shape[-1]), y.reshape(-1), reduction="none")
        else:
            per_sample = loss_fn(o, y, reduction="none")
        losses = per_sample.reshape(members, -1).mean(1)
        if not grad:
            return losses.detach(), None
        losses.sum().backward()
    return losses.detach(), o.grad.view_as(out)
