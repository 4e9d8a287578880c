"""Packed rows: several sequences in one row of a batch, told apart by ``seq_idx`` (batch, seqlen).

A packed sequence is one run of equal ``seq_idx`` values; the mixers restart their conv and scan where the value
changes (``Mamba.forward``), so each sequence gets what it gets alone. Here: the run numbering a model passes
down (pads, where an attention_mask says so, become runs of their own) and pooling per sequence.
"""

from __future__ import annotations

import torch


def sequence_runs(seq_idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, seqlen) int32: 0, 1, 2, ... per row, a new number wherever ``seq_idx`` changes or (with
    ``attention_mask``, True = real token) where real tokens and pads meet, so that pads never share a run with a
    real sequence."""
    change = torch.zeros(seq_idx.shape, dtype=torch.bool, device=seq_idx.device)
    change[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    if attention_mask is not None:
        mask = attention_mask.to(device=seq_idx.device, dtype=torch.bool)
        change[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    return change.cumsum(1, dtype=torch.int32)


def pool_sequences(hidden: torch.Tensor, runs: torch.Tensor, pooling: str,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per packed sequence, float32: the hidden state at its last position ("last") or the mean over
    its positions ("mean").

    Args:
        hidden: (batch, seqlen, d). runs: (batch, seqlen) from :func:`sequence_runs` (a run = a sequence).
        attention_mask: (batch, seqlen), True = real token; runs of pads are left out. None: every run counts.
    Returns:
        (n_sequences, d) float32, sequences in order of appearance (row by row, left to right).
    """
    batch, seqlen, d = hidden.shape
    starts = torch.ones(batch, seqlen, dtype=torch.bool, device=hidden.device)
    starts[:, 1:] = runs[:, 1:] != runs[:, :-1]
    starts = starts.flatten()
    run_of = starts.cumsum(0) - 1  # (batch * seqlen,) global run number
    flat = hidden.reshape(batch * seqlen, d)
    if pooling == "last":
        ends = torch.ones(batch, seqlen, dtype=torch.bool, device=hidden.device)
        ends[:, :-1] = starts.view(batch, seqlen)[:, 1:]
        pooled = flat[ends.flatten()].float()
    elif pooling == "mean":
        n_runs = int(starts.sum())
        sums = flat.new_zeros(n_runs, d, dtype=torch.float32).index_add_(0, run_of, flat.float())
        pooled = sums / torch.bincount(run_of, minlength=n_runs).clamp(min=1).unsqueeze(1).float()
    else:
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    if attention_mask is not None:
        pooled = pooled[attention_mask.to(device=hidden.device, dtype=torch.bool).flatten()[starts]]
    return pooled
