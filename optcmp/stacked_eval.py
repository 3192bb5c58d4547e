"""A stack of plain CNNs without vmap: evaluation passes (`PlainEval`) and training
passes (`PlainStack`), on the CPU.

An evaluation pass (the loop's full-set loss of both splits, every `log.every` steps) runs
the whole split through every member. Under `vmap(functional_call)` it cost the stack
about what it costs the runs one by one (digits CNN, 24 members, both splits of 1,438 and
360 samples: 97–136 ms a log point at the best piece size, against 90–100 ms for the 24
sequential runs, on the shared 2-core machine): vmap's per-call overhead, one grouped
convolution of all members, fresh activations in the members' interleaved layout, and a
log-softmax over a last dimension of 10 classes (5 ms). For an `nn.Sequential` of
convolutions, max-pools, elementwise activations, Dropout (the identity in evaluation),
Flatten and Linear layers this module runs the same pass on the stacked weights
directly, under no_grad: 22.6 ms and 6.2 ms for the two splits, so:

- members whose data is the same (the same seed, hence the same split) are a *group*: their
  input is shared, so the first convolution is one matrix product of the input's im2col
  (`unfold`, computed once a split and kept: the data never changes) with the group's
  filters side by side, `[n·H·W, C·kh·kw] @ [C·kh·kw, K·O]`, whose result already is the
  group's channels-last `[n, K·O, H, W]` (a grouped convolution of all members, or one
  plain convolution per group, measured 1.4–1.8× slower);
- a 2×2 max-pool right after it is taken with that product (`_pool_after_first_conv`);
- a later convolution is the group's grouped convolution in channels-last layout, a
  max-pool pools the channels-last images, an activation is applied to the whole group
  (ReLU in place, after the pool it precedes);
- Flatten lays each member's features out as its own `[n, C·H·W]` and Linear is one
  batched matrix product of the group.

Training (`PlainStack`) runs the same layers on the members' own batches with autograd:
the kernels vmap's channels-last rules call (`channels_last.py`), without vmap's and the
routing mode's Python around each of them (digits CNN, 24 members, batches of 64: forward
and backward 8.7 ms → 5.5 ms, the gradients equal to the vmap path's bit for bit), and
with each ReLU moved after the max-pool it precedes (`relu_after_pool`: exact).

The values are the members' own passes up to float32 rounding (the products sum in another
order than oneDNN's convolution and the sequential engine's addmm). Any other layer, or a
model that is not such a Sequential, keeps the vmap path (`plain_layers` says None), and so
does training a model whose Dropout draws (p > 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Layers that act on each value alone: applied to the whole group's tensor as they are
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Identity, *DROPOUT)
EVAL_VALUES = 1 << 20  # values of the largest activation of one piece of samples (stays in the caches)
COLS_VALUES = 1 << 24  # im2col values kept at most, all splits and groups together (64 MiB of float32)


def plain_layers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The named layers of `model` when it is an nn.Sequential this module evaluates
    (convolutions first, then Flatten, then Linear layers), else None."""
    if type(model) is not nn.Sequential or len(model) == 0:
        return None
    flat = False
    layers = list(model.named_children())
    for _, layer in layers:
        if isinstance(layer, nn.Conv2d) and type(layer) is nn.Conv2d:
            if flat or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                return None
        elif type(layer) is nn.MaxPool2d:
            if flat or layer.return_indices:
                return None
        elif type(layer) is nn.Flatten:
            if flat or layer.start_dim != 1 or layer.end_dim != -1:
                return None
            flat = True
        elif type(layer) is nn.Linear:
            if not flat:
                return None
        elif type(layer) not in ELEMENTWISE:
            return None
    return layers if flat and type(layers[-1][1]) is nn.Linear else None


class PlainEval:
    """Evaluation passes of M members of the Sequential `layers` (`plain_layers`), whose
    parameters are `params[name]` `[M, *shape]` (views of the stack's weights, read at each
    pass). `groups`: the member indices of each data group, in the order of the inputs
    `evaluate` is given."""

    def __init__(self, layers: list[tuple[str, nn.Module]], params: dict[str, torch.Tensor],
                 groups: list[list[int]]) -> None:
        self.layers, self.params = relu_after_pool(layers), params
        self.members = next(iter(params.values())).shape[0]
        self.groups = [torch.tensor(g, dtype=torch.long) for g in groups]
        self._cols: dict[tuple[str, int], torch.Tensor | None] = {}  # (split, group) → first conv's im2col
        self.pool_at = _pool_after_first_conv(self.layers)

    def evaluate(self, split: str, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Outputs `[M, n, out]`: `inputs[g]` `[n, C, H, W]` is group g's shared split."""
        outs = None
        with torch.no_grad():
            for g, (members, x) in enumerate(zip(self.groups, inputs)):
                whole = len(members) == self.members  # one group: the stack's own views
                weights = self.params if whole else {n: p[members.to(p.device)] for n, p in self.params.items()}
                rows = max(1, EVAL_VALUES // max(1, self._widest(x, len(members))))
                cols = self._first_cols(split, g, x)
                pieces, per_sample = [], 0 if cols is None else cols.shape[0] // x.shape[0]
                for start in range(0, x.shape[0], rows):
                    part_cols = None if cols is None else cols[start * per_sample:(start + rows) * per_sample]
                    pieces.append(run_layers(self.layers, x[start:start + rows], "shared", weights, len(members),
                                             part_cols, self.pool_at))
                out = torch.cat(pieces, 1)
                if whole:
                    return out
                if outs is None:
                    outs = out.new_empty(self.members, *out.shape[1:])
                outs[members.to(out.device)] = out
        return outs

    def _widest(self, x: torch.Tensor, k: int) -> int:
        """Values per sample of the group's widest activation (the first conv's output, mostly)."""
        h, w = x.shape[-2:]
        widest = x[0].numel()
        for _, layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                h, w = _conv_size((h, w), layer)
                widest = max(widest, k * layer.out_channels * h * w)
            elif isinstance(layer, nn.MaxPool2d):
                h, w = F.max_pool2d(torch.empty(1, 1, h, w, device="meta"), layer.kernel_size, layer.stride,
                                    layer.padding, layer.dilation, layer.ceil_mode).shape[-2:]
        return widest

    def _first_cols(self, split: str, g: int, x: torch.Tensor) -> torch.Tensor | None:
        """The first layer's im2col `[n·Ho·Wo, C·kh·kw]` of group g's split, when the first
        layer is a convolution without groups and it fits in what is left of COLS_VALUES
        (else None: that group's split takes a plain convolution at each pass)."""
        key = (split, g)
        if key not in self._cols:
            first = self.layers[0][1]
            cols = None
            if type(first) is nn.Conv2d and first.groups == 1:
                h, w = _conv_size(x.shape[-2:], first)
                size = x.shape[0] * h * w * (x.shape[1] * first.kernel_size[0] * first.kernel_size[1] + 1)
                kept = sum(c.numel() for c in self._cols.values() if c is not None)
                if kept + size <= COLS_VALUES:
                    unfolded = F.unfold(x, first.kernel_size, first.dilation, first.padding, first.stride)
                    cols = unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])
                    if first.bias is not None:  # a column of ones: the bias is one more row of the product
                        cols = torch.cat([cols, cols.new_ones(cols.shape[0], 1)], 1)
                    if self.pool_at is not None:  # rows as [n, dy, dx, Ho/2, Wo/2]: see _pool_after_first_conv
                        cols = cols.view(x.shape[0], h, w, -1)[:, :h // 2 * 2, :w // 2 * 2]
                        cols = cols.reshape(x.shape[0], h // 2, 2, w // 2, 2, -1).permute(0, 2, 4, 1, 3, 5)
                        cols = cols.reshape(-1, cols.shape[-1])
                    cols = cols.contiguous()
            self._cols[key] = cols
        return self._cols[key]


def run_layers(layers: list[tuple[str, nn.Module]], x: torch.Tensor, state: str, weights: dict[str, torch.Tensor],
               k: int, cols: torch.Tensor | None = None, pool_at: int | None = None) -> torch.Tensor:
    """k members' pass through `layers` → outputs `[k, b, out]`. `x` in `state`: "shared"
    `[b, …]`, one input for all (`cols`: the first conv's im2col of it, `pool_at` as
    `_pool_after_first_conv` says), or "images", the members' own images as one
    channels-last `[b, k·C, H, W]`. Autograd records it where it is enabled."""
    n = x.shape[0]
    y = x  # "shared" [b, …] | "images" channels-last [b, k·C, H, W] | "flat" [k, b, F]
    skip = 0
    for i, (name, layer) in enumerate(layers):
        if i < skip:
            continue
        if isinstance(layer, nn.Conv2d):
            w, b = weights[f"{name}.weight"], weights.get(f"{name}.bias")
            out_channels = layer.out_channels
            if state == "shared" and i == 0 and cols is not None:
                h, wd = _conv_size(x.shape[-2:], layer)
                flat_w = w.reshape(k * out_channels, -1)
                if b is not None:  # (addmm would first copy the bias into every row: 1.3 ms a piece)
                    flat_w = torch.cat([flat_w, b.reshape(-1, 1)], 1)
                y = torch.mm(cols, flat_w.t())
                if pool_at is not None:  # the 2×2 max-pool: the largest of four blocks of rows
                    h, wd, skip = h // 2, wd // 2, pool_at + 1
                    y = y.view(n, 4, -1).amax(1)
                    if any(type(m) is nn.ReLU for _, m in layers[1:pool_at]):
                        y = y.relu_()
                y = y.view(n, h, wd, k * out_channels).permute(0, 3, 1, 2)
            elif state == "shared":  # one convolution with the group's filters side by side
                y = F.conv2d(y.contiguous(memory_format=torch.channels_last), w.reshape(-1, *w.shape[2:]),
                             None if b is None else b.reshape(-1), layer.stride, layer.padding, layer.dilation,
                             layer.groups) if layer.groups == 1 else \
                    F.conv2d(y.repeat(1, k, 1, 1).contiguous(memory_format=torch.channels_last),
                             w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1), layer.stride,
                             layer.padding, layer.dilation, layer.groups * k)
            else:
                y = F.conv2d(y, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1), layer.stride,
                             layer.padding, layer.dilation, layer.groups * k)
            y = y.contiguous(memory_format=torch.channels_last)
            state = "images"
        elif isinstance(layer, nn.MaxPool2d):
            y = F.max_pool2d(y, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode)
            if state == "images":
                y = y.contiguous(memory_format=torch.channels_last)
        elif isinstance(layer, nn.Flatten):
            if state == "images":  # each member's [C, H, W], in its own order
                y = y.reshape(n, k, -1, *y.shape[-2:]).transpose(0, 1).reshape(k, n, -1)
                state = "flat"
            else:
                y = y.reshape(n, -1)
        elif isinstance(layer, nn.Linear):
            w, b = weights[f"{name}.weight"], weights.get(f"{name}.bias")
            if state == "shared":  # shared features: one product with the members' rows side by side
                flat_w = w.reshape(-1, w.shape[-1]).t()
                y = torch.mm(y, flat_w) if b is None else torch.addmm(b.reshape(-1), y, flat_w)
                y = y.view(n, k, -1).transpose(0, 1)
                state = "flat"
            else:
                y = torch.bmm(y, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), y, w.transpose(1, 2))
        elif isinstance(layer, DROPOUT):
            pass  # the identity in evaluation
        elif type(layer) is nn.ReLU and state != "shared":
            y = torch.relu(y) if torch.is_grad_enabled() else y.relu_()  # in place: the pass's own tensor
        else:  # elementwise; never in place on the data itself
            y = layer(y.clone() if state == "shared" and getattr(layer, "inplace", False) else y)
    if state == "shared":  # no layer with weights: the same output for every member
        y = y.unsqueeze(0).expand(k, *y.shape)
    return y


def relu_after_pool(layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """`layers` with each ReLU that a MaxPool2d follows (through evaluation's identities)
    moved after that pool: relu(max(a, b)) is max(relu(a), relu(b)) exactly, and so are
    the gradients (both reach the window's first largest value where it is positive, else
    nothing), on a quarter of the values of a 2×2 pool."""
    out = list(layers)
    i = 0
    while i < len(out):
        if type(out[i][1]) is nn.ReLU:
            j = i + 1
            while j < len(out) and type(out[j][1]) in (nn.Identity, *DROPOUT):
                j += 1
            if j < len(out) and type(out[j][1]) is nn.MaxPool2d:
                out.insert(j, out.pop(i))
                i = j + 1
                continue
        i += 1
    return out


class PlainStack:
    """The training side of the stacked-model contract (`functional.FunctionalStack`'s
    forward and backward) for a `plain_layers` Sequential that starts with a convolution
    and draws nothing (its Dropouts, if any, have p = 0), on the members' images: the
    layers of `run_layers` on the stacked weights with autograd, in place of vmap of
    functional_call. The kernels are vmap's (`channels_last.py`: grouped convolutions and
    pools in channels-last layout); what goes is vmap's and the routing's Python around
    them, and ReLU moves after the pool (`relu_after_pool`)."""

    def __init__(self, layers: list[tuple[str, nn.Module]], params: dict[str, torch.Tensor]) -> None:
        self.layers, self.params = relu_after_pool(layers), params
        self.members = next(iter(params.values())).shape[0]

    @staticmethod
    def takes(layers: list[tuple[str, nn.Module]] | None) -> bool:
        return bool(layers) and type(layers[0][1]) is nn.Conv2d and \
            all(m.p == 0 for _, m in layers if isinstance(m, DROPOUT))

    def forward(self, x: torch.Tensor, keep: bool = False, train: bool = False) -> tuple[torch.Tensor, tuple | None]:
        """Outputs `[M, B, out]` for images `[M, B, C, H, W]` (or `[B, C, H, W]` shared)."""
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()} if keep else self.params
        with torch.enable_grad() if keep else torch.no_grad():
            if x.dim() == 4:
                out = run_layers(self.layers, x, "shared", leaves, self.members)
            else:
                members, batch, channels, height, width = x.shape
                # (contiguous: with one channel the reshape can be a view, not laid out channels-last)
                images = x.permute(1, 3, 4, 0, 2).reshape(batch, height, width, members * channels).contiguous()
                out = run_layers(self.layers, images.permute(0, 3, 1, 2), "images", leaves, self.members)
        return out, ((out, leaves) if keep else None)

    def backward(self, saved: tuple, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        out, leaves = saved
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out, allow_unused=True)
        return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(leaves.items(), grads)}


def _pool_after_first_conv(layers: list[tuple[str, nn.Module]]) -> int | None:
    """The index of a 2×2 max-pool (stride 2, no padding) that follows the first layer, a
    convolution, through ReLUs or evaluation's identities only, else None. Then the pass
    computes the convolution's outputs window position by window position, pools them as
    the largest of four blocks, and applies ReLU to the pooled values: max(relu(a), relu(b))
    is relu(max(a, b)) exactly. Max-pooling the channels-last output took 9 ms of a 28 ms
    pass (digits, 24 members), ReLU 2.6 ms."""
    if not layers or type(layers[0][1]) is not nn.Conv2d or layers[0][1].groups != 1:
        return None
    for i, (_, layer) in enumerate(layers[1:], 1):
        if type(layer) is nn.MaxPool2d:
            pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
            plain = (pair(layer.kernel_size) == (2, 2) and pair(layer.stride) == (2, 2) and
                     pair(layer.padding) == (0, 0) and pair(layer.dilation) == (1, 1) and not layer.ceil_mode)
            return i if plain else None
        if type(layer) not in (nn.ReLU, nn.Identity, *DROPOUT):
            return None
    return None


def _conv_size(size, layer: nn.Conv2d) -> tuple[int, int]:
    return tuple((s + 2 * p - d * (kk - 1) - 1) // st + 1 for s, p, d, kk, st in
                 zip(size, layer.padding, layer.dilation, layer.kernel_size, layer.stride))


def cross_entropy_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy `[M]` for class scores `[M, n, classes]` and labels
    `[M, n]`: `batched_model.member_losses`' sums, with the log-softmax taken over the
    classes laid out along the second dimension (ATen's kernel for a last dimension of a
    few classes took 5.1 ms for 24 × 1,437 × 10 scores, this one 0.5 ms, transpose included)."""
    logp = torch.log_softmax(out.transpose(1, 2).contiguous(), 1)
    return -logp.gather(1, y.unsqueeze(1)).squeeze(1).mean(1)
