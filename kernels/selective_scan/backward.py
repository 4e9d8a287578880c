"""The selective scan's backward kernels and their launch: every gradient, from the chunk-start states the
forward saved.

* Each program walks its segment's chunks right to left carrying g = dL/dh, recomputing the chunk's states from
  the saved state before it. With save_every > 1 the unsaved chunk-start states come back either inline (the
  walk goes save group by save group: the group's states recomputed forwards into L2-resident scratch, then its
  chunks walked; two pipelined loops, :func:`_chunk_end_state`, :func:`_chunk_grads`) or, with
  ``Tunables.parallel_recompute``, from :func:`_recompute_states_kernel`, one pass over all save groups at once
  into a buffer for this backward, after which the walk is save_every 1's.
* Long sequences: :func:`_bwd_summary_kernel` gives each time segment's state gradient at its first step from a
  zero gradient after it, and its total decay; each program folds in the segments after its own.
* Deterministic under ``torch.use_deterministic_algorithms(True)``: then no atomics, and per-program partial sums
  of varying dB / dC are reduced in a fixed order (in waves of channel blocks bounded by PARTIAL_BYTES);
  otherwise those two are added atomically (fp32), as mamba_ssm does, which saves writing and reading back
  2 x 4 x batch x programs x d_state x seqlen bytes. Per-program partial sums (dA, dD, d delta_bias, fixed
  dB/dC) are always reduced with torch.sum in the wrapper.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_bio_audio.kernels import utils
from mamba_bio_audio.kernels.selective_scan.forward import kernel_dt_args, segment_keep
from mamba_bio_audio.kernels.selective_scan.plan import (
    Plan,
    Tunables,
    resolve_bwd_maxnreg,
    shape_args,
    strides,
)
from mamba_bio_audio.kernels.selective_scan.tiles import (
    all_true_if,
    at_step,
    bc_tile,
    carry_into_first,
    chunk_states,
    combine,
    dt_reset_tile,
    group_base,
    program_channels,
    seg_keep,
    silu_parts,
    state_ptrs,
)
from mamba_bio_audio.kernels.utils import LOG2E, load_vec, softplus_approx

PARTIAL_BYTES = 1 << 30  # bound on the backward's dB + dC partial sums (varying B/C)


@triton.jit
def _sigmoid_from_softplus(dt):
    """sigmoid(x) from dt = softplus(x): 1 - exp(-dt), by its Taylor series where dt is small (no cancellation;
    relative error < dt^4 / 120 < 2e-7 below 1/16)."""
    series = dt * (1.0 - dt * (0.5 - dt * (0.16666666666666666 - dt * 0.041666666666666664)))
    return tl.where(dt > 0.0625, 1.0 - tl.exp(-dt), series)


@triton.jit
def _chunk_state_grads(dt_next, Ct, dy, A2, g, reset_next, HAS_SEQ: tl.constexpr, CHUNK: tl.constexpr):
    """Gradients w.r.t. every state of one chunk, right to left:

        g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1},   g after the chunk's last step = ``g`` (BLOCK_N, BLOCK_D).

    dt_next: dt shifted one step left (CHUNK, BLOCK_D), zero past the sequence end (there exp(0 A) = 1 and
    ``g`` is the gradient of last_state); reset_next, broadcastable to (CHUNK, BLOCK_D), the decay exponent's
    addend at step t + 1 (-inf where a packed sequence starts there, with HAS_SEQ). A reverse scan computes s_t = a_t s_{t+1} + b_t with the same
    combine, since the running value enters ``combine`` first.

    The reverse scan is a forward scan between two time flips: Triton (3.6) lowers ``reverse=True`` with ~640
    lane shuffles per tile even though time is held in-thread, while ``tl.flip`` along an in-thread axis is
    register moves (NOTES.md, item 1 of what changed)."""
    if HAS_SEQ:
        dA_next = tl.exp2(dt_next[:, None, :] * A2[None, :, :] + reset_next[:, None, :])
    else:
        dA_next = tl.exp2(dt_next[:, None, :] * A2[None, :, :])
    a_rev = tl.flip(dA_next, 0)
    b_rev = carry_into_first(a_rev, tl.flip(Ct * dy[:, None, :], 0), g, CHUNK)  # g enters at the chunk's last step
    _, gs = tl.associative_scan((a_rev, b_rev), axis=0, combine_fn=combine)
    return tl.flip(gs, 0)


@triton.jit
def _chunk_end_state(u_ptr, delta_ptr, B_ptr, reset_ptr, j, h, row, b, d, n, bias, A2, b_base, seqlen, d_state, bc_sn,
                     nd_mask, n_mask, d_mask, HAS_BIAS: tl.constexpr, B_VARYING: tl.constexpr, HAS_SEQ: tl.constexpr,
                     SEQ_IN_DT: tl.constexpr, DT_IN: tl.constexpr, CHUNK: tl.constexpr, EVEN: tl.constexpr):
    """The state after chunk j (BLOCK_N, BLOCK_D) from ``h``, the state before it (the forward's recurrence, no
    output): a save group's recompute pass (EVEN: as the kernel's)."""
    t = j * CHUNK + tl.arange(0, CHUNK)
    t_mask = all_true_if(t < seqlen, EVEN)
    mask = t_mask[:, None] & d_mask[None, :]
    offs = row[None, :] + t[:, None]
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dt, reset = dt_reset_tile(delta_ptr, offs, mask, bias, reset_ptr, b.to(tl.int64) * seqlen, t, seqlen,
                              HAS_BIAS, HAS_SEQ, SEQ_IN_DT, DT_IN)
    Bt = bc_tile(B_ptr, b_base, d, n, t, nd_mask, t_mask[:, None] & n_mask[None, :], d_state, bc_sn, B_VARYING)
    hs, _ = chunk_states(dt, u, Bt, A2, h, reset, HAS_SEQ, CHUNK)
    return at_step(hs, CHUNK - 1, CHUNK)


@triton.jit
def _recompute_states_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, reset_ptr, saved_ptr, states_ptr,
    dim, seqlen, d_state, nchunks, nsaved, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b,
    HAS_BIAS: tl.constexpr, B_VARYING: tl.constexpr, HAS_SEQ: tl.constexpr, SEQ_IN_DT: tl.constexpr,
    DT_IN: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr,
    SAVE_EVERY: tl.constexpr, EVEN: tl.constexpr,
):
    """Every chunk-start state (batch, dim, nchunks, d_state) from those the forward saved every SAVE_EVERY-th
    chunk (batch, dim, nsaved, d_state): program (channel block, b, save group) runs the forward's recurrence over
    its group from the group's saved state. All groups at once: SAVE_EVERY-fold fewer steps per program and
    nsaved-fold more programs than the backward's walk, so the pass fills the GPU where the walk is latency-bound
    (EVEN: as the backward's)."""
    pid, b, grp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask, n, n_mask, nd_mask, row, A, bias = program_channels(
        pid, b, channels_per_group, blocks_per_group, stride_b, stride_d, A_ptr, bias_ptr, d_state, HAS_BIAS,
        BLOCK_D, BLOCK_N, EVEN)
    A2 = A * LOG2E
    b_base = group_base(b, part, parts_per_group_b, bc_sb, bc_sg)
    start = grp * SAVE_EVERY
    stop = tl.minimum(start + SAVE_EVERY, nchunks)
    h = tl.load(state_ptrs(saved_ptr, (b * dim + d) * nsaved + grp, n, d_state), mask=nd_mask, other=0.0)
    tl.store(state_ptrs(states_ptr, (b * dim + d) * nchunks + start, n, d_state), h, mask=nd_mask)
    for j in tl.range(start, stop - 1, num_stages=STAGES):
        h = _chunk_end_state(u_ptr, delta_ptr, B_ptr, reset_ptr, j, h, row, b, d, n, bias, A2, b_base, seqlen,
                             d_state, bc_sn, nd_mask, n_mask, d_mask, HAS_BIAS, B_VARYING, HAS_SEQ, SEQ_IN_DT, DT_IN,
                             CHUNK, EVEN)
        tl.store(state_ptrs(states_ptr, (b * dim + d) * nchunks + j + 1, n, d_state), h, mask=nd_mask)


@triton.jit
def _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z: tl.constexpr):
    """dy = dL/dy_pre = dout silu(z) (CHUNK, BLOCK_D); also dout, z and sigmoid(z) (dout in their place without z)."""
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z, sig = silu_parts(z_ptr, offs, mask)
        dy = dout * z * sig
    else:
        z, sig, dy = dout, dout, dout
    return dout, dy, z, sig


@triton.jit
def _chunk_grads(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, reset_ptr, dout_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr,
                 y_ptr, c, h, g, dA_acc, dB_acc, dC_acc, dD_acc, dbias_acc, row, b, d, n, A, A2, bias, Dv, b_base, c_base,
                 bc_row_b, bc_row_c, seqlen, d_state, bc_sn, n_mask, d_mask, nd_mask,
                 HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, WANT_DBIAS: tl.constexpr,
                 B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, ATOMIC_BC: tl.constexpr, HAS_SEQ: tl.constexpr,
                 SEQ_IN_DT: tl.constexpr, DT_IN: tl.constexpr, Y_OUT: tl.constexpr, CHUNK: tl.constexpr,
                 EVEN: tl.constexpr):
    """One chunk c of :func:`_bwd_kernel`'s walk, from h, the state before it, and g, the state gradient after it:
    stores du, d delta, dz, (varying) dB / dC and, with Y_OUT, the forward's output out of its steps; returns g before it and the accumulators
    (dA, fixed dB, fixed dC, dD, d delta_bias) with its terms added."""
    t = c * CHUNK + tl.arange(0, CHUNK)
    t_mask = all_true_if(t < seqlen, EVEN)
    tn_mask = t_mask[:, None] & n_mask[None, :]
    mask = t_mask[:, None] & d_mask[None, :]
    offs = row[None, :] + t[:, None]

    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dt, reset = dt_reset_tile(delta_ptr, offs, mask, bias, reset_ptr, b.to(tl.int64) * seqlen, t, seqlen,
                              HAS_BIAS, HAS_SEQ, SEQ_IN_DT, DT_IN)
    Bt = bc_tile(B_ptr, b_base, d, n, t, nd_mask, tn_mask, d_state, bc_sn, B_VARYING)
    Ct = bc_tile(C_ptr, c_base, d, n, t, nd_mask, tn_mask, d_state, bc_sn, C_VARYING)
    hs, dBu = chunk_states(dt, u, Bt, A2, h, reset, HAS_SEQ, CHUNK)

    # Output gate: out = y_pre silu(z).
    dout, dy, z, sig = _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z)
    if HAS_Z:
        y_pre = tl.sum(hs * Ct, axis=1) + Dv[None, :] * u
        dz = dout * y_pre * sig * (1.0 + z * (1.0 - sig))
        tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        if Y_OUT:  # out = y_pre silu(z), as the forward computed it
            tl.store(y_ptr + offs, (y_pre * z * sig).to(y_ptr.dtype.element_ty), mask=mask)
    elif Y_OUT:
        tl.store(y_ptr + offs, (tl.sum(hs * Ct, axis=1) + Dv[None, :] * u).to(y_ptr.dtype.element_ty), mask=mask)

    # State gradients, right to left from g.
    next_mask = (t + 1 < seqlen)[:, None] & d_mask[None, :]
    dt_next, reset_next = dt_reset_tile(delta_ptr, offs + 1, next_mask, bias, reset_ptr, b.to(tl.int64) * seqlen,
                                        t + 1, seqlen, HAS_BIAS, HAS_SEQ, SEQ_IN_DT, DT_IN)
    gs = _chunk_state_grads(dt_next, Ct, dy, A2, g, reset_next, HAS_SEQ, CHUNK)
    g = at_step(gs, 0, CHUNK)

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
    return g, dA_acc, dB_acc, dC_acc, dD_acc, dbias_acc


@triton.jit
def _bwd_summary_kernel(
    dout_ptr, delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, reset_ptr, seg_g_ptr, seg_dt_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_c, parts_per_group_c,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, C_VARYING: tl.constexpr, HAS_SEQ: tl.constexpr,
    SEQ_IN_DT: tl.constexpr, DT_IN: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    STAGES: tl.constexpr, EVEN: tl.constexpr,
):
    """Per time segment [s0, s1), from a zero gradient after it (EVEN: as :func:`_bwd_kernel`'s): the state gradient at its first step
    g_{s0} -> seg_g (batch, nseg, dim, d_state), and sum_{s0 < t <= s1} dt_t -> seg_dt (batch, nseg, dim),
    so that g_{s0} = exp(A seg_dt) g_{s1} + seg_g (times 0 when a packed sequence starts in (s0, s1]: the launch's
    seg_keep)."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask, n, n_mask, nd_mask, row, A, bias = program_channels(
        pid, b, channels_per_group, blocks_per_group, stride_b, stride_d, A_ptr, bias_ptr, d_state, HAS_BIAS,
        BLOCK_D, BLOCK_N, EVEN)
    A2 = A * LOG2E
    c_base = group_base(b, part, parts_per_group_c, bc_sb, bc_sg)

    g = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dt_sum = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, nchunks)
    for i in tl.range(0, c_end - c_begin, num_stages=STAGES):
        t = (c_end - 1 - i) * CHUNK + tl.arange(0, CHUNK)
        t_mask = all_true_if(t < seqlen, EVEN)
        mask = t_mask[:, None] & d_mask[None, :]
        offs = row[None, :] + t[:, None]
        next_mask = (t + 1 < seqlen)[:, None] & d_mask[None, :]
        dt_next, reset_next = dt_reset_tile(delta_ptr, offs + 1, next_mask, bias, reset_ptr, b.to(tl.int64) * seqlen,
                                            t + 1, seqlen, HAS_BIAS, HAS_SEQ, SEQ_IN_DT, DT_IN)
        Ct = bc_tile(C_ptr, c_base, d, n, t, nd_mask, t_mask[:, None] & n_mask[None, :], d_state, bc_sn, C_VARYING)
        _, dy, _, _ = _dy_tile(dout_ptr, z_ptr, offs, mask, HAS_Z)
        gs = _chunk_state_grads(dt_next, Ct, dy, A2, g, reset_next, HAS_SEQ, CHUNK)
        g = at_step(gs, 0, CHUNK)
        dt_sum += tl.sum(dt_next, axis=0)

    seg_row = (b * nseg + seg) * dim + d
    tl.store(state_ptrs(seg_g_ptr, seg_row, n, d_state), g, mask=nd_mask)
    tl.store(seg_dt_ptr + seg_row, dt_sum, mask=d_mask)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, reset_ptr, seg_keep_ptr, states_ptr, dout_ptr,
    dlast_ptr, seg_g_ptr, seg_dt_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dh0_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, y_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg, nsaved, first_block, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b, groups_c, parts_per_group_c,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_DLAST: tl.constexpr, DT_SOFTPLUS: tl.constexpr, WANT_DBIAS: tl.constexpr, B_VARYING: tl.constexpr,
    C_VARYING: tl.constexpr, ATOMIC_BC: tl.constexpr, HAS_SEQ: tl.constexpr, SEQ_IN_DT: tl.constexpr, DT_IN: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr,
    SAVE_EVERY: tl.constexpr, Y_OUT: tl.constexpr, EVEN: tl.constexpr,
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
        out_t     = y_pre_t silu(z_t)  -> y (Y_OUT: the forward's output again, for a product after the scan
                                          whose backward needs it, e.g. out_proj's weight gradient)

    Packed sequences (HAS_SEQ): dA_t = 0 where one starts (in the state recompute and in g's recurrence), so the
    formulas hold unchanged; seg_keep (batch, nseg) zeroes a later segment's decay when a start cuts it. The
    starts come as delta's sign bits with SEQ_IN_DT (the softplus pass's dt: the one-step-ahead tile that g's
    recurrence reads anyway carries reset_{t+1}, so no load is added), else from reset_ptr. DT_IN: dt is
    softplus(delta + bias) computed in the kernel, for every tile that reads it (as in the forward). EVEN: the
    masks of the chunk's own steps, channels and state lanes are constants (``Plan.even``; the one-step-ahead
    tile keeps its test of the sequence's end).
    """
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask, n, n_mask, nd_mask, row, A, bias = program_channels(
        first_block + pid, b, channels_per_group, blocks_per_group, stride_b, stride_d, A_ptr, bias_ptr, d_state,
        HAS_BIAS, BLOCK_D, BLOCK_N, EVEN)
    A2 = A * LOG2E
    Dv = load_vec(D_ptr, d, d_mask, HAS_D, BLOCK_D)
    b_base = group_base(b, part, parts_per_group_b, bc_sb, bc_sg)
    c_base = group_base(b, part, parts_per_group_c, bc_sb, bc_sg)
    if ATOMIC_BC:  # varying dB/dC added into their contiguous (batch, groups, d_state, seqlen) gradients
        bc_row_b = (b * groups_b + part // parts_per_group_b).to(tl.int64) * d_state * seqlen
        bc_row_c = (b * groups_c + part // parts_per_group_c).to(tl.int64) * d_state * seqlen
    else:  # per-program partials (batch, wave, d_state, seqlen), summed by the wrapper in a fixed order
        bc_row_b = (b * tl.num_programs(0) + pid).to(tl.int64) * d_state * seqlen
        bc_row_c = bc_row_b
    seg_row = (b * nseg + seg) * dim + d

    # g after this segment: dL/d last_state, carried back through the later segments with their summaries.
    if HAS_DLAST:
        g = tl.load(state_ptrs(dlast_ptr, b * dim + d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for i in range(0, nseg - 1 - seg):
        later = (b * nseg + nseg - 1 - i) * dim + d
        dt_sum = tl.load(seg_dt_ptr + later, mask=d_mask, other=0.0)
        g_seg = tl.load(state_ptrs(seg_g_ptr, later, n, d_state), mask=nd_mask, other=0.0)
        g = (seg_keep(seg_keep_ptr, b * nseg + nseg - 1 - i, HAS_SEQ) * tl.exp2(dt_sum[None, :] * A2)) * g + g_seg

    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dB_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dC_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, nchunks)
    if SAVE_EVERY == 1:
        for i in tl.range(0, c_end - c_begin, num_stages=STAGES):
            c = c_end - 1 - i
            h = tl.load(state_ptrs(states_ptr, (b * dim + d) * nsaved + c, n, d_state), mask=nd_mask, other=0.0)
            g, dA_acc, dB_acc, dC_acc, dD_acc, dbias_acc = _chunk_grads(
                u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, reset_ptr, dout_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr,
                y_ptr, c, h, g, dA_acc, dB_acc, dC_acc, dD_acc, dbias_acc, row, b, d, n, A, A2, bias, Dv, b_base, c_base,
                bc_row_b, bc_row_c, seqlen, d_state, bc_sn, n_mask, d_mask, nd_mask,
                HAS_Z, HAS_BIAS, DT_SOFTPLUS, WANT_DBIAS, B_VARYING, C_VARYING, ATOMIC_BC, HAS_SEQ, SEQ_IN_DT, DT_IN,
                Y_OUT, CHUNK, EVEN)
    else:
        # Save groups right to left, each in two pipelined passes: its chunk-start states recomputed forwards from
        # the group's saved state into this program's scratch (L2-resident, SAVE_EVERY x BLOCK_N x BLOCK_D fp32),
        # then its chunks walked right to left reading them. A group may start before this segment (its saved
        # state is the forward's, whatever the segments): only its chunks in [c_begin, c_end) are walked.
        program = (seg * tl.num_programs(1) + b) * tl.num_programs(0) + pid
        scratch = scratch_ptr + program.to(tl.int64) * (SAVE_EVERY * BLOCK_N * BLOCK_D)
        slot = n[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]  # (BLOCK_N, BLOCK_D) offsets in one slot
        g_last = (c_end - 1) // SAVE_EVERY
        for k in range(0, g_last - c_begin // SAVE_EVERY + 1):
            start = (g_last - k) * SAVE_EVERY
            stop = tl.minimum(start + SAVE_EVERY, c_end)
            h = tl.load(state_ptrs(states_ptr, (b * dim + d) * nsaved + start // SAVE_EVERY, n, d_state),
                        mask=nd_mask, other=0.0)
            tl.store(scratch + slot, h)
            for j in tl.range(start, stop - 1, num_stages=STAGES):
                h = _chunk_end_state(u_ptr, delta_ptr, B_ptr, reset_ptr, j, h, row, b, d, n, bias, A2, b_base,
                                     seqlen, d_state, bc_sn, nd_mask, n_mask, d_mask, HAS_BIAS, B_VARYING, HAS_SEQ,
                                     SEQ_IN_DT, DT_IN, CHUNK, EVEN)
                tl.store(scratch + (j + 1 - start) * (BLOCK_N * BLOCK_D) + slot, h)
            tl.debug_barrier()  # the slots are read below, possibly by other lanes than wrote them
            for i in tl.range(0, stop - tl.maximum(start, c_begin), num_stages=STAGES):
                c = stop - 1 - i
                h = tl.load(scratch + (c - start) * (BLOCK_N * BLOCK_D) + slot)
                g, dA_acc, dB_acc, dC_acc, dD_acc, dbias_acc = _chunk_grads(
                    u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, reset_ptr, dout_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr,
                    dC_ptr, y_ptr, c, h, g, dA_acc, dB_acc, dC_acc, dD_acc, dbias_acc, row, b, d, n, A, A2, bias, Dv, b_base,
                    c_base, bc_row_b, bc_row_c, seqlen, d_state, bc_sn, n_mask, d_mask, nd_mask,
                    HAS_Z, HAS_BIAS, DT_SOFTPLUS, WANT_DBIAS, B_VARYING, C_VARYING, ATOMIC_BC, HAS_SEQ, SEQ_IN_DT,
                    DT_IN, Y_OUT, CHUNK, EVEN)
            tl.debug_barrier()  # every lane done reading the slots before the next group overwrites them

    tl.store(state_ptrs(dA_ptr, seg_row, n, d_state), dA_acc, mask=nd_mask)
    if not B_VARYING:
        tl.store(state_ptrs(dB_ptr, seg_row, n, d_state), dB_acc, mask=nd_mask)
    if not C_VARYING:
        tl.store(state_ptrs(dC_ptr, seg_row, n, d_state), dC_acc, mask=nd_mask)
    if HAS_D:
        tl.store(dD_ptr + seg_row, dD_acc, mask=d_mask)
    if WANT_DBIAS:
        tl.store(dbias_ptr + seg_row, dbias_acc, mask=d_mask)
    if HAS_H0:
        # h_0 = exp(dt_0 A) h_{-1} + ..., so dL/dh_{-1} = exp(dt_0 A) g_0 (first segment only). No sequence
        # starts at t = 0, so dt_0 carries no sign mark (SEQ_IN_DT).
        dt0 = tl.load(delta_ptr + row, mask=d_mask, other=0.0).to(tl.float32) + bias
        if DT_IN:
            dt0 = softplus_approx(dt0)
        tl.store(state_ptrs(dh0_ptr, b * dim + d, n, d_state), tl.exp2(dt0[None, :] * A2) * g,
                 mask=nd_mask & (seg == 0))


def launch_backward(dout, dlast, saved, softplus, p: Plan, tun: Tunables, dz_out=None, y_out=None):
    """Launch the backward; returns (du, ddelta, dA, dB, dC, dD, dz, d delta_bias, d initial_state).
    saved: (u, delta, A, B, C, D, z, delta_bias, initial_state, reset, states) as the forward saved them (reset:
    :func:`~mamba_bio_audio.kernels.selective_scan.function.reset_exponents` or None). ``dz_out``: a tensor with
    u's shape and strides and z's dtype that receives dz (returned as dz), else dz is allocated. ``y_out``: a
    tensor with u's shape and strides that receives the forward's output out again (recomputed from the states;
    what the forward returned up to rounding order), else none is written."""
    u, delta_in, A, B, C, D, z, bias_in, h0, reset, states = saved
    batch, dim, seqlen = u.shape
    save_every = tun.save_every  # as the forward saved them
    delta, delta_bias, dt_in, seq_flag = kernel_dt_args(delta_in, bias_in, softplus, reset, tun)
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
    cpg, bpg, gb, ppgb, gc, ppgc = shape_args(p, block_d)
    if dout is None:
        dout = torch.zeros_like(u)
    elif dout.stride() != u.stride():  # the kernels index every (batch, dim, seqlen) tensor alike
        dout = utils.empty_as(u, dout.dtype).copy_(dout)
    dummy = u
    bias = delta_bias if delta_bias is not None else dummy
    z_arg = z if z is not None else dummy
    has_seq = reset is not None
    seq = reset if has_seq else dummy
    keep = segment_keep(reset, nseg, per_seg, p.chunk, 1) if has_seq and nseg > 1 else dummy

    seg_g = utils.empty(batch, nseg, dim, p.d_state, like=u, dtype=f32)
    seg_dt = utils.empty(batch, nseg, dim, like=u, dtype=f32)
    if nseg > 1:
        _bwd_summary_kernel[(programs, batch, nseg)](
            dout, delta, A, C, z_arg, bias, seq, seg_g, seg_dt,
            dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, *strides(u, B, C), cpg, bpg, gc, ppgc,
            HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, C_VARYING=C.dim() == 4, HAS_SEQ=has_seq,
            SEQ_IN_DT=seq_flag, DT_IN=dt_in, BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages,
            EVEN=p.even(block_d), num_warps=warps,
        )

    du, ddelta = utils.empty_as(u), utils.empty_as(delta_in)
    if dz_out is not None and (z is None or dz_out.shape != u.shape or dz_out.stride() != u.stride()
                               or dz_out.dtype != z.dtype):
        raise ValueError("dz_out must have u's shape and strides and z's dtype (and z must be given)")
    dz = dz_out if dz_out is not None else utils.empty_as(z) if z is not None else None
    if y_out is not None and (y_out.shape != u.shape or y_out.stride() != u.stride()):
        raise ValueError("y_out must have u's shape and strides")
    dh0 = utils.empty(batch, dim, p.d_state, like=u, dtype=f32) if h0 is not None else None
    dA = utils.empty(batch, nseg, dim, p.d_state, like=u, dtype=f32)
    dD = utils.empty(batch, nseg, dim, like=u, dtype=f32) if D is not None else None
    dbias = utils.empty(batch, nseg, dim, like=u, dtype=f32) if bias_in is not None else None
    grads_bc = [X.new_zeros(X.shape, dtype=f32) if X.dim() == 4 else utils.empty(batch, nseg, dim, p.d_state, like=u,
                                                                             dtype=f32) for X in (B, C)]
    if save_every > 1 and tun.parallel_recompute:
        # every chunk-start state again, all save groups in parallel, into a buffer that lives for this backward
        # only; the walk below then reads them as if all had been saved
        full = utils.empty(batch, dim, p.nchunks, p.d_state, like=u, dtype=f32)
        _recompute_states_kernel[(programs, batch, states.shape[2])](
            u, delta, A, B, bias, seq, states, full, dim, seqlen, p.d_state, p.nchunks, states.shape[2],
            *strides(u, B, C), cpg, bpg, gb, ppgb,
            HAS_BIAS=delta_bias is not None, B_VARYING=B.dim() == 4, HAS_SEQ=has_seq, SEQ_IN_DT=seq_flag, DT_IN=dt_in,
            BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages, SAVE_EVERY=save_every,
            EVEN=p.even(block_d), num_warps=warps,
        )
        states, save_every = full, 1
    cap = resolve_bwd_maxnreg(tun.bwd_maxnreg, wave * batch * nseg, warps, u.device)
    for first in range(0, programs, wave):
        n_wave = min(wave, programs - first)
        parts = [utils.empty(batch, n_wave, p.d_state, seqlen, like=u, dtype=f32) if X.dim() == 4 and not atomic
                 else grad for X, grad in zip((B, C), grads_bc)]
        _bwd_kernel[(n_wave, batch, nseg)](
            u, delta, A, B, C, D if D is not None else dummy, z_arg, bias, seq, keep, states, dout,
            dlast.contiguous() if dlast is not None else dummy, seg_g, seg_dt,
            utils.empty(n_wave * batch * nseg * save_every * p.block_n * block_d, like=u, dtype=f32)
            if save_every > 1 else dummy,
            du, ddelta, dz if dz is not None else dummy, dh0 if dh0 is not None else dummy,
            dA, dD if dD is not None else dummy, dbias if dbias is not None else dummy, *parts,
            y_out if y_out is not None else dummy,
            dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, states.shape[2], first, *strides(u, B, C), cpg, bpg,
            gb, ppgb, gc, ppgc,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
            HAS_DLAST=dlast is not None, DT_SOFTPLUS=softplus, WANT_DBIAS=bias_in is not None,
            B_VARYING=B.dim() == 4, C_VARYING=C.dim() == 4, ATOMIC_BC=atomic, HAS_SEQ=has_seq,
            SEQ_IN_DT=seq_flag, DT_IN=dt_in, BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages, SAVE_EVERY=save_every,
            Y_OUT=y_out is not None, EVEN=p.even(block_d), num_warps=warps, **({"maxnreg": cap} if cap else {}),
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
