"""A selective Mamba block's decode step in two Triton kernels (batch <= ops.fused_decode_max_batch()).

Unfused, one token through a block is seven launches: the residual add + RMSNorm, in_proj, the conv update, the
x_proj product, the dt_proj product, the state update and out_proj. At batch 1 each is a few microseconds of
launch and latency for a few KB of work, and a 24-layer model decodes in well under a millisecond, so launches
are the cost. Here, before out_proj (cuBLAS):

1. ``_block_head_kernel`` (:func:`mamba_block_decode_triton`), one program per (BLOCK_D channels, ROWS batch
   rows): its channels' rows of in_proj (x and z) loaded once; for each row the residual add and RMSNorm of the
   token (d_model values), the x and z products, the conv update of those channels (state in place, SiLU) and
   its partial x_proj product
   ``x_proj.weight[:, channels] @ xc[channels]`` -> partials (batch, programs, dt_rank + 2 d_state) in fp32.
   ``_conv_xproj_kernel`` (:func:`mamba_decode_inner_triton`) is the same from in_proj's output on.
2. ``_ssm_from_partials_kernel``: every program sums the partials (a few KB, from L2) into the low-rank dt, B
   and C (rounded to x's dtype, as the unfused product's output is), projects dt for its channels (dt_proj
   fused, as in the state-update kernel) and advances the state (``utils.advance_state``, as that kernel does).
   With out_proj fused (``out_proj_weight=``, the block path only): each program also multiplies its channels'
   columns of out_proj.weight by its y and adds the (d_model,) product atomically into an fp32 row; the program
   that finishes last (an atomic count per batch row) rounds the row to out_proj's dtype (+ bias) and zeroes the
   row and the count for the next step. Then a block's step is two kernels instead of three, for fp32 sums in a
   run-dependent order (``ops.fused_out_proj_ok`` keeps it off under ``torch.use_deterministic_algorithms``).

On Hopper and later both kernels can launch as programmatic dependent launches (:func:`use_pdl`): each loads its
weights before ``griddepcontrol.wait``, while the kernel before it still runs, and reads that kernel's outputs
(and writes anything) only after it.

The x_proj partials are plain per-program sums added in a fixed order: deterministic, no atomics, nothing to
zero. Every rounding of the unfused path is kept: the norm's output and in_proj's x and z in in_proj's dtype, the
residual in its own dtype, y in x's dtype, out_proj's output in its dtype.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from mamba_bio_audio.kernels import utils
from mamba_bio_audio.kernels.utils import advance_state, dt_activation

try:  # Triton >= 3.3; the block step runs without PDL where they are missing
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None

CONV_BLOCK_D = 64  # channels per conv + partial-projection program
STEP_BLOCK_D = 32  # channels per state-update program
# Channels per state-update program when it also runs out_proj (its columns of the weight, all d_model rows in
# registers): 16 compiles to 165 registers at 8 warps for d_model 768 (Triton 3.6, sm_90, no spills); 32 spills.
OUT_STEP_BLOCK_D = 16
HEAD_BLOCK_D = 8  # channels per program of the block-head kernel (x and z rows of in_proj: 2 x 8 x d_model)
HEAD_ROWS = 1  # batch rows per block-head program (more rows were slower: results/decode_ab/)
HEAD_NUM_WARPS = 8


@triton.jit
def _conv_step(x_new, conv_ptr, cw_ptr, cb_ptr, b64, d, d_mask, state_len, stride_cb, stride_cd, stride_cl,
               WIDTH: tl.constexpr, HAS_CB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """The conv update of channels d for one token x_new (BLOCK_D,) in the conv state's element type: returns
    silu(conv) (BLOCK_D,) fp32 and shifts the state (batch, dim, state_len) of row b64 in place."""
    s_row = conv_ptr + b64 * stride_cb + d.to(tl.int64) * stride_cd
    if HAS_CB:
        acc = tl.load(cb_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK_D], tl.float32)
    # conv over xp = [state (state_len steps), x]: the output at x's position reads xp[state_len - W + 1 + k]
    for k in tl.static_range(WIDTH):
        p = state_len - (WIDTH - 1) + k
        old = tl.load(s_row + p * stride_cl, mask=d_mask & (p < state_len), other=0.0).to(x_new.dtype)
        v = tl.where(p < state_len, old, x_new)
        acc += tl.load(cw_ptr + d * WIDTH + k, mask=d_mask, other=0.0).to(tl.float32) * v.to(tl.float32)

    # the state shifts by one step: new[j] = xp[1 + j]
    j = tl.arange(0, BLOCK_S)
    src = 1 + j
    j_ok = d_mask[:, None] & (j < state_len)[None, :]
    old = tl.load(s_row[:, None] + src[None, :] * stride_cl, mask=j_ok & (src < state_len)[None, :], other=0.0)
    new = tl.where((src < state_len)[None, :], old.to(x_new.dtype), x_new[:, None])
    tl.debug_barrier()  # every read of the old state above happens before any write below
    tl.store(s_row[:, None] + j[None, :] * stride_cl, new.to(conv_ptr.dtype.element_ty), mask=j_ok)
    return acc * tl.sigmoid(acc)


@triton.jit
def _partial_xproj(W_ptr, xc, part_ptr, b64, pid, d, d_mask, dim, n_out, n_parts, BLOCK_K: tl.constexpr):
    """This program's share of x_proj, W[:, d] @ xc[d] (W (n_out, dim) contiguous), stored as partial row pid."""
    k = tl.arange(0, BLOCK_K)
    k_mask = k < n_out
    W = tl.load(W_ptr + k[:, None] * dim + d[None, :], mask=k_mask[:, None] & d_mask[None, :],
                other=0.0).to(tl.float32)
    part = tl.sum(W * xc.to(tl.float32)[None, :], axis=1)
    tl.store(part_ptr + (b64 * n_parts + pid) * n_out + k, part, mask=k_mask)


@triton.jit
def _conv_xproj_kernel(x_ptr, conv_ptr, cw_ptr, cb_ptr, W_ptr, xc_ptr, part_ptr,
                       dim, n_out, state_len, n_parts, stride_x, stride_cb, stride_cd, stride_cl,
                       WIDTH: tl.constexpr, HAS_CB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """x (batch, dim) row-strided; conv state (batch, dim, state_len) strided, shifted in place; xc (batch, dim)
    contiguous; W = x_proj.weight (n_out, dim) contiguous; partials (batch, n_parts, n_out) fp32."""
    pid, b = tl.program_id(0), tl.program_id(1)
    b64 = b.to(tl.int64)
    d = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    x_new = tl.load(x_ptr + b64 * stride_x + d, mask=d_mask, other=0.0)
    xc = _conv_step(x_new, conv_ptr, cw_ptr, cb_ptr, b64, d, d_mask, state_len, stride_cb, stride_cd, stride_cl,
                    WIDTH, HAS_CB, BLOCK_D, BLOCK_S).to(xc_ptr.dtype.element_ty)
    tl.store(xc_ptr + b64 * dim + d, xc, mask=d_mask)
    _partial_xproj(W_ptr, xc, part_ptr, b64, pid, d, d_mask, dim, n_out, n_parts, BLOCK_K)


@triton.jit
def _block_head_kernel(h_ptr, r_ptr, nw_ptr, rout_ptr, Win_ptr, bin_ptr, conv_ptr, cw_ptr, cb_ptr, W_ptr,
                       xc_ptr, z_ptr, part_ptr,
                       batch, d_model, dim, n_out, state_len, n_parts, stride_h, stride_r, stride_cb, stride_cd,
                       stride_cl, eps,
                       HAS_RES: tl.constexpr, HAS_IN_BIAS: tl.constexpr, WIDTH: tl.constexpr, HAS_CB: tl.constexpr,
                       ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    """A block's step up to the SSM for channels d and batch rows ROWS * program_id(1) + 0 .. ROWS - 1: add +
    RMSNorm, the x and z rows of in_proj (loaded once, used for each row), the conv update and the partial
    x_proj. h, r (batch, d_model) row-strided (r absent for the first block); residual out (batch, d_model)
    contiguous, written by the programs of channel block 0; Win = in_proj.weight (2 dim, d_model) contiguous, in
    the dtype the norm's output is rounded to; xc, z (batch, dim) contiguous; partials as in _conv_xproj_kernel.
    USE_PDL: launched as a programmatic dependent launch (:func:`use_pdl`)."""
    pid = tl.program_id(0)
    m = tl.arange(0, BLOCK_M)
    m_mask = m < d_model
    d = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    w_mask = d_mask[:, None] & m_mask[None, :]
    rows = Win_ptr + d.to(tl.int64)[:, None] * d_model + m[None, :]
    Wx = tl.load(rows, mask=w_mask, other=0.0)  # (BLOCK_D, BLOCK_M), in_proj's dtype: x rows
    Wz = tl.load(rows + dim * d_model, mask=w_mask, other=0.0)  # z rows
    w_norm = tl.load(nw_ptr + m, mask=m_mask, other=0.0).to(tl.float32)
    if HAS_IN_BIAS:
        bx = tl.load(bin_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
        bz = tl.load(bin_ptr + dim + d, mask=d_mask, other=0.0).to(tl.float32)
    if USE_PDL:  # the weights above load while the previous kernel still runs; its outputs are read below
        gdc_wait()
        gdc_launch_dependents()
    for i in range(ROWS):
        b = tl.program_id(1) * ROWS + i
        if b < batch:
            b64 = b.to(tl.int64)
            # add + RMSNorm of the token's d_model features (a few KB); the sum is kept in fp32
            r = tl.load(h_ptr + b64 * stride_h + m, mask=m_mask, other=0.0).to(tl.float32)
            if HAS_RES:
                r += tl.load(r_ptr + b64 * stride_r + m, mask=m_mask, other=0.0).to(tl.float32)
            if pid == 0:
                tl.store(rout_ptr + b64 * d_model + m, r.to(rout_ptr.dtype.element_ty), mask=m_mask)
            rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=0) / d_model + eps)
            normed = (r * rstd * w_norm).to(Win_ptr.dtype.element_ty).to(tl.float32)
            # in_proj rows d (x) and dim + d (z): fp32 sums rounded to in_proj's dtype as F.linear's output is
            x_new = tl.sum(Wx.to(tl.float32) * normed[None, :], axis=1)
            z = tl.sum(Wz.to(tl.float32) * normed[None, :], axis=1)
            if HAS_IN_BIAS:
                x_new += bx
                z += bz
            x_new = x_new.to(Win_ptr.dtype.element_ty)
            tl.store(z_ptr + b64 * dim + d, z.to(z_ptr.dtype.element_ty), mask=d_mask)
            xc = _conv_step(x_new, conv_ptr, cw_ptr, cb_ptr, b64, d, d_mask, state_len, stride_cb, stride_cd,
                            stride_cl, WIDTH, HAS_CB, BLOCK_D, BLOCK_S).to(xc_ptr.dtype.element_ty)
            tl.store(xc_ptr + b64 * dim + d, xc, mask=d_mask)
            _partial_xproj(W_ptr, xc, part_ptr, b64, pid, d, d_mask, dim, n_out, n_parts, BLOCK_K)


@triton.jit
def _summed(base, offset, count, p_mask, like_ptr, BLOCK: tl.constexpr):
    """Sum over the partial rows of columns offset .. offset + count: (BLOCK,) fp32, rounded through the
    element type of like_ptr (as the unfused x_proj product's output is)."""
    i = tl.arange(0, BLOCK)
    tile = tl.load(base + offset + i[None, :], mask=p_mask[:, None] & (i < count)[None, :], other=0.0)
    return tl.sum(tile, axis=0).to(like_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _out_proj_share(y, Wo, bo_ptr, acc_ptr, count_ptr, hid_ptr, b64, m, m_mask, d_model, n_programs,
                    HAS_OUT_BIAS: tl.constexpr):
    """This program's share of out_proj for batch row b64, ``Wo @ y`` (Wo (BLOCK_M, BLOCK_D): the program's
    columns of out_proj.weight, rows m; y (BLOCK_D,) fp32), added atomically into the fp32 row acc (batch,
    d_model). The program that counts last in count (batch,) int32 writes the finished row (+ bias) to hid
    (batch, d_model) in hid's element type, as a Linear in that dtype rounds its output, and leaves acc and count
    at zero for the next step."""
    row = b64 * d_model
    tl.atomic_add(acc_ptr + row + m, tl.sum(Wo.to(tl.float32) * y[None, :], axis=1), mask=m_mask, sem="relaxed")
    # Every thread's adds are issued before the count; the count's release (acq_rel at GPU scope, after the
    # barrier) makes them visible to the program that counts last, whose acquire sees all of them (the pattern
    # of a CUDA grid sync: __syncthreads, then one thread's fence and atomic).
    tl.debug_barrier()
    done = tl.atomic_add(count_ptr + b64, 1, sem="acq_rel")
    if done == n_programs - 1:
        # read at L2 and reset in one atomic (no stale L1 line can be read), on the fp32 bits as int32 (the
        # interpreter exchanges integers only)
        bits = tl.atomic_xchg(acc_ptr.to(tl.pointer_type(tl.int32)) + row + m, tl.zeros_like(m), mask=m_mask,
                              sem="relaxed")
        total = bits.to(tl.float32, bitcast=True)
        if HAS_OUT_BIAS:
            total += tl.load(bo_ptr + m, mask=m_mask, other=0.0).to(tl.float32)
        tl.store(hid_ptr + row + m, total.to(hid_ptr.dtype.element_ty), mask=m_mask)
        tl.atomic_xchg(count_ptr + b64, 0, sem="relaxed")


@triton.jit
def _ssm_from_partials_kernel(state_ptr, xc_ptr, z_ptr, part_ptr, Wdt_ptr, A_ptr, D_ptr, bias_ptr, out_ptr,
                              Wo_ptr, bo_ptr, acc_ptr, count_ptr, hid_ptr,
                              dim, d_state, dt_rank, n_out, n_parts, d_model,
                              stride_sb, stride_sd, stride_sn, stride_z,
                              HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_OUT_PROJ: tl.constexpr,
                              HAS_OUT_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
                              USE_PDL: tl.constexpr):
    """state (batch, dim, d_state) strided, advanced in place; xc, out (batch, dim) contiguous; z row-strided;
    partials (batch, n_parts, n_out) fp32 with n_out = dt_rank + 2 d_state; Wdt = dt_proj.weight (dim, dt_rank).
    HAS_OUT_PROJ: out_proj too (:func:`_out_proj_share`: Wo (d_model, dim), bo (d_model,), acc (batch, d_model)
    fp32 and count (batch,) int32 zeros on entry and exit, hid (batch, d_model) the block's output; BLOCK_M >=
    d_model). USE_PDL: launched as a programmatic dependent launch (:func:`use_pdl`)."""
    pid, b = tl.program_id(0), tl.program_id(1)
    b64 = b.to(tl.int64)
    d = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_mask = d < dim
    dn_mask = d_mask[:, None] & (n < d_state)[None, :]
    # the weights first: with PDL they load while the previous kernel still runs
    r = tl.arange(0, BLOCK_R)
    Wdt = tl.load(Wdt_ptr + d[:, None] * dt_rank + r[None, :], mask=d_mask[:, None] & (r < dt_rank)[None, :],
                  other=0.0).to(tl.float32)
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt_bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_OUT_PROJ:  # this program's columns of out_proj.weight, all d_model rows (BLOCK_M >= d_model)
        m = tl.arange(0, BLOCK_M)
        m_mask = m < d_model
        Wo = tl.load(Wo_ptr + m.to(tl.int64)[:, None] * dim + d[None, :], mask=m_mask[:, None] & d_mask[None, :],
                     other=0.0)
    if USE_PDL:
        gdc_wait()  # the previous kernel's outputs (the partials, xc, z) are complete and visible from here
        gdc_launch_dependents()
    rows = tl.arange(0, BLOCK_P)
    p_mask = rows < n_parts
    base = part_ptr + b64 * n_parts * n_out + rows[:, None] * n_out
    low = _summed(base, 0, dt_rank, p_mask, xc_ptr, BLOCK_R)
    Bv = _summed(base, dt_rank, d_state, p_mask, xc_ptr, BLOCK_N)
    Cv = _summed(base, dt_rank + d_state, d_state, p_mask, xc_ptr, BLOCK_N)

    raw = tl.sum(Wdt * low[None, :], axis=1)
    if HAS_BIAS:
        raw += dt_bias
    dt = dt_activation(raw, True)
    x = tl.load(xc_ptr + b64 * dim + d, mask=d_mask, other=0.0).to(tl.float32)
    y = advance_state(state_ptr, x, dt, A, Bv[None, :], Cv[None, :], D_ptr, z_ptr, out_ptr, b64, d, n, d_mask,
                      dn_mask, dim, stride_sb, stride_sd, stride_sn, stride_z, HAS_D, True, BLOCK_D)
    if HAS_OUT_PROJ:
        _out_proj_share(y, Wo, bo_ptr, acc_ptr, count_ptr, hid_ptr, b64, m, m_mask, d_model, tl.num_programs(0),
                        HAS_OUT_BIAS)


PDL_ENV = "MBA_DECODE_PDL"
DEFAULT_PDL = "1"  # timed and tested on an H100 2026-12-07 (with out_proj fused: results/bench_generate_2233.md)


@functools.cache
def _pdl_capable(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def use_pdl(like: torch.Tensor) -> bool:
    """Whether the block step's two kernels launch as programmatic dependent launches (Hopper and later): each
    then starts while the kernel before it runs, loads its weights and waits (``griddepcontrol.wait``) before
    reading that kernel's outputs or writing anything; a CUDA graph keeps the dependency. What loads before the
    wait must not be written by the kernel just before: in_proj's rows, the norm weight (head), dt_proj's rows,
    A, dt_bias and out_proj's columns (state update) are parameters, or computed from them before the block's
    first kernel (A = -exp(A_log) when the mixer does not read its decode buffers), which the head's own wait has
    seen complete by the time the state update can start. For compiled kernels on NVIDIA GPUs of compute
    capability >= 9.0 when the environment variable MBA_DECODE_PDL is "1" (default ``DEFAULT_PDL``); never under
    the interpreter."""
    return (gdc_wait is not None and like.is_cuda and torch.version.hip is None
            and isinstance(_block_head_kernel, triton.runtime.JITFunction)  # not under TRITON_INTERPRET=1
            and os.environ.get(PDL_ENV, DEFAULT_PDL) != "0" and _pdl_capable(like.device.index or 0))


def _check_shapes(dim, d_state, dt_rank, n_out, width, x_proj_weight, dt_proj_weight, conv_state):
    if n_out != dt_rank + 2 * d_state or x_proj_weight.shape[1] != dim or dt_proj_weight.shape[0] != dim:
        raise ValueError(f"x_proj_weight {tuple(x_proj_weight.shape)} / dt_proj_weight {tuple(dt_proj_weight.shape)} "
                         f"do not fit dim {dim}, d_state {d_state}")
    if conv_state.shape[-1] < width - 1:
        raise ValueError(f"conv_state holds {conv_state.shape[-1]} steps, fewer than width - 1 = {width - 1}")


def _check_out_proj(out_proj_weight, out_proj_bias, scratch, batch, dim):
    d_model = out_proj_weight.shape[0]
    if out_proj_weight.shape[1] != dim or (out_proj_bias is not None and out_proj_bias.shape != (d_model,)):
        raise ValueError(f"out_proj_weight {tuple(out_proj_weight.shape)} does not fit dim {dim}")
    acc, count = scratch["acc"], scratch["count"]
    if (acc.shape != (batch, d_model) or acc.dtype != torch.float32 or not acc.is_contiguous()
            or count.shape != (batch,) or count.dtype != torch.int32):
        raise ValueError(f"out_proj scratch acc {tuple(acc.shape)} {acc.dtype} / count {tuple(count.shape)} "
                         f"{count.dtype} is not out_proj_scratch({batch}, {d_model})")


def _ssm_from_partials(xc, z, partials, dt_proj_weight, dt_bias, A, D, ssm_state, block_d, out_proj_weight=None,
                       out_proj_bias=None, scratch=None, pdl=False):
    """The second kernel: y (batch, dim) in xc's dtype from the partial x_proj sums; ssm_state advanced. With
    out_proj_weight (d_model, dim) and its scratch: out_proj(y) (batch, d_model) in out_proj's dtype instead.
    ``pdl``: a programmatic dependent launch (:func:`use_pdl`), for the block step's kernels."""
    batch, dim = xc.shape
    d_state, dt_rank, n_parts, n_out = ssm_state.shape[-1], dt_proj_weight.shape[1], *partials.shape[1:]
    out = utils.empty(batch, dim, like=xc)
    fused_out = out_proj_weight is not None
    if fused_out:
        _check_out_proj(out_proj_weight, out_proj_bias, scratch, batch, dim)
        d_model = out_proj_weight.shape[0]
        hidden = utils.empty(batch, d_model, like=xc, dtype=out_proj_weight.dtype)
    else:
        d_model, hidden = 0, out
    _ssm_from_partials_kernel[(utils.cdiv(dim, block_d), batch)](
        ssm_state, xc, z, partials, dt_proj_weight.contiguous(), A.contiguous(),
        D.contiguous() if D is not None else xc, dt_bias.contiguous() if dt_bias is not None else xc, out,
        out_proj_weight.contiguous() if fused_out else xc,
        out_proj_bias if fused_out and out_proj_bias is not None else xc,
        scratch["acc"] if fused_out else xc, scratch["count"] if fused_out else xc, hidden,
        dim, d_state, dt_rank, n_out, n_parts, d_model, *ssm_state.stride(), z.stride(0),
        HAS_D=D is not None, HAS_BIAS=dt_bias is not None, HAS_OUT_PROJ=fused_out,
        HAS_OUT_BIAS=fused_out and out_proj_bias is not None, BLOCK_D=block_d,
        BLOCK_N=utils.next_power_of_2(d_state), BLOCK_R=utils.next_power_of_2(dt_rank),
        BLOCK_P=utils.next_power_of_2(n_parts), BLOCK_M=utils.next_power_of_2(d_model) if fused_out else 1,
        USE_PDL=pdl, num_warps=8 if fused_out else 4, launch_pdl=pdl,
    )
    return hidden


def mamba_decode_inner_triton(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias,
                              A, D, ssm_state, *, conv_block_d=None, block_d=None):
    """One token through a selective mixer's middle: conv update + SiLU, x_proj, dt_proj, softplus, state update,
    D skip and the silu(z) gate. Both states are advanced in place.

    Args:
        x, z: (batch, dim), the halves of in_proj's output (row-strided views are read in place).
        conv_state: (batch, dim, state_len >= width - 1). conv_weight: (dim, width). conv_bias: (dim,) or None.
        x_proj_weight: (dt_rank + 2 d_state, dim). dt_proj_weight: (dim, dt_rank). dt_bias, D: (dim,) or None.
        A: (dim, d_state). ssm_state: (batch, dim, d_state), any float dtype and strides.
    Returns:
        y: (batch, dim) in x's dtype, contiguous (the input of out_proj).
    """
    batch, dim = x.shape
    d_state, width = ssm_state.shape[-1], conv_weight.shape[1]
    dt_rank, n_out = dt_proj_weight.shape[1], x_proj_weight.shape[0]
    _check_shapes(dim, d_state, dt_rank, n_out, width, x_proj_weight, dt_proj_weight, conv_state)
    state_len = conv_state.shape[-1]
    x = x if x.stride(-1) == 1 else x.contiguous()
    z = z if z.stride(-1) == 1 else z.contiguous()
    conv_block_d = conv_block_d or CONV_BLOCK_D
    n_parts = utils.cdiv(dim, conv_block_d)
    xc = utils.empty(batch, dim, like=x)
    partials = utils.empty(batch, n_parts, n_out, like=x, dtype=torch.float32)
    _conv_xproj_kernel[(n_parts, batch)](
        x, conv_state, conv_weight.contiguous(), conv_bias if conv_bias is not None else x,
        x_proj_weight.contiguous(), xc, partials, dim, n_out, state_len, n_parts, x.stride(0), *conv_state.stride(),
        WIDTH=width, HAS_CB=conv_bias is not None, BLOCK_D=conv_block_d,
        BLOCK_S=utils.next_power_of_2(state_len), BLOCK_K=utils.next_power_of_2(n_out), num_warps=4,
    )
    return _ssm_from_partials(xc, z, partials, dt_proj_weight, dt_bias, A, D, ssm_state, block_d or STEP_BLOCK_D)


def mamba_block_decode_triton(hidden, residual, norm_weight, eps, in_proj_weight, in_proj_bias, conv_state,
                              conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state, *,
                              residual_dtype=None, head_block_d=None, head_rows=None, block_d=None,
                              out_proj_weight=None, out_proj_bias=None, out_scratch=None):
    """One token through a pre-norm block up to out_proj: residual add + RMSNorm, in_proj, then as
    :func:`mamba_decode_inner_triton`; two kernels. Both states are advanced in place. With ``out_proj_weight``
    (and ``out_scratch`` from ``ops.out_proj_scratch``), out_proj runs inside the second kernel too (each program
    adds its channels' share atomically in fp32; the last one rounds the row): the block's whole step in two
    kernels, its fp32 sums in a run-dependent order.

    Args:
        hidden: (batch, d_model), the previous block's mixer output (or the embedding for the first block).
        residual: (batch, d_model) or None (first block). norm_weight: (d_model,). eps: the norm's epsilon.
        in_proj_weight: (2 dim, d_model); the norm's output is rounded to its dtype (as an RMSNorm in that dtype
            feeding a Linear in that dtype does), and so are x and z. in_proj_bias: (2 dim,) or None.
        the rest: as :func:`mamba_decode_inner_triton`. residual_dtype: of the returned residual (default: hidden
            and residual promoted). out_proj_weight: (d_model, dim) or None; out_proj_bias: (d_model,) or None.
    Returns:
        (y (batch, dim) in in_proj's dtype, the input of out_proj; residual_out = hidden + residual (batch, d_model)),
        or with out_proj_weight (out_proj(y) (batch, d_model) in out_proj's dtype, residual_out).
    """
    batch, d_model = hidden.shape
    dim = in_proj_weight.shape[0] // 2
    d_state, width = ssm_state.shape[-1], conv_weight.shape[1]
    dt_rank, n_out = dt_proj_weight.shape[1], x_proj_weight.shape[0]
    if in_proj_weight.shape != (2 * dim, d_model) or norm_weight.shape != (d_model,):
        raise ValueError(f"in_proj_weight {tuple(in_proj_weight.shape)} / norm_weight {tuple(norm_weight.shape)} "
                         f"do not fit d_model {d_model}")
    _check_shapes(dim, d_state, dt_rank, n_out, width, x_proj_weight, dt_proj_weight, conv_state)
    if residual_dtype is None:
        residual_dtype = hidden.dtype if residual is None else torch.promote_types(hidden.dtype, residual.dtype)
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    head_block_d = head_block_d or HEAD_BLOCK_D
    head_rows = min(head_rows or HEAD_ROWS, batch)
    n_parts = utils.cdiv(dim, head_block_d)
    dtype = in_proj_weight.dtype
    residual_out = utils.empty(batch, d_model, like=hidden, dtype=residual_dtype)
    xc = utils.empty(batch, dim, like=hidden, dtype=dtype)
    z = utils.empty(batch, dim, like=hidden, dtype=dtype)
    partials = utils.empty(batch, n_parts, n_out, like=hidden, dtype=torch.float32)
    pdl = use_pdl(hidden)
    _block_head_kernel[(n_parts, utils.cdiv(batch, head_rows))](
        hidden, residual if residual is not None else hidden, norm_weight, residual_out, in_proj_weight.contiguous(),
        in_proj_bias if in_proj_bias is not None else hidden, conv_state, conv_weight.contiguous(),
        conv_bias if conv_bias is not None else hidden, x_proj_weight.contiguous(), xc, z, partials,
        batch, d_model, dim, n_out, conv_state.shape[-1], n_parts, hidden.stride(0),
        residual.stride(0) if residual is not None else 0, *conv_state.stride(), float(eps),
        HAS_RES=residual is not None, HAS_IN_BIAS=in_proj_bias is not None, WIDTH=width,
        HAS_CB=conv_bias is not None, ROWS=head_rows, BLOCK_D=head_block_d, BLOCK_M=utils.next_power_of_2(d_model),
        BLOCK_S=utils.next_power_of_2(conv_state.shape[-1]), BLOCK_K=utils.next_power_of_2(n_out),
        USE_PDL=pdl, num_warps=HEAD_NUM_WARPS, launch_pdl=pdl,
    )
    if out_proj_weight is not None:
        if out_scratch is None:
            raise ValueError("out_proj_weight needs out_scratch (ops.out_proj_scratch(batch, d_model, like))")
        return _ssm_from_partials(xc, z, partials, dt_proj_weight, dt_bias, A, D, ssm_state,
                                  block_d or OUT_STEP_BLOCK_D, out_proj_weight, out_proj_bias, out_scratch,
                                  pdl=pdl), residual_out
    y = _ssm_from_partials(xc, z, partials, dt_proj_weight, dt_bias, A, D, ssm_state, block_d or STEP_BLOCK_D,
                           pdl=pdl)
    return y, residual_out
