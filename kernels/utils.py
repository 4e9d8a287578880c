"""Memory layouts the Triton kernels index directly: (batch, channels, seqlen) tensors with time contiguous.

A projection's output viewed per batch row, ``(channels, batch * seqlen) -> (batch, channels, seqlen)``, has
strides (seqlen, batch * seqlen, 1): dense and time-contiguous but not contiguous. The kernels take the batch and
channel strides as arguments, so such views need no copy; outputs are allocated in the same layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def span(t: torch.Tensor) -> int:
    """Elements of storage that t's shape and strides reach (0 for an empty tensor)."""
    return 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0


def time_contiguous(t: torch.Tensor) -> bool:
    """t (batch, channels, seqlen) is dense (no gaps, no overlap) with unit time stride."""
    return (t.dim() == 3 and t.stride(2) == 1 and span(t) == t.numel() and min(t.stride(0), t.stride(1)) >= 1)


def empty_as(t: torch.Tensor, empty: Callable[..., torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uninitialised, with t's shape and strides (t dense), allocated through the kernel module's ``empty``
    (which tests swap for a NaN fill)."""
    return empty(span(t), like=t, dtype=dtype).as_strided(t.shape, t.stride())
