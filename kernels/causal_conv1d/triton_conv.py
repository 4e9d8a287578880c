"""Depthwise causal conv1d in Triton: forward, backward (autograd Function) and the in-place decode update.

Semantics of :mod:`mamba_bio_audio.kernels.causal_conv1d.reference`. With W the width and xp = [initial_state, x]
(the W - 1 inputs before x, then x; zeros when there is no initial state):

    pre[t] = bias + sum_k weight[k] xp[t + k],   out[t] = act(pre[t])          t in [0, seqlen)

Backward, with dpre[t] = dout[t] act'(pre[t]) (pre recomputed; dpre written once, in x's dtype, then read back
W times by the dx pass):

    dxp[p]     = sum_k weight[k] dpre[p - k]          p in [0, W - 1 + seqlen): x and initial_state positions
    dweight[k] = sum_{batch, t} dpre[t] xp[t + k] ;  dbias = sum_{batch, t} dpre[t]

Packed sequences (``seq_idx`` as sequence numbers, int32 (batch, seqlen); HAS_SEQ): tap k of output step t reads x position
t + k - (W - 1) only when that position is in t's sequence (initial_state positions count as the first
sequence's), else zero; the backward masks the same (output step, input position) pairs.

Each program owns (one batch row, BLOCK_D channels, BLOCK_T steps); the W shifted windows it reads overlap and
come from L1, so HBM sees each input once. Weight and bias gradients are per-program partial sums reduced with
torch.sum (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_bio_audio.kernels import utils
from mamba_bio_audio.kernels.causal_conv1d.reference import check_activation, final_state_mask
from mamba_bio_audio.kernels.selective_scan.naive import check_seq_idx, sequence_numbers
from mamba_bio_audio.kernels.utils import time_contiguous

DEFAULT_BLOCK_D = 32  # best of the configs timed on the H100 (NOTES.md of selective_scan)
DEFAULT_BLOCK_T = 64
DEFAULT_NUM_WARPS = 2


@triton.jit
def _xp(x_ptr, init_ptr, row, init_row, d_mask, p, seqlen, WIDTH: tl.constexpr, HAS_INIT: tl.constexpr):
    """xp at positions p (BLOCK_T,) as fp32 (BLOCK_D, BLOCK_T): x[p - (W - 1)], initial_state[p] before it,
    zero outside [0, W - 1 + seqlen). row, init_row: (BLOCK_D,) offsets of the channels' rows."""
    t = p - (WIDTH - 1)
    v = tl.load(x_ptr + row[:, None] + t[None, :], mask=d_mask[:, None] & ((t >= 0) & (t < seqlen))[None, :],
                other=0.0).to(tl.float32)
    if HAS_INIT:
        v += tl.load(init_ptr + init_row[:, None] + p[None, :], mask=d_mask[:, None] & ((p >= 0) & (t < 0))[None, :],
                     other=0.0).to(tl.float32)
    return v


@triton.jit
def _same_seq(seq_ptr, seq_row, t, src, seqlen):
    """(BLOCK_T,) bool: input position src (x coordinates; < 0: initial_state, the first sequence's) is in output
    step t's sequence. seq_row: this batch row's offset in seq_idx (batch, seqlen)."""
    cur = tl.load(seq_ptr + seq_row + t, mask=(t >= 0) & (t < seqlen), other=0)
    s = tl.maximum(src, 0)
    return cur == tl.load(seq_ptr + seq_row + s, mask=s < seqlen, other=0)


@triton.jit
def _tap(x_ptr, init_ptr, seq_ptr, row, init_row, seq_row, d_mask, t, k, seqlen,
         WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """What tap k of output steps t (BLOCK_T,) reads, fp32 (BLOCK_D, BLOCK_T): xp[t + k], zero with HAS_SEQ where
    that input is in another sequence than t."""
    v = _xp(x_ptr, init_ptr, row, init_row, d_mask, t + k, seqlen, WIDTH, HAS_INIT)
    if HAS_SEQ:
        v = tl.where(_same_seq(seq_ptr, seq_row, t, t + k - (WIDTH - 1), seqlen)[None, :], v, 0.0)
    return v


@triton.jit
def _sigmoid(x):
    """1 / (1 + e^-x) from one exp2 and an approximate division (``div.full.f32``, 2 ulp: no IEEE division's
    refinement steps, as ``tl.sigmoid`` pays); exact limits 0 and 1 (e^-x = inf gives 1 / inf = 0)."""
    return tl.fdiv(1.0, 1.0 + tl.exp2(x * -1.4426950408889634), ieee_rounding=False)


@triton.jit
def _pre(x_ptr, init_ptr, seq_ptr, w_ptr, row, init_row, seq_row, d, d_mask, t, bias, seqlen,
         WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """pre[t] = bias + sum_k weight[k] xp[t + k] for output steps t (BLOCK_T,) (taps across a sequence boundary
    skipped with HAS_SEQ)."""
    acc = tl.zeros([d.shape[0], t.shape[0]], tl.float32) + bias[:, None]
    for k in tl.static_range(WIDTH):
        w = tl.load(w_ptr + d * WIDTH + k, mask=d_mask, other=0.0).to(tl.float32)
        acc += w[:, None] * _tap(x_ptr, init_ptr, seq_ptr, row, init_row, seq_row, d_mask, t, k, seqlen,
                                 WIDTH, HAS_INIT, HAS_SEQ)
    return acc


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, out_ptr, dim, seqlen, stride_b, stride_d,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    HAS_SEQ: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """out (batch, dim, seqlen) = act(conv(x)); grid (time blocks, channel blocks, batch)."""
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    d_mask = d < dim
    row = b.to(tl.int64) * stride_b + d.to(tl.int64) * stride_d  # x, out, dout, dpre, dx share a layout
    init_row = (b * dim + d) * (WIDTH - 1)
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    out = _pre(x_ptr, init_ptr, seq_ptr, w_ptr, row, init_row, b.to(tl.int64) * seqlen, d, d_mask, t, bias, seqlen,
               WIDTH, HAS_INIT, HAS_SEQ)
    if SILU:
        out = out * _sigmoid(out)
    tl.store(out_ptr + row[:, None] + t[None, :], out.to(out_ptr.dtype.element_ty),
             mask=d_mask[:, None] & (t < seqlen)[None, :])


@triton.jit
def _conv_dpre_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, dout_ptr, dpre_ptr, dw_ptr, dbias_ptr, dim, seqlen, stride_b,
    stride_d, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    HAS_SEQ: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, WIDTH_P2: tl.constexpr,
):
    """Backward pass 1, program (time block, channel block, batch) over output steps t: dpre[t] = dout[t] act'(pre[t])
    -> dpre (batch, dim, seqlen), and the partial dweight (batch, blocks, dim, W) and dbias (batch, blocks, dim).
    pre is recomputed from the W shifted inputs, which the dweight partials reuse."""
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    d_mask = d < dim
    mask = d_mask[:, None] & (t < seqlen)[None, :]
    row = b.to(tl.int64) * stride_b + d.to(tl.int64) * stride_d  # x, out, dout, dpre, dx share a layout
    init_row = (b * dim + d) * (WIDTH - 1)
    part = (b * tl.num_programs(0) + pid_t) * dim + d  # row of the partial sums
    seq_row = b.to(tl.int64) * seqlen
    dpre = tl.load(dout_ptr + row[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
    if SILU:
        pre = _pre(x_ptr, init_ptr, seq_ptr, w_ptr, row, init_row, seq_row, d, d_mask, t,
                   tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS
                   else tl.zeros([BLOCK_D], tl.float32), seqlen, WIDTH, HAS_INIT, HAS_SEQ)
        sig = _sigmoid(pre)
        dpre = dpre * sig * (1.0 + pre * (1.0 - sig))
    # dweight's partial sums gathered in one (BLOCK_D, WIDTH_P2) tile and stored after the loop: with no store
    # between them, the compiler reuses pre's loads of the W shifted inputs (a third fewer loads, SASS counted)
    k_lane = tl.arange(0, WIDTH_P2)
    dw = tl.zeros([BLOCK_D, WIDTH_P2], tl.float32)
    for k in tl.static_range(WIDTH):
        xk = _tap(x_ptr, init_ptr, seq_ptr, row, init_row, seq_row, d_mask, t, k, seqlen, WIDTH, HAS_INIT, HAS_SEQ)
        dw = tl.where(k_lane[None, :] == k, tl.sum(dpre * xk, axis=1)[:, None], dw)
    tl.store(dw_ptr + part[:, None] * WIDTH + k_lane[None, :], dw, mask=d_mask[:, None] & (k_lane < WIDTH)[None, :])
    if HAS_BIAS:
        tl.store(dbias_ptr + part, tl.sum(dpre, axis=1), mask=d_mask)
    tl.store(dpre_ptr + row[:, None] + t[None, :], dpre.to(dpre_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_dx_kernel(
    w_ptr, dpre_ptr, seq_ptr, dx_ptr, dinit_ptr, dim, seqlen, stride_b, stride_d,
    WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Backward pass 2, program (position block, channel block, batch) over xp positions p:
    dxp[p] = sum_s weight[W - 1 - s] dpre[p - (W - 1) + s] (output step t + s read xp[p] with weight W - 1 - s),
    written as dx for p >= W - 1 and as d initial_state before; with HAS_SEQ only the steps t + s in the
    sequence of x position t (the first sequence's for initial_state positions)."""
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    p = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t = p - (WIDTH - 1)
    d_mask = d < dim
    row = b.to(tl.int64) * stride_b + d.to(tl.int64) * stride_d  # x, out, dout, dpre, dx share a layout
    dxp = tl.zeros([BLOCK_D, BLOCK_T], tl.float32)
    for s in tl.static_range(WIDTH):
        ts = t + s
        valid = d_mask[:, None] & ((ts >= 0) & (ts < seqlen))[None, :]
        if HAS_SEQ:
            valid = valid & _same_seq(seq_ptr, b.to(tl.int64) * seqlen, ts, t, seqlen)[None, :]
        w = tl.load(w_ptr + d * WIDTH + (WIDTH - 1 - s), mask=d_mask, other=0.0).to(tl.float32)
        dxp += w[:, None] * tl.load(dpre_ptr + row[:, None] + ts[None, :], mask=valid, other=0.0).to(tl.float32)
    tl.store(dx_ptr + row[:, None] + t[None, :], dxp.to(dx_ptr.dtype.element_ty),
             mask=d_mask[:, None] & ((t >= 0) & (t < seqlen))[None, :])
    if HAS_INIT:
        init_row = (b * dim + d) * (WIDTH - 1)
        tl.store(dinit_ptr + init_row[:, None] + p[None, :], dxp.to(dinit_ptr.dtype.element_ty),
                 mask=d_mask[:, None] & (t < 0)[None, :])


def _grid(rows: int, dim: int, batch: int, block_t: int, block_d: int) -> tuple[int, int, int]:
    return utils.cdiv(rows, block_t), utils.cdiv(dim, block_d), batch


def conv_forward(x, weight, bias, initial_state, seq_idx, silu, block_d, block_t, num_warps) -> torch.Tensor:
    """out (batch, dim, seqlen) in x's layout and dtype, without autograd; the arguments as
    :func:`conv_arguments` returns them."""
    batch, dim, seqlen = x.shape
    out = utils.empty_as(x)
    if seqlen > 0:
        _conv_fwd_kernel[_grid(seqlen, dim, batch, block_t, block_d)](
            x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x,
            seq_idx if seq_idx is not None else x, out,
            dim, seqlen, *x.stride()[:2], WIDTH=weight.shape[1], HAS_BIAS=bias is not None,
            HAS_INIT=initial_state is not None, SILU=silu, HAS_SEQ=seq_idx is not None,
            BLOCK_D=block_d, BLOCK_T=block_t, num_warps=num_warps,
        )
    return out


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, seq_idx, silu, want_final, block_d, block_t, num_warps):
        batch, dim, seqlen = x.shape
        width = weight.shape[1]
        out = conv_forward(x, weight, bias, initial_state, seq_idx, silu, block_d, block_t, num_warps)
        final_state = None
        if want_final:  # the last W - 1 inputs of xp, in x's dtype
            prev = initial_state if initial_state is not None else x.new_zeros(batch, dim, width - 1)
            final_state = torch.cat([prev.to(x.dtype), x[:, :, max(0, seqlen - (width - 1)):]], dim=-1)
            final_state = final_state[:, :, final_state.shape[-1] - (width - 1):].contiguous()
            if seq_idx is not None and seqlen > 0:  # the row's last sequence only
                final_state = final_state * final_state_mask(seq_idx, width)
        ctx.save_for_backward(x, weight, bias, initial_state, seq_idx)
        ctx.launch = (silu, block_d, block_t, num_warps)
        ctx.set_materialize_grads(False)
        return out, final_state

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, weight, bias, initial_state, seq_idx = ctx.saved_tensors
        dx, dw, dbias, dinit = conv_backward(dout, dfinal, x, weight, bias, initial_state, seq_idx, *ctx.launch)
        return dx, dw, dbias, dinit, None, None, None, None, None, None


def conv_backward(dout, dfinal, x, weight, bias, initial_state, seq_idx, silu, block_d, block_t, num_warps,
                  dx_out=None):
    """Gradients (dx, dweight, dbias, d initial_state) of :func:`causal_conv1d_triton`'s forward from dout
    (batch, dim, seqlen) or None and dfinal (batch, dim, width - 1) or None; the other arguments as the forward
    had them (seq_idx as sequence numbers). ``dx_out``: a tensor with x's shape, dtype and strides to write dx
    into (e.g. a half of in_proj's output gradient), returned as dx; else dx is allocated."""
    has_seq = seq_idx is not None
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    if dx_out is not None:
        if dx_out.shape != x.shape or dx_out.stride() != x.stride() or dx_out.dtype != x.dtype:
            raise ValueError("dx_out must have x's shape, strides and dtype")
        dx = dx_out.zero_() if dout is None or seqlen == 0 else dx_out
    else:
        dx = torch.zeros_like(x) if dout is None or seqlen == 0 else utils.empty_as(x)
    dinit = torch.zeros_like(initial_state) if initial_state is not None else None
    dw = torch.zeros(dim, width, device=x.device, dtype=torch.float32)
    dbias = torch.zeros(dim, device=x.device, dtype=torch.float32) if bias is not None else None
    if dout is not None and seqlen > 0:
        # Two passes: dpre once per step (pre recomputed from W shifted inputs), then dx from W shifted dpre.
        # dpre is kept in x's dtype (fp32 for fp32 inputs), the precision of the dx it feeds.
        grid = _grid(seqlen, dim, batch, block_t, block_d)
        dpre = utils.empty_as(x)
        if dout.stride() != x.stride():  # the kernels index x, dout, dpre and dx alike
            dout = utils.empty_as(x, dout.dtype).copy_(dout)
        dw_part = utils.empty(batch, grid[0], dim, width, like=x, dtype=torch.float32)
        dbias_part = utils.empty(batch, grid[0], dim, like=x, dtype=torch.float32)
        _conv_dpre_kernel[grid](
            x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x,
            seq_idx if has_seq else x, dout, dpre, dw_part, dbias_part, dim, seqlen, *x.stride()[:2],
            WIDTH=width, HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None, SILU=silu,
            HAS_SEQ=has_seq, BLOCK_D=block_d, BLOCK_T=block_t, WIDTH_P2=utils.next_power_of_2(width),
            num_warps=num_warps,
        )
        _conv_dx_kernel[_grid(seqlen + width - 1, dim, batch, block_t, block_d)](
            weight, dpre, seq_idx if has_seq else x, dx, dinit if dinit is not None else x, dim, seqlen,
            *x.stride()[:2], WIDTH=width, HAS_INIT=initial_state is not None, HAS_SEQ=has_seq,
            BLOCK_D=block_d, BLOCK_T=block_t,
            num_warps=num_warps,
        )
        del dpre
        dw = dw_part.sum((0, 1))
        dbias = dbias_part.sum((0, 1)) if bias is not None else None
    if dfinal is not None:
        if has_seq and seqlen > 0:
            dfinal = dfinal * final_state_mask(seq_idx, width)
        # final_state[j] = xp[seqlen + j]: from x where seqlen + j >= W - 1, else from initial_state.
        from_init = max(0, width - 1 - seqlen)
        dx[:, :, seqlen + from_init - (width - 1):] += dfinal[:, :, from_init:].to(dx.dtype)
        if dinit is not None and from_init > 0:
            dinit[:, :, seqlen:seqlen + from_init] += dfinal[:, :, :from_init].to(dinit.dtype)
    return dx, dw.to(weight.dtype), dbias.to(bias.dtype) if bias is not None else None, dinit


def causal_conv1d_triton(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False,
                         seq_idx=None, *, block_d=None, block_t=None, num_warps=None):
    """out[b, d, t] = act(bias[d] + sum_k weight[d, k] xp[b, d, t + k]), xp = [initial_state, x]; differentiable.

    Args:
        x: (batch, dim, seqlen). weight: (dim, width). bias: (dim,) or None.
        activation: None | "silu" | "swish". initial_state: (batch, dim, width - 1) or None (zeros).
        seq_idx: (batch, seqlen) integers or None: packed sequences; no tap crosses a change of value, and
            final_state holds only the row's last sequence's inputs (the reference module's docstring).
        block_d, block_t, num_warps: launch tunables (default 32 channels x 64 steps, 2 warps).
    Returns:
        out (batch, dim, seqlen) in x's dtype; with return_final_state also final_state (batch, dim, width - 1),
        the last width - 1 inputs in x's dtype.
    """
    args = conv_arguments(x, weight, bias, activation, initial_state, seq_idx, block_d, block_t, num_warps)
    out, final_state = _CausalConv1dFn.apply(*args[:6], return_final_state, *args[6:])
    return (out, final_state) if return_final_state else out


def conv_arguments(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None, block_d=None,
                   block_t=None, num_warps=None) -> tuple:
    """(x, weight, bias, initial_state, seq_idx, silu, block_d, block_t, num_warps) as :func:`conv_forward` and
    :func:`conv_backward` take them (arguments checked; x time-contiguous, weights contiguous, seq_idx as
    sequence numbers, defaults filled in); the arguments as :func:`causal_conv1d_triton`'s."""
    check_activation(activation)
    check_seq_idx(seq_idx, x.shape[0], x.shape[2])
    if seq_idx is not None:  # as sequence numbers: equal exactly within one packed sequence
        seq_idx = sequence_numbers(seq_idx.to(x.device)).contiguous()
    return (x if time_contiguous(x) else x.contiguous(), weight.contiguous(),
            bias.contiguous() if bias is not None else None,
            initial_state.contiguous() if initial_state is not None else None, seq_idx, activation is not None,
            block_d or DEFAULT_BLOCK_D, block_t or DEFAULT_BLOCK_T, num_warps or DEFAULT_NUM_WARPS)


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, dim, seqlen, state_len,
    stride_sb, stride_sd, stride_sl, stride_xb, stride_xd,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """x (batch, dim, seqlen) with strides (stride_xb, stride_xd, 1), out (batch, dim, seqlen) contiguous; state
    (batch, dim, state_len) strided, updated in place. xp = [state, x]; state values pass through x's dtype, as
    in the reference."""
    pid_d, b = tl.program_id(0), tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    row = (b * dim + d).to(tl.int64) * seqlen  # of out
    x_row = b.to(tl.int64) * stride_xb + d.to(tl.int64) * stride_xd
    s_row = state_ptr + b.to(tl.int64) * stride_sb + d.to(tl.int64) * stride_sd  # (BLOCK_D,) pointers
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)

    for i in range(0, seqlen):
        acc = bias
        for k in tl.static_range(WIDTH):
            p = state_len + i - (WIDTH - 1) + k  # position in xp
            from_state = tl.load(s_row + p * stride_sl, mask=d_mask & (p < state_len), other=0.0)
            v = tl.where(p < state_len, from_state.to(x_ptr.dtype.element_ty),
                         tl.load(x_ptr + x_row + (p - state_len), mask=d_mask & (p >= state_len), other=0.0))
            w = tl.load(w_ptr + d * WIDTH + k, mask=d_mask, other=0.0).to(tl.float32)
            acc += w * v.to(tl.float32)
        if SILU:
            acc = acc * tl.sigmoid(acc)
        tl.store(out_ptr + row + i, acc.to(out_ptr.dtype.element_ty), mask=d_mask)

    # New state = the last state_len entries of xp: new[j] = xp[seqlen + j].
    j = tl.arange(0, BLOCK_S)
    p = seqlen + j
    j_ok = d_mask[:, None] & (j < state_len)[None, :]
    from_state = tl.load(s_row[:, None] + p[None, :] * stride_sl, mask=j_ok & (p < state_len)[None, :], other=0.0)
    from_x = tl.load(x_ptr + x_row[:, None] + (p - state_len)[None, :], mask=j_ok & (p >= state_len)[None, :],
                     other=0.0)
    new = tl.where((p < state_len)[None, :], from_state.to(x_ptr.dtype.element_ty), from_x)
    tl.debug_barrier()  # every read of the old state above happens before any write below
    tl.store(s_row[:, None] + j[None, :] * stride_sl, new.to(state_ptr.dtype.element_ty), mask=j_ok)


def causal_conv1d_update_triton(x, conv_state, weight, bias=None, activation=None, *, block_d=None, num_warps=None):
    """Decode step(s): out = act(conv over [conv_state, x])[-seqlen:]; ``conv_state`` is updated in place.

    Args:
        x: (batch, dim) or (batch, dim, seqlen). conv_state: (batch, dim, state_len >= width - 1), any strides.
        weight: (dim, width). bias: (dim,) or None. activation: None | "silu" | "swish".
        block_d, num_warps: launch tunables (default 64 channels, 2 warps).
    Returns:
        out with x's shape and dtype.
    """
    check_activation(activation)
    squeeze = x.dim() == 2
    x = x.unsqueeze(-1) if squeeze else x
    if x.stride(-1) != 1 and x.shape[-1] > 1:  # read in place when time is contiguous (e.g. a half of in_proj)
        x = x.contiguous()
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    state_len = conv_state.shape[-1]
    if state_len < width - 1:
        raise ValueError(f"conv_state holds {state_len} steps, fewer than width - 1 = {width - 1}")
    out = utils.empty(batch, dim, seqlen, like=x)
    block_d = block_d or 64
    _conv_update_kernel[(utils.cdiv(dim, block_d), batch)](
        x, conv_state, weight.contiguous(), bias.contiguous() if bias is not None else x, out,
        dim, seqlen, state_len, *conv_state.stride(), x.stride(0), x.stride(1),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=activation is not None, BLOCK_D=block_d,
        BLOCK_S=utils.next_power_of_2(state_len), num_warps=num_warps or 2,
    )
    return out.squeeze(-1) if squeeze else out
