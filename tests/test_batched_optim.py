"""The batched-optimizer catalogue against the real optimizers, member by member.

The equality table runs every family's members (each with its own options, in two
parameter groups with different options) on a fixed smooth problem — a linear regression
with a small quartic term, gradients by autograd per member, no data set — for 100 steps,
next to the real optimizer (torch.optim, pytorch_optimizer.Lion) on the same problem, and
asserts the relative difference of every member's every parameter tensor is at most 1e-5,
in float32 and float64, with a constant learning rate and with a per-member schedule
through `lr_at`. The settings keep each optimizer away from chaos: the runs start far from
the minimum and take steps small enough that no sign (Lion) or branch flips on a rounding.

Adding an optimizer: one catalogue entry and one row of TABLE.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from pytorch_optimizer import Lion

from optcmp.batched_optim import (CATALOGUE, PER_MEMBER, STRUCTURAL, TABLE_STEPS, BatchedOptimizer, Segment,
                                  family_of, invalid_value, unsupported_option)

TOLERANCE = 1e-5  # the acceptance bound: relative difference after 100 steps
FLOAT64_TOLERANCE = 1e-10  # float64 rounding is 1e-16; the runs amplify it by far less than 1e6
STEPS = 100
torch_optim = torch.optim

# family → (the real optimizer class, members: each one's options (a member may name its
# own class: Adam and AdamW share a family), the second parameter group's own options).
# Members differ in their per-member options; one has weight decay 0, others not.
TABLE = {
    "sgd": (torch_optim.SGD, [
        {"lr": 0.02},
        {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"lr": 0.01, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01},
        {"lr": 0.005, "momentum": 0.8},
    ], lambda o: {"lr": o["lr"] / 2, "weight_decay": 0.0}),
    "adam": (torch_optim.Adam, [
        {"lr": 0.01},
        {"lr": 0.005, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
        {"lr": 0.01, "weight_decay": 0.05, "decoupled_weight_decay": True},
        {"class": torch_optim.AdamW, "lr": 0.003, "weight_decay": 0.3},
        {"class": torch_optim.AdamW, "lr": 0.01, "betas": (0.95, 0.9), "weight_decay": 0.0},
    ], lambda o: {"lr": o["lr"] * 2, "weight_decay": 0.0, "amsgrad": True}),
    "adam-amsgrad": (torch_optim.Adam, [
        {"lr": 0.01, "amsgrad": True},
        {"class": torch_optim.AdamW, "lr": 0.005, "amsgrad": True, "weight_decay": 0.2},
        {"lr": 0.005, "amsgrad": True, "weight_decay": 0.1, "betas": (0.5, 0.9)},
    ], lambda o: {"weight_decay": 0.0, "amsgrad": False}),
    "rmsprop": (torch_optim.RMSprop, [
        {"lr": 0.001},
        {"lr": 0.002, "alpha": 0.9, "momentum": 0.5, "weight_decay": 0.1},
        {"lr": 0.001, "eps": 1e-4, "momentum": 0.9},
        {"lr": 0.0005, "alpha": 0.5, "weight_decay": 0.01},
    ], lambda o: {"lr": o["lr"] / 2, "centered": True}),
    "rmsprop-centered": (torch_optim.RMSprop, [
        {"lr": 0.001, "centered": True},
        {"lr": 0.002, "centered": True, "momentum": 0.5, "weight_decay": 0.1},
        {"lr": 0.001, "centered": True, "alpha": 0.9},
    ], lambda o: {"centered": False, "weight_decay": 0.0}),
    "adagrad": (torch_optim.Adagrad, [
        {"lr": 0.05},
        {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1},
        {"lr": 0.05, "initial_accumulator_value": 0.5, "eps": 1e-6},
        {"lr": 0.02, "lr_decay": 0.1, "initial_accumulator_value": 0.1, "weight_decay": 0.01},
    ], lambda o: {"lr": o["lr"] / 2, "weight_decay": 0.0}),
    "adamax": (torch_optim.Adamax, [
        {"lr": 0.01},
        {"lr": 0.005, "betas": (0.8, 0.99), "weight_decay": 0.1},
        {"lr": 0.01, "eps": 1e-4, "weight_decay": 0.01},
    ], lambda o: {"lr": o["lr"] / 2, "weight_decay": 0.0}),
    "nadam": (torch_optim.NAdam, [
        {"lr": 0.01},
        {"lr": 0.005, "betas": (0.8, 0.99), "momentum_decay": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "weight_decay": 0.05, "decoupled_weight_decay": True},
        {"lr": 0.003, "momentum_decay": 0.0, "eps": 1e-6},
    ], lambda o: {"lr": o["lr"] / 2, "weight_decay": 0.0}),
    "radam": (torch_optim.RAdam, [
        {"lr": 0.01},  # ρ_t > 5 from step 6
        {"lr": 0.005, "betas": (0.8, 0.9), "weight_decay": 0.1},  # from step 6, too
        {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.05, "decoupled_weight_decay": True},
        {"lr": 0.01, "betas": (0.9, 0.6)},  # ρ∞ = 4: never rectified
    ], lambda o: {"lr": o["lr"] / 2, "weight_decay": 0.0}),
    "lion": (Lion, [
        {"lr": 1e-3},
        {"lr": 5e-4, "betas": (0.8, 0.9), "weight_decay": 0.1},
        {"lr": 1e-3, "weight_decay": 0.5, "fixed_decay": True},
        {"lr": 1e-3, "weight_decay": 0.1, "weight_decouple": False},
    ], lambda o: {"lr": o["lr"] / 2, "weight_decay": 0.0}),
}
FAMILY = {"adam-amsgrad": "adam", "rmsprop-centered": "rmsprop"}

X = torch.linspace(-1.0, 1.0, 48, dtype=torch.float64).reshape(16, 3).sin() * 2 + 0.5  # fixed inputs
Y = torch.linspace(0.0, 3.0, 32, dtype=torch.float64).reshape(16, 2).cos()  # fixed targets
SHAPES = {"w": (3, 2), "b": (2,)}
P = 8


def loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the linear model plus a small quartic term: smooth, with a
    gradient that is not linear in the weights."""
    x, y = X.to(w.dtype), Y.to(w.dtype)
    return ((x @ w + b - y) ** 2).mean() + 0.01 * (w**4).sum()


def start(member: int, dtype: torch.dtype) -> torch.Tensor:
    """Member's initial parameters (w, b flattened), far from the minimum."""
    g = torch.Generator().manual_seed(1000 + member)
    return (torch.randn(P, generator=g, dtype=torch.float64) * 2 + 3).to(dtype)


def decay(step: int) -> float:
    """The schedule's factor at a (1-based) step: a decaying, not monotone, learning rate."""
    return 1.0 / (1.0 + 0.03 * step) * (1.25 if step % 7 == 0 else 1.0)


def split(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return flat[:6].view(3, 2), flat[6:]


def real_run(cls, options: list[dict], flat: torch.Tensor, steps: int, scheduled: bool) -> list[dict[str, torch.Tensor]]:
    """The real optimizer on one member, built as optcmp builds it: the member's options as
    keyword arguments, and two parameter groups (w, b), the second with its own options.
    Returns, per parameter tensor, its value (`param`) and its optimizer state tensors."""
    w, b = (t.clone().requires_grad_() for t in split(flat))
    opt = cls([{"params": [w]}, {"params": [b], **options[1]}], **options[0])
    for step in range(1, steps + 1):
        if scheduled:
            for group, o in zip(opt.param_groups, options):
                group["lr"] = o["lr"] * decay(step)
        opt.zero_grad()
        loss(w, b).backward()
        opt.step()
    return [{"param": p.detach().reshape(-1),
             **{n: s.reshape(-1) for n, s in opt.state[p].items() if torch.is_tensor(s) and s.dim() > 0}}
            for p in (w, b)]


def batched_run(family: str, members: list[list[dict]], decoupled: list[bool], dtype, steps: int,
                scheduled: bool, first: float = 1.0) -> BatchedOptimizer:
    """The catalogue entry on all members at once, each gradient by autograd."""
    params = torch.stack([start(m, dtype) * first for m in range(len(members))])
    segments = [Segment(0, 6, [o[0] for o in members], decoupled), Segment(6, P, [o[1] for o in members], decoupled)]
    base = np.array([[o[0]["lr"], o[1]["lr"]] for o in members])  # [M, segments]
    lr_at = (lambda s: np.array([decay(int(t)) for t in s])[:, None, None] * base) if scheduled else None
    opt = BatchedOptimizer(family, params, segments, lr_at=lr_at)
    for _ in range(steps):
        grads = []
        for row in params:
            w, b = (t.clone().requires_grad_() for t in split(row))
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(w, b), (w, b))]))
        opt.step(torch.stack(grads))
    return opt


def worst_relative_difference(case: str, dtype: torch.dtype, scheduled: bool, steps: int = STEPS,
                              first: float = 1.0, count: int | None = None) -> float:
    """The largest ‖ours − theirs‖ / ‖theirs‖ over the members' parameter tensors and their
    optimizer state tensors (ours are named as torch names them). `first` scales the
    initial parameters; `count` takes the first members only."""
    cls, members, second = TABLE[case]
    members = members[:count]
    family = FAMILY.get(case, case)
    classes = [m.get("class", cls) for m in members]
    options = [[{k: v for k, v in m.items() if k != "class"}] for m in members]
    for o in options:
        o.append({**o[0], **second(o[0])})
    opt = batched_run(family, options, [c is torch_optim.AdamW for c in classes], dtype, steps, scheduled, first)
    ours = {"param": opt.params, **opt.state}
    worst = 0.0
    for m, (c, o) in enumerate(zip(classes, options)):
        for cols, theirs in zip((slice(0, 6), slice(6, P)), real_run(c, o, start(m, dtype) * first, steps, scheduled)):
            assert torch.isfinite(theirs["param"]).all()
            for name, b in theirs.items():
                a = ours[name][m, cols]
                worst = max(worst, (torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-30)).item())
    return worst


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request):
    """The training dtype, as torch's default too (NAdam's mu_product follows it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(request.param)
    yield request.param
    torch.set_default_dtype(old)


def test_table_covers_the_catalogue():
    assert {FAMILY.get(case, case) for case in TABLE} == set(CATALOGUE)


@pytest.mark.parametrize("scheduled", [False, True], ids=["constant", "lr_at"])
@pytest.mark.parametrize("case", list(TABLE))
def test_every_member_matches_the_real_optimizer(case, dtype, scheduled):
    worst = worst_relative_difference(case, dtype, scheduled)
    bound = TOLERANCE if dtype == torch.float32 else FLOAT64_TOLERANCE
    assert worst <= bound, f"{case}: worst relative difference {worst:.2e}"


@pytest.mark.parametrize("case", list(TABLE))
def test_every_member_follows_the_real_optimizer_op_for_op(case, dtype):
    """Started at 1e-6 times the usual weights, where an update is not lost in the
    rounding of the weight it is added to, 20 steps (RAdam's rectification starts at step
    6) equal the real optimizer's to the last bit, with a schedule: the entries run
    torch's ops in torch's order with torch's constants. (Differences no larger than one
    rounding — a division where torch multiplies by a reciprocal, NAdam's mu product kept
    in float64 where torch keeps it in float32, numpy's pow for libm's — show here and not
    after 100 steps from the usual weights.)"""
    assert worst_relative_difference(case, dtype, True, steps=20, first=1e-6) == 0.0


@pytest.mark.parametrize("case", ["adam", "adagrad", "nadam", "radam"])
def test_step_tables_follow_the_real_optimizer_across_blocks(case):
    """Past TABLE_STEPS steps the step-dependent scalars (bias corrections, NAdam's carried
    mu product, Adagrad's decayed rate) are built again and go on as torch's do."""
    assert worst_relative_difference(case, torch.float32, True, steps=TABLE_STEPS + 30, count=2) <= TOLERANCE


# --- every family minimizes a parabola and the Rosenbrock function ------------------------

# family → (lr on the parabola, lr on Rosenbrock); each member gets lr, lr/2 and lr/4.
LEARNING_RATES = {"sgd": (0.1, 0.001), "adam": (0.1, 0.05), "rmsprop": (0.03, 0.01), "adagrad": (0.3, 0.3),
                  "adamax": (0.1, 0.1), "nadam": (0.1, 0.05), "radam": (0.1, 0.003), "lion": (0.03, 0.003)}
MINIMIZE_STEPS = 300


def minimize(family: str, f, first: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(f at the start, f after MINIMIZE_STEPS steps) for three members with lr, lr/2, lr/4."""
    params = first.repeat(3, 1)
    rates = [lr, lr / 2, lr / 4]
    opt = BatchedOptimizer(family, params, [Segment(0, params.shape[1], [{"lr": r} for r in rates])])
    values = lambda: torch.stack([f(p) for p in params])  # noqa: E731
    before = values()
    for _ in range(MINIMIZE_STEPS):
        grads = []
        for p in params:
            p = p.clone().requires_grad_()
            grads.append(torch.autograd.grad(f(p), p)[0])
        opt.step(torch.stack(grads))
    return before, values()


def parabola(v: torch.Tensor) -> torch.Tensor:
    """Σ (v − c)², minimum 0 at c."""
    return ((v - torch.linspace(-1, 1, v.numel())) ** 2).sum()


def rosenbrock(v: torch.Tensor) -> torch.Tensor:
    """(1 − x)² + 100·(y − x²)², minimum 0 at (1, 1), 24.2 at the classic start (−1.2, 1)."""
    return (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2


def test_learning_rate_table_covers_the_catalogue():
    assert set(LEARNING_RATES) == set(CATALOGUE)


@pytest.mark.parametrize("family", sorted(CATALOGUE))
def test_every_family_minimizes_a_parabola(family):
    before, after = minimize(family, parabola, torch.zeros(6), LEARNING_RATES[family][0])
    assert before.tolist() == pytest.approx([2.8] * 3)
    assert (after < 0.05 * before).all(), after.tolist()


@pytest.mark.parametrize("family", sorted(CATALOGUE))
def test_every_family_descends_the_rosenbrock_function(family):
    before, after = minimize(family, rosenbrock, torch.tensor([-1.2, 1.0]), LEARNING_RATES[family][1])
    assert before.tolist() == pytest.approx([24.2] * 3)
    assert (after < 0.5 * before).all(), after.tolist()


# --- validation without building the optimizer ---------------------------------------------

INVALID = [
    (torch_optim.SGD, {"lr": -0.1}), (torch_optim.SGD, {"lr": 0.1, "momentum": -0.5}),
    (torch_optim.SGD, {"lr": 0.1, "weight_decay": -1.0}), (torch_optim.SGD, {"lr": 0.1, "nesterov": True}),
    (torch_optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "dampening": 0.1}),
    (torch_optim.SGD, {"lr": 0.1, "momentum": "0.9"}),  # the constructor's TypeError
    (torch_optim.Adam, {"lr": -1.0}), (torch_optim.Adam, {"eps": -1e-8}), (torch_optim.Adam, {"betas": (1.0, 0.9)}),
    (torch_optim.Adam, {"betas": (0.9, -0.1)}), (torch_optim.Adam, {"weight_decay": -0.1}),
    (torch_optim.Adam, {"betas": (0, 0.999)}), (torch_optim.AdamW, {"betas": (1.5, 0.9)}),
    (torch_optim.RMSprop, {"lr": -0.1}), (torch_optim.RMSprop, {"eps": -1.0}), (torch_optim.RMSprop, {"momentum": -0.1}),
    (torch_optim.RMSprop, {"weight_decay": -0.1}), (torch_optim.RMSprop, {"alpha": -0.5}),
    (torch_optim.Adagrad, {"lr": -0.1}), (torch_optim.Adagrad, {"lr_decay": -0.1}),
    (torch_optim.Adagrad, {"weight_decay": -0.1}), (torch_optim.Adagrad, {"initial_accumulator_value": -1.0}),
    (torch_optim.Adagrad, {"eps": -1e-10}),
    (torch_optim.Adamax, {"lr": -0.1}), (torch_optim.Adamax, {"eps": -1.0}), (torch_optim.Adamax, {"betas": (0.9, 1.0)}),
    (torch_optim.Adamax, {"weight_decay": -0.1}),
    (torch_optim.NAdam, {"lr": -0.1}), (torch_optim.NAdam, {"betas": (-0.1, 0.9)}),
    (torch_optim.NAdam, {"weight_decay": -0.1}), (torch_optim.NAdam, {"momentum_decay": -0.004}),
    (torch_optim.RAdam, {"lr": -0.1}), (torch_optim.RAdam, {"eps": -1.0}), (torch_optim.RAdam, {"betas": (0.9, 1.2)}),
    (torch_optim.RAdam, {"weight_decay": -0.1}),
    (Lion, {"lr": -0.1}), (Lion, {"betas": (1.0, 0.99)}), (Lion, {"betas": (0.9, -0.5)}), (Lion, {"weight_decay": -0.1}),
]
VALID = [
    (torch_optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}), (torch_optim.Adam, {"betas": (0.0, 0.0)}),
    (torch_optim.AdamW, {}), (torch_optim.RMSprop, {"alpha": 0.0, "centered": True}),
    (torch_optim.Adagrad, {"lr_decay": 0.1}), (torch_optim.Adamax, {"betas": (0, 0.5)}),  # Adamax takes int betas
    (torch_optim.NAdam, {"momentum_decay": 0.0, "decoupled_weight_decay": True}), (torch_optim.RAdam, {}),
    (Lion, {"betas": (0.0, 0.0), "weight_decay": 0.0, "fixed_decay": True}),
]


@pytest.mark.parametrize("cls, options", INVALID, ids=lambda v: getattr(v, "__name__", None))
def test_invalid_values_get_the_constructors_own_message(cls, options):
    with pytest.raises(Exception) as refused:
        cls([torch.zeros(2, requires_grad=True)], **options)
    assert invalid_value(family_of(cls), options) == str(refused.value)


@pytest.mark.parametrize("cls, options", VALID, ids=lambda v: getattr(v, "__name__", None))
def test_valid_values_pass_as_they_pass_the_constructor(cls, options):
    cls([torch.zeros(2, requires_grad=True)], **options)
    assert invalid_value(family_of(cls), options) is None


# --- names and options -------------------------------------------------------------------


@pytest.mark.parametrize("name, family", [
    ("rmsprop", "rmsprop"), ("RMSprop", "rmsprop"), ("NAdam", "nadam"), ("nadam", "nadam"), ("AdamW", "adam"),
    ("adam", "adam"), ("SGD", "sgd"), ("adagrad", "adagrad"), ("Adamax", "adamax"), ("radam", "radam"),
    ("pytorch_optimizer:Lion", "lion"), ("pytorch_optimizer.optimizer.lion:Lion", "lion"), ("torch.optim:AdamW", "adam"),
    (Lion, "lion"), (torch_optim.RAdam, "radam"), (torch_optim.AdamW, "adam"),
    ("adadelta", None), ("lion", None), (torch_optim.Adadelta, None), ("tests.userlib:SignSGD", None),
    ("no_such_module:Lion", None), (type("MyAdam", (torch_optim.Adam,), {}), None),  # a subclass may change the step
])
def test_family_of(name, family):
    assert family_of(name) == family


def test_every_family_declares_its_options():
    for family, entry in CATALOGUE.items():
        assert set(STRUCTURAL[family]) <= set(PER_MEMBER[family]) == set(entry.defaults), family


@pytest.mark.parametrize("name, options, reason", [
    ("adadelta", {}, "optimizer `adadelta` has no batched update (supported: adagrad, adam, adamax, adamw, nadam, "
                     "radam, rmsprop, sgd, pytorch_optimizer:Lion)"),
    ("Adam", {"lr": 0.1, "foreach": None, "fused": False}, None),
    ("Adam", {"maximize": True}, "optimizer option maximize=True is not batched"),
    ("rmsprop", {"capturable": True}, "optimizer option capturable=True is not batched"),
    ("sgd", {"differentiable": True}, "optimizer option differentiable=True is not batched"),
    ("nadam", {"betas": [0.9]}, "optimizer option betas=[0.9] is not batched (two numbers are)"),
    ("pytorch_optimizer:Lion", {"lr": 1e-4, "betas": [0.9, 0.99, 0.999]},
     "optimizer option betas=[0.9, 0.99, 0.999] is not batched (two numbers are)"),
    ("pytorch_optimizer:Lion", {"cautious": True}, "optimizer option cautious=True is not batched (Lion's cautious updates)"),
    ("pytorch_optimizer:Lion", {"use_gc": True},
     "optimizer option use_gc=True is not batched (Lion's gradient centralization)"),
    ("pytorch_optimizer:Lion", {"adanorm": True}, "optimizer option adanorm=True is not batched (Lion's AdaNorm variant)"),
    ("pytorch_optimizer:Lion", {"cautious": False, "foreach": None, "maximize": False, "weight_decouple": False}, None),
    ("pytorch_optimizer:Lion", {"weight_decoupled": True}, "optimizer option `weight_decoupled` is not batched"),
    ("adagrad", {"lr_decay": 0.1, "initial_accumulator_value": 0.1}, None),
])
def test_unsupported_option(name, options, reason):
    assert unsupported_option(name, options) == reason


def test_a_parameter_group_may_not_set_what_torch_reads_from_the_constructor():
    """torch's Adagrad fills every accumulator from the constructor's
    initial_accumulator_value: a group's own is ignored by torch, so it is not batched."""
    w, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = torch_optim.Adagrad([{"params": [w]}, {"params": [b], "initial_accumulator_value": 0.5}],
                              initial_accumulator_value=0.1)
    assert [opt.state[p]["sum"].tolist() for p in (w, b)] == [[pytest.approx(0.1)] * 2] * 2
    assert unsupported_option("adagrad", {"initial_accumulator_value": 0.5}) is None
    assert unsupported_option("adagrad", {"initial_accumulator_value": 0.5}, group=True) == (
        "optimizer option `initial_accumulator_value` in a parameter group is not batched (torch's Adagrad fills "
        "its accumulators from the constructor's value and ignores a parameter group's)")
    assert unsupported_option("adagrad", {"lr": 0.1, "lr_decay": 0.5}, group=True) is None


def test_learning_rates_before_the_first_step_and_after_each():
    """`lrs()` is the first step's rates before any step, then the latest step's, per
    member and segment: from the options, or from `lr_at` across a table block."""
    params = torch.zeros(2, 3)
    segments = [Segment(0, 2, [{"lr": 0.1}, {"lr": 0.2}]), Segment(2, 3, [{"lr": 0.3}, {"lr": 0.4}])]
    assert BatchedOptimizer("radam", params, segments).lrs().tolist() == [[0.1, 0.3], [0.2, 0.4]]
    base = np.array([[0.1, 0.3], [0.2, 0.4]])
    opt = BatchedOptimizer("nadam", params, segments, lr_at=lambda s: np.asarray(s, dtype=float)[:, None, None] * base)
    assert opt.lrs().tolist() == (1 * base).tolist()
    for step in range(1, TABLE_STEPS + 3):
        opt.step(torch.ones(2, 3))
        assert opt.lrs().tolist() == (step * base).tolist()
