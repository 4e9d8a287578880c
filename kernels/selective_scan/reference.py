"""The selective scan in plain torch, chunked: the reference backend that runs on any device.

The sequence is cut into chunks of ``chunk_size`` steps. Inside a chunk the linear recurrence
``h_t = a_t * h_{t-1} + x_t`` (a_t = exp(dt_t A), x_t = dt_t B_t u_t) is solved by a doubling (Hillis-Steele)
scan in log2(chunk_size) tensor operations, which only ever multiplies decays <= 1 together (no exp(-cumsum)
overflow); the state is carried from chunk to chunk. Arithmetic is float32 (float64 when an input is float64).

Memory: one chunk's (batch, dim, chunk_size, d_state) intermediates at a time. Under autograd each chunk is
wrapped in activation checkpointing, so a backward pass keeps only the chunk-boundary states and recomputes a
chunk's intermediates when it reaches it. Gradients reach every input, ``initial_state`` included, and flow back
through ``last_state``.

Packed sequences (``seq_idx``): the decay a_t is zero at each step where a new sequence starts, so the state is
reset there and nothing flows across the boundary, forwards or backwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mamba_bio_audio.kernels.selective_scan.naive import check_seq_idx, expand_bc, sequence_starts

#: Intermediates per chunk (batch * dim * chunk * d_state elements) the default chunk size aims for.
TARGET_CHUNK_ELEMENTS = 1 << 21
#: Above this many (batch * dim * seqlen * d_state) elements, chunks are recomputed in the backward pass.
RECOMPUTE_ABOVE_ELEMENTS = 1 << 24


def default_chunk_size(batch: int, dim: int, d_state: int, seqlen: int) -> int:
    """A power of two in [16, 1024] keeping one chunk's intermediates near TARGET_CHUNK_ELEMENTS."""
    per_step = max(1, batch * dim * d_state)
    chunk = 16
    while chunk < 1024 and chunk * 2 * per_step <= TARGET_CHUNK_ELEMENTS:
        chunk *= 2
    return max(1, min(chunk, seqlen))


def _doubling_scan_(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """In place: x_t <- sum_{s<=t} (a_{s+1} ... a_t) x_s along dim 2 (Hillis-Steele, log2(T) steps). a is consumed."""
    T = x.shape[2]
    k = 1
    while k < T:
        # After this step, (a_t, x_t) composes the steps t-2k+1 .. t. Right-hand sides are evaluated before the
        # assignment, so the overlapping read of x[:, :, :-k] sees the previous values.
        x[:, :, k:] = x[:, :, k:] + a[:, :, k:] * x[:, :, :-k]
        if 2 * k < T:
            a[:, :, k:] = a[:, :, k:] * a[:, :, :-k]
        k *= 2
    return x


def _sequential_scan_(a: torch.Tensor, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """In place: x_t <- x_t + a_t * x_{t-1} step by step along dim 2 (or x_t + a_t * x_{t+1} with ``reverse``).

    T small tensor operations on (batch, dim, d_state) slices: cheaper than the doubling scan's log2(T) passes
    over the whole chunk once a slice is large enough to hide the per-operation overhead.
    """
    T = x.shape[2]
    steps = range(T - 2, -1, -1) if reverse else range(1, T)
    for t in steps:
        x[:, :, t].addcmul_(a[:, :, t], x[:, :, t + 1] if reverse else x[:, :, t - 1])
    return x


#: Below this many (batch * dim * d_state) chains the doubling scan beats the step-by-step loop on a CPU.
SEQUENTIAL_MIN_CHAINS = 2048


class LinearScan(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + x_t along dim 2, h_{-1} = h0; a, x: (batch, dim, T, d_state), h0: (batch, dim, d_state).

    Returns h and, as a second output, its last step h_{T-1} (batch, dim, d_state): a gradient reaching the last
    state this way is added to one slice, where indexing h would zero-fill and add a whole (batch, dim, T, d_state).

    Backward is the same recurrence run in reverse: g_t = dL/dh_t + a_{t+1} g_{t+1} is dL/dx_t, then
    dL/da_t = g_t * h_{t-1} and dL/dh0 = a_0 * g_0.
    """

    @staticmethod
    def forward(ctx, a, x, h0):
        h = x.clone()
        h[:, :, 0] += a[:, :, 0] * h0
        sequential = h0.numel() >= SEQUENTIAL_MIN_CHAINS
        if sequential:
            _sequential_scan_(a, h)
        else:
            _doubling_scan_(a.clone(), h)
        ctx.sequential = sequential
        ctx.save_for_backward(a, h, h0)
        return h, h[:, :, -1].clone()

    @staticmethod
    def backward(ctx, grad_h, grad_last):
        a, h, h0 = ctx.saved_tensors
        # the reverse recurrence g_t = grad_t + a_{t+1} g_{t+1}; buffers take a's memory layout (time-major from
        # _scan_chunk, so that the step-by-step loop reads contiguous slices)
        a_next = torch.empty_like(a)
        a_next[:, :, :-1] = a[:, :, 1:]
        a_next[:, :, -1] = 0
        g = torch.empty_like(a)
        g.copy_(grad_h)
        g[:, :, -1] += grad_last
        if ctx.sequential:
            _sequential_scan_(a_next, g, reverse=True)
        else:
            g = _doubling_scan_(a_next.flip(2), g.flip(2).contiguous()).flip(2)
        grad_a = torch.empty_like(a)  # g_t * h_{t-1}, h_{-1} = h0
        torch.mul(g[:, :, 1:], h[:, :, :-1], out=grad_a[:, :, 1:])
        torch.mul(g[:, :, 0], h0, out=grad_a[:, :, 0])
        return grad_a, g, a[:, :, 0] * g[:, :, 0]


def linear_scan(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Solve h_t = a_t * h_{t-1} + x_t along dim 2 with h_{-1} = h0.

    Args:
        a, x: (batch, dim, T, d_state). h0: (batch, dim, d_state).
    Returns:
        h: (batch, dim, T, d_state), every state of the chunk.
    """
    return LinearScan.apply(a, x, h0)[0]


def _scan_chunk(h0, dt, u, A, B, C, keep=None):
    """One chunk. h0 (batch, dim, d_state); dt, u (batch, dim, T); A (dim, d_state); B, C any layout, sliced;
    keep (batch, T) in dt's dtype, 0 where a packed sequence starts (the decay there is zeroed), or None.

    Returns y (batch, dim, T) = sum_n C_t h_t, and the last state (batch, dim, d_state).
    """
    batch, dim, T = u.shape
    # (T, batch, dim, d_state) in memory, seen as (batch, dim, T, d_state): every time step is one contiguous slice
    Bx = expand_bc(B.to(dt.dtype), batch, dim, T).permute(2, 0, 1, 3)
    Cx = expand_bc(C.to(dt.dtype), batch, dim, T).permute(2, 0, 1, 3)
    dt_t = dt.permute(2, 0, 1).contiguous()  # (T, batch, dim)
    a = torch.exp(dt_t[..., None] * A)
    if keep is not None:
        a = a * keep.t()[:, :, None, None]
    x = (dt_t * u.permute(2, 0, 1))[..., None] * Bx
    h, last = LinearScan.apply(a.permute(1, 2, 0, 3), x.permute(1, 2, 0, 3), h0)
    y = (h.permute(2, 0, 1, 3) * Cx).sum(-1).permute(1, 2, 0)
    return y, last


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, initial_state=None, chunk_size=None, seq_idx=None,
):
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics, plus ``initial_state`` and ``seq_idx``.

    Args:
        u, delta: (batch, dim, seqlen). z: (batch, dim, seqlen) or None.
        A: (dim, d_state). B, C: (dim, d_state), (batch, d_state, seqlen) or (batch, groups, d_state, seqlen).
        D, delta_bias: (dim,) or None. initial_state: (batch, dim, d_state) or None (zeros).
        chunk_size: steps per chunk (default: :func:`default_chunk_size`).
        seq_idx: (batch, seqlen) integers or None: packed sequences; the state is reset before each step where the
            value changes. initial_state is the state before the row's first sequence; last_state is the final
            state of the row's last sequence.
    Returns:
        out (batch, dim, seqlen) in u's dtype, and last_state (batch, dim, d_state) in float32/float64 if asked.
    """
    dtype_in = u.dtype
    compute = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32
    batch, dim, seqlen = u.shape
    d_state = A.shape[1]
    check_seq_idx(seq_idx, batch, seqlen)
    uc = u.to(compute)
    dt = delta.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Ac = A.to(compute)
    if initial_state is None:
        h = uc.new_zeros(batch, dim, d_state)
    else:
        h = initial_state.to(compute)
    chunk = chunk_size or default_chunk_size(batch, dim, d_state, seqlen)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, initial_state, delta_bias)
    )
    # Small problems keep every chunk's intermediates; large ones recompute them in the backward.
    recompute = needs_grad and batch * dim * seqlen * d_state > RECOMPUTE_ABOVE_ELEMENTS
    ys = []
    # split, not sliced chunk by chunk: the backward of a slice zero-fills a whole (batch, dim, seqlen) per chunk
    n_chunks = -(-seqlen // chunk)
    pieces = [x.split(chunk, dim=-1)[:n_chunks] if x.dim() > 2 else [x] * n_chunks for x in (dt, uc, B, C)]
    keep = (~sequence_starts(seq_idx)).to(compute) if seq_idx is not None else None
    pieces.append(keep.split(chunk, dim=-1)[:n_chunks] if keep is not None else [None] * n_chunks)
    for dt_c, u_c, B_c, C_c, keep_c in zip(*pieces):
        args = (h, dt_c, u_c, Ac, B_c, C_c, keep_c)
        if recompute:
            y, h = checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y, h = _scan_chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=2) if ys else uc.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + uc * D.to(compute)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out
