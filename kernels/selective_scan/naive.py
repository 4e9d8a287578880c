"""The selective scan as a plain sequential loop: the test oracle.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t          (per batch, channel d, state n)
    y_t = sum_n C_t[n] * h_t[n] + D * u_t
    out_t = y_t * silu(z_t)                                     (when z is given)

with dt = softplus(delta + delta_bias) when ``delta_softplus`` else delta + delta_bias.
Same arguments and semantics as mamba_ssm's ``selective_scan_ref``, plus ``initial_state`` and ``seq_idx``
(packed sequences: the state is reset where seq_idx[b, t] != seq_idx[b, t - 1], see :func:`sequence_starts`).
Slow (one Python step per time step): use it only to check the fast paths, in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_bc(X: torch.Tensor, batch: int, dim: int, seqlen: int) -> torch.Tensor:
    """B or C in any accepted layout -> (batch, dim, seqlen, d_state).

    Accepted: (dim, d_state) fixed; (batch, d_state, seqlen) input-dependent, shared by all channels;
    (batch, groups, d_state, seqlen) input-dependent, channel d uses group d // (dim // groups).
    """
    if X.dim() == 2:
        return X[None, :, None, :].expand(batch, dim, seqlen, X.shape[-1])
    if X.dim() == 3:
        return X.transpose(1, 2)[:, None, :, :].expand(batch, dim, seqlen, X.shape[1])
    if X.dim() == 4:
        groups = X.shape[1]
        if dim % groups != 0:
            raise ValueError(f"dim {dim} is not a multiple of the number of B/C groups {groups}")
        X = X.repeat_interleave(dim // groups, dim=1)  # (batch, dim, d_state, seqlen)
        return X.transpose(2, 3)
    raise ValueError(f"B/C must have 2, 3 or 4 dimensions, got shape {tuple(X.shape)}")


def check_seq_idx(seq_idx: torch.Tensor | None, batch: int, seqlen: int) -> None:
    """A ValueError unless ``seq_idx`` is None or an integer tensor of shape (batch, seqlen)."""
    if seq_idx is None:
        return
    if seq_idx.dtype.is_floating_point or seq_idx.dtype.is_complex or seq_idx.dtype == torch.bool:
        raise ValueError(f"seq_idx must be an integer tensor, got {seq_idx.dtype}")
    if tuple(seq_idx.shape) != (batch, seqlen):
        raise ValueError(f"seq_idx must have shape (batch, seqlen) = {(batch, seqlen)}, got {tuple(seq_idx.shape)}")


def sequence_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """(batch, seqlen) bool: True at step t >= 1 where a new packed sequence starts (seq_idx[b, t] !=
    seq_idx[b, t - 1]); the state is reset before such a step. Step 0 is never a start: the row's first sequence
    continues ``initial_state``."""
    starts = torch.zeros(seq_idx.shape, dtype=torch.bool, device=seq_idx.device)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def sequence_numbers(seq_idx: torch.Tensor) -> torch.Tensor:
    """(batch, seqlen) int32: 0, 1, 2, ... per row, the number of sequence starts (:func:`sequence_starts`) up to
    each step; equal exactly for the steps of one packed sequence, whatever the ids (even one reused later)."""
    return sequence_starts(seq_idx).cumsum(1, dtype=torch.int32)


def selective_scan_naive(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, initial_state=None, seq_idx=None,
):
    """Sequential selective scan.

    Args:
        u, delta: (batch, dim, seqlen). z: (batch, dim, seqlen) or None.
        A: (dim, d_state), real. B, C: see :func:`expand_bc`.
        D, delta_bias: (dim,) or None. initial_state: (batch, dim, d_state) or None (zeros).
        seq_idx: (batch, seqlen) integers or None: packed sequences, the state reset to zero before each step where
            the value changes; initial_state is the state before the row's first sequence, last_state the row's
            last sequence's final state.
    Returns:
        out (batch, dim, seqlen) in u's dtype, and last_state (batch, dim, d_state) float if asked.
    Arithmetic runs in float32, or float64 when any input is float64.
    """
    dtype_in = u.dtype
    compute = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype) else torch.float32
    batch, dim, seqlen = u.shape
    d_state = A.shape[1]
    check_seq_idx(seq_idx, batch, seqlen)
    starts = sequence_starts(seq_idx) if seq_idx is not None else None
    u = u.to(compute)
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(compute)
    Bx = expand_bc(B.to(compute), batch, dim, seqlen)
    Cx = expand_bc(C.to(compute), batch, dim, seqlen)
    if initial_state is None:
        h = u.new_zeros(batch, dim, d_state)
    else:
        h = initial_state.to(compute)
    ys = []
    for t in range(seqlen):
        dt = delta[:, :, t, None]  # (batch, dim, 1)
        decay = torch.exp(dt * A)
        if starts is not None:
            decay = decay * (~starts[:, t, None, None]).to(compute)
        h = decay * h + dt * Bx[:, :, t] * u[:, :, t, None]
        ys.append((h * Cx[:, :, t]).sum(-1))
    y = torch.stack(ys, dim=2) if seqlen > 0 else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(compute)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out
