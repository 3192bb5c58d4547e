"""M copies of any model torch.func can vmap, trained as one stacked model.

`FunctionalStack` runs the user's own nn.Module (convolutions, pooling, embeddings,
attention, Transformer layers, Dropout, BatchNorm …) for all members at once:
`vmap(functional_call)` over each member's parameters and buffers, with autograd on the
stacked outputs for the backward pass. It follows the stacked-model contract of
`batched_model.StackedModel`; the hand-written MLP there stays the faster path for the
models it covers.

Randomness. vmap cannot draw a different, seeded Dropout mask per member, so the masks are
drawn outside it, each member from its own generator, exactly as ATen's CPU dropout draws
them (`empty_like(x).bernoulli_(1 - p)`, divided by `1 - p`; channel-wise dropout draws one
value per sample and channel), and passed into the vmapped call. A member's generator holds
the global RNG state right after its model was built (`member_generator`), which is the
state the sequential engine's Dropout draws from: on the CPU its masks are the sequential
run's masks, whatever group the member sits in. To reach the draws, the few torch functions
that make them (`F.dropout`, `dropout1d/2d/3d`, `scaled_dot_product_attention`,
`multi_head_attention_forward`) run, under a TorchFunctionMode, as copies of themselves
whose RNG calls read those masks: their own shape logic is kept line for line. The same
mode sends conv2d and max_pool2d to channels-last batching rules (`channels_last.py`),
and keeps attention off fused kernels vmap has no rule for.

`functional_reason(model, sample)` says why a model cannot take this path, naming the layer.
"""
from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from optcmp.channels_last import routed_conv2d, routed_max_pool2d

# Layers with a fused fast path in evaluation (one ATen kernel vmap has no rule for): it is
# skipped while a TorchFunctionMode is active, so their forward always runs under one.
_FAST_PATH = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
              nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer)


def member_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator in the default generator's current state on `device`: called right after
    a member's model is built, it holds what that member's Dropout draws from in the
    sequential engine."""
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    return gen


class _Draws:
    """The random draws of one stacked forward pass. Recording (one member's pass, without
    vmap, so that tensors have the memory layout the sequential engine's have), it notes
    each draw and leaves the input as it is; replaying, it applies the members' masks
    `[M, *shape]` (already divided by 1 − p) in the order they were drawn."""

    def __init__(self, plan: list | None = None) -> None:
        self.recording = plan is None
        # (noise shape, its strides, dtype, p, channel-wise) of each draw
        self.plan: list[tuple[tuple[int, ...], tuple[int, ...], torch.dtype, float, bool]] = plan or []
        self.masks: list[torch.Tensor] = []  # set inside the vmapped call: each member's own
        self.used = 0  # draws replayed so far
        self.calls = 0  # functions this pass routed through the copies (even without a draw)

    def dropout(self, x: torch.Tensor, p: float, train: bool, feature: bool) -> torch.Tensor:
        """ATen's `dropout`/`feature_dropout` (no draw at p = 0, outside training, or for an
        empty input; zeros at p = 1), with the next mask for its draw."""
        if p == 0 or not train or x.numel() == 0:
            return x
        if p == 1:
            return x * 0
        if self.recording:
            # ATen's noise is `empty_like(x)` (x's memory layout: bernoulli_ fills memory in
            # order) or, channel-wise, a contiguous one value per sample and channel
            noise = torch.empty(x.shape[:2] + (1,) * (x.dim() - 2)) if feature else torch.empty_like(x)
            self.plan.append((tuple(noise.shape), noise.stride(), x.dtype, float(p), feature))
            return x
        shape = self.plan[self.used][0] if self.used < len(self.plan) else None
        mask = self.masks[self.used] if shape is not None else None
        self.used += 1
        expected = tuple(x.shape[:2]) + (1,) * (x.dim() - 2) if feature else tuple(x.shape)
        if shape != expected:
            raise RuntimeError(f"dropout draw {self.used} has noise shape {list(expected)} where the recorded "
                               f"pass drew {shape and list(shape)}: the model's draws depend on more than its input's shape")
        return x * mask

    def attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """`scaled_dot_product_attention` as its CPU math kernel computes it (softmax, then
        dropout on the [.., L, S] weights), which vmap batches as plain matmuls."""
        if enable_gqa:
            raise NotImplementedError("scaled_dot_product_attention with enable_gqa is not stacked")
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = (q @ k.transpose(-2, -1)) * scale
        if is_causal:
            causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~causal, -math.inf)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        weights = torch.softmax(scores, -1)
        return self.dropout(weights, dropout_p, True, False) @ v


_ACTIVE: list[_Draws] = []  # the pass in progress (the copies below read it)


class _VF:
    """Stands in for `torch._VF` in the copied dropout functions: their RNG calls."""

    def __getattr__(self, name):
        return getattr(torch._VF, name)

    @staticmethod
    def dropout(x, p, train):
        return _ACTIVE[-1].dropout(x, p, train, False)

    @staticmethod
    def feature_dropout(x, p, train):
        return _ACTIVE[-1].dropout(x, p, train, True)

    dropout_, feature_dropout_ = dropout, feature_dropout  # the stacked mask is never applied in place


def _attention(*args, **kwargs):
    return _ACTIVE[-1].attention(*args, **kwargs)


def _copy(fn, overrides: dict) -> types.FunctionType:
    """`fn` with some of its module's globals replaced (and torch-function dispatch off)."""
    scope = {**fn.__globals__, "has_torch_function": lambda *a: False, "has_torch_function_unary": lambda *a: False,
             **overrides}
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


_dropouts = {f: _copy(f, {"_VF": _VF()}) for f in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)}
_ROUTED = {
    **_dropouts,
    F.conv2d: routed_conv2d,
    F.max_pool2d: routed_max_pool2d,
    F.scaled_dot_product_attention: _attention,
    F.multi_head_attention_forward: _copy(F.multi_head_attention_forward, {
        "dropout": _dropouts[F.dropout], "scaled_dot_product_attention": _attention, "_VF": _VF()}),
}


class _Routing(torch.overrides.TorchFunctionMode):
    """Sends the functions that draw randomness (or call an attention kernel vmap has no
    rule for) to their copies; everything else runs as it is."""

    def __init__(self, draws: _Draws) -> None:
        super().__init__()
        self.draws = draws

    def __enter__(self):
        _ACTIVE.append(self.draws)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.pop()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        routed = _ROUTED.get(func)
        if routed is not None:
            self.draws.calls += 1
            return routed(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


class FunctionalStack:
    """M copies of `template`'s architecture; `params[name]` is the `[M, *shape]` tensor of
    parameter `name` (a view into the flat buffer the optimizer updates in place) and
    `buffers[name]` that of buffer `name` (BatchNorm's running statistics, updated in
    place by training-mode passes; default: the template's, one copy per member).
    `generators[m]` is member m's Dropout stream (`member_generator`, captured right after
    its model was built). `input_dims`: the dimensions of one member's batch `[B, …]`, so
    that `[M, B, …]` (each member its own batch) is told from `[B, …]` (shared)."""

    def __init__(self, template: nn.Module, params: dict[str, torch.Tensor],
                 buffers: dict[str, torch.Tensor] | None = None,
                 generators: list[torch.Generator] | None = None, input_dims: int = 2) -> None:
        self.template, self.params, self.generators, self.input_dims = template, params, generators, input_dims
        self.members = next(iter(params.values())).shape[0]
        names = [n for n, _ in template.named_parameters()]
        if sorted(names) != sorted(params):
            raise ValueError(f"params must hold exactly the template's parameters {names}, got {list(params)}")
        if buffers is None:
            buffers = {n: b.unsqueeze(0).repeat(self.members, *([1] * b.dim())) for n, b in template.named_buffers()}
        self.buffers = buffers
        self.routed_always = any(isinstance(m, _FAST_PATH) for m in template.modules())
        self._calls = {shared: self._vmapped(shared) for shared in (True, False)}
        self._plans: dict[tuple, tuple[list, bool]] = {}  # input shape, dtype, train → (draws, route)

    def _vmapped(self, shared: bool):
        """The vmapped call, built once: (params, buffers, masks, x, draws) → out; `draws`
        None runs the model as it is, else routed (see `_Routing`)."""
        template = self.template

        def member(params, buffers, masks, x, draws):
            if draws is None:
                return functional_call(template, (params, buffers), (x,))
            draws.masks = masks
            with _Routing(draws):
                return functional_call(template, (params, buffers), (x,))

        batched = vmap(member, in_dims=(0, 0, 0, None if shared else 0, None), randomness="error")
        return batched

    def _plan(self, x: torch.Tensor, shared: bool, train: bool) -> tuple[list, bool]:
        """What a pass on inputs like `x` draws, and whether it must run routed: learned once
        per input shape from member 0's pass alone, recording instead of drawing (on copies
        of its buffers, under no_grad)."""
        key = (tuple(x.shape), x.dtype, shared, train)
        if key not in self._plans:
            draws = _Draws()
            params = {n: p[0] for n, p in self.params.items()}
            buffers = {n: b[0].clone() for n, b in self.buffers.items()}
            with torch.no_grad(), _Routing(draws):
                functional_call(self.template, (params, buffers), (x if shared else x[0],))
            self._plans[key] = (draws.plan, self.routed_always or draws.calls > 0)
        return self._plans[key]

    def _masks(self, plan: list, device: torch.device) -> list[torch.Tensor]:
        """Each draw's `[M, *shape]` masks, member m's drawn from `generators[m]` as ATen draws
        it for that member alone: into noise of the same memory layout."""
        if plan and self.generators is None:
            raise ValueError("this model draws Dropout masks in training: pass one generator per member")
        masks = []
        for shape, strides, dtype, p, feature in plan:
            numel = math.prod(shape)
            noise = torch.empty_strided((self.members, *shape), (numel, *strides), dtype=dtype, device=device)
            if device.type == "cuda" and not feature:
                _fused_draws(noise, p, self.generators)
            else:
                for row, gen in zip(noise, self.generators):
                    row.bernoulli_(1 - p, generator=gen)
                noise.div_(1 - p)
            masks.append(noise)
        return masks

    def forward(self, x: torch.Tensor, keep: bool = False, train: bool = False) -> tuple[torch.Tensor, tuple | None]:
        """Outputs `[M, B, …]` for inputs `[M, B, …]` (or `[B, …]` shared by all members),
        and what `backward` needs when `keep`. `train` is nn.Module's training mode: Dropout
        draws, BatchNorm normalizes by the batch and moves its running statistics."""
        shared = x.dim() == self.input_dims
        if self.template.training != train:
            self.template.train(train)
        plan, routed = self._plan(x, shared, train)
        masks = self._masks(plan, x.device)
        draws = _Draws(plan) if routed else None
        call = self._calls[shared]
        if not keep:
            return call(self.params, self.buffers, masks, x, draws), None
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        with torch.enable_grad():
            out = call(leaves, self.buffers, masks, x, draws)
        return out, (out, leaves, masks)

    def backward(self, saved: tuple, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradients `[M, *shape]` of every parameter, given the gradient of the summed
        member losses with respect to the outputs (zeros for a parameter the output does
        not depend on)."""
        out, leaves, _ = saved
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out, allow_unused=True)
        return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(leaves.items(), grads)}


def _fused_draws(noise: torch.Tensor, p: float, generators: list[torch.Generator]) -> None:
    """CUDA's dropout draws inside its fused kernel (`native_dropout`) from the default
    generator: run it once per member with that member's state swapped in."""
    device = noise.device
    kept = torch.cuda.get_rng_state(device)
    try:
        for row, gen in zip(noise, generators):
            torch.cuda.set_rng_state(gen.get_state(), device)
            row.copy_(torch.native_dropout(torch.ones_like(row), p, True)[0])  # the input's own layout
            gen.set_state(torch.cuda.get_rng_state(device))
    finally:
        torch.cuda.set_rng_state(kept, device)


TRIAL_ROWS = 2  # samples in functional_reason's trial batch


def functional_reason(model: nn.Module, sample: torch.Tensor) -> str | None:
    """Why `model` cannot train on this stacked path, naming the layer, or None.

    `sample`: a few inputs `[B, …]` of the run's data. The test is a trial, since what vmap
    rejects is only found by running it: a training pass forward and backward of two
    stacked copies on `TRIAL_ROWS` samples (each member its own batch), then an evaluation
    pass (one batch for both), with vmap's slow
    per-member fallback turned off so that an op without a batching rule is a reason too.
    It costs a few milliseconds; torch's RNG state and the model's own tensors are left as
    they were (the copies are stacked from the model's weights)."""
    named = dict(model.named_parameters())
    if not named:
        return "it has no parameters to train"
    for name, module in model.named_modules():
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters(recurse=False)):
            return f"layer {name} ({type(module).__name__}) has parameters not yet initialized (a lazy layer)"
    x = sample[:TRIAL_ROWS]
    params = {n: torch.stack([p.detach()] * 2) for n, p in named.items()}
    buffers = {n: torch.stack([b.detach()] * 2) for n, b in model.named_buffers()}
    generators = [torch.Generator(device=x.device).manual_seed(i) for i in range(2)]
    inside, handles = [], []
    for name, module in model.named_modules():
        label = f"layer {name} ({type(module).__name__})" if name else f"its forward ({type(module).__name__})"
        handles.append(module.register_forward_pre_hook(lambda m, a, label=label: inside.append(label)))
        handles.append(module.register_forward_hook(lambda m, a, o: inside.pop() and None))  # None: output kept
    was_training, fallback = model.training, torch._C._functorch._is_vmap_fallback_enabled()
    where = "its forward"
    try:
        torch._C._functorch._set_vmap_fallback_enabled(False)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            stack = FunctionalStack(model, params, buffers, generators, input_dims=x.dim())
            out, saved = stack.forward(x.expand(2, *x.shape), keep=True, train=True)  # each member its batch
            if not isinstance(out, torch.Tensor) or out.shape[:2] != (2, x.shape[0]):
                return f"its forward returns {type(out).__name__}, not one output per sample"
            where = "its backward pass"
            stack.backward(saved, torch.ones_like(out))
            where = "its evaluation pass"
            with torch.no_grad():
                stack.forward(x, train=False)  # one batch shared by all members
    except Exception as e:  # noqa: BLE001 - whatever vmap or the model raise is the reason
        culprit = inside[-1] if inside else where
        return f"{culprit} does not run under torch.func.vmap: {_first_sentence(e)}"
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(fallback)
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return None


class _Allocations(torch.overrides.TorchFunctionMode):
    """Counts the values of the new tensors torch functions return (views not included)."""

    def __init__(self) -> None:
        super().__init__()
        self.values = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in (*args, *(kwargs or {}).values()) if isinstance(t, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                self.values += t.numel()
        return out


def training_probe(model: nn.Module, sample: torch.Tensor) -> tuple[tuple[str, ...], int]:
    """What one training-mode pass of `model` on `sample` (`[B, …]`) shows: the parameters
    whose gradient it leaves None (not reached from the output, or not requiring one), which
    torch.optim therefore leaves untouched, weight decay and momentum included; and the
    values of the tensors it allocates per sample, input included (a memory estimate).
    torch's RNG state and the model's tensors, gradients and mode are left as they were."""
    named = dict(model.named_parameters())
    kept = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    counter = _Allocations()
    try:
        with torch.random.fork_rng(devices=[sample.device] if sample.device.type == "cuda" else []), torch.enable_grad():
            model.train()
            with counter:
                out = model(sample)
            wanted = [n for n, p in named.items() if p.requires_grad]
            grads = torch.autograd.grad(out.sum(), [named[n] for n in wanted], allow_unused=True) if wanted else []
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(kept[n])
    reached = {n for n, g in zip(wanted, grads) if g is not None}
    per_sample = counter.values // max(len(sample), 1) + math.prod(sample.shape[1:])
    return tuple(n for n in named if n not in reached), per_sample


def _first_sentence(error: Exception) -> str:
    """The gist of torch's (often paragraph-long) error message, on one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.removeprefix("vmap: ")
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]
