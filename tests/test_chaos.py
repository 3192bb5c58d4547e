"""Acceptance of chaos detection: the reference LayerNorm MLP (Adam lr 0.01, 1000 steps) is
flagged chaotic for its final train_loss; the linear classifier (AdamW lr 1e-3) is not.

The runs are plain PyTorch, seeded as optcmp's seeding contract says, and the probe moves every
initial parameter one ulp up (`torch.nextafter(p, +inf)`) right after the model is built, as
the engine's role "ulp" run does; the rows then go through `aggregate` like runs.csv."""
from __future__ import annotations

import torch
from torch import nn

from optcmp.models import mlp
from optcmp.summary import aggregate

SHUFFLE_STREAM = 0x5EED  # optcmp.data's offset of the shuffle stream


def nudge(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))


def reference_mlp_loss(seed: int, probe: bool) -> float:
    x1, x2 = torch.arange(-10, 10).float(), torch.arange(0, 20).float()
    x, y = torch.stack([x1, x2], 1), 2 * x1 - x2**2 + 1
    torch.manual_seed(seed)
    model = mlp(2, 1, [20, 20, 20, 20], "layernorm", "none")
    if probe:
        nudge(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)
    for _ in range(1000):
        opt.zero_grad()
        nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
        opt.step()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x).squeeze(-1), y).item()


def linear_classifier_loss(seed: int, probe: bool, epochs: int = 10) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1000, 10, generator=gen)
    y = torch.randint(0, 2, (1000,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Linear(10, 2)
    if probe:
        nudge(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    shuffle = torch.Generator().manual_seed(seed + SHUFFLE_STREAM)
    for _ in range(epochs):
        for idx in torch.randperm(1000, generator=shuffle).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


def probed_rows(config: str, train, seeds=(0, 1, 2)) -> list[dict]:
    base = {"config_id": config, "status": "ok", "decay": "decoupled", "optimizer.name": config}
    out = [{**base, "run_id": f"{config}-s{s}", "seed": s, "role": "run", "train_loss": train(s, False)} for s in seeds]
    out.append({**base, "run_id": f"{config}-s{seeds[0]}-ulp", "seed": seeds[0], "role": "ulp",
                "train_loss": train(seeds[0], True)})
    return out


def test_the_reference_mlp_is_chaotic_and_the_linear_classifier_is_not():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = probed_rows("reference", reference_mlp_loss) + probed_rows("linear", linear_classifier_loss)
    finally:
        torch.set_num_threads(threads)
    summary = aggregate(runs, "train_loss")
    assert summary.chaos["reference"]["chaotic"] == ["train_loss"]
    assert summary.chaos["reference"]["sensitivity"]["train_loss"] > 0.05  # measured 0.089 on 3 seeds
    assert summary.chaos["linear"]["chaotic"] == []
    assert summary.chaos["linear"]["sensitivity"]["train_loss"] < 1e-3  # measured <= 4.3e-5
    assert summary.notes[0].startswith("train_loss is chaotic in reference: a 1-ulp perturbation of seed 0 moved it by ")
