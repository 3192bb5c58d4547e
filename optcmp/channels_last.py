"""Batching rules that keep M members' images channels-last: conv2d and max_pool2d.

vmap's own rule for a convolution with per-member weights folds the members into the
channels (one grouped convolution of `[B, M·C, H, W]`) in NCHW layout, and pooling works
plane by plane: on the CPU both kernels are several times slower for that layout than for
channels-last (measured for the digits CNN, 24 members: grouped conv 8.4 ms → 1.0 ms,
max-pool 9.7 ms → 0.5 ms). These two custom operators carry their own rule
(`torch.library.custom_op` + `register_vmap`): a member's image `[B, C, H, W]` lives in
memory as `[B, H, W, M, C]`, which is the channels-last `[B, M·C, H, W]` the kernels want,
so that a conv → activation → pool chain runs without a layout copy. Autograd records the
ops inside the rule, on the stacked tensors. Outside vmap each operator is the plain
torch function. `functional.py` routes F.conv2d and F.max_pool2d here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _stacked_channels_last(x: torch.Tensor, dim: int, members: int) -> torch.Tensor:
    """Members' images (member dimension `dim`) as one channels-last `[B, M·C, H, W]`:
    a view when `x` already lies in memory as `[B, H, W, M, C]`, else one copy."""
    x = x.movedim(dim, 0)
    batch, channels, height, width = x.shape[1:]
    hwmc = x.permute(1, 3, 4, 0, 2).reshape(batch, height, width, members * channels).contiguous()
    return hwmc.permute(0, 3, 1, 2)


def _members_of(y: torch.Tensor, members: int) -> torch.Tensor:
    """A channels-last `[B, M·C, H, W]` as the members' `[M, B, C, H, W]` (a view)."""
    batch, mc, height, width = y.shape
    return y.permute(0, 2, 3, 1).reshape(batch, height, width, members, mc // members).permute(3, 0, 4, 1, 2)


@torch.library.custom_op("optcmp::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
           padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


@conv2d.register_vmap
def _conv2d_members(info, in_dims, x, weight, bias, stride, padding, dilation, groups):
    x_dim, w_dim, b_dim = in_dims[:3]
    members = info.batch_size
    if w_dim is None:  # the same weights for every member: vmap's own rule is a plain conv
        w = weight.unsqueeze(0).expand(members, *weight.shape)
    else:
        w = weight.movedim(w_dim, 0)
    w = w.reshape(-1, *w.shape[2:])  # [M·O, C/groups, kh, kw]
    b = None
    if bias is not None:
        b = (bias.movedim(b_dim, 0) if b_dim is not None else bias.expand(members, *bias.shape)).reshape(-1)
    if x_dim is None and groups > 1:  # grouped: each member's groups need their own copy of the input
        x, x_dim = x.unsqueeze(0).expand(members, *x.shape), 0
    if x_dim is None:  # a batch shared by all members: one conv with M·O output channels
        y = F.conv2d(x.contiguous(memory_format=torch.channels_last), w, b, stride, padding, dilation, groups)
    else:
        y = F.conv2d(_stacked_channels_last(x, x_dim, members), w, b, stride, padding, dilation, groups * members)
    return _members_of(y.contiguous(memory_format=torch.channels_last), members), 0


@torch.library.custom_op("optcmp::max_pool2d", mutates_args=())
def max_pool2d(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               dilation: list[int], ceil_mode: bool) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)


@max_pool2d.register_vmap
def _max_pool2d_members(info, in_dims, x, kernel_size, stride, padding, dilation, ceil_mode):
    members = info.batch_size
    y = F.max_pool2d(_stacked_channels_last(x, in_dims[0], members), kernel_size, stride, padding, dilation, ceil_mode)
    return _members_of(y.contiguous(memory_format=torch.channels_last), members), 0


def _without_dynamo(op) -> None:
    """Let `op`'s kernels run without first importing torch._dynamo. torch wraps a custom
    operator's kernel in `torch._disable_dynamo`, which imports torch._dynamo at the first
    call (2 s on a loaded 2-core machine, in every process that trains a CNN; preflight's
    trial pass included) only to mark the kernel as not to be traced. Nothing here is
    compiled: the kernel is marked as its own disabled form, the attribute that decorator
    caches it under. Where torch lays this out otherwise, nothing changes."""
    for kernel in getattr(op, "_backend_fns", {}).values():
        inner = getattr(kernel, "__wrapped__", None)
        if inner is not None and getattr(inner, "__dynamo_disable", None) is None:
            setattr(inner, "__dynamo_disable", inner)


_without_dynamo(conv2d)
_without_dynamo(max_pool2d)


def _pair(value) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


def routed_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """F.conv2d for batched 4-D images through `conv2d`; anything else as it is."""
    if input.dim() != 4 or isinstance(padding, str):  # 'same'/'valid': rare in user CNNs, left to torch
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return conv2d(input, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)


def routed_max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """F.max_pool2d for batched 4-D images through `max_pool2d` (without indices)."""
    if input.dim() != 4 or return_indices:
        return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                            return_indices=return_indices)
    stride = kernel_size if stride is None or (not isinstance(stride, int) and len(stride) == 0) else stride
    return max_pool2d(input, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), ceil_mode)
