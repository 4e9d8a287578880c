"""Fused Triton selective scan (Mamba-1): forward and backward kernels and their autograd Function.

Semantics are those of :func:`mamba_bio_audio.kernels.selective_scan.naive.selective_scan_naive`:

    dt_t  = softplus(delta_t + delta_bias)  (or without softplus)      (batch, dim, seqlen)
    h_t   = exp(dt_t A) * h_{t-1} + dt_t B_t u_t                       (batch, dim, d_state), h_{-1} = initial_state
    y_t   = C_t . h_t + D u_t ;  out_t = y_t * silu(z_t)

Design (NOTES.md has the floor analysis and what to try on the GPU):

* A program owns (one batch row, BLOCK_D channels that share one B/C group, one time segment). Its state
  h (BLOCK_D, d_state) stays in registers while it walks the segment in chunks of CHUNK steps. Inside a chunk
  the recurrence is a first-order linear scan over a (BLOCK_D, BLOCK_N, CHUNK) tile: pairs (a, b) meaning
  h -> a h + b compose associatively, so ``tl.associative_scan`` gives every h_t of the chunk from the
  carried state. d_state is padded to BLOCK_N (a power of 2) with masks; padded lanes keep a zero state.
* The forward writes ``out`` and the fp32 state at every chunk start (batch, dim, nchunks, d_state), never the
  full state. The backward recomputes each chunk from that saved state.
* Long sequences with few channels (batch 1, dim 512, seqlen 2^20: few state chains) are split over
  ``n_segments`` time segments: a summary pass gives each segment's end state from a zero start and its total
  decay exp(A sum dt); each segment's program then folds in the summaries of the segments before it.
  The backward does the same, right to left, for the state gradient.
* Deterministic: no atomics. Per-program partial sums (dA, dD, d delta_bias, dB, dC) are reduced with
  torch.sum in the wrapper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)


# ----------------------------------------------------------------------------------------------------------
# Elementwise helpers
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose the affine maps h -> a1 h + b1, then h -> a2 h + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), with log1p(e) = log(1 + e) * e / ((1 + e) - 1) (exact to ~1 ulp)."""
    e = tl.exp(-tl.abs(x))
    one_plus = 1.0 + e
    log1p = tl.where(one_plus == 1.0, e, tl.log(one_plus) * (e / (one_plus - 1.0)))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _dt(raw, SOFTPLUS: tl.constexpr):
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return dt


@triton.jit
def _dt_tile(delta_ptr, offs, mask, bias, SOFTPLUS: tl.constexpr):
    """dt (zero where masked, so masked steps are identity steps: exp(0 A) = 1, dt B u = 0) and delta + bias."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32) + bias[:, None]
    return tl.where(mask, _dt(raw, SOFTPLUS), 0.0), raw


@triton.jit
def _bc_tile(ptr, base, d, n, t, dn_mask, nt_mask, d_state, seqlen, VARYING: tl.constexpr):
    """B or C as a tile broadcastable to (BLOCK_D, BLOCK_N, CHUNK), in fp32.

    VARYING: ptr is (batch, groups, d_state, seqlen) and ``base`` the offset of this program's (batch, group);
    else ptr is (dim, d_state), the same for every step.
    """
    if VARYING:
        x = tl.load(ptr + base + n[:, None] * seqlen + t[None, :], mask=nt_mask, other=0.0).to(tl.float32)[None, :, :]
    else:
        x = tl.load(ptr + d[:, None] * d_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)[:, :, None]
    return x


@triton.jit
def _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D: tl.constexpr):
    """Program -> (partition, channels (BLOCK_D,), mask). Channels are cut into G equal partitions that each
    lie inside one B group and one C group; a block never straddles two partitions."""
    part = pid // blocks_per_group
    local = (pid % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    return part, part * channels_per_group + local, local < channels_per_group


@triton.jit
def _group_base(b, part, groups, parts_per_group, d_state, seqlen):
    """Offset of B/C[b, group] in a (batch, groups, d_state, seqlen) tensor for partition ``part``."""
    return (b * groups + part // parts_per_group).to(tl.int64) * d_state * seqlen


@triton.jit
def _chunk_states(dt, u, Bt, A2, h):
    """All states of one chunk. dt, u: (BLOCK_D, CHUNK); Bt: broadcastable tile; A2 = A log2(e):
    (BLOCK_D, BLOCK_N); h: state before the chunk (BLOCK_D, BLOCK_N). Returns h_t and dt_t B_t u_t,
    both (BLOCK_D, BLOCK_N, CHUNK)."""
    dA = tl.exp2(dt[:, None, :] * A2[:, :, None])
    dBu = (dt * u)[:, None, :] * Bt
    decay, hs = tl.associative_scan((dA, dBu), axis=2, combine_fn=_combine)
    return hs + decay * h[:, :, None], dBu


@triton.jit
def _chunk_state_grads(dt_next, Ct, dy, A2, g):
    """Gradients w.r.t. every state of one chunk, right to left:

        g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1},   g after the chunk's last step = ``g`` (BLOCK_D, BLOCK_N).

    dt_next: dt shifted one step left (BLOCK_D, CHUNK), zero past the sequence end (there exp(0 A) = 1 and
    ``g`` is the gradient of last_state). A reverse scan computes s_t = a_t s_{t+1} + b_t with the same
    combine, since the running value enters ``_combine`` first."""
    dA_next = tl.exp2(dt_next[:, None, :] * A2[:, :, None])
    decay, gs = tl.associative_scan((dA_next, Ct * dy[:, None, :]), axis=2, combine_fn=_combine, reverse=True)
    return gs + decay * g[:, :, None]


@triton.jit
def _at_step(x, step, CHUNK: tl.constexpr):
    """x[:, :, step] of a (BLOCK_D, BLOCK_N, CHUNK) tile."""
    sel = tl.arange(0, CHUNK)[None, None, :] == step
    return tl.sum(tl.where(sel, x, 0.0), axis=2)


@triton.jit
def _silu_parts(z_ptr, offs, mask):
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    return z, sig


# ----------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, seg_h_ptr, seg_dt_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, B_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """Per time segment, from a zero state: the end state -> seg_h (batch, nseg, dim, d_state) and
    sum_t dt_t -> seg_dt (batch, nseg, dim), so that h_end = exp(A seg_dt) h_start + seg_h."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask = _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < d_state
    dn_mask = d_mask[:, None] & n_mask[None, :]
    row = (b * dim + d).to(tl.int64) * seqlen
    A2 = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32) * _LOG2E
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    b_base = _group_base(b, part, groups_b, parts_per_group_b, d_state, seqlen)

    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dt_sum = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    for c in range(c_begin, tl.minimum(c_begin + chunks_per_seg, nchunks)):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_mask = t < seqlen
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, _ = _dt_tile(delta_ptr, offs, mask, bias, SOFTPLUS)
        Bt = _bc_tile(B_ptr, b_base, d, n, t, dn_mask, n_mask[:, None] & t_mask[None, :], d_state, seqlen, B_VARYING)
        hs, _ = _chunk_states(dt, u, Bt, A2, h)
        h = _at_step(hs, CHUNK - 1, CHUNK)
        dt_sum += tl.sum(dt, axis=1)

    seg_row = (b * nseg + seg) * dim + d
    tl.store(seg_h_ptr + seg_row[:, None].to(tl.int64) * d_state + n[None, :], h, mask=dn_mask)
    tl.store(seg_dt_ptr + seg_row, dt_sum, mask=d_mask)


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seg_h_ptr, seg_dt_ptr,
    out_ptr, states_ptr, last_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b, groups_c, parts_per_group_c,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """out (batch, dim, seqlen); states (batch, dim, nchunks, d_state) = the fp32 state before each chunk;
    last (batch, dim, d_state) = the final state (written by the last segment)."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask = _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < d_state
    dn_mask = d_mask[:, None] & n_mask[None, :]
    row = (b * dim + d).to(tl.int64) * seqlen
    A2 = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32) * _LOG2E
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
    b_base = _group_base(b, part, groups_b, parts_per_group_b, d_state, seqlen)
    c_base = _group_base(b, part, groups_c, parts_per_group_c, d_state, seqlen)
    state_off = (b * dim + d)[:, None].to(tl.int64) * d_state + n[None, :]  # into (batch, dim, d_state)

    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=dn_mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    # Fold in the earlier segments: h <- exp(A sum dt) h + (their end state from zero).
    for j in range(0, seg):
        seg_row = (b * nseg + j) * dim + d
        dt_sum = tl.load(seg_dt_ptr + seg_row, mask=d_mask, other=0.0)
        h_seg = tl.load(seg_h_ptr + seg_row[:, None].to(tl.int64) * d_state + n[None, :], mask=dn_mask, other=0.0)
        h = tl.exp2(dt_sum[:, None] * A2) * h + h_seg

    c_begin = seg * chunks_per_seg
    for c in range(c_begin, tl.minimum(c_begin + chunks_per_seg, nchunks)):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_mask = t < seqlen
        nt_mask = n_mask[:, None] & t_mask[None, :]
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        tl.store(states_ptr + ((b * dim + d)[:, None].to(tl.int64) * nchunks + c) * d_state + n[None, :], h, mask=dn_mask)

        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, _ = _dt_tile(delta_ptr, offs, mask, bias, SOFTPLUS)
        Bt = _bc_tile(B_ptr, b_base, d, n, t, dn_mask, nt_mask, d_state, seqlen, B_VARYING)
        Ct = _bc_tile(C_ptr, c_base, d, n, t, dn_mask, nt_mask, d_state, seqlen, C_VARYING)
        hs, _ = _chunk_states(dt, u, Bt, A2, h)
        y = tl.sum(hs * Ct, axis=1) + Dv[:, None] * u
        if HAS_Z:
            z, sig = _silu_parts(z_ptr, offs, mask)
            y = y * z * sig
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
        h = _at_step(hs, CHUNK - 1, CHUNK)

    tl.store(last_ptr + state_off, h, mask=dn_mask & (seg == nseg - 1))


# ----------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z: tl.constexpr):
    """dy = d loss / d y_pre = dout * silu(z) (BLOCK_D, CHUNK); also z and sigmoid(z) when HAS_Z."""
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z, sig = _silu_parts(z_ptr, offs, mask)
        dy = dout * z * sig
    else:
        z, sig, dy = dout, dout, dout
    return dout, dy, z, sig


@triton.jit
def _bwd_summary_kernel(
    dout_ptr, delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, seg_g_ptr, seg_dt_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg,
    channels_per_group, blocks_per_group, groups_c, parts_per_group_c,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """Per time segment [s0, s1), from a zero gradient after it: the state gradient at its first step
    g_{s0} -> seg_g (batch, nseg, dim, d_state), and sum_{s0 < t <= s1} dt_t -> seg_dt (batch, nseg, dim),
    so that g_{s0} = exp(A seg_dt) g_{s1} + seg_g."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask = _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < d_state
    dn_mask = d_mask[:, None] & n_mask[None, :]
    row = (b * dim + d).to(tl.int64) * seqlen
    A2 = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32) * _LOG2E
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    c_base = _group_base(b, part, groups_c, parts_per_group_c, d_state, seqlen)

    g = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dt_sum = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, nchunks)
    for i in range(0, c_end - c_begin):
        t = (c_end - 1 - i) * CHUNK + tl.arange(0, CHUNK)
        t_mask = t < seqlen
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        next_mask = d_mask[:, None] & (t + 1 < seqlen)[None, :]
        dt_next, _ = _dt_tile(delta_ptr, offs + 1, next_mask, bias, SOFTPLUS)
        Ct = _bc_tile(C_ptr, c_base, d, n, t, dn_mask, n_mask[:, None] & t_mask[None, :], d_state, seqlen, C_VARYING)
        _, dy, _, _ = _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z)
        gs = _chunk_state_grads(dt_next, Ct, dy, A2, g)
        g = _at_step(gs, 0, CHUNK)
        dt_sum += tl.sum(dt_next, axis=1)

    seg_row = (b * nseg + seg) * dim + d
    tl.store(seg_g_ptr + seg_row[:, None].to(tl.int64) * d_state + n[None, :], g, mask=dn_mask)
    tl.store(seg_dt_ptr + seg_row, dt_sum, mask=d_mask)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dlast_ptr,
    seg_g_ptr, seg_dt_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dh0_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b, groups_c, parts_per_group_c,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_DLAST: tl.constexpr, SOFTPLUS: tl.constexpr, B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """All gradients. Walks its segment's chunks right to left carrying g = dL/dh after the chunk.

    With g_t = dL/dh_t (from y_t and from h_{t+1}), dy_t = dout_t silu(z_t), and dA_t h_{t-1} = h_t - dt_t B_t u_t:
        du_t      = D dy_t + dt_t sum_n g_t B_t
        d dt_t    = sum_n g_t (A dA_t h_{t-1} + B_t u_t)       (times sigmoid(delta + bias) with softplus)
        dA        = sum_t dt_t g_t dA_t h_{t-1}                -> dA (batch, nseg, dim, d_state)
        dB_t      = sum_channels g_t dt_t u_t                  -> dB (batch, programs, d_state, seqlen) or, fixed,
                                                                  (batch, nseg, dim, d_state)
        dC_t      = sum_channels dy_t h_t                      -> dC, same layouts
        dD        = sum_t dy_t u_t ; d delta_bias = sum_t d delta_t  -> (batch, nseg, dim)
        dz_t      = dout_t y_pre_t silu'(z_t) ; d initial_state = exp(dt_0 A) g_0
    """
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask = _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < d_state
    dn_mask = d_mask[:, None] & n_mask[None, :]
    row = (b * dim + d).to(tl.int64) * seqlen
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    A2 = A * _LOG2E
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
    b_base = _group_base(b, part, groups_b, parts_per_group_b, d_state, seqlen)
    c_base = _group_base(b, part, groups_c, parts_per_group_c, d_state, seqlen)
    state_off = (b * dim + d)[:, None].to(tl.int64) * d_state + n[None, :]
    seg_off = ((b * nseg + seg) * dim + d)[:, None].to(tl.int64) * d_state + n[None, :]  # into (batch, nseg, dim, d_state)
    part_row = (b * tl.num_programs(0) + pid).to(tl.int64) * d_state * seqlen  # into (batch, programs, d_state, seqlen)

    # g after this segment: dL/d last_state, carried back through the later segments with their summaries.
    if HAS_DLAST:
        g = tl.load(dlast_ptr + state_off, mask=dn_mask, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for i in range(0, nseg - 1 - seg):
        seg_row = (b * nseg + nseg - 1 - i) * dim + d
        dt_sum = tl.load(seg_dt_ptr + seg_row, mask=d_mask, other=0.0)
        g_seg = tl.load(seg_g_ptr + seg_row[:, None].to(tl.int64) * d_state + n[None, :], mask=dn_mask, other=0.0)
        g = tl.exp2(dt_sum[:, None] * A2) * g + g_seg

    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dB_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dC_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, nchunks)
    for i in range(0, c_end - c_begin):
        c = c_end - 1 - i
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_mask = t < seqlen
        nt_mask = n_mask[:, None] & t_mask[None, :]
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]

        # Recompute the chunk's states from the saved state before it.
        h = tl.load(states_ptr + ((b * dim + d)[:, None].to(tl.int64) * nchunks + c) * d_state + n[None, :],
                    mask=dn_mask, other=0.0)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, raw = _dt_tile(delta_ptr, offs, mask, bias, SOFTPLUS)
        Bt = _bc_tile(B_ptr, b_base, d, n, t, dn_mask, nt_mask, d_state, seqlen, B_VARYING)
        Ct = _bc_tile(C_ptr, c_base, d, n, t, dn_mask, nt_mask, d_state, seqlen, C_VARYING)
        hs, dBu = _chunk_states(dt, u, Bt, A2, h)

        # Output gate: out = y_pre silu(z).
        dout, dy, z, sig = _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z)
        if HAS_Z:
            y_pre = tl.sum(hs * Ct, axis=1) + Dv[:, None] * u
            dz = dout * y_pre * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)

        # State gradients, right to left from g.
        next_mask = d_mask[:, None] & (t + 1 < seqlen)[None, :]
        dt_next, _ = _dt_tile(delta_ptr, offs + 1, next_mask, bias, SOFTPLUS)
        gs = _chunk_state_grads(dt_next, Ct, dy, A2, g)
        g = _at_step(gs, 0, CHUNK)

        # Input gradients.
        gB = tl.sum(gs * Bt, axis=1)
        w = gs * (hs - dBu)  # g_t dA_t h_{t-1}
        du = Dv[:, None] * dy + dt * gB
        ddt = tl.sum(w * A[:, :, None], axis=1) + u * gB
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mask, ddt, 0.0)
        tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
        dA_acc += tl.sum(w * dt[:, None, :], axis=2)
        dD_acc += tl.sum(dy * u, axis=1)
        dbias_acc += tl.sum(ddt, axis=1)
        gdtu = gs * (dt * u)[:, None, :]
        hdy = hs * dy[:, None, :]
        if B_VARYING:
            tl.store(dB_ptr + part_row + n[:, None] * seqlen + t[None, :], tl.sum(gdtu, axis=0), mask=nt_mask)
        else:
            dB_acc += tl.sum(gdtu, axis=2)
        if C_VARYING:
            tl.store(dC_ptr + part_row + n[:, None] * seqlen + t[None, :], tl.sum(hdy, axis=0), mask=nt_mask)
        else:
            dC_acc += tl.sum(hdy, axis=2)

    tl.store(dA_ptr + seg_off, dA_acc, mask=dn_mask)
    if not B_VARYING:
        tl.store(dB_ptr + seg_off, dB_acc, mask=dn_mask)
    if not C_VARYING:
        tl.store(dC_ptr + seg_off, dC_acc, mask=dn_mask)
    seg_row = (b * nseg + seg) * dim + d
    if HAS_D:
        tl.store(dD_ptr + seg_row, dD_acc, mask=d_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + seg_row, dbias_acc, mask=d_mask)
    if HAS_H0:
        # h_0 = exp(dt_0 A) h_{-1} + ..., so dL/dh_{-1} = exp(dt_0 A) g_0 (first segment only).
        dt0 = _dt(tl.load(delta_ptr + row, mask=d_mask, other=0.0).to(tl.float32) + bias, SOFTPLUS)
        tl.store(dh0_ptr + state_off, tl.exp2(dt0[:, None] * A2) * g, mask=dn_mask & (seg == 0))


# ----------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------

DEFAULT_CHUNK = 32
DEFAULT_BLOCK_D = {"fwd": 8, "bwd": 4}
DEFAULT_NUM_WARPS = {"fwd": 4, "bwd": 4}


def autotune_candidates() -> list[dict]:
    """Configs worth timing on the GPU (keyword arguments of :func:`selective_scan_triton`).

    chunk_size trades scan depth (log2 CHUNK shuffle levels) against loop trips; block_d * d_state * chunk_size /
    (32 num_warps) is the fp32 elements of one tile per thread, which bounds registers (keep it <= 32 for the
    backward, whose tiles live longer)."""
    return [
        {"chunk_size": chunk, "block_d": block_d, "num_warps": warps}
        for chunk, block_d, warps in [
            (16, 8, 4), (32, 4, 4), (32, 8, 4), (32, 16, 8), (64, 4, 4), (64, 8, 8), (128, 4, 8), (128, 2, 4),
        ]
    ]


@dataclass(frozen=True)
class _Plan:
    """Sizes of one call: the channel partition and the time split."""

    batch: int
    dim: int
    seqlen: int
    d_state: int
    block_n: int
    chunk: int
    nchunks: int
    groups: int  # G: partitions of the channels, lcm of the B and C group counts
    groups_b: int
    groups_c: int

    def blocks(self, block_d: int) -> int:
        """Channel blocks per partition."""
        return triton.cdiv(self.dim // self.groups, block_d)

    def segments(self, block_d: int, n_segments: int | None) -> tuple[int, int]:
        """(nseg, chunks per segment). Auto: split time until there are ~4 programs per SM (CUDA only)."""
        if n_segments is None:
            n_segments = 1
            programs = self.batch * self.groups * self.blocks(block_d)
            if torch.cuda.is_available() and not _interpreting():
                sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
                n_segments = max(1, min(triton.cdiv(4 * sms, programs), self.nchunks // 4))
        per_seg = triton.cdiv(self.nchunks, max(1, min(n_segments, self.nchunks)))
        return triton.cdiv(self.nchunks, per_seg), per_seg


def _interpreting() -> bool:
    return triton.knobs.runtime.interpret if hasattr(triton, "knobs") else False


def _bc_groups(X: torch.Tensor) -> tuple[bool, int]:
    """(varying, groups) of a B/C argument: (dim, d_state) fixed, or (batch[, groups], d_state, seqlen)."""
    if X.dim() == 2:
        return False, 1
    if X.dim() in (3, 4):
        return True, 1 if X.dim() == 3 else X.shape[1]
    raise ValueError(f"B/C must have 2, 3 or 4 dimensions, got shape {tuple(X.shape)}")


def _plan(u, A, B, C, chunk_size) -> _Plan:
    batch, dim, seqlen = u.shape
    d_state = A.shape[1]
    (_, groups_b), (_, groups_c) = _bc_groups(B), _bc_groups(C)
    groups = math.lcm(groups_b, groups_c)
    if dim % groups != 0:
        raise ValueError(f"dim {dim} is not a multiple of the number of B/C groups ({groups_b}, {groups_c})")
    chunk = chunk_size or DEFAULT_CHUNK
    if chunk & (chunk - 1):
        raise ValueError(f"chunk_size must be a power of 2, got {chunk}")
    return _Plan(batch, dim, seqlen, d_state, triton.next_power_of_2(d_state), chunk, triton.cdiv(seqlen, chunk),
                 groups, groups_b, groups_c)


def _as_groups(X: torch.Tensor) -> torch.Tensor:
    """Varying B/C -> contiguous (batch, groups, d_state, seqlen); fixed -> contiguous (dim, d_state)."""
    return (X.unsqueeze(1) if X.dim() == 3 else X).contiguous()


def _shape_args(p: _Plan, block_d: int) -> tuple:
    return (p.dim // p.groups, p.blocks(block_d), p.groups_b, p.groups // p.groups_b, p.groups_c,
            p.groups // p.groups_c)


# ----------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tunables:
    chunk_size: int | None
    block_d: int | None
    num_warps: int | None
    n_segments: int | None

    def block(self, pass_: str) -> int:
        return self.block_d or DEFAULT_BLOCK_D[pass_]

    def warps(self, pass_: str) -> int:
        return self.num_warps or DEFAULT_NUM_WARPS[pass_]


def _forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, p: _Plan, tun: _Tunables):
    """Launch the forward; returns out, last_state and the chunk-start states."""
    batch, dim, seqlen = u.shape
    out = torch.empty_like(u)
    last = torch.empty(batch, dim, p.d_state, device=u.device, dtype=torch.float32)
    states = torch.empty(batch, dim, p.nchunks, p.d_state, device=u.device, dtype=torch.float32)
    block_d, warps = tun.block("fwd"), tun.warps("fwd")
    nseg, per_seg = p.segments(block_d, tun.n_segments)
    grid = (p.groups * p.blocks(block_d), batch, nseg)
    cpg, bpg, gb, ppgb, gc, ppgc = _shape_args(p, block_d)
    seg_h = torch.empty(batch, nseg, dim, p.d_state, device=u.device, dtype=torch.float32)
    seg_dt = torch.empty(batch, nseg, dim, device=u.device, dtype=torch.float32)
    dummy = u  # stands in for absent optional tensors; never read (constexpr flags)
    bias = delta_bias if delta_bias is not None else dummy
    if nseg > 1:
        _fwd_summary_kernel[grid](
            u, delta, A, B, bias, seg_h, seg_dt,
            dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, cpg, bpg, gb, ppgb,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, B_VARYING=B.dim() == 4,
            BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, num_warps=warps,
        )
    _fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy, bias,
        h0 if h0 is not None else dummy, seg_h, seg_dt, out, states, last,
        dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, cpg, bpg, gb, ppgb, gc, ppgc,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        SOFTPLUS=softplus, B_VARYING=B.dim() == 4, C_VARYING=C.dim() == 4,
        BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, num_warps=warps,
    )
    return out, last, states


def _backward(dout, dlast, saved, softplus, p: _Plan, tun: _Tunables):
    """Launch the backward; returns (du, ddelta, dA, dB, dC, dD, dz, d delta_bias, d initial_state)."""
    u, delta, A, B, C, D, z, delta_bias, h0, states = saved
    batch, dim, seqlen = u.shape
    dev, f32 = u.device, torch.float32
    block_d, warps = tun.block("bwd"), tun.warps("bwd")
    nseg, per_seg = p.segments(block_d, tun.n_segments)
    programs = p.groups * p.blocks(block_d)
    grid = (programs, batch, nseg)
    cpg, bpg, gb, ppgb, gc, ppgc = _shape_args(p, block_d)
    dout = dout.contiguous() if dout is not None else torch.zeros_like(u)
    dummy = u
    bias = delta_bias if delta_bias is not None else dummy
    z_arg = z if z is not None else dummy

    seg_g = torch.empty(batch, nseg, dim, p.d_state, device=dev, dtype=f32)
    seg_dt = torch.empty(batch, nseg, dim, device=dev, dtype=f32)
    if nseg > 1:
        _bwd_summary_kernel[grid](
            dout, delta, A, C, z_arg, bias, seg_g, seg_dt,
            dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, cpg, bpg, gc, ppgc,
            HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, C_VARYING=C.dim() == 4,
            BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, num_warps=warps,
        )

    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dh0 = torch.empty(batch, dim, p.d_state, device=dev, dtype=f32) if h0 is not None else None
    dA = torch.empty(batch, nseg, dim, p.d_state, device=dev, dtype=f32)
    dD = torch.empty(batch, nseg, dim, device=dev, dtype=f32) if D is not None else None
    dbias = torch.empty(batch, nseg, dim, device=dev, dtype=f32) if delta_bias is not None else None

    def bc_partial(X):  # per-program sums over channels, or per-segment sums over time
        if X.dim() == 4:
            return torch.empty(batch, programs, p.d_state, seqlen, device=dev, dtype=f32)
        return torch.empty(batch, nseg, dim, p.d_state, device=dev, dtype=f32)

    dB, dC = bc_partial(B), bc_partial(C)
    _bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, z_arg, bias, states, dout,
        dlast.contiguous() if dlast is not None else dummy, seg_g, seg_dt,
        du, ddelta, dz if dz is not None else dummy, dh0 if dh0 is not None else dummy,
        dA, dD if dD is not None else dummy, dbias if dbias is not None else dummy, dB, dC,
        dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, cpg, bpg, gb, ppgb, gc, ppgc,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        HAS_DLAST=dlast is not None, SOFTPLUS=softplus, B_VARYING=B.dim() == 4, C_VARYING=C.dim() == 4,
        BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, num_warps=warps,
    )

    return (du, ddelta, dA.sum((0, 1)), _reduce_bc(dB, B, batch), _reduce_bc(dC, C, batch),
            dD.sum((0, 1)) if dD is not None else None, dz, dbias.sum((0, 1)) if dbias is not None else None, dh0)


def _reduce_bc(part: torch.Tensor, X: torch.Tensor, batch: int) -> torch.Tensor:
    """Partial sums -> gradient in X's grouped layout. Fixed X (dim, d_state): part is (batch, nseg, dim, d_state).
    Varying X (batch, groups, d_state, seqlen): part is (batch, programs, d_state, seqlen) and the programs of one
    group are consecutive."""
    if X.dim() == 2:
        return part.sum((0, 1))
    groups, d_state, seqlen = X.shape[1:]
    return part.view(batch, groups, -1, d_state, seqlen).sum(2)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, tun):
        p = _plan(u, A, B, C, tun.chunk_size)
        B_in, C_in = B, C
        u, delta, A, B, C = u.contiguous(), delta.contiguous(), A.contiguous(), _as_groups(B), _as_groups(C)
        D, z, delta_bias, initial_state = (x.contiguous() if x is not None else None
                                           for x in (D, z, delta_bias, initial_state))
        if p.seqlen == 0:
            out = torch.empty_like(u)
            last = (initial_state.float() if initial_state is not None
                    else u.new_zeros(p.batch, p.dim, p.d_state, dtype=torch.float32))
            states = u.new_empty(p.batch, p.dim, 0, p.d_state, dtype=torch.float32)
        else:
            out, last, states = _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, p, tun)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, states)
        ctx.meta = (softplus, p, tun, B_in.shape, C_in.shape, B_in.dtype, C_in.dtype)
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        softplus, p, tun, B_shape, C_shape, B_dtype, C_dtype = ctx.meta
        saved = ctx.saved_tensors
        u, delta, A, B, C, D, z, delta_bias, h0, _ = saved
        if p.seqlen == 0:
            zeros = [torch.zeros_like(x) if x is not None else None for x in (u, delta, A, B, C, D, z, delta_bias)]
            dh0 = None if h0 is None else (dlast if dlast is not None else torch.zeros_like(h0))
            du, ddelta, dA, dB, dC, dD, dz, dbias = zeros
        else:
            du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _backward(dout, dlast, saved, softplus, p, tun)

        def cast(grad, like):
            return None if grad is None else grad.to(like.dtype)

        return (du, ddelta, cast(dA, A), dB.reshape(B_shape).to(B_dtype), dC.reshape(C_shape).to(C_dtype),
                cast(dD, D), dz, cast(dbias, delta_bias), cast(dh0, h0), None, None)


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None, *, chunk_size=None, block_d=None, num_warps=None, n_segments=None,
):
    """Fused selective scan; same arguments and results as ``selective_scan_naive``, differentiable.

    Args:
        u, delta: (batch, dim, seqlen). z: (batch, dim, seqlen) or None. A: (dim, d_state), real.
        B, C: (dim, d_state) fixed, (batch, d_state, seqlen), or (batch, groups, d_state, seqlen).
        D, delta_bias: (dim,) or None. initial_state: (batch, dim, d_state) or None (zeros).
        chunk_size: time steps per scan tile (power of 2; default 32). The backward reuses the forward's chunks.
        block_d: channels per program (power of 2; default 8 forward, 4 backward).
        num_warps: warps per program (default 4).
        n_segments: time segments per sequence (default: enough to give the GPU ~4 programs per SM).
    Returns:
        out (batch, dim, seqlen) in u's dtype, and last_state (batch, dim, d_state) float32 if asked.
    """
    tun = _Tunables(chunk_size, block_d, num_warps, n_segments)
    out, last = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, tun)
    return (out, last) if return_last_state else out
