"""`optcmp.stacked_eval.PlainEval`: a stack's evaluation pass without vmap gives each member
the output its own nn.Module gives on its own data (float32 rounding apart), whatever
group of equal data it is in; models it does not cover are left to vmap."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from optcmp.models import cnn
from optcmp.stacked_eval import PlainEval, cross_entropy_losses, plain_layers

MODELS = {
    "built-in cnn": lambda: cnn((1, 8, 8), 10, [4, 6], "relu"),
    "no bias, dropout, tanh": lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.Tanh(), nn.Dropout(0.5), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, groups=2), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(6, 5)),
    "pool first, two linears": lambda: nn.Sequential(
        nn.MaxPool2d(2), nn.Conv2d(2, 3, 2), nn.GELU(), nn.Flatten(), nn.Linear(27, 7), nn.ReLU(), nn.Linear(7, 3)),
    "flatten first": lambda: nn.Sequential(nn.Flatten(), nn.Linear(128, 9), nn.SiLU(), nn.Linear(9, 4)),
    # the first conv's 2×2 max-pool taken with its product (odd sizes: the last row and column left out)
    "odd images, pooled with the product": lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.ReLU(), nn.MaxPool2d((2, 2)), nn.Flatten(),
        nn.Linear(36, 3)),
    "ceil-mode pool": lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(64, 3)),
}
SHAPES = {"built-in cnn": (1, 8, 8), "odd images, pooled with the product": (2, 7, 7),
          "ceil-mode pool": (2, 7, 7)}


def stacked(make, members: int):
    """`members` models built from their own seeds, and their parameters stacked `[M, …]`."""
    models = []
    for m in range(members):
        torch.manual_seed(m)
        models.append(make().eval())
    params = {n: torch.stack([dict(mod.named_parameters())[n].detach() for mod in models])
              for n, _ in models[0].named_parameters()}
    return models, params


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("groups", [[[0, 1, 2, 3, 4]], [[0, 2, 4], [1, 3]], [[0], [1], [2], [3], [4]]])
def test_each_member_gets_its_own_models_output(name, groups):
    models, params = stacked(MODELS[name], 5)
    layers = plain_layers(models[0])
    assert layers is not None
    shape = SHAPES.get(name, (2, 8, 8))
    gen = torch.Generator().manual_seed(7)
    inputs = [torch.randn(37, *shape, generator=gen) for _ in groups]
    kept = [x.clone() for x in inputs]
    evaluator = PlainEval(layers, params, groups)
    for _ in range(2):  # the second pass reads the kept im2col
        out = evaluator.evaluate("val", inputs)
        for g, x in zip(groups, inputs):
            for m in g:
                with torch.no_grad():
                    expected = models[m](x)
                torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(x, k) for x, k in zip(inputs, kept))  # the data is never written


def test_the_first_convs_pool_is_taken_with_its_product_only_where_it_is_a_plain_2x2_pool():
    from optcmp.stacked_eval import _pool_after_first_conv, relu_after_pool

    def at(make):
        return _pool_after_first_conv(plain_layers(make()))

    assert at(MODELS["built-in cnn"]) == 2 and at(MODELS["odd images, pooled with the product"]) == 4
    assert _pool_after_first_conv(relu_after_pool(plain_layers(MODELS["built-in cnn"]()))) == 1  # as PlainEval has it
    assert at(MODELS["ceil-mode pool"]) is None and at(MODELS["no bias, dropout, tanh"]) is None  # tanh between
    assert at(MODELS["pool first, two linears"]) is None


def test_im2col_is_kept_within_its_budget_and_the_rest_convolved_at_each_pass(monkeypatch):
    import optcmp.stacked_eval as stacked_eval

    models, params = stacked(MODELS["built-in cnn"], 4)
    inputs = [torch.randn(30, 1, 8, 8), torch.randn(30, 1, 8, 8)]
    monkeypatch.setattr(stacked_eval, "COLS_VALUES", 30 * 64 * 10 + 30)  # one group's split
    evaluator = PlainEval(plain_layers(models[0]), params, [[0, 1], [2, 3]])
    out = evaluator.evaluate("train", inputs)
    assert [c is not None for c in evaluator._cols.values()] == [True, False]
    for m in range(4):
        with torch.no_grad():
            expected = models[m](inputs[m // 2])
        torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=1e-6)


def test_samples_go_in_pieces_and_weights_are_read_at_each_pass(monkeypatch):
    import optcmp.stacked_eval as stacked_eval

    monkeypatch.setattr(stacked_eval, "EVAL_VALUES", 500)  # a few samples a piece
    models, params = stacked(MODELS["built-in cnn"], 3)
    x = torch.randn(50, 1, 8, 8)
    evaluator = PlainEval(plain_layers(models[0]), params, [[0, 1, 2]])
    evaluator.evaluate("train", [x])
    params["0.weight"].mul_(-2)  # the stack's weights change in place, as the optimizer updates them
    out = evaluator.evaluate("train", [x])
    for m in range(3):
        with torch.no_grad():
            expected = functional_call(models[m], {n: p[m] for n, p in params.items()}, (x,))
        torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3)),  # running statistics
    nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten(), nn.Linear(128, 3)),
    nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()),  # no Linear head
    nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Unflatten(1, (3, 1))),
    nn.Linear(4, 2),
])
def test_other_models_are_left_to_vmap(model):
    assert plain_layers(model) is None


def test_cross_entropy_losses_are_each_members_cross_entropy():
    gen = torch.Generator().manual_seed(3)
    out, y = torch.randn(4, 300, 10, generator=gen) * 5, torch.randint(0, 10, (4, 300), generator=gen)
    expected = torch.stack([F.cross_entropy(o, t) for o, t in zip(out, y)])
    torch.testing.assert_close(cross_entropy_losses(out, y), expected, rtol=1e-6, atol=0)


TRAINED = {  # PlainStack: Sequentials that start with a convolution and draw nothing
    "built-in cnn": lambda: cnn((1, 8, 8), 10, [4, 6], "relu"),
    "relu, identity, pool; tanh; p = 0 dropout": lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Identity(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, groups=2),
        nn.Tanh(), nn.ReLU(), nn.Dropout(0.0), nn.Flatten(), nn.Linear(24, 5), nn.ReLU(), nn.Linear(5, 3)),
    "odd images, padded ceil-mode pool": lambda: nn.Sequential(
        nn.Conv2d(2, 3, 2, bias=False), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.Flatten(),
        nn.Linear(75, 4)),
}


@pytest.mark.parametrize("name", TRAINED)
@pytest.mark.parametrize("shared", [False, True])
def test_a_plain_stack_gives_each_member_its_own_outputs_and_gradients(name, shared):
    from optcmp.stacked_eval import PlainStack

    models, params = stacked(TRAINED[name], 4)
    layers = plain_layers(models[0])
    assert PlainStack.takes(layers)
    shape = {"built-in cnn": (1, 8, 8), "odd images, padded ceil-mode pool": (2, 9, 9)}.get(name, (2, 8, 8))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(*(() if shared else (4,)), 6, *shape, generator=gen)
    # ties and negative windows: max-pool and ReLU in either order must still agree
    x[..., :2, :2] = 0.5
    stack = PlainStack(layers, params)
    out, saved = stack.forward(x, keep=True, train=True)
    grad_out = torch.randn(out.shape, generator=gen)
    grads = stack.backward(saved, grad_out)
    for m, model in enumerate(models):
        model.train()
        out_m = model(x if shared else x[m])
        expected = torch.autograd.grad(out_m, list(model.parameters()), grad_out[m])
        torch.testing.assert_close(out[m], out_m, rtol=1e-5, atol=1e-6)
        for (n, _), g in zip(model.named_parameters(), expected):
            torch.testing.assert_close(grads[n][m], g, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(stack.forward(x)[0], out.detach())


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(0.1), nn.Flatten(), nn.Linear(72, 3)),  # it draws in training
    nn.Sequential(nn.Flatten(), nn.Linear(64, 3)),  # not images first
])
def test_models_that_draw_or_take_no_images_train_under_vmap(model):
    from optcmp.stacked_eval import PlainStack

    assert not PlainStack.takes(plain_layers(model))


def test_relu_moves_after_the_pool_it_is_followed_by():
    from optcmp.stacked_eval import relu_after_pool

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Dropout(0.2), nn.MaxPool2d(2), nn.ReLU(), nn.Tanh(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 2))
    assert [n for n, _ in relu_after_pool(list(model.named_children()))] == \
        ["0", "2", "3", "1", "4", "5", "6", "7", "8"]
