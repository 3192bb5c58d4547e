"""Stand-ins for a user's own code, loaded by import path (`tests.userlib:Name`) in tests
of models, data, optimizers and schedulers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ScaleNorm(nn.Module):
    """A user-written normalization layer: `no_decay: [norm]` recognizes it by its name."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class TwoLayer(nn.Module):
    """body (Linear) → ScaleNorm → head (Linear); names body.weight, norm.gain, head.bias…"""

    def __init__(self, in_features: int, out_features: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Linear(in_features, width)
        self.norm = ScaleNorm(width)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(x)))


def make_model(in_features: int, out_features: int, width: int = 8) -> nn.Module:
    return TwoLayer(in_features, out_features, width)


def fixed_width_model(width: int = 4) -> nn.Module:
    """A factory that does not take in_features/out_features: optcmp must not pass them."""
    return nn.Sequential(nn.Linear(2, width), nn.Linear(width, 1))


def not_a_model(in_features: int, out_features: int) -> int:
    return 3


def broken_model(in_features: int, out_features: int) -> nn.Module:
    raise RuntimeError("out of coffee")


def regression_data(seed: int, samples: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x·w + 0.1·noise, drawn from the run's seed."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, generator=gen)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(samples, generator=gen)


def split_data() -> dict:
    """Its own split, as numpy arrays, labels as floats, and the task named."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    y = (x[:, 0] > 0).astype(np.float64)
    return {"x_train": x[:20], "y_train": y[:20], "x_val": x[20:], "y_val": y[20:], "task": "classification"}


def labelled_tuple() -> tuple:
    x = torch.arange(12.0).reshape(6, 2)
    return x, torch.tensor([0, 1, 2, 0, 1, 2]), "classification"


def bad_data() -> str:
    return "not data"


class SignSGD(torch.optim.Optimizer):
    """θ ← θ − lr·sign(g), with decoupled decay θ ← θ·(1 − lr·λ), declared for optcmp."""

    decay_semantics = "decoupled"

    def __init__(self, params, lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(p.grad.sign(), alpha=-group["lr"])
        return loss


class UndeclaredSGD(SignSGD):
    decay_semantics = None


class LineSearchGD(torch.optim.Optimizer):
    """Gradient descent with backtracking: `step(closure)` re-evaluates the loss, so the
    closure is required (no default), as in LBFGS. Returns nothing, unlike LBFGS."""

    def __init__(self, params, lr: float = 1.0) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            loss = closure().item()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad.clone() for p in params]
        lr = self.param_groups[0]["lr"]
        for _ in range(30):
            for p, g in zip(params, grads):
                p.sub_(lr * g)
            with torch.enable_grad():
                if closure().item() < loss:
                    return None
            for p, g in zip(params, grads):
                p.add_(lr * g)
            lr /= 2
        return None


def halve_every_two(step: int) -> float:
    """An lr_lambda for LambdaLR."""
    return 0.5 ** (step // 2)


class HalvingLR(torch.optim.lr_scheduler.LRScheduler):
    """A user scheduler: halves the rate every `every` steps."""

    def __init__(self, optimizer, every: int = 2, last_epoch: int = -1) -> None:
        self.every = every
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * 0.5 ** (self.last_epoch // self.every) for base in self.base_lrs]


def sequential_model(in_features: int, out_features: int, width: int = 8) -> nn.Module:
    """A user's own model made of layers the vectorized engine stacks."""
    return nn.Sequential(nn.Linear(in_features, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, out_features))


class DigitsCNN(nn.Module):
    """A user's CNN for 8×8 images given as 64 features: Conv2d → ReLU → MaxPool2d →
    [Dropout] → Flatten → Linear (trained stacked by optcmp.functional)."""

    def __init__(self, in_features: int = 64, out_features: int = 10, channels: int = 8, dropout: float = 0.0,
                 batchnorm: bool = False) -> None:
        super().__init__()
        side = int(round(in_features ** 0.5))
        # no bias before a BatchNorm (as usual): its gradient would be zero but for rounding
        # noise, which Adam scales up to full-size steps, so runs could not be compared
        layers: list[nn.Module] = [nn.Unflatten(1, (1, side, side)), nn.Conv2d(1, channels, 3, padding=1, bias=not batchnorm)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(channels))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Flatten(), nn.Linear(channels * (side // 2) ** 2, out_features)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyTransformer(nn.Module):
    """A Transformer-encoder classifier of token sequences: Embedding (+ learned positions)
    → TransformerEncoderLayer (attention, feed-forward, Dropout) → mean over tokens → Linear."""

    def __init__(self, vocab: int = 12, length: int = 6, out_features: int = 3, width: int = 16, heads: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.1)
        self.encoder = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=dropout, batch_first=True)
        self.head = nn.Linear(width, out_features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position).mean(1))


class SignGate(nn.Module):
    """Data-dependent control flow: flips its input when the batch's sum is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def gated_model(in_features: int, out_features: int) -> nn.Module:
    """A model vmap cannot take: its `gate` layer branches on a tensor's value."""
    return nn.Sequential(nn.Linear(in_features, 8), SignGate(), nn.Linear(8, out_features))


def token_data(seed: int, samples: int = 48, length: int = 6, vocab: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences (as integer-valued floats: optcmp gives models float inputs)
    labelled by their first token's residue mod 3."""
    x = torch.randint(0, vocab, (samples, length), generator=torch.Generator().manual_seed(seed))
    return x.float(), x[:, 0] % 3


class TokenTransformer(TinyTransformer):
    """TinyTransformer on float-coded tokens, as optcmp's data gives them."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens.long())


class Unreached(nn.Module):
    """A model with a layer its output never uses (`spare`: no gradient, so torch.optim
    leaves it as it is) and a frozen bias."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Unflatten(1, (1, in_features)), nn.Conv1d(1, 2, 3, padding=1), nn.Flatten())
        self.spare = nn.Linear(in_features, 4)
        self.head = nn.Linear(2 * in_features, out_features)
        self.head.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
