"""What more than one kernel module uses: the output allocator, memory layouts, and Triton device functions.

Layouts: the Triton kernels index (batch, channels, seqlen) tensors with time contiguous. A projection's output
viewed per batch row, ``(channels, batch * seqlen) -> (batch, channels, seqlen)``, has strides
(seqlen, batch * seqlen, 1): dense and time-contiguous but not contiguous. The kernels take the batch and channel
strides as arguments, so such views need no copy; outputs are allocated in the same layout.

Allocation: every kernel output is allocated through :func:`empty` (uninitialised); the kernel tests swap it for
a NaN fill, so an element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host code: ``triton.cdiv`` is a constexpr function in Triton 3.6, ~2 us a call from Python
    (the training step of the 90.7 M model made ~700 such calls)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (0 for n = 0, as Triton's), for host code (as :func:`cdiv`, instead of
    Triton's)."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def empty(*shape: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised kernel output of ``shape`` on like's device, in ``dtype`` (default like's)."""
    return torch.empty(*shape, device=like.device, dtype=dtype or like.dtype)


def span(t: torch.Tensor) -> int:
    """Elements of storage that t's shape and strides reach (0 for an empty tensor)."""
    return 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0


def time_contiguous(t: torch.Tensor) -> bool:
    """t (batch, channels, seqlen) is dense (no gaps, no overlap) with unit time stride."""
    return (t.dim() == 3 and t.stride(2) == 1 and span(t) == t.numel() and min(t.stride(0), t.stride(1)) >= 1)


def empty_as(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uninitialised, with t's shape and strides (t dense), allocated through :func:`empty`."""
    return empty(span(t), like=t, dtype=dtype).as_strided(t.shape, t.stride())


# ----------------------------------------------------------------------------------------------------------
# Triton device functions (inlined into the kernels that call them)
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), with log1p(e) = log(1 + e) * e / ((1 + e) - 1) (exact to ~1 ulp)."""
    e = tl.exp(-tl.abs(x))
    one_plus = 1.0 + e
    ratio = e / tl.where(one_plus == 1.0, 1.0, one_plus - 1.0)  # where-guarded: no 0/0 on the unused branch
    log1p = tl.where(one_plus == 1.0, e, tl.log(one_plus) * ratio)
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def softplus_approx(x):
    """log(1 + e^x) from base-2 exp and log (``tl.exp2``: one MUFU in fp32; ``tl.log2``: libdevice's
    ``__nv_log2f`` on NVIDIA GPUs): max(x, 0) + log(1 + e) with e = e^-|x|, where log(1 + e) is ln 2 log2(1 + e)
    for e > 1/16 and its Taylor series e (1 - e (1/2 - e (1/3 - e / 4))) below (relative error < e^4 / 5 < 4e-6:
    no cancellation in 1 + e for tiny e). No IEEE division, unlike :func:`softplus`: for the scan kernels'
    ``softplus_in_kernel`` (kernels/selective_scan/NOTES.md)."""
    e = tl.exp2(-tl.abs(x) * LOG2E)
    series = e * (1.0 - e * (0.5 - e * (0.3333333333333333 - e * 0.25)))
    log1p = tl.where(e > 0.0625, tl.log2(1.0 + e) * 0.6931471805599453, series)
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def dt_activation(raw, SOFTPLUS: tl.constexpr):
    """dt from delta + bias for one step (the decode kernels): softplus or identity."""
    if SOFTPLUS:
        dt = softplus(raw)
    else:
        dt = raw
    return dt


@triton.jit
def load_vec(ptr, d, d_mask, HAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """A per-channel parameter (BLOCK_D,) in fp32, or zeros when absent."""
    if HAS:
        x = tl.load(ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    else:
        x = tl.zeros([BLOCK_D], tl.float32)
    return x


@triton.jit
def advance_state(state_ptr, x, dt, A, Bv, Cv, D_ptr, z_ptr, out_ptr, b64, d, n, d_mask, dn_mask, dim,
                  stride_sb, stride_sd, stride_sn, stride_z, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """One step of the SSM for (batch row b64, channels d), the decode kernels' common tail: state <- exp(dt A)
    state + dt B x (stored), out = (C . state + D x) silu(z) (stored at out_ptr + b64 * dim + d, and returned as
    stored: (BLOCK_D,) fp32 rounded through out's element type). x, dt (BLOCK_D,), A, Bv, Cv (BLOCK_D, BLOCK_N) or
    broadcastable, all fp32."""
    s_ptrs = state_ptr + b64 * stride_sb + d[:, None].to(tl.int64) * stride_sd + n[None, :] * stride_sn
    state = tl.load(s_ptrs, mask=dn_mask, other=0.0).to(tl.float32)
    state = tl.exp2(dt[:, None] * A * LOG2E) * state + (dt * x)[:, None] * Bv
    tl.store(s_ptrs, state.to(state_ptr.dtype.element_ty), mask=dn_mask)

    out = tl.sum(state * Cv, axis=1) + load_vec(D_ptr, d, d_mask, HAS_D, BLOCK_D) * x
    if HAS_Z:
        z = tl.load(z_ptr + b64 * stride_z + d, mask=d_mask, other=0.0).to(tl.float32)
        out = out * z * tl.sigmoid(z)
    out = out.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + b64 * dim + d, out, mask=d_mask)
    return out.to(tl.float32)
