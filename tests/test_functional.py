"""The torch.func stacked model against per-member training with nn.Module and torch.optim.

A minimal driver trains members stacked the way the vectorized engine does (one flat
[M, P] parameter buffer with per-name views, FunctionalStack, member_losses, the batched
optimizer) and compares each member with the sequential engine's recipe: its seed right
before the model is built, the same module, torch.optim, its own shuffle stream. Dropout
masks are drawn exactly as the sequential run draws them, so the bound is the same
rounding-level 1e-4 (relative, per parameter tensor, after 30 steps) with or without
Dropout.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from optcmp.batched_model import member_losses
from optcmp.batched_optim import BatchedOptimizer, Segment
from optcmp.data import epoch_batches, shuffle_generator
from optcmp.functional import FunctionalStack, functional_reason, member_generator
from tests.userlib import DigitsCNN, TinyTransformer, gated_model

TOLERANCE = 1e-4  # relative difference of each parameter tensor after STEPS steps
STEPS = 30
BATCH = 16

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
ADAM = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
SGD = {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}


def digits(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


def tokens(n: int = 48, length: int = 6, vocab: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences labelled by their first token's residue mod 3."""
    x = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(7))
    return x, x[:, 0] % 3


def build_members(make, seeds):
    """Each member as the sequential engine builds it (seed right before the model), and its
    Dropout generator, captured right after."""
    models, generators = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(make())
        generators.append(member_generator())
    return models, generators


def stacked_parameters(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Each parameter of the members stacked, `[M, *shape]`."""
    return {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n, _ in models[0].named_parameters()}


class StackedRun:
    """The members' weights in one flat [M, P] buffer, FunctionalStack's per-name views into
    it, and a batched optimizer updating it in place: the vectorized engine in miniature."""

    def __init__(self, make, seeds, family, options, input_dims):
        models, generators = build_members(make, seeds)
        self.template = models[0]
        shapes = {n: p.shape for n, p in self.template.named_parameters()}
        offsets, at = {}, 0
        for n, shape in shapes.items():
            offsets[n], at = at, at + shape.numel()
        self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
        M = len(seeds)
        self.views = {n: self.flat[:, offsets[n]:offsets[n] + s.numel()].view(M, *s) for n, s in shapes.items()}
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models])
                        for n, _ in self.template.named_buffers()}
        self.stack = FunctionalStack(self.template, self.views, self.buffers, generators, input_dims=input_dims)
        self.opt = BatchedOptimizer(family, self.flat, [Segment(0, at, options, [False] * M)])
        self.grads = torch.empty_like(self.flat)
        self.masks: list[list[torch.Tensor]] = []  # each step's masks

    def step(self, xb, yb):
        out, saved = self.stack.forward(xb, keep=True, train=True)
        self.masks.append(saved[2])
        losses, grad_out = member_losses(F.cross_entropy, out, yb, "classification", grad=True)
        grads = self.stack.backward(saved, grad_out)
        torch.cat([grads[n].reshape(len(self.flat), -1) for n in self.views], 1, out=self.grads)
        self.opt.step(self.grads)
        return losses


def train_stacked(make, seeds, family, options, x, y, steps=STEPS):
    """Each member its own batches (its own shuffle stream), as the engines do."""
    run = StackedRun(make, seeds, family, options, x.dim())
    streams = [shuffle_generator(s) for s in seeds]
    step = 0
    while step < steps:
        epochs = [list(epoch_batches(len(x), BATCH, g)) for g in streams]
        for k in range(len(epochs[0])):
            if step == steps:
                break
            idx = torch.stack([e[k] for e in epochs])
            run.step(x[idx], y[idx])
            step += 1
    return run


def train_sequential(make, seed, family, options, x, y, steps=STEPS) -> nn.Module:
    """The sequential engine's recipe for one run (optcmp.trainer.train, minus logging)."""
    torch.manual_seed(seed)
    model = make()
    opt = OPTIMIZERS[family](model.parameters(), **options)
    stream = shuffle_generator(seed)
    model.train()
    step = 0
    while step < steps:
        for idx in epoch_batches(len(x), BATCH, stream):
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
    return model


def worst_difference(run: StackedRun, make, seeds, family, options, x, y, skip: dict | None = None) -> float:
    """The largest relative difference of any member's parameter or buffer tensor (without
    the `skip[name]` part of a tensor)."""
    worst = 0.0
    for m, seed in enumerate(seeds):
        model = train_sequential(make, seed, family, options[m], x, y)
        stacked = {**run.views, **run.buffers}
        for name, expected in [*model.named_parameters(), *model.named_buffers()]:
            a, b = stacked[name][m].double(), expected.detach().double()
            if skip and name in skip:
                keep = torch.ones_like(b, dtype=torch.bool)
                keep[skip[name]] = False
                a, b = a[keep], b[keep]
            worst = max(worst, float((a - b).norm() / b.norm().clamp_min(1e-30)))
    return worst


SEEDS = [0, 1, 2]
ADAM_MEMBERS = [{**ADAM, "lr": lr} for lr in (1e-3, 3e-3, 1e-2)]
SGD_MEMBERS = [{**SGD, "lr": lr} for lr in (0.01, 0.03, 0.1)]


@pytest.mark.parametrize("family, options", [("adam", ADAM_MEMBERS), ("sgd", SGD_MEMBERS)])
@pytest.mark.parametrize("make", [
    DigitsCNN,
    lambda: DigitsCNN(dropout=0.3, batchnorm=True),
], ids=["cnn", "cnn-dropout-batchnorm"])
def test_cnn_trains_like_sequential(make, family, options):
    x, y = digits()
    run = train_stacked(make, SEEDS, family, options, x, y)
    assert worst_difference(run, make, SEEDS, family, options, x, y) <= TOLERANCE
    # and it learned something: the members differ from their initial weights
    models, _ = build_members(make, SEEDS)
    assert all(not torch.equal(run.views["net.1.weight"][m], models[m].net[1].weight) for m in range(3))


# Attention's key bias shifts every score of a query by the same amount, which softmax
# ignores: its gradient is zero but for rounding noise (1e-9), and Adam normalizes that
# noise into full-size steps, so under Adam it walks at random in either engine (for SGD
# it stays put). Compared under SGD; left out under Adam.
KEY_BIAS = {"encoder.self_attn.in_proj_bias": slice(16, 32)}


@pytest.mark.parametrize("family, options, skip", [("adam", ADAM_MEMBERS, KEY_BIAS), ("sgd", SGD_MEMBERS, None)])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_transformer_trains_like_sequential(dropout, family, options, skip):
    make = lambda: TinyTransformer(dropout=dropout)  # noqa: E731
    x, y = tokens()
    run = train_stacked(make, SEEDS, family, options, x, y)
    assert worst_difference(run, make, SEEDS, family, options, x, y, skip) <= TOLERANCE
    if dropout:
        # attention weights, after attention, in the feed-forward block, after it
        assert [tuple(m.shape) for m in run.masks[0]] == [(3, BATCH, 2, 6, 6), (3, BATCH, 6, 16), (3, BATCH, 6, 32),
                                                          (3, BATCH, 6, 16)]


def test_dropout_members_draw_different_masks():
    make = lambda: DigitsCNN(dropout=0.5)  # noqa: E731
    x, y = digits()
    run = train_stacked(make, [0, 1, 2], "adam", ADAM_MEMBERS, x, y, steps=2)
    first, second = run.masks[0][0], run.masks[1][0]
    assert first.shape == (3, BATCH, 8, 4, 4)
    assert set(first.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 − p)
    for a in range(3):
        assert not torch.equal(first[a], second[a])  # a new mask every step
        for b in range(a + 1, 3):
            assert not torch.equal(first[a], first[b])


def test_masks_are_reproducible_from_the_seed_whatever_the_group():
    make = lambda: TinyTransformer(dropout=0.2)  # noqa: E731
    x, y = tokens()
    adam = [{**ADAM, "lr": 1e-3}] * 3
    alone = train_stacked(make, [5, 6], "adam", adam[:2], x, y, steps=3)
    again = train_stacked(make, [5, 6], "adam", adam[:2], x, y, steps=3)
    elsewhere = train_stacked(make, [7, 8, 5], "adam", adam, x, y, steps=3)
    for step in range(3):
        for a, b, c in zip(alone.masks[step], again.masks[step], elsewhere.masks[step]):
            assert torch.equal(a, b)
            assert torch.equal(a[0], c[2])  # seed 5 is member 0 there, member 2 here
            assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("layer, shape", [
    (nn.Dropout(0.4), (5, 7)),
    (nn.Dropout1d(0.4), (5, 3, 7)),
    (nn.Dropout2d(0.4), (5, 3, 4, 4)),
    (nn.Dropout3d(0.4), (5, 3, 2, 2, 2)),
])
def test_masks_equal_the_sequential_engines(layer, shape):
    """The member's dropout masks are the sequential run's, at its first and second step."""
    make = lambda: nn.Sequential(nn.Linear(shape[-1], shape[-1]), layer)  # noqa: E731
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    seeds = [3, 4]
    models, generators = build_members(make, seeds)
    params = stacked_parameters(models)
    stack = FunctionalStack(models[0], params, None, generators, input_dims=len(shape))
    for _ in range(2):  # the second pass draws what the sequential run's second step draws
        out, _ = stack.forward(x, train=True)
    for m, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model = make().train()
        model(x)
        expected = model(x)
        assert torch.equal(out[m] == 0, expected == 0)  # the same mask
        torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=0)  # (the stacked Linear rounds its own way)


class Attending(nn.Module):
    """nn.MultiheadAttention called the ways users call it."""

    def __init__(self, need_weights: bool, masks: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True)
        self.need_weights, self.masks = need_weights, masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self.masks:
            kwargs["attn_mask"] = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
            kwargs["key_padding_mask"] = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
            kwargs["key_padding_mask"][:, -1] = True
        out, _ = self.attn(x, x, x, need_weights=self.need_weights, **kwargs)
        return out


@pytest.mark.parametrize("make", [
    lambda: Attending(need_weights=True, masks=False),
    lambda: Attending(need_weights=False, masks=True),
    lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.3, batch_first=True, norm_first=True, activation="gelu"),
], ids=["mha-weights", "mha-masked", "encoder-norm-first"])
def test_attention_forward_and_backward_equal_nn_module(make):
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))
    seeds = [0, 1]
    models, generators = build_members(make, seeds)
    params = stacked_parameters(models)
    stack = FunctionalStack(models[0], params, None, generators, input_dims=3)
    out, saved = stack.forward(x, keep=True, train=True)
    grads = stack.backward(saved, torch.ones_like(out))
    with torch.no_grad():
        evaluated, _ = stack.forward(x)
    for m, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model = make().train()
        expected = model(x)
        expected.sum().backward()
        torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=1e-6)
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n][m], p.grad, rtol=1e-4, atol=1e-6)
        with torch.no_grad():  # evaluation: the module's own fused fast path
            torch.testing.assert_close(evaluated[m], model.eval()(x), rtol=1e-5, atol=1e-6)


def test_shared_and_per_member_inputs_give_the_same_result():
    x, _ = digits(8)
    models, generators = build_members(DigitsCNN, [0, 1])
    params = stacked_parameters(models)
    stack = FunctionalStack(models[0], params, None, generators, input_dims=2)
    shared, saved = stack.forward(x, keep=True)
    own, saved_own = stack.forward(x.expand(2, *x.shape), keep=True)
    assert shared.shape == (2, 8, 10)
    torch.testing.assert_close(shared, own)
    for (n, g), g_own in zip(stack.backward(saved, torch.ones_like(shared)).items(),
                             stack.backward(saved_own, torch.ones_like(own)).values()):
        torch.testing.assert_close(g, g_own)
    torch.testing.assert_close(shared[1], models[1](x))


def test_functional_reason_accepts_the_models_it_trains():
    assert functional_reason(DigitsCNN(dropout=0.2, batchnorm=True), digits(4)[0]) is None
    assert functional_reason(TinyTransformer(), tokens(4)[0]) is None


def test_functional_reason_names_the_layer_it_cannot_take():
    assert functional_reason(gated_model(3, 2), torch.randn(4, 3)) == (
        "layer 1 (SignGate) does not run under torch.func.vmap: It looks like you're attempting to use a "
        "Tensor in some data-dependent control flow.")
    assert functional_reason(nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4, batch_first=True)), torch.randn(4, 2, 3)) == (
        "layer 1 (LSTM) does not run under torch.func.vmap: Batching rule not implemented for aten::lstm.input.")
    # BatchNorm with a cumulative average reads its batch count as a Python number
    assert functional_reason(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=None)), torch.randn(4, 3)) == (
        "layer 1 (BatchNorm1d) does not run under torch.func.vmap: It looks like you're calling .item() on a Tensor.")
    assert functional_reason(nn.Sequential(nn.Linear(3, 4), nn.AlphaDropout(0.1)), torch.randn(4, 3)) == (
        "layer 1 (AlphaDropout) does not run under torch.func.vmap: called random operation while in randomness "
        "error mode.")
    assert functional_reason(nn.Sequential(nn.LazyLinear(2)), torch.randn(4, 3)) == (
        "layer 0 (LazyLinear) has parameters not yet initialized (a lazy layer)")


def test_functional_reason_leaves_the_model_and_the_random_state_as_they_were():
    torch.manual_seed(0)
    model = DigitsCNN(dropout=0.5, batchnorm=True).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    assert functional_reason(model, digits(4)[0]) is None
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_params_must_be_the_templates():
    model = DigitsCNN()
    params = {n: p.detach()[None] for n, p in model.named_parameters() if n != "net.5.bias"}
    with pytest.raises(ValueError, match="params must hold exactly the template's parameters"):
        FunctionalStack(model, params)


def test_a_model_that_draws_needs_generators():
    model = DigitsCNN(dropout=0.5)
    params = {n: p.detach()[None] for n, p in model.named_parameters()}
    stack = FunctionalStack(model, params)
    with pytest.raises(ValueError, match="pass one generator per member"):
        stack.forward(digits(4)[0], train=True)
    out, _ = stack.forward(digits(4)[0])  # evaluation draws nothing
    np.testing.assert_allclose(out[0].detach().numpy(), model.eval()(digits(4)[0]).detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Conv2d(2, 6, 3, stride=2, padding=(1, 2), dilation=(1, 2)), nn.ReLU(),
                          nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.Flatten()),
    lambda: nn.Sequential(nn.Conv2d(2, 4, 3, groups=2, bias=False, padding_mode="reflect", padding=1),
                          nn.MaxPool2d((2, 1), dilation=(1, 2)), nn.Conv2d(4, 3, 1), nn.Flatten()),
    lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding="same"), nn.MaxPool2d(2, return_indices=False),
                          nn.Flatten()),
], ids=["strided-dilated-ceil", "grouped-reflect-1x1", "padding-same"])
@pytest.mark.parametrize("shared", [False, True])
def test_convolutions_and_pooling_equal_nn_module(make, shared):
    """The channels-last batching rules: any stride, padding, dilation, groups, ceil mode;
    each member its own batch or one batch for all."""
    x = torch.randn(2, 5, 2, 7, 9, generator=torch.Generator().manual_seed(2))
    models, generators = build_members(make, [0, 1])
    params = stacked_parameters(models)
    stack = FunctionalStack(models[0], params, None, generators, input_dims=4)
    out, saved = stack.forward(x[0] if shared else x, keep=True, train=True)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = stack.backward(saved, grad_out)
    for m in range(2):
        model = models[m]
        expected = model(x[0] if shared else x[m])
        (expected * grad_out[m]).sum().backward()
        torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=1e-6)
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n][m], p.grad, rtol=1e-5, atol=1e-5)
