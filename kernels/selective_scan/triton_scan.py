"""Fused Triton selective scan (Mamba-1): forward and backward kernels and their autograd Function.

Semantics are those of :func:`mamba_bio_audio.kernels.selective_scan.naive.selective_scan_naive`:

    dt_t  = softplus(delta_t + delta_bias)  (or without softplus)      (batch, dim, seqlen)
    h_t   = exp(dt_t A) * h_{t-1} + dt_t B_t u_t                       (batch, dim, d_state), h_{-1} = initial_state
    y_t   = C_t . h_t + D u_t ;  out_t = y_t * silu(z_t)

Design (NOTES.md has the floor analysis, the measurements and what to try next):

* A program owns (one batch row, BLOCK_D channels that share one B/C group, one time segment). Its state
  (BLOCK_N, BLOCK_D) stays in registers while it walks the segment in chunks of CHUNK steps. Inside a chunk the
  recurrence is a first-order linear scan over a (CHUNK, BLOCK_N, BLOCK_D) tile: pairs (a, b) meaning
  h -> a h + b compose associatively, so ``tl.associative_scan`` gives every h_t of the chunk from the carried
  state. Time is the slowest tile axis on purpose: Triton's default layout puts lanes on the last axis
  (channels, then d_state), so each thread holds whole time columns and the scan runs sequentially in
  registers, with no shuffles. d_state is padded to BLOCK_N (a power of 2) with masks; padded states stay zero.
* The forward writes ``out`` and the fp32 state at every chunk start (batch, dim, nchunks, d_state), never the
  full state. The backward recomputes each chunk from that saved state.
* Long sequences with few channels (batch 1, dim 512, seqlen 2^20: few state chains) are split over
  ``n_segments`` time segments: a summary pass gives each segment's end state from a zero start and its total
  decay exp(A sum dt); each segment's program then folds in the summaries of the segments before it.
  The backward does the same, right to left, for the state gradient.
* Deterministic under ``torch.use_deterministic_algorithms(True)``: then no atomics, and per-program partial sums
  of varying dB / dC are reduced in a fixed order; otherwise those two are added atomically (fp32), as mamba_ssm
  does, which saves writing and reading back 2 x 4 x batch x programs x d_state x seqlen bytes. Per-program partial
  sums (dA, dD, d delta_bias, fixed dB/dC) are always reduced with
  torch.sum in the wrapper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mamba_bio_audio.kernels.layout import empty_as, time_contiguous

_LOG2E = tl.constexpr(1.4426950408889634)


# ----------------------------------------------------------------------------------------------------------
# Helpers (inlined into the kernels)
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
    ratio = e / tl.where(one_plus == 1.0, 1.0, one_plus - 1.0)  # where-guarded: no 0/0 on the unused branch
    log1p = tl.where(one_plus == 1.0, e, tl.log(one_plus) * ratio)
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _dt(raw, SOFTPLUS: tl.constexpr):
    """dt from delta + bias for one step (the decode step kernel): softplus or identity."""
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return dt


@triton.jit
def _softplus_kernel(delta_ptr, bias_ptr, dt_ptr, dim, seqlen, stride_b, stride_d,
                     HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr):
    """dt = softplus(delta + bias) in fp32, (batch, dim, seqlen) with delta's strides (stride_b, stride_d, 1);
    program (row = b * dim + d, time block)."""
    row, tb = tl.program_id(0), tl.program_id(1)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = t < seqlen
    offs = (row // dim).to(tl.int64) * stride_b + (row % dim).to(tl.int64) * stride_d + t
    x = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + row % dim).to(tl.float32)
    tl.store(dt_ptr + offs, _softplus(x), mask=mask)


@triton.jit
def _sigmoid_from_softplus(dt):
    """sigmoid(x) from dt = softplus(x): 1 - exp(-dt), by its Taylor series where dt is small (no cancellation;
    relative error < dt^4 / 120 < 2e-7 below 1/16)."""
    series = dt * (1.0 - dt * (0.5 - dt * (0.16666666666666666 - dt * 0.041666666666666664)))
    return tl.where(dt > 0.0625, 1.0 - tl.exp(-dt), series)


@triton.jit
def _dt_tile(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr):
    """dt (CHUNK, BLOCK_D): the (already softplus-ed) delta, plus bias in the kernel when HAS_BIAS; zero where
    masked so that masked steps are identity steps (exp(0 A) = 1, dt B u = 0)."""
    dt = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt = dt + bias[None, :]
    return tl.where(mask, dt, 0.0)


@triton.jit
def _bc_tile(ptr, base, d, n, t, nd_mask, tn_mask, d_state, stride_n, VARYING: tl.constexpr):
    """B or C as an fp32 tile broadcastable to (CHUNK, BLOCK_N, BLOCK_D).

    VARYING: ptr is (batch, groups, d_state, seqlen) with state stride ``stride_n`` (time stride 1) and ``base``
    the offset of this program's (batch, group); else ptr is (dim, d_state), the same for every step.
    """
    if VARYING:
        x = tl.load(ptr + base + n[None, :] * stride_n + t[:, None], mask=tn_mask, other=0.0).to(tl.float32)[:, :, None]
    else:
        x = tl.load(ptr + d[None, :] * d_state + n[:, None], mask=nd_mask, other=0.0).to(tl.float32)[None, :, :]
    return x


@triton.jit
def _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D: tl.constexpr):
    """Program -> (partition, channels (BLOCK_D,), mask). Channels are cut into G equal partitions that each
    lie inside one B group and one C group; a block never straddles two partitions."""
    part = pid // blocks_per_group
    local = (pid % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    return part, part * channels_per_group + local, local < channels_per_group


@triton.jit
def _group_base(b, part, parts_per_group, stride_b, stride_g):
    """Offset of B/C[b, group] in a (batch, groups, d_state, seqlen) tensor with strides (stride_b, stride_g, .,
    1) for partition ``part``."""
    return b.to(tl.int64) * stride_b + (part // parts_per_group).to(tl.int64) * stride_g


@triton.jit
def _state_ptrs(ptr, row, n, d_state):
    """(BLOCK_N, BLOCK_D) pointers to ptr[row, :] of a (rows, d_state) view; row (BLOCK_D,) is per channel."""
    return ptr + row[None, :].to(tl.int64) * d_state + n[:, None]


@triton.jit
def _chunk_states(dt, u, Bt, A2, h):
    """All states of one chunk. dt, u: (CHUNK, BLOCK_D); Bt: broadcastable B tile; A2 = A log2(e) and h, the
    state before the chunk: (BLOCK_N, BLOCK_D). Returns h_t and dt_t B_t u_t, both (CHUNK, BLOCK_N, BLOCK_D)."""
    dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
    dBu = (dt * u)[:, None, :] * Bt
    decay, hs = tl.associative_scan((dA, dBu), axis=0, combine_fn=_combine)
    return hs + decay * h[None, :, :], dBu


@triton.jit
def _chunk_state_grads(dt_next, Ct, dy, A2, g):
    """Gradients w.r.t. every state of one chunk, right to left:

        g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1},   g after the chunk's last step = ``g`` (BLOCK_N, BLOCK_D).

    dt_next: dt shifted one step left (CHUNK, BLOCK_D), zero past the sequence end (there exp(0 A) = 1 and
    ``g`` is the gradient of last_state). A reverse scan computes s_t = a_t s_{t+1} + b_t with the same
    combine, since the running value enters ``_combine`` first.

    The reverse scan is a forward scan between two time flips: Triton (3.6) lowers ``reverse=True`` with ~640
    lane shuffles per tile even though time is held in-thread, while ``tl.flip`` along an in-thread axis is
    register moves (backward loop: 2,217 -> 1,580 SASS instructions, tools/sass_count.py)."""
    dA_next = tl.exp2(dt_next[:, None, :] * A2[None, :, :])
    b = Ct * dy[:, None, :]
    decay, gs = tl.associative_scan((tl.flip(dA_next, 0), tl.flip(b, 0)), axis=0, combine_fn=_combine)
    return tl.flip(gs + decay * g[None, :, :], 0)


@triton.jit
def _at_step(x, step, CHUNK: tl.constexpr):
    """x[step] of a (CHUNK, BLOCK_N, BLOCK_D) tile; free when time is held in-thread."""
    sel = tl.arange(0, CHUNK)[:, None, None] == step
    return tl.sum(tl.where(sel, x, 0.0), axis=0)


@triton.jit
def _group_start_state(u_ptr, delta_ptr, B_ptr, states_ptr, scratch_ptr, c, first, row, b, d, n, bias, A2, b_base,
                       dim, seqlen, d_state, nsaved, bc_sn, nd_mask, n_mask, d_mask,
                       HAS_BIAS: tl.constexpr, B_VARYING: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                       CHUNK: tl.constexpr, SAVE_EVERY: tl.constexpr):
    """The state before chunk c when only every SAVE_EVERY-th chunk's state was saved.

    Walking right to left, on the first chunk of each save group met (the group's last chunk, or the segment's
    last chunk: ``first``) the group's chunk-start states are recomputed forwards from its saved state into this
    program's scratch (L2-resident, SAVE_EVERY x (BLOCK_N, BLOCK_D)); every chunk then reads its own."""
    tile = n[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]  # (BLOCK_N, BLOCK_D) offsets in one slot
    if first | (c % SAVE_EVERY == SAVE_EVERY - 1):
        start = c - c % SAVE_EVERY
        h = tl.load(_state_ptrs(states_ptr, (b * dim + d) * nsaved + c // SAVE_EVERY, n, d_state), mask=nd_mask,
                    other=0.0)
        for j in range(start, c):
            tl.store(scratch_ptr + (j - start) * (BLOCK_N * BLOCK_D) + tile, h)
            t = j * CHUNK + tl.arange(0, CHUNK)
            t_mask = t < seqlen
            mask = t_mask[:, None] & d_mask[None, :]
            offs = row[None, :] + t[:, None]
            u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dt = _dt_tile(delta_ptr, offs, mask, bias, HAS_BIAS)
            Bt = _bc_tile(B_ptr, b_base, d, n, t, nd_mask, t_mask[:, None] & n_mask[None, :], d_state, bc_sn,
                          B_VARYING)
            hs, _ = _chunk_states(dt, u, Bt, A2, h)
            h = _at_step(hs, CHUNK - 1, CHUNK)
        tl.store(scratch_ptr + (c - start) * (BLOCK_N * BLOCK_D) + tile, h)
        tl.debug_barrier()  # the slots are read below, possibly by other lanes than wrote them
    return tl.load(scratch_ptr + (c % SAVE_EVERY) * (BLOCK_N * BLOCK_D) + tile)


@triton.jit
def _silu_parts(z_ptr, offs, mask):
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return z, tl.sigmoid(z)


@triton.jit
def _load_vec(ptr, d, d_mask, HAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """A per-channel parameter (BLOCK_D,) in fp32, or zeros when absent."""
    if HAS:
        x = tl.load(ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    else:
        x = tl.zeros([BLOCK_D], tl.float32)
    return x


# ----------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, seg_h_ptr, seg_dt_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b,
    HAS_BIAS: tl.constexpr, B_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr,
):
    """Per time segment, from a zero state: the end state -> seg_h (batch, nseg, dim, d_state) and
    sum_t dt_t -> seg_dt (batch, nseg, dim), so that h_end = exp(A seg_dt) h_start + seg_h."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask = _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < d_state
    nd_mask = n_mask[:, None] & d_mask[None, :]
    row = b.to(tl.int64) * stride_b + d.to(tl.int64) * stride_d
    A2 = tl.load(_state_ptrs(A_ptr, d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32) * _LOG2E
    bias = _load_vec(bias_ptr, d, d_mask, HAS_BIAS, BLOCK_D)
    b_base = _group_base(b, part, parts_per_group_b, bc_sb, bc_sg)

    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dt_sum = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    for c in tl.range(c_begin, tl.minimum(c_begin + chunks_per_seg, nchunks), num_stages=STAGES):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_mask = t < seqlen
        mask = t_mask[:, None] & d_mask[None, :]
        offs = row[None, :] + t[:, None]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt = _dt_tile(delta_ptr, offs, mask, bias, HAS_BIAS)
        Bt = _bc_tile(B_ptr, b_base, d, n, t, nd_mask, t_mask[:, None] & n_mask[None, :], d_state, bc_sn, B_VARYING)
        hs, _ = _chunk_states(dt, u, Bt, A2, h)
        h = _at_step(hs, CHUNK - 1, CHUNK)
        dt_sum += tl.sum(dt, axis=0)

    seg_row = (b * nseg + seg) * dim + d
    tl.store(_state_ptrs(seg_h_ptr, seg_row, n, d_state), h, mask=nd_mask)
    tl.store(seg_dt_ptr + seg_row, dt_sum, mask=d_mask)


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seg_h_ptr, seg_dt_ptr,
    out_ptr, states_ptr, last_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg, nsaved, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b, groups_c, parts_per_group_c,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr,
    SAVE_EVERY: tl.constexpr,
):
    """out (batch, dim, seqlen); states (batch, dim, nsaved, d_state) = the fp32 state before every
    SAVE_EVERY-th chunk (nsaved = cdiv(nchunks, SAVE_EVERY));
    last (batch, dim, d_state) = the final state (written by the last segment)."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask = _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < d_state
    nd_mask = n_mask[:, None] & d_mask[None, :]
    row = b.to(tl.int64) * stride_b + d.to(tl.int64) * stride_d
    A2 = tl.load(_state_ptrs(A_ptr, d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32) * _LOG2E
    bias = _load_vec(bias_ptr, d, d_mask, HAS_BIAS, BLOCK_D)
    Dv = _load_vec(D_ptr, d, d_mask, HAS_D, BLOCK_D)
    b_base = _group_base(b, part, parts_per_group_b, bc_sb, bc_sg)
    c_base = _group_base(b, part, parts_per_group_c, bc_sb, bc_sg)

    if HAS_H0:
        h = tl.load(_state_ptrs(h0_ptr, b * dim + d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Fold in the earlier segments: h <- exp(A sum dt) h + (their end state from zero).
    for j in range(0, seg):
        seg_row = (b * nseg + j) * dim + d
        dt_sum = tl.load(seg_dt_ptr + seg_row, mask=d_mask, other=0.0)
        h_seg = tl.load(_state_ptrs(seg_h_ptr, seg_row, n, d_state), mask=nd_mask, other=0.0)
        h = tl.exp2(dt_sum[None, :] * A2) * h + h_seg

    c_begin = seg * chunks_per_seg
    for c in tl.range(c_begin, tl.minimum(c_begin + chunks_per_seg, nchunks), num_stages=STAGES):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_mask = t < seqlen
        tn_mask = t_mask[:, None] & n_mask[None, :]
        mask = t_mask[:, None] & d_mask[None, :]
        offs = row[None, :] + t[:, None]
        tl.store(_state_ptrs(states_ptr, (b * dim + d) * nsaved + c // SAVE_EVERY, n, d_state), h,
                 mask=nd_mask & (c % SAVE_EVERY == 0))

        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt = _dt_tile(delta_ptr, offs, mask, bias, HAS_BIAS)
        Bt = _bc_tile(B_ptr, b_base, d, n, t, nd_mask, tn_mask, d_state, bc_sn, B_VARYING)
        Ct = _bc_tile(C_ptr, c_base, d, n, t, nd_mask, tn_mask, d_state, bc_sn, C_VARYING)
        hs, _ = _chunk_states(dt, u, Bt, A2, h)
        y = tl.sum(hs * Ct, axis=1) + Dv[None, :] * u
        if HAS_Z:
            z, sig = _silu_parts(z_ptr, offs, mask)
            y = y * z * sig
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
        h = _at_step(hs, CHUNK - 1, CHUNK)

    tl.store(_state_ptrs(last_ptr, b * dim + d, n, d_state), h, mask=nd_mask & (seg == nseg - 1))


# ----------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z: tl.constexpr):
    """dy = dL/dy_pre = dout silu(z) (CHUNK, BLOCK_D); also dout, z and sigmoid(z) (dout in their place without z)."""
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
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_c, parts_per_group_c,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr,
):
    """Per time segment [s0, s1), from a zero gradient after it: the state gradient at its first step
    g_{s0} -> seg_g (batch, nseg, dim, d_state), and sum_{s0 < t <= s1} dt_t -> seg_dt (batch, nseg, dim),
    so that g_{s0} = exp(A seg_dt) g_{s1} + seg_g."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask = _channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < d_state
    nd_mask = n_mask[:, None] & d_mask[None, :]
    row = b.to(tl.int64) * stride_b + d.to(tl.int64) * stride_d
    A2 = tl.load(_state_ptrs(A_ptr, d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32) * _LOG2E
    bias = _load_vec(bias_ptr, d, d_mask, HAS_BIAS, BLOCK_D)
    c_base = _group_base(b, part, parts_per_group_c, bc_sb, bc_sg)

    g = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dt_sum = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, nchunks)
    for i in tl.range(0, c_end - c_begin, num_stages=STAGES):
        t = (c_end - 1 - i) * CHUNK + tl.arange(0, CHUNK)
        t_mask = t < seqlen
        mask = t_mask[:, None] & d_mask[None, :]
        offs = row[None, :] + t[:, None]
        next_mask = (t + 1 < seqlen)[:, None] & d_mask[None, :]
        dt_next = _dt_tile(delta_ptr, offs + 1, next_mask, bias, HAS_BIAS)
        Ct = _bc_tile(C_ptr, c_base, d, n, t, nd_mask, t_mask[:, None] & n_mask[None, :], d_state, bc_sn, C_VARYING)
        _, dy, _, _ = _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z)
        gs = _chunk_state_grads(dt_next, Ct, dy, A2, g)
        g = _at_step(gs, 0, CHUNK)
        dt_sum += tl.sum(dt_next, axis=0)

    seg_row = (b * nseg + seg) * dim + d
    tl.store(_state_ptrs(seg_g_ptr, seg_row, n, d_state), g, mask=nd_mask)
    tl.store(seg_dt_ptr + seg_row, dt_sum, mask=d_mask)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dlast_ptr,
    seg_g_ptr, seg_dt_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dh0_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg, nsaved, first_block, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b, groups_c, parts_per_group_c,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_DLAST: tl.constexpr, DT_SOFTPLUS: tl.constexpr, WANT_DBIAS: tl.constexpr, B_VARYING: tl.constexpr,
    C_VARYING: tl.constexpr, ATOMIC_BC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr, STAGES: tl.constexpr, SAVE_EVERY: tl.constexpr,
):
    """All gradients. Program (i, b, seg) handles channel block first_block + i (a launch covers a wave of
    blocks, bounding the dB/dC partials) and walks its segment's chunks right to left carrying g = dL/dh.

    With g_t = dL/dh_t (from y_t and from h_{t+1}), dy_t = dout_t silu(z_t), and dA_t h_{t-1} = h_t - dt_t B_t u_t:
        du_t      = D dy_t + dt_t sum_n g_t B_t
        d dt_t    = sum_n g_t (A dA_t h_{t-1} + B_t u_t)       (times sigmoid(delta + bias) with softplus)
        dA        = sum_t dt_t g_t dA_t h_{t-1}                -> dA (batch, nseg, dim, d_state)
        dB_t      = sum_channels g_t dt_t u_t                  -> dB (batch, wave, d_state, seqlen) or, fixed,
                                                                  (batch, nseg, dim, d_state)
        dC_t      = sum_channels dy_t h_t                      -> dC, same layouts
        dD        = sum_t dy_t u_t ; d delta_bias = sum_t d delta_t  -> (batch, nseg, dim)
        dz_t      = dout_t y_pre_t silu'(z_t) ; d initial_state = exp(dt_0 A) g_0
    """
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask = _channel_block(first_block + pid, channels_per_group, blocks_per_group, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < d_state
    nd_mask = n_mask[:, None] & d_mask[None, :]
    row = b.to(tl.int64) * stride_b + d.to(tl.int64) * stride_d
    A = tl.load(_state_ptrs(A_ptr, d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32)
    A2 = A * _LOG2E
    bias = _load_vec(bias_ptr, d, d_mask, HAS_BIAS, BLOCK_D)
    Dv = _load_vec(D_ptr, d, d_mask, HAS_D, BLOCK_D)
    b_base = _group_base(b, part, parts_per_group_b, bc_sb, bc_sg)
    c_base = _group_base(b, part, parts_per_group_c, bc_sb, bc_sg)
    if ATOMIC_BC:  # varying dB/dC added into their contiguous (batch, groups, d_state, seqlen) gradients
        bc_row_b = (b * groups_b + part // parts_per_group_b).to(tl.int64) * d_state * seqlen
        bc_row_c = (b * groups_c + part // parts_per_group_c).to(tl.int64) * d_state * seqlen
    else:  # per-program partials (batch, wave, d_state, seqlen), summed by the wrapper in a fixed order
        bc_row_b = (b * tl.num_programs(0) + pid).to(tl.int64) * d_state * seqlen
        bc_row_c = bc_row_b
    seg_row = (b * nseg + seg) * dim + d

    # g after this segment: dL/d last_state, carried back through the later segments with their summaries.
    if HAS_DLAST:
        g = tl.load(_state_ptrs(dlast_ptr, b * dim + d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for i in range(0, nseg - 1 - seg):
        later = (b * nseg + nseg - 1 - i) * dim + d
        dt_sum = tl.load(seg_dt_ptr + later, mask=d_mask, other=0.0)
        g_seg = tl.load(_state_ptrs(seg_g_ptr, later, n, d_state), mask=nd_mask, other=0.0)
        g = tl.exp2(dt_sum[None, :] * A2) * g + g_seg

    # This program's scratch for the chunk-start states of one save group (SAVE_EVERY x BLOCK_N x BLOCK_D fp32).
    program = (seg * tl.num_programs(1) + b) * tl.num_programs(0) + pid
    scratch_base = program.to(tl.int64) * (SAVE_EVERY * BLOCK_N * BLOCK_D)
    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dB_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dC_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, nchunks)
    for i in tl.range(0, c_end - c_begin, num_stages=STAGES):
        c = c_end - 1 - i
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_mask = t < seqlen
        tn_mask = t_mask[:, None] & n_mask[None, :]
        mask = t_mask[:, None] & d_mask[None, :]
        offs = row[None, :] + t[:, None]

        # Recompute the chunk's states from the saved state before it.
        if SAVE_EVERY == 1:
            h = tl.load(_state_ptrs(states_ptr, (b * dim + d) * nsaved + c, n, d_state), mask=nd_mask, other=0.0)
        else:
            h = _group_start_state(
                u_ptr, delta_ptr, B_ptr, states_ptr, scratch_ptr + scratch_base, c, i == 0, row, b, d, n, bias, A2,
                b_base, dim, seqlen, d_state, nsaved, bc_sn, nd_mask, n_mask, d_mask,
                HAS_BIAS, B_VARYING, BLOCK_D, BLOCK_N, CHUNK, SAVE_EVERY)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt = _dt_tile(delta_ptr, offs, mask, bias, HAS_BIAS)
        Bt = _bc_tile(B_ptr, b_base, d, n, t, nd_mask, tn_mask, d_state, bc_sn, B_VARYING)
        Ct = _bc_tile(C_ptr, c_base, d, n, t, nd_mask, tn_mask, d_state, bc_sn, C_VARYING)
        hs, dBu = _chunk_states(dt, u, Bt, A2, h)

        # Output gate: out = y_pre silu(z).
        dout, dy, z, sig = _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z)
        if HAS_Z:
            y_pre = tl.sum(hs * Ct, axis=1) + Dv[None, :] * u
            dz = dout * y_pre * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)

        # State gradients, right to left from g.
        next_mask = (t + 1 < seqlen)[:, None] & d_mask[None, :]
        dt_next = _dt_tile(delta_ptr, offs + 1, next_mask, bias, HAS_BIAS)
        gs = _chunk_state_grads(dt_next, Ct, dy, A2, g)
        g = _at_step(gs, 0, CHUNK)

        # Input gradients.
        gB = tl.sum(gs * Bt, axis=1)
        w = gs * (hs - dBu)  # g_t dA_t h_{t-1}
        du = Dv[None, :] * dy + dt * gB
        ddt = tl.sum(w * A[None, :, :], axis=1) + u * gB
        if DT_SOFTPLUS:
            ddt = ddt * _sigmoid_from_softplus(dt)
        ddt = tl.where(mask, ddt, 0.0)
        tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
        dA_acc += tl.sum(w * dt[:, None, :], axis=0)
        dD_acc += tl.sum(dy * u, axis=0)
        if WANT_DBIAS:
            dbias_acc += tl.sum(ddt, axis=0)
        gdtu = gs * (dt * u)[:, None, :]
        hdy = hs * dy[:, None, :]
        tn_offs = n[None, :] * seqlen + t[:, None]
        if B_VARYING:
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + bc_row_b + tn_offs, tl.sum(gdtu, axis=2), mask=tn_mask, sem="relaxed")
            else:
                tl.store(dB_ptr + bc_row_b + tn_offs, tl.sum(gdtu, axis=2), mask=tn_mask)
        else:
            dB_acc += tl.sum(gdtu, axis=0)
        if C_VARYING:
            if ATOMIC_BC:
                tl.atomic_add(dC_ptr + bc_row_c + tn_offs, tl.sum(hdy, axis=2), mask=tn_mask, sem="relaxed")
            else:
                tl.store(dC_ptr + bc_row_c + tn_offs, tl.sum(hdy, axis=2), mask=tn_mask)
        else:
            dC_acc += tl.sum(hdy, axis=0)

    tl.store(_state_ptrs(dA_ptr, seg_row, n, d_state), dA_acc, mask=nd_mask)
    if not B_VARYING:
        tl.store(_state_ptrs(dB_ptr, seg_row, n, d_state), dB_acc, mask=nd_mask)
    if not C_VARYING:
        tl.store(_state_ptrs(dC_ptr, seg_row, n, d_state), dC_acc, mask=nd_mask)
    if HAS_D:
        tl.store(dD_ptr + seg_row, dD_acc, mask=d_mask)
    if WANT_DBIAS:
        tl.store(dbias_ptr + seg_row, dbias_acc, mask=d_mask)
    if HAS_H0:
        # h_0 = exp(dt_0 A) h_{-1} + ..., so dL/dh_{-1} = exp(dt_0 A) g_0 (first segment only).
        dt0 = tl.load(delta_ptr + row, mask=d_mask, other=0.0).to(tl.float32) + bias
        tl.store(_state_ptrs(dh0_ptr, b * dim + d, n, d_state), tl.exp2(dt0[None, :] * A2) * g,
                 mask=nd_mask & (seg == 0))


# ----------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------

DEFAULT_CHUNK = 8  # H100: fastest forward; 4 gives a faster fwd + bwd but doubles the saved states
DEFAULT_BLOCK_D = 8
DEFAULT_NUM_WARPS = 1
# Chunks between saved states (the backward recomputes the ones between): 1 unless the saved states of a call
# would pass SAVED_STATE_BYTES, then the smallest power of 2 (at most 8) that keeps them under it. H100: saving every
# 4th state costs 10-20% of fwd+bwd time; at (1, 512, 2^20) it cuts peak extra memory from 10.1 to 7.2 GiB.
SAVED_STATE_BYTES, MAX_SAVE_EVERY = 1 << 30, 8
DEFAULT_NUM_STAGES = 3  # software pipelining of the chunk loops' loads (H100: fwd 0.50 -> 0.38 ms at (8, 1536, 2048))
# Time segments are added when fewer warps than LOW_WARPS_PER_SM would run, aiming at TARGET_WARPS_PER_SM
# (H100 sweep: (1, 512, 2^20) fwd+bwd 47.5 ms at 50 segments, 42.1 ms at 200; (1, 1536, 65536) 9.5 -> 7.7 ms at 64).
LOW_WARPS_PER_SM, TARGET_WARPS_PER_SM, MAX_SEGMENTS = 8, 96, 256
PARTIAL_BYTES = 1 << 30  # bound on the backward's dB + dC partial sums (varying B/C)


def autotune_candidates() -> list[dict]:
    """Configs worth timing on the GPU (keyword arguments of :func:`selective_scan_triton`).

    Tiles are (chunk_size, d_state, block_d) with lanes on channels: with block_d = 8 and one warp, each thread
    holds chunk_size x d_state/4 values of one channel (d_state over 4 lanes); block_d = 32 * num_warps puts the
    whole state of a channel in one thread (no shuffles for sums over d_state, but register spills at d_state 16).
    """
    return [
        {"chunk_size": chunk, "block_d": block_d, "num_warps": warps, "num_stages": stages, "save_every": save}
        for chunk, block_d, warps, stages, save in [
            (8, 8, 1, 3, 1), (8, 8, 1, 1, 1), (8, 8, 1, 2, 1), (4, 8, 1, 3, 1), (16, 8, 1, 3, 1), (8, 4, 1, 3, 1),
            (4, 16, 1, 3, 1), (8, 16, 2, 3, 1), (8, 8, 1, 3, 4),
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

    def segments(self, block_d: int, num_warps: int, n_segments: int | None, device: torch.device,
                 programs: int | None = None) -> tuple[int, int]:
        """(nseg, chunks per segment). Auto (CUDA): split time when the channel blocks (``programs`` of them per
        batch row, default all) would leave the GPU nearly idle, e.g. batch 1 with long sequences; at most
        MAX_SEGMENTS, at least 4 chunks each."""
        if n_segments is None:
            n_segments = 1
            warps = self.batch * (programs or self.groups * self.blocks(block_d)) * num_warps
            if device.type == "cuda":
                sms = torch.cuda.get_device_properties(device).multi_processor_count
                if warps < LOW_WARPS_PER_SM * sms:
                    n_segments = min(triton.cdiv(TARGET_WARPS_PER_SM * sms, warps), MAX_SEGMENTS, self.nchunks // 4)
        per_seg = triton.cdiv(self.nchunks, max(1, min(n_segments, self.nchunks)))
        return triton.cdiv(self.nchunks, per_seg), per_seg


def _bc_groups(X: torch.Tensor) -> tuple[bool, int]:
    """(varying, groups) of a B/C argument: (dim, d_state) fixed, or (batch[, groups], d_state, seqlen)."""
    if X.dim() == 2:
        return False, 1
    if X.dim() in (3, 4):
        return True, 1 if X.dim() == 3 else X.shape[1]
    raise ValueError(f"B/C must have 2, 3 or 4 dimensions, got shape {tuple(X.shape)}")


def _plan(u, A, B, C, chunk_size: int) -> _Plan:
    batch, dim, seqlen = u.shape
    d_state = A.shape[1]
    (_, groups_b), (_, groups_c) = _bc_groups(B), _bc_groups(C)
    groups = math.lcm(groups_b, groups_c)
    if dim % groups != 0:
        raise ValueError(f"dim {dim} is not a multiple of the number of B/C groups ({groups_b}, {groups_c})")
    if chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of 2, got {chunk_size}")
    return _Plan(batch, dim, seqlen, d_state, triton.next_power_of_2(d_state), chunk_size,
                 triton.cdiv(seqlen, chunk_size), groups, groups_b, groups_c)


def _empty(*shape: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Allocates every kernel output (uninitialised); tests swap it for a NaN fill to catch unwritten elements."""
    return torch.empty(*shape, device=like.device, dtype=dtype or like.dtype)


def _empty_as(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return empty_as(t, _empty, dtype)


def _same_layout(u: torch.Tensor, *others: torch.Tensor | None) -> list[torch.Tensor | None]:
    """u, delta, z (batch, dim, seqlen) in one layout (stride_b, stride_d, 1) that the kernels index: theirs when
    they share it and time is contiguous (e.g. channel-major views (L, batch * L, 1) of a projection's output),
    else contiguous copies."""
    tensors = [u, *others]
    shared = time_contiguous(u) and all(t.stride() == u.stride() for t in tensors if t is not None)
    return [t.contiguous() if t is not None and not shared else t for t in tensors]


def _as_groups(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Varying B/C -> (batch, groups, d_state, seqlen) views sharing one layout with time contiguous (copied
    when they do not); fixed -> contiguous (dim, d_state)."""
    B, C = ((X.unsqueeze(1) if X.dim() == 3 else X) for X in (B, C))
    varying = [X for X in (B, C) if X.dim() == 4]
    ok = all(X.stride(-1) == 1 and X.stride() == varying[0].stride() for X in varying)
    return tuple(X.contiguous() if X.dim() == 2 or not ok else X for X in (B, C))


def _strides(u: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(stride_b, stride_d) of the (batch, dim, seqlen) tensors and (batch, group, state) strides of B/C."""
    varying = B if B.dim() == 4 else C
    bc = varying.stride()[:3] if varying.dim() == 4 else (0, 0, 0)
    return (u.stride(0), u.stride(1), *bc)


def _shape_args(p: _Plan, block_d: int) -> tuple:
    return (p.dim // p.groups, p.blocks(block_d), p.groups_b, p.groups // p.groups_b, p.groups_c,
            p.groups // p.groups_c)


# ----------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tunables:
    chunk_size: int
    block_d: int
    num_warps: int
    n_segments: int | None
    num_stages: int = 1
    save_every: int = 1


SOFTPLUS_BLOCK_T = 1024


def _dt_input(delta, delta_bias, softplus):
    """What the scan kernels read as delta, and the bias they add themselves.

    With softplus, dt = softplus(delta + bias) is computed once by an elementwise pass into an fp32 buffer
    (batch, dim, seqlen): in the scan kernels the softplus would run replicated over the state lanes of every
    tile (about a third of the forward's instructions, measured in SASS). Without softplus the kernels add the
    bias themselves.
    """
    if not softplus:
        return delta, delta_bias
    batch, dim, seqlen = delta.shape
    dt = _empty_as(delta, torch.float32)
    _softplus_kernel[(batch * dim, triton.cdiv(seqlen, SOFTPLUS_BLOCK_T))](
        delta, delta_bias if delta_bias is not None else delta, dt, dim, seqlen, delta.stride(0), delta.stride(1),
        HAS_BIAS=delta_bias is not None, BLOCK_T=SOFTPLUS_BLOCK_T, num_warps=4,
    )
    return dt, None


def _forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, p: _Plan, tun: _Tunables):
    """Launch the forward; returns out, last_state and the chunk-start states."""
    batch, dim, seqlen = u.shape
    delta, delta_bias = _dt_input(delta, delta_bias, softplus)
    f32 = torch.float32
    out = _empty_as(u)
    last = _empty(batch, dim, p.d_state, like=u, dtype=f32)
    save_every = tun.save_every
    states = _empty(batch, dim, triton.cdiv(p.nchunks, save_every), p.d_state, like=u, dtype=f32)
    block_d, warps = tun.block_d, tun.num_warps
    nseg, per_seg = p.segments(block_d, warps, tun.n_segments, u.device)
    grid = (p.groups * p.blocks(block_d), batch, nseg)
    cpg, bpg, gb, ppgb, gc, ppgc = _shape_args(p, block_d)
    seg_h = _empty(batch, nseg, dim, p.d_state, like=u, dtype=f32)
    seg_dt = _empty(batch, nseg, dim, like=u, dtype=f32)
    dummy = u  # stands in for absent optional tensors; never read (constexpr flags)
    bias = delta_bias if delta_bias is not None else dummy
    if nseg > 1:
        _fwd_summary_kernel[grid](
            u, delta, A, B, bias, seg_h, seg_dt,
            dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, *_strides(u, B, C), cpg, bpg, gb, ppgb,
            HAS_BIAS=delta_bias is not None, B_VARYING=B.dim() == 4,
            BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages, num_warps=warps,
        )
    _fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy, bias,
        h0 if h0 is not None else dummy, seg_h, seg_dt, out, states, last,
        dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, states.shape[2], *_strides(u, B, C), cpg, bpg, gb, ppgb,
        gc, ppgc,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        B_VARYING=B.dim() == 4, C_VARYING=C.dim() == 4,
        BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages, SAVE_EVERY=save_every,
        num_warps=warps,
    )
    return out, last, states


def _backward(dout, dlast, saved, softplus, p: _Plan, tun: _Tunables):
    """Launch the backward; returns (du, ddelta, dA, dB, dC, dD, dz, d delta_bias, d initial_state)."""
    u, delta_in, A, B, C, D, z, bias_in, h0, states = saved
    batch, dim, seqlen = u.shape
    save_every = tun.save_every  # as the forward saved them
    delta, delta_bias = _dt_input(delta_in, bias_in, softplus)
    f32 = torch.float32
    block_d, warps = tun.block_d, tun.num_warps
    programs = p.groups * p.blocks(block_d)
    # Varying B/C get per-program partial sums over channels, (batch, wave, d_state, seqlen) each: launch the
    # channel blocks in waves small enough to keep those under PARTIAL_BYTES.
    # Unless torch.use_deterministic_algorithms is on, they are atomically added instead (as mamba_ssm does).
    atomic = not torch.are_deterministic_algorithms_enabled()
    partial_bytes = 0 if atomic else batch * p.d_state * seqlen * 4 * ((B.dim() == 4) + (C.dim() == 4))
    wave = programs if partial_bytes == 0 else max(1, min(programs, PARTIAL_BYTES // partial_bytes))
    nseg, per_seg = p.segments(block_d, warps, tun.n_segments, u.device, programs=wave)
    cpg, bpg, gb, ppgb, gc, ppgc = _shape_args(p, block_d)
    if dout is None:
        dout = torch.zeros_like(u)
    elif dout.stride() != u.stride():  # the kernels index every (batch, dim, seqlen) tensor alike
        dout = _empty_as(u, dout.dtype).copy_(dout)
    dummy = u
    bias = delta_bias if delta_bias is not None else dummy
    z_arg = z if z is not None else dummy

    seg_g = _empty(batch, nseg, dim, p.d_state, like=u, dtype=f32)
    seg_dt = _empty(batch, nseg, dim, like=u, dtype=f32)
    if nseg > 1:
        _bwd_summary_kernel[(programs, batch, nseg)](
            dout, delta, A, C, z_arg, bias, seg_g, seg_dt,
            dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, *_strides(u, B, C), cpg, bpg, gc, ppgc,
            HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, C_VARYING=C.dim() == 4,
            BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages, num_warps=warps,
        )

    du, ddelta = _empty_as(u), _empty_as(delta_in)
    dz = _empty_as(z) if z is not None else None
    dh0 = _empty(batch, dim, p.d_state, like=u, dtype=f32) if h0 is not None else None
    dA = _empty(batch, nseg, dim, p.d_state, like=u, dtype=f32)
    dD = _empty(batch, nseg, dim, like=u, dtype=f32) if D is not None else None
    dbias = _empty(batch, nseg, dim, like=u, dtype=f32) if bias_in is not None else None
    grads_bc = [X.new_zeros(X.shape, dtype=f32) if X.dim() == 4 else _empty(batch, nseg, dim, p.d_state, like=u,
                                                                             dtype=f32) for X in (B, C)]
    for first in range(0, programs, wave):
        n_wave = min(wave, programs - first)
        parts = [_empty(batch, n_wave, p.d_state, seqlen, like=u, dtype=f32) if X.dim() == 4 and not atomic
                 else grad for X, grad in zip((B, C), grads_bc)]
        _bwd_kernel[(n_wave, batch, nseg)](
            u, delta, A, B, C, D if D is not None else dummy, z_arg, bias, states, dout,
            dlast.contiguous() if dlast is not None else dummy, seg_g, seg_dt,
            _empty(n_wave * batch * nseg * save_every * p.block_n * block_d, like=u, dtype=f32)
            if save_every > 1 else dummy,
            du, ddelta, dz if dz is not None else dummy, dh0 if dh0 is not None else dummy,
            dA, dD if dD is not None else dummy, dbias if dbias is not None else dummy, *parts,
            dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, states.shape[2], first, *_strides(u, B, C), cpg, bpg,
            gb, ppgb, gc, ppgc,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
            HAS_DLAST=dlast is not None, DT_SOFTPLUS=softplus, WANT_DBIAS=bias_in is not None,
            B_VARYING=B.dim() == 4, C_VARYING=C.dim() == 4, ATOMIC_BC=atomic,
            BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages, SAVE_EVERY=save_every,
            num_warps=warps,
        )
        for X, grad, part in zip((B, C), grads_bc, parts):
            if X.dim() == 4 and not atomic:
                _add_group_sums(grad, part, first, programs // X.shape[1])
    dB, dC = (grad if X.dim() == 4 else grad.sum((0, 1)) for X, grad in zip((B, C), grads_bc))
    return (du, ddelta, dA.sum((0, 1)), dB, dC, dD.sum((0, 1)) if dD is not None else None, dz,
            dbias.sum((0, 1)) if dbias is not None else None, dh0)


def _add_group_sums(grad: torch.Tensor, part: torch.Tensor, first: int, programs_per_group: int) -> None:
    """grad[:, g] += sum of the partials of group g's programs, for the wave of programs [first, first + len).
    grad: (batch, groups, d_state, seqlen); part: (batch, wave, d_state, seqlen). A group's programs are
    consecutive, so each group is a contiguous run of the wave: summed in a fixed order (deterministic)."""
    end = first + part.shape[1]
    for g in range(first // programs_per_group, (end - 1) // programs_per_group + 1):
        lo, hi = max(first, g * programs_per_group), min(end, (g + 1) * programs_per_group)
        grad[:, g] += part[:, lo - first:hi - first].sum(1)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, tun):
        p = _plan(u, A, B, C, tun.chunk_size)
        B_in, C_in = B, C
        u, delta, z = _same_layout(u, delta, z)
        (B, C), A = _as_groups(B, C), A.contiguous()
        D, delta_bias, initial_state = (x.contiguous() if x is not None else None for x in (D, delta_bias, initial_state))
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


def _auto_save_every(state_bytes: int) -> int:
    save_every = 1
    while state_bytes > SAVED_STATE_BYTES * save_every and save_every < MAX_SAVE_EVERY:
        save_every *= 2
    return save_every


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None, *, chunk_size=None, block_d=None, num_warps=None, n_segments=None, num_stages=None,
    save_every=None,
):
    """Fused selective scan; same arguments and results as ``selective_scan_naive``, differentiable.

    Args:
        u, delta: (batch, dim, seqlen). z: (batch, dim, seqlen) or None. A: (dim, d_state), real.
        B, C: (dim, d_state) fixed, (batch, d_state, seqlen), or (batch, groups, d_state, seqlen).
        D, delta_bias: (dim,) or None. initial_state: (batch, dim, d_state) or None (zeros).
        chunk_size: time steps per tile and between saved states (power of 2; default 8). The backward
            recomputes each chunk from its saved state: the saved fp32 states take 4 d_state / chunk_size bytes
            per (batch, channel, step).
        block_d: channels per program (power of 2; default 8).
        num_warps: warps per program (default 1).
        n_segments: time segments per sequence (default: split only when the channel blocks alone would leave
            the GPU nearly idle, e.g. batch 1 with long sequences).
        num_stages: software-pipelining depth of the loads in the chunk loops (1 = none; default
            DEFAULT_NUM_STAGES).
        save_every: keep the state of every save_every-th chunk only (the saved states take
            4 d_state / (chunk_size save_every) bytes per (batch, channel, step)); the backward recomputes the
            others, one save group at a time, at the cost of one more pass over the inputs. Default: 1, or more
            when the saved states would pass SAVED_STATE_BYTES (1 GiB).
    Returns:
        out (batch, dim, seqlen) in u's dtype, and last_state (batch, dim, d_state) float32 if asked.
    """
    chunk = chunk_size or DEFAULT_CHUNK
    if save_every is None:
        save_every = _auto_save_every(u.shape[0] * u.shape[1] * triton.cdiv(u.shape[2], chunk) * A.shape[1] * 4)
    tun = _Tunables(chunk, block_d or DEFAULT_BLOCK_D, num_warps or DEFAULT_NUM_WARPS, n_segments,
                    num_stages or DEFAULT_NUM_STAGES, save_every)
    out, last = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, tun)
    return (out, last) if return_last_state else out
