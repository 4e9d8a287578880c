"""Fused Triton decode step of the selective scan (one token), updating the state in place.

Semantics of :func:`mamba_bio_audio.kernels.selective_state_update.reference.selective_state_update_ref`:

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

from mamba_bio_audio.kernels import utils
from mamba_bio_audio.kernels.utils import advance_state, dt_activation, load_vec

DEFAULT_BLOCK_D = 32
DEFAULT_NUM_WARPS = 4


@triton.jit
def _step_kernel(
    state_ptr, x_ptr, dt_ptr, W_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    dim, d_state, dt_rank, channels_per_group_b, groups_b, channels_per_group_c, groups_c,
    stride_sb, stride_sd, stride_sn, stride_x, stride_dt, stride_z, stride_bb, stride_bg, stride_cb, stride_cg,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DT_PROJ: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """state (batch, dim, d_state) strided; x, z (batch, dim), B, C (batch, groups, d_state) with row strides
    (unit stride within a row); out (batch, dim) contiguous. dt: (batch, dim), or with DT_PROJ (batch, dt_rank)
    and dt = dt @ W.T for W (dim, dt_rank) contiguous."""
    pid, b = tl.program_id(0), tl.program_id(1)
    d = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_mask = d < dim
    dn_mask = d_mask[:, None] & (n < d_state)[None, :]
    b64 = b.to(tl.int64)

    x = tl.load(x_ptr + b64 * stride_x + d, mask=d_mask, other=0.0).to(tl.float32)
    bias = load_vec(bias_ptr, d, d_mask, HAS_BIAS, BLOCK_D)
    if DT_PROJ:  # the low-rank dt projection of this program's channels, in fp32
        r = tl.arange(0, BLOCK_R)
        r_mask = r < dt_rank
        low = tl.load(dt_ptr + b64 * stride_dt + r, mask=r_mask, other=0.0).to(tl.float32)
        W = tl.load(W_ptr + d[:, None] * dt_rank + r[None, :], mask=d_mask[:, None] & r_mask[None, :],
                    other=0.0).to(tl.float32)
        dt_raw = tl.sum(W * low[None, :], axis=1)
    else:
        dt_raw = tl.load(dt_ptr + b64 * stride_dt + d, mask=d_mask, other=0.0).to(tl.float32)
    dt = dt_activation(dt_raw + bias, SOFTPLUS)
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    # Channel d reads group d // channels_per_group of B and C (a gather; B and C are tiny).
    Bg = b64 * stride_bb + (d // channels_per_group_b) * stride_bg
    Cg = b64 * stride_cb + (d // channels_per_group_c) * stride_cg
    Bv = tl.load(B_ptr + Bg[:, None] + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + Cg[:, None] + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)

    advance_state(state_ptr, x, dt, A, Bv, Cv, D_ptr, z_ptr, out_ptr, b64, d, n, d_mask, dn_mask, dim,
             stride_sb, stride_sd, stride_sn, stride_z, HAS_D, HAS_Z, BLOCK_D)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A (batch, n) operand as the kernel reads it: any row stride, unit stride within a row (else copied)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _grouped(X: torch.Tensor, dim: int) -> tuple[torch.Tensor, int, int]:
    """B or C (batch, d_state) | (batch, groups, d_state) -> (3-D view with unit last stride, channels per group,
    groups)."""
    if X.dim() == 2:
        X = X.unsqueeze(1)
    groups = X.shape[1]
    if dim % groups != 0:
        raise ValueError(f"dim {dim} is not a multiple of the number of B/C groups {groups}")
    return _rows(X), dim // groups, groups


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  dt_proj_weight=None, *, block_d=None, num_warps=None):
    """One recurrent step; ``state`` is updated in place (any float dtype, any strides).

    Args:
        state: (batch, dim, d_state). x: (batch, dim). z: (batch, dim) or None. A: (dim, d_state).
        dt: (batch, dim); or, with ``dt_proj_weight`` (dim, dt_rank), the low-rank (batch, dt_rank), projected
            here (dt @ dt_proj_weight.T in fp32; one matrix product fewer per decode step).
        B, C: (batch, d_state) or (batch, groups, d_state). D, dt_bias: (dim,) or None.
        x, z, dt, B, C may be row-strided views (e.g. the halves of in_proj's output): read in place.
        block_d, num_warps: launch tunables (default 32 channels, 4 warps per program).
    Returns:
        out: (batch, dim) in x's dtype, contiguous.
    """
    batch, dim, d_state = state.shape
    x, dt, A = _rows(x), _rows(dt), A.contiguous()
    B, cpg_b, groups_b = _grouped(B, dim)
    C, cpg_c, groups_c = _grouped(C, dim)
    z = _rows(z) if z is not None else None
    D, dt_bias = (t.contiguous() if t is not None else None for t in (D, dt_bias))
    W = dt_proj_weight.contiguous() if dt_proj_weight is not None else None
    dt_rank = W.shape[1] if W is not None else 0
    if W is not None and (W.shape[0] != dim or dt.shape[-1] != dt_rank):
        raise ValueError(f"dt_proj_weight {tuple(W.shape)} does not map dt {tuple(dt.shape)} to {dim} channels")
    out = utils.empty(batch, dim, like=x)
    block_d = block_d or DEFAULT_BLOCK_D
    grid = (utils.cdiv(dim, block_d), batch)
    _step_kernel[grid](
        state, x, dt, W if W is not None else x, A, B, C, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else x, out,
        dim, d_state, dt_rank, cpg_b, groups_b, cpg_c, groups_c, *state.stride(), x.stride(0), dt.stride(0),
        z.stride(0) if z is not None else 0, B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        DT_PROJ=W is not None, BLOCK_D=block_d, BLOCK_N=utils.next_power_of_2(d_state),
        BLOCK_R=utils.next_power_of_2(max(dt_rank, 1)), num_warps=num_warps or DEFAULT_NUM_WARPS,
    )
    return out
