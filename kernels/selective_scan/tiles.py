"""Triton device functions that the selective scan's forward and backward kernels share (inlined into them).

A program owns (one batch row, BLOCK_D channels of one B/C group, one time segment) and walks its segment in
chunks of CHUNK steps; the tiles here are one chunk's: (CHUNK, BLOCK_D) per-channel values and (CHUNK, BLOCK_N,
BLOCK_D) states, time the slowest axis (held in-thread).
"""

from __future__ import annotations

import triton
import triton.language as tl

from mamba_bio_audio.kernels.utils import load_vec, softplus_approx


@triton.jit
def combine(a1, b1, a2, b2):
    """Compose the affine maps h -> a1 h + b1, then h -> a2 h + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def dt_from_raw(raw, mask, bias, HAS_BIAS: tl.constexpr):
    """dt = softplus(raw + bias) (CHUNK, BLOCK_D), zero where masked, from an already loaded delta tile ``raw``
    (what :func:`dt_tile` does with DT_IN after its load; the scan's main loops call it on tiles they read one chunk
    ahead)."""
    x = raw.to(tl.float32)
    if HAS_BIAS:
        x = x + bias[None, :]
    return tl.where(mask, softplus_approx(x), 0.0)


@triton.jit
def dt_tile(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, DT_IN: tl.constexpr):
    """dt (CHUNK, BLOCK_D): delta, plus bias in the kernel when HAS_BIAS, then softplus in the kernel when DT_IN
    (:func:`~mamba_bio_audio.kernels.utils.softplus_approx`; otherwise delta is the softplus pass's dt or is used
    as is); zero where masked so that masked steps are identity steps (exp(0 A) = 1, dt B u = 0)."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0)
    if DT_IN:
        dt = dt_from_raw(raw, mask, bias, HAS_BIAS)
    else:
        dt = raw.to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[None, :]
        dt = tl.where(mask, dt, 0.0)
    return dt


@triton.jit
def bc_tile(ptr, base, d, n, t, nd_mask, tn_mask, d_state, stride_n, VARYING: tl.constexpr):
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
def channel_block(pid, channels_per_group, blocks_per_group, BLOCK_D: tl.constexpr):
    """Program -> (partition, channels (BLOCK_D,), mask). Channels are cut into G equal partitions that each
    lie inside one B group and one C group; a block never straddles two partitions."""
    part = pid // blocks_per_group
    local = (pid % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    return part, part * channels_per_group + local, local < channels_per_group


@triton.jit
def all_true_if(mask, EVEN: tl.constexpr):
    """``mask``, or with EVEN (the call's shapes divide the tiles: seqlen by CHUNK, the channels of a partition by
    BLOCK_D, d_state = BLOCK_N, so no step, channel or state lane of a tile lies outside) an all-true mask of its
    shape: a constant that the compiler folds out of every load, store and select."""
    if EVEN:
        mask = tl.full(mask.shape, 1, tl.int1)
    return mask


@triton.jit
def program_channels(block, b, channels_per_group, blocks_per_group, stride_b, stride_d, A_ptr, bias_ptr, d_state,
                     HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN: tl.constexpr):
    """What every scan kernel's program sets up first, for channel block ``block`` of batch row ``b``: (partition,
    channels d (BLOCK_D,), d_mask, state lanes n (BLOCK_N,), n_mask, nd_mask (BLOCK_N, BLOCK_D), the row offset
    of its (batch, dim, seqlen) tensors (BLOCK_D,), A (BLOCK_N, BLOCK_D) fp32, delta_bias (BLOCK_D,) fp32 or
    zeros). EVEN: the masks are constants (:func:`all_true_if`)."""
    part, d, d_mask = channel_block(block, channels_per_group, blocks_per_group, BLOCK_D)
    d_mask = all_true_if(d_mask, EVEN)
    n = tl.arange(0, BLOCK_N)
    n_mask = all_true_if(n < d_state, EVEN)
    nd_mask = n_mask[:, None] & d_mask[None, :]
    row = b.to(tl.int64) * stride_b + d.to(tl.int64) * stride_d
    A = tl.load(state_ptrs(A_ptr, d, n, d_state), mask=nd_mask, other=0.0).to(tl.float32)
    bias = load_vec(bias_ptr, d, d_mask, HAS_BIAS, BLOCK_D)
    return part, d, d_mask, n, n_mask, nd_mask, row, A, bias


@triton.jit
def group_base(b, part, parts_per_group, stride_b, stride_g):
    """Offset of B/C[b, group] in a (batch, groups, d_state, seqlen) tensor with strides (stride_b, stride_g, .,
    1) for partition ``part``."""
    return b.to(tl.int64) * stride_b + (part // parts_per_group).to(tl.int64) * stride_g


@triton.jit
def state_ptrs(ptr, row, n, d_state):
    """(BLOCK_N, BLOCK_D) pointers to ptr[row, :] of a (rows, d_state) view; row (BLOCK_D,) is per channel."""
    return ptr + row[None, :].to(tl.int64) * d_state + n[:, None]


@triton.jit
def reset_tile(reset_ptr, reset_row, t, seqlen, HAS_SEQ: tl.constexpr):
    """(CHUNK,) fp32 added to the decay's exponent at steps t: -inf where a packed sequence starts (the decay is
    then exp2(-inf) = 0: the state is reset), else 0 (also outside [0, seqlen)). reset_ptr: fp32 (batch, seqlen)
    contiguous (:func:`mamba_bio_audio.kernels.selective_scan.function.reset_exponents`), reset_row the offset
    of this program's row. Without HAS_SEQ: zeros, never read. An addend rather than a 0/1 factor: it fuses into
    the multiply-add dt A + reset, where a factor would cost a multiply per state element."""
    if HAS_SEQ:
        r = tl.load(reset_ptr + reset_row + t, mask=t < seqlen, other=0.0)
    else:
        r = tl.zeros(t.shape, tl.float32)
    return r


@triton.jit
def start_addend(dt, SEQ_IN_DT: tl.constexpr):
    """The decay exponent's addend from dt's sign bit (a packed sequence's start, :func:`dt_reset_tile`):
    -2^127 (bits 0xFF000000; exp2 of anything plus it is 0, for any A, as -inf would be, while a finite value
    keeps 0 * it = 0 in masked lanes) where the sign is set, else +0. One instruction per element on NVIDIA GPUs
    (SEQ_IN_DT 1): PTX ``prmt`` with selector 0xB444 replicates the sign of byte 3 over byte 3 and takes zero
    bytes from the constant 0 for bytes 0-2. Elsewhere (SEQ_IN_DT 2: the interpreter, other GPUs) a compare and a
    select give the same bits."""
    bits = dt.to(tl.int32, bitcast=True)
    if SEQ_IN_DT == 1:
        r = tl.inline_asm_elementwise("prmt.b32 $0, $1, 0, 0xB444;", "=r,r", [bits], dtype=tl.int32, is_pure=True,
                                      pack=1)
    else:
        r = tl.where(bits < 0, -16777216, 0)  # 0xFF000000 as int32
    return r.to(tl.float32, bitcast=True)


@triton.jit
def dt_reset_tile(delta_ptr, offs, mask, bias, reset_ptr, reset_row, t, seqlen, HAS_BIAS: tl.constexpr,
                  HAS_SEQ: tl.constexpr, SEQ_IN_DT: tl.constexpr, DT_IN: tl.constexpr):
    """dt at steps t (CHUNK, BLOCK_D) as :func:`dt_tile` gives it, and the decay exponent's addend (very negative
    where a packed sequence starts, so that the decay is 0 there, else 0) as a tile broadcastable to
    (CHUNK, BLOCK_D).

    SEQ_IN_DT (1 or 2): the starts are dt's sign bits (``forward.softplus_kernel`` stores softplus >= 0 with the
    sign set at a start, -0.0 where it underflows to 0): no load beyond dt's, one operation per element of the
    tile as the kernels hold it (:func:`start_addend`); dt is returned without its sign. SEQ_IN_DT 0 with HAS_SEQ:
    the addend is :func:`reset_tile`'s (-inf, one more load per step: delta not from the softplus pass, i.e.
    delta_softplus off, or softplus in the kernel: DT_IN); without HAS_SEQ it is zero and never read."""
    dt = dt_tile(delta_ptr, offs, mask, bias, HAS_BIAS, DT_IN)
    if SEQ_IN_DT:
        r = start_addend(dt, SEQ_IN_DT)
        dt = tl.abs(dt)
    else:
        r = reset_tile(reset_ptr, reset_row, t, seqlen, HAS_SEQ)[:, None]
    return dt, r


@triton.jit
def seg_keep(keep_ptr, idx, HAS_SEQ: tl.constexpr):
    """The 0/1 factor of a time segment's total decay (no sequence starts inside it: 1), fp32 at keep_ptr[idx];
    1 without HAS_SEQ."""
    if HAS_SEQ:
        k = tl.load(keep_ptr + idx)
    else:
        k = 1.0
    return k


@triton.jit
def chunk_states(dt, u, Bt, A2, h, reset, HAS_SEQ: tl.constexpr, CHUNK: tl.constexpr):
    """All states of one chunk. dt, u: (CHUNK, BLOCK_D); Bt: broadcastable B tile; A2 = A log2(e) and h, the
    state before the chunk: (BLOCK_N, BLOCK_D); reset, broadcastable to (CHUNK, BLOCK_D): the decay exponent's
    addend from :func:`dt_reset_tile` (used only with HAS_SEQ). Returns h_t and dt_t B_t u_t, both
    (CHUNK, BLOCK_N, BLOCK_D)."""
    if HAS_SEQ:
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :] + reset[:, None, :])
    else:
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
    dBu = (dt * u)[:, None, :] * Bt
    _, hs = tl.associative_scan((dA, carry_into_first(dA, dBu, h, CHUNK)), axis=0, combine_fn=combine)
    return hs, dBu


@triton.jit
def carry_into_first(a, b, carry, CHUNK: tl.constexpr):
    """``b`` (CHUNK, BLOCK_N, BLOCK_D) with ``a[0] * carry`` added at step 0: the chunk's first pair then maps the
    carried value (BLOCK_N, BLOCK_D) itself, so the scan's b output is the recurrence's value at every step and its
    running products of ``a`` go unused (the compiler drops them). The select is on the in-thread time index, a
    constant per register: it folds away."""
    first = tl.arange(0, CHUNK)[:, None, None] == 0
    return tl.where(first, b + a * carry[None, :, :], b)


@triton.jit
def at_step(x, step, CHUNK: tl.constexpr):
    """x[step] of a (CHUNK, BLOCK_N, BLOCK_D) tile; free when time is held in-thread."""
    sel = tl.arange(0, CHUNK)[:, None, None] == step
    return tl.sum(tl.where(sel, x, 0.0), axis=0)


@triton.jit
def silu_parts(z_ptr, offs, mask):
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return z, tl.sigmoid(z)
