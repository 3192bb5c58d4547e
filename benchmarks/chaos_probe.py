"""How much does a 1-ulp perturbation of the initial weights move each metric, against the
spread between seeds? Plain PyTorch, no optcmp engine: the measurement behind
`optcmp.stats.CHAOS_THRESHOLD` and the default ranking metric.

For each seed s: `torch.manual_seed(s)`, build the same nn.Sequential as `optcmp.models.mlp`
(or nn.Linear), train; then the same with every initial parameter moved to
`torch.nextafter(p, +inf)` right after the model is built. Per metric, the ratio
|metric(probe s) - metric(s)| / std over seeds of metric, for every seed as the probe.

    python benchmarks/chaos_probe.py [--seeds 10] [--epochs 100] [--quick]
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

SHUFFLE_STREAM = 0x5EED  # optcmp.data's offset of the shuffle stream


def reference_mlp() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(2, 20), nn.LayerNorm(20)]
    for _ in range(3):
        layers += [nn.Linear(20, 20), nn.LayerNorm(20)]
    return nn.Sequential(*layers, nn.Linear(20, 1))


def nudge(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))


TAILS = (0.1, 0.25, 0.5)


def summarize(curve: list[float]) -> dict[str, float]:
    """final, tail means (points in the last 10/25/50 % of training, final included), best so far."""
    out = {"final": curve[-1]}
    for tail in TAILS:
        out[f"tail{tail:g}"] = statistics.fmean(curve[-max(1, round(len(curve) * tail)):])
    out["best"] = min(curve)
    return out


def train_mlp(seed: int, probe: bool, optimizer: str, wd: float, steps: int, every: int) -> list[float]:
    x1 = torch.arange(-10, 10).float()
    x2 = torch.arange(0, 20).float()
    x, y = torch.stack([x1, x2], 1), 2 * x1 - x2**2 + 1
    torch.manual_seed(seed)
    model = reference_mlp()
    if probe:
        nudge(model)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    opt = cls(model.parameters(), lr=0.01, weight_decay=wd)
    curve = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        opt.step()
        if step % every == 0:
            with torch.no_grad():
                curve.append(nn.functional.mse_loss(model(x).squeeze(-1), y).item())
    return curve


def train_linear(seed: int, probe: bool, epochs: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1000, 10, generator=gen)
    y = torch.randint(0, 2, (1000,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Linear(10, 2)
    if probe:
        nudge(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    shuffle = torch.Generator().manual_seed(seed + SHUFFLE_STREAM)
    curve = []
    for _ in range(epochs):
        for idx in torch.randperm(1000, generator=shuffle).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            curve.append(nn.functional.cross_entropy(model(x), y).item())
    return curve


def report(name: str, train, seeds: list[int]) -> None:
    base = [summarize(train(s, False)) for s in seeds]
    probe = [summarize(train(s, True)) for s in seeds]
    print(f"\n{name} ({len(seeds)} seeds)")
    for metric in base[0]:
        values = [b[metric] for b in base]
        sd = statistics.stdev(values)
        ratios = [abs(p[metric] - b[metric]) / sd for p, b in zip(probe, base)]
        sd3 = statistics.stdev(values[:3])
        print(f"  {metric:9s} mean {statistics.fmean(values):.6g} sd {sd:.4g} | ratio seed0 {ratios[0]:.3g} "
              f"(3-seed sd: {abs(probe[0][metric] - base[0][metric]) / sd3:.3g}) median {statistics.median(ratios):.3g} "
              f"max {max(ratios):.3g} | " + " ".join(f"{r:.2g}" for r in ratios))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="MLP evaluation every N steps (log.every)")
    parser.add_argument("--quick", action="store_true", help="3 seeds, 100 steps, 5 epochs: checks that it runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(3 if args.quick else args.seeds))
    steps, epochs = (100, 5) if args.quick else (1000, args.epochs)
    for optimizer, wd in (("adam", 0.0), ("adam", 0.01), ("adam", 0.1), ("adamw", 0.01), ("adamw", 0.1)):
        report(f"reference MLP, {optimizer} lr 0.01 wd {wd}, {steps} steps, eval every {args.every}",
               lambda s, p: train_mlp(s, p, optimizer, wd, steps, args.every), seeds)
    report(f"linear classifier, AdamW lr 1e-3 wd 0.01, batch 32, {epochs} epochs",
           lambda s, p: train_linear(s, p, epochs), seeds)


if __name__ == "__main__":
    main()
