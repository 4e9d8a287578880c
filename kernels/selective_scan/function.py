"""The selective scan's autograd Function and its entry point, :func:`selective_scan_triton`."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mamba_bio_audio.kernels import utils
from mamba_bio_audio.kernels.selective_scan import plan
from mamba_bio_audio.kernels.selective_scan.backward import launch_backward
from mamba_bio_audio.kernels.selective_scan.forward import launch_forward
from mamba_bio_audio.kernels.selective_scan.naive import check_seq_idx
from mamba_bio_audio.kernels.selective_scan.plan import (
    BWD_MAXNREG_ENV,
    DEFAULT_BLOCK_D,
    DEFAULT_CHUNK,
    DEFAULT_NUM_STAGES,
    DEFAULT_NUM_WARPS,
    Tunables,
    as_groups,
    auto_save_every,
    make_plan,
    same_layout,
)

RESET_BLOCK_T = 1024


@triton.jit
def reset_kernel(seq_ptr, reset_ptr, seqlen, stride_b, stride_t, BLOCK_T: tl.constexpr):
    """reset (batch, seqlen) fp32 contiguous from seq_idx (batch, seqlen) of any integer dtype and strides
    (stride_b, stride_t): -inf where t >= 1 and seq_idx[t] != seq_idx[t - 1], else 0; program (b, time block)."""
    b, tb = tl.program_id(0), tl.program_id(1)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = t < seqlen
    row = seq_ptr + b.to(tl.int64) * stride_b
    cur = tl.load(row + t.to(tl.int64) * stride_t, mask=mask, other=0)
    prev = tl.load(row + (t - 1).to(tl.int64) * stride_t, mask=mask & (t >= 1), other=0)
    start = (t >= 1) & (cur != prev)
    tl.store(reset_ptr + b.to(tl.int64) * seqlen + t, tl.where(start, float("-inf"), 0.0), mask=mask)


def reset_exponents(seq_idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """What the kernels read of seq_idx (batch, seqlen): fp32, contiguous, -inf at each step where a packed
    sequence starts (t >= 1, seq_idx[t] != seq_idx[t - 1]) and 0 elsewhere, added to the decay's exponent.
    One launch (:func:`reset_kernel`), whatever seq_idx's integer dtype and strides."""
    seq_idx = seq_idx.to(device)
    batch, seqlen = seq_idx.shape
    reset = utils.empty(batch, seqlen, like=seq_idx, dtype=torch.float32)
    if reset.numel():
        reset_kernel[(batch, utils.cdiv(seqlen, RESET_BLOCK_T))](
            seq_idx, reset, seqlen, seq_idx.stride(0), seq_idx.stride(1), BLOCK_T=RESET_BLOCK_T, num_warps=4)
    return reset


class SelectiveScanFn(torch.autograd.Function):
    """(u, delta, A, B, C, D, z, delta_bias, initial_state, reset, softplus, tunables) -> (out, last_state);
    the forward saves the inputs and the chunk-start states, the backward recomputes the chunks from them.
    reset: packed sequences as :func:`reset_exponents` gives them, or None."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, reset, softplus, tun):
        out, last, saved, meta = scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, reset, softplus, tun)
        ctx.save_for_backward(*saved)
        ctx.meta = meta
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        return (*scan_backward(dout, dlast, ctx.saved_tensors, ctx.meta), None, None, None)


def prepare(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size):
    """(plan, (u, delta, A, B, C, D, z, delta_bias, initial_state)) in the layouts the kernels index: u, delta, z
    sharing one layout (:func:`same_layout`), B, C as groups (:func:`as_groups`), the rest contiguous. Views
    where the inputs allow (the mixer's channel-major tensors), else copies; the same inputs give the same
    layouts, so a caller that recomputes u and delta for the backward gets what the forward read."""
    p = make_plan(u, A, B, C, chunk_size)
    u, delta, z = same_layout(u, delta, z)
    (B, C), A = as_groups(B, C), A.contiguous()
    D, delta_bias, initial_state = (x.contiguous() if x is not None else None for x in (D, delta_bias, initial_state))
    return p, (u, delta, A, B, C, D, z, delta_bias, initial_state)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, reset, softplus, tun):
    """The scan's forward without autograd: (out, last_state, saved, meta). ``saved`` = (u, delta, A, B, C, D, z,
    delta_bias, initial_state, reset, states), the tensors :func:`scan_backward` reads (as :func:`prepare` laid
    them out; states: the fp32 chunk-start states (batch, dim, nsaved, d_state)); ``meta``: the rest it needs.
    Arguments as :class:`SelectiveScanFn`'s."""
    B_in, C_in = B, C
    p, (u, delta, A, B, C, D, z, delta_bias, initial_state) = prepare(u, delta, A, B, C, D, z, delta_bias,
                                                                       initial_state, tun.chunk_size)
    if p.seqlen == 0:
        out = torch.empty_like(u)
        last = (initial_state.float() if initial_state is not None
                else u.new_zeros(p.batch, p.dim, p.d_state, dtype=torch.float32))
        states = u.new_empty(p.batch, p.dim, 0, p.d_state, dtype=torch.float32)
    else:
        out, last, states = launch_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, p, tun,
                                           reset)
    saved = (u, delta, A, B, C, D, z, delta_bias, initial_state, reset, states)
    return out, last, saved, (softplus, p, tun, B_in.shape, C_in.shape, B_in.dtype, C_in.dtype)


def scan_backward(dout, dlast, saved, meta, dz_out=None, y_out=None):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, d delta_bias, d initial_state), each in its input's dtype and
    shape (None for an absent input), from dout (batch, dim, seqlen) or None, dlast (batch, dim, d_state) or
    None, and :func:`scan_forward`'s ``saved`` and ``meta`` (u and delta may be recomputed, in the same
    layout). ``dz_out``: where dz goes (u's shape and strides, z's dtype; e.g. a half of in_proj's output
    gradient), else allocated. ``y_out``: where the forward's output goes again (u's shape and strides;
    recomputed from the saved states, for a caller that did not keep it), else not written."""
    softplus, p, tun, B_shape, C_shape, B_dtype, C_dtype = meta
    u, delta, A, B, C, D, z, delta_bias, h0, _, _ = saved
    if p.seqlen == 0:
        zeros = [torch.zeros_like(x) if x is not None else None for x in (u, delta, A, B, C, D, z, delta_bias)]
        dh0 = None if h0 is None else (dlast if dlast is not None else torch.zeros_like(h0))
        du, ddelta, dA, dB, dC, dD, dz, dbias = zeros
    else:
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = launch_backward(dout, dlast, saved, softplus, p, tun, dz_out,
                                                                     y_out)

    def cast(grad, like):
        return None if grad is None else grad.to(like.dtype)

    return (du, ddelta, cast(dA, A), dB.reshape(B_shape).to(B_dtype), dC.reshape(C_shape).to(C_dtype),
            cast(dD, D), dz, cast(dbias, delta_bias), cast(dh0, h0))


def default_tunables(u: torch.Tensor, d_state: int, chunk_size=None, block_d=None, num_warps=None, n_segments=None,
                     num_stages=None, save_every=None, softplus_in_kernel=None, bwd_maxnreg=None,
                     parallel_recompute=None) -> Tunables:
    """The scan's tunables for u (batch, dim, seqlen): the given ones, the defaults for the rest (save_every from
    the saved states' size, :func:`auto_save_every`; softplus in its own pass; the backward's register cap from
    MBA_SCAN_BWD_MAXNREG, else ``plan.DEFAULT_BWD_MAXNREG``)."""
    chunk = chunk_size or DEFAULT_CHUNK
    if save_every is None:
        save_every = auto_save_every(u.shape[0] * u.shape[1] * utils.cdiv(u.shape[2], chunk) * d_state * 4)
    if bwd_maxnreg is None:
        bwd_maxnreg = bwd_maxnreg_default()
    if parallel_recompute is None:
        parallel_recompute = recompute_default() == "parallel"
    return Tunables(chunk, block_d or DEFAULT_BLOCK_D, num_warps or DEFAULT_NUM_WARPS, n_segments,
                    num_stages or DEFAULT_NUM_STAGES, save_every, bool(softplus_in_kernel), bwd_maxnreg or None,
                    bool(parallel_recompute))


def recompute_default() -> str:
    """How a save_every > 1 backward recomputes the unsaved states when a call names none: MBA_SCAN_RECOMPUTE
    ("parallel" or "inline"), else ``plan.DEFAULT_RECOMPUTE``."""
    value = (os.environ.get(plan.RECOMPUTE_ENV) or plan.DEFAULT_RECOMPUTE).strip().lower()
    if value not in ("parallel", "inline"):
        raise ValueError(f"{plan.RECOMPUTE_ENV} must be parallel or inline, got {value!r}")
    return value


def bwd_maxnreg_default() -> int | None:
    """The backward kernel's register cap when a call names none: MBA_SCAN_BWD_MAXNREG (an integer, 0: no cap;
    "auto": ``plan.AUTO_BWD_MAXNREG``), else ``plan.DEFAULT_BWD_MAXNREG`` (auto: decided per launch by
    ``plan.auto_bwd_maxnreg``)."""
    value = os.environ.get(BWD_MAXNREG_ENV)
    if value is None or value == "":
        return plan.DEFAULT_BWD_MAXNREG  # read at the call: a change of the module constant applies
    if value.strip().lower() == "auto":
        return plan.AUTO_BWD_MAXNREG
    try:
        cap = int(value)
    except ValueError:
        raise ValueError(f"{BWD_MAXNREG_ENV} must be an integer (0: no cap) or auto, got {value!r}") from None
    if cap != 0 and not 24 <= cap <= 255:
        raise ValueError(f"{BWD_MAXNREG_ENV} must be 0 or a register count in 24 .. 255, got {cap}")
    return cap or None


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None, seq_idx=None, *, chunk_size=None, block_d=None, num_warps=None, n_segments=None, num_stages=None,
    save_every=None, softplus_in_kernel=None, bwd_maxnreg=None, parallel_recompute=None,
):
    """Fused selective scan; same arguments and results as ``selective_scan_naive``, differentiable.

    Args:
        u, delta: (batch, dim, seqlen). z: (batch, dim, seqlen) or None. A: (dim, d_state), real.
        B, C: (dim, d_state) fixed, (batch, d_state, seqlen), or (batch, groups, d_state, seqlen).
        D, delta_bias: (dim,) or None. initial_state: (batch, dim, d_state) or None (zeros).
        seq_idx: (batch, seqlen) integers or None: packed sequences, the state reset before each step where the
            value changes (each sequence then gives what it gives alone); initial_state is the state before the
            row's first sequence, last_state the final state of its last one.
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
            others (``parallel_recompute``) at the cost of one more pass over the inputs. Default: 1, or more
            when the saved states would pass SAVED_STATE_BYTES (1 GiB).
        softplus_in_kernel: with delta_softplus, compute dt = softplus(delta + delta_bias) inside the scan kernels
            (an exp2/log2 form, :func:`~mamba_bio_audio.kernels.utils.softplus_approx`) instead of one
            elementwise pass into an fp32 (batch, dim, seqlen) buffer that forward and backward each allocate: no
            buffer (4 bytes per element), for more work in the kernels (slower on an H100 on 2026-12-07: NOTES.md). Packed sequences' starts are then read from their own row (no sign bit to carry them).
            Default: off (the pass).
        bwd_maxnreg: registers per thread the main backward kernel may use (ptxas ``.maxnreg``): fewer let more
            one-warp programs share an SM, for spills above the cap; 0: the compiler's choice; -1
            (``plan.AUTO_BWD_MAXNREG``): 168 where that fits an otherwise two-wave grid in one wave
            (``plan.auto_bwd_maxnreg``). Default: MBA_SCAN_BWD_MAXNREG, else ``plan.DEFAULT_BWD_MAXNREG`` (auto).
        parallel_recompute: with save_every > 1, the backward first recomputes every unsaved chunk-start state in
            one pass over all save groups at once, into an fp32 (batch, dim, nchunks, d_state) buffer alive during
            that backward only (the saved ones stay few between forward and backward: what training keeps per
            layer), instead of one group at a time inside its walk (no buffer, a longer walk). Default:
            MBA_SCAN_RECOMPUTE ("parallel" / "inline"), else ``plan.DEFAULT_RECOMPUTE``.
    Returns:
        out (batch, dim, seqlen) in u's dtype, and last_state (batch, dim, d_state) float32 if asked.
    """
    tun = default_tunables(u, A.shape[1], chunk_size, block_d, num_warps, n_segments, num_stages, save_every,
                           softplus_in_kernel, bwd_maxnreg, parallel_recompute)
    check_seq_idx(seq_idx, u.shape[0], u.shape[2])
    reset = reset_exponents(seq_idx, u.device) if seq_idx is not None else None
    out, last = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, reset, delta_softplus,
                                      tun)
    return (out, last) if return_last_state else out
