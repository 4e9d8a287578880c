"""The selective scan's forward kernels and their launch.

* The softplus of delta + delta_bias runs once, as an elementwise pass into an fp32 buffer (:func:`dt_input`);
  the backward calls it again rather than keep the buffer.
* :func:`_fwd_kernel` writes ``out``, the last state and the fp32 state at every SAVE_EVERY-th chunk start
  (batch, dim, nsaved, d_state), never the full state; the backward recomputes each chunk from those.
* Long sequences with few channels are split over time segments: :func:`_fwd_summary_kernel` gives each
  segment's end state from a zero start and its total decay exp(A sum dt); each segment's program of
  :func:`_fwd_kernel` then folds in the summaries of the segments before it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_bio_audio.kernels import utils
from mamba_bio_audio.kernels.selective_scan.plan import Plan, Tunables, shape_args, strides
from mamba_bio_audio.kernels.selective_scan.tiles import (
    all_true_if,
    at_step,
    bc_tile,
    chunk_states,
    dt_reset_tile,
    group_base,
    program_channels,
    seg_keep,
    silu_parts,
    state_ptrs,
)
from mamba_bio_audio.kernels.utils import LOG2E, load_vec, softplus

SOFTPLUS_BLOCK_T = 1024
# with seq_idx: channels per program of the softplus pass (one load of the reset row serves them all), and warps
SOFTPLUS_SEQ_ROWS, SOFTPLUS_SEQ_WARPS = 8, 8


@triton.jit
def softplus_kernel(delta_ptr, bias_ptr, reset_ptr, dt_ptr, dim, seqlen, stride_b, stride_d,
                     HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, ROWS: tl.constexpr, BLOCK_T: tl.constexpr):
    """dt = softplus(delta + bias) in fp32, (batch, dim, seqlen) with delta's strides (stride_b, stride_d, 1);
    program (ROWS channels of one batch row, time block).

    HAS_SEQ: reset (batch, seqlen) fp32 contiguous, -inf where a packed sequence starts
    (:func:`~mamba_bio_audio.kernels.selective_scan.function.reset_exponents`); dt is stored there with its sign
    bit set (softplus >= 0, so the sign is free; a dt that underflows to 0 becomes -0.0), which the scan kernels
    read as the start (:func:`~mamba_bio_audio.kernels.selective_scan.tiles.dt_reset_tile`)."""
    rb, tb = tl.program_id(0), tl.program_id(1)
    blocks = tl.cdiv(dim, ROWS)
    b = rb // blocks
    d = (rb % blocks) * ROWS + tl.arange(0, ROWS)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < seqlen
    mask = (d < dim)[:, None] & t_mask[None, :]
    offs = b.to(tl.int64) * stride_b + d.to(tl.int64)[:, None] * stride_d + t[None, :]
    x = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + d, mask=d < dim, other=0.0).to(tl.float32)[:, None]
    dt = softplus(x)
    if HAS_SEQ:
        start = tl.load(reset_ptr + b.to(tl.int64) * seqlen + t, mask=t_mask, other=0.0) < 0
        bits = dt.to(tl.int32, bitcast=True) | tl.where(start, -2147483648, 0)[None, :]  # the sign bit, also of 0
        dt = bits.to(tl.float32, bitcast=True)
    tl.store(dt_ptr + offs, dt, mask=mask)


@triton.jit
def _fwd_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, reset_ptr, seg_h_ptr, seg_dt_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b,
    HAS_BIAS: tl.constexpr, B_VARYING: tl.constexpr, HAS_SEQ: tl.constexpr, SEQ_IN_DT: tl.constexpr, DT_IN: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr, EVEN: tl.constexpr,
):
    """Per time segment, from a zero state (EVEN: as :func:`_fwd_kernel`'s): the end state -> seg_h (batch, nseg, dim, d_state) and
    sum_t dt_t -> seg_dt (batch, nseg, dim), so that h_end = exp(A seg_dt) h_start + seg_h (times 0 when a packed
    sequence starts inside the segment: the launch's seg_keep)."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask, n, n_mask, nd_mask, row, A, bias = program_channels(
        pid, b, channels_per_group, blocks_per_group, stride_b, stride_d, A_ptr, bias_ptr, d_state, HAS_BIAS,
        BLOCK_D, BLOCK_N, EVEN)
    A2 = A * LOG2E
    b_base = group_base(b, part, parts_per_group_b, bc_sb, bc_sg)

    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dt_sum = tl.zeros([BLOCK_D], tl.float32)
    c_begin = seg * chunks_per_seg
    for c in tl.range(c_begin, tl.minimum(c_begin + chunks_per_seg, nchunks), num_stages=STAGES):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_mask = all_true_if(t < seqlen, EVEN)
        mask = t_mask[:, None] & d_mask[None, :]
        offs = row[None, :] + t[:, None]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, reset = dt_reset_tile(delta_ptr, offs, mask, bias, reset_ptr, b.to(tl.int64) * seqlen, t, seqlen,
                                  HAS_BIAS, HAS_SEQ, SEQ_IN_DT, DT_IN)
        Bt = bc_tile(B_ptr, b_base, d, n, t, nd_mask, t_mask[:, None] & n_mask[None, :], d_state, bc_sn, B_VARYING)
        hs, _ = chunk_states(dt, u, Bt, A2, h, reset, HAS_SEQ, CHUNK)
        h = at_step(hs, CHUNK - 1, CHUNK)
        dt_sum += tl.sum(dt, axis=0)

    seg_row = (b * nseg + seg) * dim + d
    tl.store(state_ptrs(seg_h_ptr, seg_row, n, d_state), h, mask=nd_mask)
    tl.store(seg_dt_ptr + seg_row, dt_sum, mask=d_mask)


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, reset_ptr, seg_keep_ptr, seg_h_ptr,
    seg_dt_ptr, out_ptr, states_ptr, last_ptr,
    dim, seqlen, d_state, chunks_per_seg, nchunks, nseg, nsaved, stride_b, stride_d, bc_sb, bc_sg, bc_sn,
    channels_per_group, blocks_per_group, groups_b, parts_per_group_b, groups_c, parts_per_group_c,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, HAS_SEQ: tl.constexpr, SEQ_IN_DT: tl.constexpr, DT_IN: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr,
    SAVE_EVERY: tl.constexpr, EVEN: tl.constexpr,
):
    """out (batch, dim, seqlen); states (batch, dim, nsaved, d_state) = the fp32 state before every
    SAVE_EVERY-th chunk (nsaved = cdiv(nchunks, SAVE_EVERY));
    last (batch, dim, d_state) = the final state (written by the last segment).
    HAS_SEQ: packed sequences, the decay is zero where one starts: with SEQ_IN_DT the starts are delta's sign
    bits (the softplus pass's dt, :func:`softplus_kernel`), else reset_ptr fp32 (batch, seqlen) is -inf there;
    seg_keep (batch, nseg) is 0 for a segment with a start inside, 1 otherwise.
    DT_IN: delta is the raw input and the kernel applies bias and softplus itself (``softplus_in_kernel``,
    :func:`~mamba_bio_audio.kernels.selective_scan.tiles.dt_tile`); else delta is the softplus pass's dt, or
    delta used as it is (delta_softplus off). EVEN: no tile reaches past the shapes (``Plan.even``), so the
    masks are constants (:func:`~mamba_bio_audio.kernels.selective_scan.tiles.all_true_if`)."""
    pid, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part, d, d_mask, n, n_mask, nd_mask, row, A, bias = program_channels(
        pid, b, channels_per_group, blocks_per_group, stride_b, stride_d, A_ptr, bias_ptr, d_state, HAS_BIAS,
        BLOCK_D, BLOCK_N, EVEN)
    A2 = A * LOG2E
    Dv = load_vec(D_ptr, d, d_mask, HAS_D, BLOCK_D)
    b_base = group_base(b, part, parts_per_group_b, bc_sb, bc_sg)
    c_base = group_base(b, part, parts_per_group_c, bc_sb, bc_sg)

    if HAS_H0:
        h = tl.load(state_ptrs(h0_ptr, b * dim + d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Fold in the earlier segments: h <- exp(A sum dt) h + (their end state from zero).
    for j in range(0, seg):
        seg_row = (b * nseg + j) * dim + d
        dt_sum = tl.load(seg_dt_ptr + seg_row, mask=d_mask, other=0.0)
        h_seg = tl.load(state_ptrs(seg_h_ptr, seg_row, n, d_state), mask=nd_mask, other=0.0)
        h = (seg_keep(seg_keep_ptr, b * nseg + j, HAS_SEQ) * tl.exp2(dt_sum[None, :] * A2)) * h + h_seg

    c_begin = seg * chunks_per_seg
    for c in tl.range(c_begin, tl.minimum(c_begin + chunks_per_seg, nchunks), num_stages=STAGES):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_mask = all_true_if(t < seqlen, EVEN)
        tn_mask = t_mask[:, None] & n_mask[None, :]
        mask = t_mask[:, None] & d_mask[None, :]
        offs = row[None, :] + t[:, None]
        tl.store(state_ptrs(states_ptr, (b * dim + d) * nsaved + c // SAVE_EVERY, n, d_state), h,
                 mask=nd_mask & (c % SAVE_EVERY == 0))

        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, reset = dt_reset_tile(delta_ptr, offs, mask, bias, reset_ptr, b.to(tl.int64) * seqlen, t, seqlen,
                                  HAS_BIAS, HAS_SEQ, SEQ_IN_DT, DT_IN)
        Bt = bc_tile(B_ptr, b_base, d, n, t, nd_mask, tn_mask, d_state, bc_sn, B_VARYING)
        Ct = bc_tile(C_ptr, c_base, d, n, t, nd_mask, tn_mask, d_state, bc_sn, C_VARYING)
        hs, _ = chunk_states(dt, u, Bt, A2, h, reset, HAS_SEQ, CHUNK)
        y = tl.sum(hs * Ct, axis=1) + Dv[None, :] * u
        if HAS_Z:
            z, sig = silu_parts(z_ptr, offs, mask)
            y = y * z * sig
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
        h = at_step(hs, CHUNK - 1, CHUNK)

    tl.store(state_ptrs(last_ptr, b * dim + d, n, d_state), h, mask=nd_mask & (seg == nseg - 1))


def dt_input(delta, delta_bias, softplus, reset=None):
    """What the scan kernels read as delta, and the bias they add themselves.

    With softplus, dt = softplus(delta + bias) is computed once by an elementwise pass into an fp32 buffer
    (batch, dim, seqlen): in the scan kernels the softplus would run replicated over the state lanes of every
    tile (NOTES.md: about a third of the forward's instructions). With packed sequences (reset, (batch, seqlen)
    as :func:`~mamba_bio_audio.kernels.selective_scan.function.reset_exponents` gives it) that pass also marks
    each start as dt's sign bit, so the scan kernels need no other load for them (:func:`seq_in_dt`). Without
    softplus the kernels add the bias themselves (and read reset).
    """
    if not softplus:
        return delta, delta_bias
    batch, dim, seqlen = delta.shape
    dt = utils.empty_as(delta, torch.float32)
    rows, warps = (1, 4) if reset is None else (SOFTPLUS_SEQ_ROWS, SOFTPLUS_SEQ_WARPS)
    softplus_kernel[(batch * utils.cdiv(dim, rows), utils.cdiv(seqlen, SOFTPLUS_BLOCK_T))](
        delta, delta_bias if delta_bias is not None else delta, reset if reset is not None else delta, dt, dim,
        seqlen, delta.stride(0), delta.stride(1), HAS_BIAS=delta_bias is not None, HAS_SEQ=reset is not None,
        ROWS=rows, BLOCK_T=SOFTPLUS_BLOCK_T, num_warps=warps,
    )
    return dt, None


def seq_in_dt(softplus: bool, reset) -> int:
    """The scan kernels' SEQ_IN_DT: where they read packed sequences' starts. 0: from reset (``softplus`` False:
    no softplus pass), or no packed sequences; 1: from dt's sign bit (:func:`dt_input` with softplus) by PTX
    ``prmt``, compiled for an NVIDIA GPU; 2: from dt's sign bit by a compare and a select (the interpreter, other
    GPUs), the same bits (:func:`~mamba_bio_audio.kernels.selective_scan.tiles.start_addend`)."""
    if not softplus or reset is None:
        return 0
    compiled = isinstance(softplus_kernel, triton.runtime.JITFunction)  # not under TRITON_INTERPRET=1
    return 1 if compiled and reset.is_cuda and torch.version.hip is None else 2


def kernel_dt_args(delta, delta_bias, softplus, reset, tun: Tunables):
    """(delta, delta_bias, DT_IN, SEQ_IN_DT) for the scan kernels of one direction: with softplus and
    ``tun.softplus_in_kernel`` the raw delta and bias (the kernels apply both, DT_IN), else :func:`dt_input`'s;
    SEQ_IN_DT by :func:`seq_in_dt`, which reads the sign bits only of the softplus pass's dt."""
    dt_in = bool(softplus and tun.softplus_in_kernel)
    if not dt_in:
        delta, delta_bias = dt_input(delta, delta_bias, softplus, reset)
    return delta, delta_bias, dt_in, seq_in_dt(softplus and not dt_in, reset)


def segment_keep(reset, nseg: int, per_seg: int, chunk: int, shift: int) -> torch.Tensor:
    """(batch, nseg) fp32: 0 for a time segment whose total decay is cut by a packed sequence's start, else 1.
    reset: (batch, seqlen), -inf where a sequence starts. Segment j covers steps [s0, s1) = [j per_seg chunk,
    (j + 1) per_seg chunk); the forward's decay from the state before s0 to the state at s1 - 1 spans starts
    at t in [s0, s1) (shift 0), the backward's from the gradient at s1 to the one at s0 spans t in (s0, s1]
    (shift 1)."""
    batch, seqlen = reset.shape
    span = nseg * per_seg * chunk
    starts = torch.zeros(batch, span + 1, dtype=torch.bool, device=reset.device)
    starts[:, :seqlen] = reset != 0
    cut = starts[:, shift:shift + span].reshape(batch, nseg, per_seg * chunk).any(-1)
    return (~cut).to(torch.float32).contiguous()


def launch_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, p: Plan, tun: Tunables, reset=None):
    """Launch the forward; returns out, last_state and the chunk-start states. reset: packed sequences as
    :func:`~mamba_bio_audio.kernels.selective_scan.function.reset_exponents` gives them, or None."""
    batch, dim, seqlen = u.shape
    delta, delta_bias, dt_in, seq_flag = kernel_dt_args(delta, delta_bias, softplus, reset, tun)
    f32 = torch.float32
    out = utils.empty_as(u)
    last = utils.empty(batch, dim, p.d_state, like=u, dtype=f32)
    save_every = tun.save_every
    states = utils.empty(batch, dim, utils.cdiv(p.nchunks, save_every), p.d_state, like=u, dtype=f32)
    block_d, warps = tun.block_d, tun.num_warps
    nseg, per_seg = p.segments(block_d, warps, tun.n_segments, u.device)
    grid = (p.groups * p.blocks(block_d), batch, nseg)
    cpg, bpg, gb, ppgb, gc, ppgc = shape_args(p, block_d)
    seg_h = utils.empty(batch, nseg, dim, p.d_state, like=u, dtype=f32)
    seg_dt = utils.empty(batch, nseg, dim, like=u, dtype=f32)
    dummy = u  # stands in for absent optional tensors; never read (constexpr flags)
    bias = delta_bias if delta_bias is not None else dummy
    has_seq = reset is not None
    seq = reset if has_seq else dummy
    keep = segment_keep(reset, nseg, per_seg, p.chunk, 0) if has_seq and nseg > 1 else dummy
    if nseg > 1:
        _fwd_summary_kernel[grid](
            u, delta, A, B, bias, seq, seg_h, seg_dt,
            dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, *strides(u, B, C), cpg, bpg, gb, ppgb,
            HAS_BIAS=delta_bias is not None, B_VARYING=B.dim() == 4, HAS_SEQ=has_seq,
            SEQ_IN_DT=seq_flag, DT_IN=dt_in, BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages,
            EVEN=p.even(block_d), num_warps=warps,
        )
    _fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy, bias,
        h0 if h0 is not None else dummy, seq, keep, seg_h, seg_dt, out, states, last,
        dim, seqlen, p.d_state, per_seg, p.nchunks, nseg, states.shape[2], *strides(u, B, C), cpg, bpg, gb, ppgb,
        gc, ppgc,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        B_VARYING=B.dim() == 4, C_VARYING=C.dim() == 4, HAS_SEQ=has_seq, SEQ_IN_DT=seq_flag, DT_IN=dt_in,
        BLOCK_D=block_d, BLOCK_N=p.block_n, CHUNK=p.chunk, STAGES=tun.num_stages, SAVE_EVERY=save_every,
        EVEN=p.even(block_d), num_warps=warps,
    )
    return out, last, states
