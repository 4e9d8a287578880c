"""Fused Triton decode step of the selective scan (one token), updating the state in place.

Semantics of :func:`mamba_bio_audio.kernels.selective_scan.naive.selective_state_update_naive`:

    dt = softplus(dt + dt_bias) (or without softplus)
    state <- exp(dt A) state + dt B x          (fp32 arithmetic, stored back in state's dtype)
    out    = C . state + D x, times silu(z)    (from the fp32 state, before rounding)

One program owns (one batch row, BLOCK_D channels) and reads and writes its (BLOCK_D, d_state) slice of the state
once: the step is memory-bound, so it moves each state byte twice and nothing else of size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_bio_audio.kernels.selective_scan.triton_scan import _LOG2E, _dt, _load_vec

DEFAULT_BLOCK_D = 32
DEFAULT_NUM_WARPS = 4


@triton.jit
def _step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    dim, d_state, channels_per_group_b, groups_b, channels_per_group_c, groups_c,
    stride_sb, stride_sd, stride_sn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """state (batch, dim, d_state) strided; x, dt, z, out (batch, dim); B, C (batch, groups, d_state)."""
    pid, b = tl.program_id(0), tl.program_id(1)
    d = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_mask = d < dim
    dn_mask = d_mask[:, None] & (n < d_state)[None, :]
    row = b * dim + d

    x = tl.load(x_ptr + row, mask=d_mask, other=0.0).to(tl.float32)
    bias = _load_vec(bias_ptr, d, d_mask, HAS_BIAS, BLOCK_D)
    dt = _dt(tl.load(dt_ptr + row, mask=d_mask, other=0.0).to(tl.float32) + bias, SOFTPLUS)
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    # Channel d reads group d // channels_per_group of B and C (a gather; B and C are tiny).
    Bg = (b * groups_b + d // channels_per_group_b) * d_state
    Cg = (b * groups_c + d // channels_per_group_c) * d_state
    Bv = tl.load(B_ptr + Bg[:, None] + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + Cg[:, None] + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)

    s_ptrs = state_ptr + b.to(tl.int64) * stride_sb + d[:, None].to(tl.int64) * stride_sd + n[None, :] * stride_sn
    state = tl.load(s_ptrs, mask=dn_mask, other=0.0).to(tl.float32)
    state = tl.exp2(dt[:, None] * A * _LOG2E) * state + (dt * x)[:, None] * Bv
    tl.store(s_ptrs, state.to(state_ptr.dtype.element_ty), mask=dn_mask)

    out = tl.sum(state * Cv, axis=1) + _load_vec(D_ptr, d, d_mask, HAS_D, BLOCK_D) * x
    if HAS_Z:
        z = tl.load(z_ptr + row, mask=d_mask, other=0.0).to(tl.float32)
        out = out * z * tl.sigmoid(z)
    tl.store(out_ptr + row, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def _empty(*shape: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Allocates every kernel output (uninitialised); tests swap it for a NaN fill to catch unwritten elements."""
    return torch.empty(*shape, device=like.device, dtype=dtype or like.dtype)


def _grouped(X: torch.Tensor, dim: int) -> tuple[torch.Tensor, int, int]:
    """B or C (batch, d_state) | (batch, groups, d_state) -> (contiguous 3-D view, channels per group, groups)."""
    if X.dim() == 2:
        X = X.unsqueeze(1)
    groups = X.shape[1]
    if dim % groups != 0:
        raise ValueError(f"dim {dim} is not a multiple of the number of B/C groups {groups}")
    return X.contiguous(), dim // groups, groups


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, *,
                                  block_d=None, num_warps=None):
    """One recurrent step; ``state`` is updated in place (any float dtype, any strides).

    Args:
        state: (batch, dim, d_state). x, dt: (batch, dim). z: (batch, dim) or None. A: (dim, d_state).
        B, C: (batch, d_state) or (batch, groups, d_state). D, dt_bias: (dim,) or None.
        block_d, num_warps: launch tunables (default 32 channels, 4 warps per program).
    Returns:
        out: (batch, dim) in x's dtype.
    """
    batch, dim, d_state = state.shape
    x, dt, A = x.contiguous(), dt.contiguous(), A.contiguous()
    B, cpg_b, groups_b = _grouped(B, dim)
    C, cpg_c, groups_c = _grouped(C, dim)
    D, z, dt_bias = (t.contiguous() if t is not None else None for t in (D, z, dt_bias))
    out = _empty(*x.shape, like=x)
    block_d = block_d or DEFAULT_BLOCK_D
    grid = (triton.cdiv(dim, block_d), batch)
    _step_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else x, out,
        dim, d_state, cpg_b, groups_b, cpg_c, groups_c, *state.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(d_state), num_warps=num_warps or DEFAULT_NUM_WARPS,
    )
    return out
