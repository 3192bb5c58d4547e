"""Histograms of many tensors at once, computed on their device, encoded as TensorBoard protos.

`add_histogram` costs one numpy round trip per tensor and writes hundreds of bucket limits;
with 36 tensors per step that dominates a small model's training time. Here every tensor
of one step is flattened into one buffer and summarized by a fixed handful of batched ops
(segment min/max/sum/sum of squares, one bincount for all buckets), so the cost barely
depends on how many tensors there are. The result is one small (K, 5 + bins) array; turning
it into `HistogramProto`s happens later, on the writer thread.

Each histogram has `bins` equal-width buckets spanning [min, max] of its tensor, which keeps
the first and last bucket non-empty (what TensorBoard's reader expects). A constant tensor
gets a single bucket. Non-finite values (a diverging run) are left out of the buckets and
statistics, so `num` counts the finite values only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tensorboardX.proto.summary_pb2 import HistogramProto

# Columns of the packed summary, before the bucket counts.
MIN, MAX, NUM, SUM, SUM_SQUARES = range(5)
N_STATS = 5

# Segment ids of a flattened batch, keyed by the tensors' sizes: a training run asks for
# the same shapes every step, so the index tensors are built once.
_SEGMENTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _segments(numels: tuple[int, ...], bins: int, device: torch.device):
    key = (numels, bins, str(device))
    hit = _SEGMENTS.get(key)
    if hit is None:
        seg = torch.repeat_interleave(
            torch.arange(len(numels), device=device), torch.tensor(numels, device=device)
        )
        if len(_SEGMENTS) > 64:  # many different models in one process: keep the cache small
            _SEGMENTS.clear()
        hit = _SEGMENTS[key] = (seg, seg * (bins + 1))
    return hit


@torch.no_grad()  # also avoids a slow multithreaded autograd path for indexing on CPU
def summarize(tensors: Sequence[torch.Tensor], bins: int) -> torch.Tensor:
    """Summarize non-empty tensors of one device in a single batch.

    Returns a float64 tensor of shape (len(tensors), 5 + bins) on that device: min, max,
    number of finite values, sum, sum of squares, then the count of each of the `bins`
    equal-width buckets between min and max. Synchronous with respect to the device's
    stream, so the inputs may be modified (e.g. by an optimizer step) right after.
    """
    device = tensors[0].device
    k = len(tensors)
    seg, seg_offset = _segments(tuple(t.numel() for t in tensors), bins, device)
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # half precision would lose resolution in the bucket arithmetic
    inf = torch.tensor(float("inf"), dtype=flat.dtype, device=device)
    finite = torch.isfinite(flat)
    lows = torch.full((k,), float("inf"), dtype=flat.dtype, device=device)
    lows.scatter_reduce_(0, seg, torch.where(finite, flat, inf), "amin")
    highs = torch.full((k,), float("-inf"), dtype=flat.dtype, device=device)
    highs.scatter_reduce_(0, seg, torch.where(finite, flat, -inf), "amax")

    # Sums in float64 where the device has it: float32 sums of squares drift visibly.
    acc = torch.float32 if device.type == "mps" else torch.float64
    values = torch.where(finite, flat, 0).to(acc)
    sums = torch.zeros(k, dtype=acc, device=device).index_add_(0, seg, values)
    sum_squares = torch.zeros(k, dtype=acc, device=device).index_add_(0, seg, values * values)

    span = highs - lows
    scale = torch.where(span > 0, bins / span, 0)  # constant tensor: everything in bucket 0
    pos = ((flat - lows[seg]) * scale[seg]).floor_().clamp_(0, bins - 1)
    # Non-finite values go to a spare bucket per tensor that is dropped below.
    bucket = torch.where(finite, pos, bins).long() + seg_offset
    counts = torch.bincount(bucket, minlength=k * (bins + 1)).view(k, bins + 1)[:, :bins]
    stats = torch.stack([lows.to(acc), highs.to(acc), counts.sum(1).to(acc), sums, sum_squares], 1)
    return torch.cat([stats, counts.to(acc)], 1).double()


@dataclass
class HostSummary:
    """A `summarize` result on its way to the host; `array()` waits for it if needed."""

    tensor: torch.Tensor
    ready: object | None = None  # a device event recorded after the copy, or None on CPU

    def array(self) -> np.ndarray:
        """The (K, 5 + bins) float64 array, once the device has produced it."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensor.numpy()


def to_host(summary: torch.Tensor) -> HostSummary:
    """Start copying a summary to the host without making the caller wait for the device."""
    if summary.device.type == "cpu":
        return HostSummary(summary)
    if summary.device.type == "cuda":
        # A non-blocking device→host copy lands in pinned memory; the writer thread
        # waits on the event instead of the training thread waiting on the stream.
        host = summary.to("cpu", non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return HostSummary(host, ready)
    return HostSummary(summary.cpu())


def to_protos(summary: np.ndarray) -> list[HistogramProto]:
    """One `HistogramProto` per row of a summary array (as returned by `summarize`)."""
    bins = summary.shape[1] - N_STATS
    fractions = np.arange(1, bins + 1) / bins
    protos = []
    for row in summary:
        lo, hi, num, total, squares = row[:N_STATS].tolist()
        if num == 0:
            protos.append(HistogramProto(num=0.0))
            continue
        if hi > lo:
            limits = (lo + (hi - lo) * fractions).tolist()
            limits[-1] = hi  # exact, so the last bucket ends on the maximum
            counts = row[N_STATS:].tolist()
        else:
            limits, counts = [hi], [num]
        protos.append(
            HistogramProto(
                min=lo, max=hi, num=num, sum=total, sum_squares=squares,
                bucket_limit=limits, bucket=counts,
            )
        )
    return protos
