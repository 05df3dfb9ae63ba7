"""The CPU workspace of the chunked output-layer loss (:mod:`labo_fairseq.losses.linear`): its
(chunk x V) buffers as views of one allocation kept between calls."""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

# Largest workspace kept between calls on the CPU: a few (chunk x V) buffers of the default chunk.
WORKSPACE_BYTES = 512 * 2**20  # 4 x linear.CHUNK_BYTES


class Workspace(threading.local):
    """The chunk loop's (chunk x V) buffers. On the CPU they are views of one allocation reused across
    chunks and calls: a fresh buffer of that size pays a page fault per 4 KiB on first write
    (measured: a fresh ``exp`` output of 64 MiB cost 4x an ``exp`` into an existing one), which
    CUDA's caching allocator avoids by itself. Up to :data:`WORKSPACE_BYTES` stay allocated between
    calls; a larger request is allocated for the call only. One per thread."""

    storage: Tensor | None = None

    def views(self, device: torch.device, shapes: list[tuple[tuple[int, ...], torch.dtype]]) -> list[Tensor]:
        if device.type != "cpu":
            return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in shapes]
        nbytes = [math.prod(shape) * dtype.itemsize for shape, dtype in shapes]
        starts = [sum(-(-n // 64) * 64 for n in nbytes[:i]) for i in range(len(nbytes) + 1)]  # 64-byte aligned
        store = self.storage
        if store is None or store.numel() < starts[-1]:
            store = torch.empty(starts[-1], dtype=torch.uint8)
            if starts[-1] <= WORKSPACE_BYTES:
                self.storage = store
        return [store[start:start + n].view(dtype).view(shape)
                for (shape, dtype), start, n in zip(shapes, starts, nbytes)]


WORKSPACE = Workspace()


def alias(buf: Tensor, dtype: torch.dtype) -> Tensor:
    """A ``dtype`` tensor of ``buf``'s shape in the first bytes of ``buf`` (contiguous, of a dtype at
    least as wide): a half-precision buffer where a working-dtype one is free."""
    return buf.view(-1).view(dtype)[:buf.numel()].view(buf.shape)
