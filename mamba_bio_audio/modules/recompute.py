"""Training memory at length: the residual stream cut into units, recomputed in the backward pass.

The backbone is a chain of units over the residual stream s (batch, seqlen, d_model), fp32 with
``residual_in_fp32``:

    s_0 = embedding(ids);   s_{i+1} = s_i + mixer_i(norm_i(s_i));   output = norm_f(s_n)

(mamba_ssm's (hidden, residual) pair after block i sums to s_{i+1}; the unit applies exactly its operations, so
``checkpoint_level`` 1 gives the same forward bit for bit). Unit i maps s_i to s_{i+1}; the first unit starts
from the token ids (the embedding is recomputed, not stored) and the last ends with norm_f. Levels
(``MambaConfig.checkpoint_level``):

    1  each unit under torch.utils.checkpoint: one tensor kept per block boundary, n_layer - 1 in all; the backward
       recomputes a whole unit at once, so it holds one block's activations over the whole length.
    2  each unit is a :class:`SegmentedRecompute`: the forward runs it without autograd in time segments, keeping
       only the conv and SSM states at segment starts (a few KB); the backward walks the segments right to left,
       recomputing one segment with autograd from its start states and handing the states' gradients to the
       segment before (the same exact-gradient scheme as training/segmented.py, inside one block). The
       recomputed activations are one segment's, whatever the length. Sequences of one segment, bidirectional
       mixers, mixers that override ``forward``, and mamba_ssm's scan (no initial state) run at level 1.

What each level keeps and recomputes, byte by byte at 2^20 tokens: docs/kernels.md (memory).
tests/modules/test_memory_path.py checks the kept bytes exactly (on CPU, with :class:`LiveBytes` of
benchmarks/memory.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

#: Level 2 cuts time into segments of about this many (batch * d_inner * steps) elements (a power of two in steps).
SEGMENT_ELEMENTS = 1 << 26
#: Shortest automatic segment (steps).
MIN_SEGMENT = 1024


def segment_length(batch: int, d_inner: int, tokens: int | None = None) -> int:
    """Steps per segment: ``tokens`` when given, else the power of two nearest below
    SEGMENT_ELEMENTS / (batch * d_inner), at least MIN_SEGMENT."""
    if tokens is not None:
        if tokens < 1:
            raise ValueError(f"segment length must be positive, got {tokens}")
        return tokens
    steps = max(1, SEGMENT_ELEMENTS // max(1, batch * d_inner))
    return max(MIN_SEGMENT, 1 << (steps.bit_length() - 1))


class ResidualUnit:
    """[embedding ->] block -> [norm_f]: x (ids (batch, seqlen) or stream (batch, seqlen, d_model)) -> next stream
    (or the normed output for the last block). ``carry`` and the returned carry are the mixer's segment states.
    ``seq_idx`` (batch, seqlen): packed sequences, passed to the mixer (such a unit is not split into segments)."""

    def __init__(self, block, embedding=None, final_norm=None, seq_idx=None):
        self.block = block
        self.embedding = embedding
        self.final_norm = final_norm
        self.seq_idx = seq_idx

    def modules(self) -> list:
        return [m for m in (self.embedding, self.block, self.final_norm) if m is not None]

    def parameters(self) -> list[torch.Tensor]:
        return [p for m in self.modules() for p in m.parameters()]

    def carries_state(self, like: torch.Tensor) -> bool:
        return self.block.mixer.carries_state(like)

    def __call__(self, x: torch.Tensor, carry=None, return_carry: bool = False):
        stream = self.embedding(x) if self.embedding is not None else x
        stream, carry = self.block.residual_step(stream, carry, return_carry, self.seq_idx)
        if self.final_norm is not None:
            from mamba_bio_audio.modules.block import add_norm  # block.py imports this module

            stream = add_norm(self.final_norm, stream, None, self.block.mixer.backend)[0]
        return stream, carry


def checkpoint_unit(unit: ResidualUnit, x: torch.Tensor) -> torch.Tensor:
    """Level 1: the unit under torch.utils.checkpoint (non-reentrant); keeps x only."""
    return checkpoint(lambda inp: unit(inp)[0], x, use_reentrant=False)


def recompute_unit(unit: ResidualUnit, x: torch.Tensor, segment: int | None = None) -> torch.Tensor:
    """Level 2: the unit as a :class:`SegmentedRecompute` (``segment``: steps per segment, None = automatic);
    level 1 when the sequence fits in one segment, the mixer cannot carry its state across segments, or the rows
    are packed (``unit.seq_idx``)."""
    seqlen = x.shape[1]
    step = segment_length(x.shape[0], unit.block.mixer.d_inner, segment)
    if seqlen <= step or not unit.carries_state(x) or unit.seq_idx is not None:
        return checkpoint_unit(unit, x)
    bounds = [(lo, min(lo + step, seqlen)) for lo in range(0, seqlen, step)]
    return SegmentedRecompute.apply(unit, bounds, x, *unit.parameters())


def _autocast_states(device_type: str) -> list[dict]:
    """The autocast settings now in force for ``device_type`` (and the CPU), to re-enter in the backward."""
    types = [device_type] + (["cpu"] if device_type != "cpu" else [])
    return [{"device_type": t, "enabled": torch.is_autocast_enabled(t), "dtype": torch.get_autocast_dtype(t),
             "cache_enabled": torch.is_autocast_cache_enabled()} for t in types]


def _leaves(carry) -> tuple | None:
    return None if carry is None else tuple(t.detach().requires_grad_(t.is_floating_point()) for t in carry)


class SegmentedRecompute(torch.autograd.Function):
    """out = unit(x) computed segment by segment; saves x and the states entering each segment.

    Args of ``apply``: unit (:class:`ResidualUnit`), bounds (list of (start, end) steps covering the sequence, in
    order), x (batch, seqlen[, d_model]), then the unit's parameters (so their gradients come back through
    autograd, as DDP expects). Returns (batch, seqlen, d_model).
    The unit must be deterministic (Mamba blocks are: no dropout), since the backward recomputes it.
    """

    @staticmethod
    def forward(ctx, unit, bounds, x, *params):
        starts, carry, out = [None], None, None
        for k, (lo, hi) in enumerate(bounds):
            y, carry = unit(x[:, lo:hi], carry, return_carry=True)
            if out is None:
                out = y.new_empty(x.shape[:2] + y.shape[2:])
            out[:, lo:hi] = y
            if k + 1 < len(bounds):
                starts.append(tuple(t.clone() for t in carry))  # own copies: a carry may view a whole segment
        ctx.unit, ctx.bounds, ctx.starts = unit, bounds, starts
        ctx.autocast = _autocast_states(x.device.type)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        unit, bounds, starts = ctx.unit, ctx.bounds, ctx.starts
        params = unit.parameters()
        wanted = [i for i, p in enumerate(params) if ctx.needs_input_grad[3 + i]]
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        want_x = ctx.needs_input_grad[2]
        grad_x = torch.empty_like(x) if want_x else None
        grad_end = None  # gradient w.r.t. the carry leaving the segment being processed
        with torch.enable_grad(), contextlib.ExitStack() as stack:
            for state in ctx.autocast:
                stack.enter_context(torch.autocast(**state))
            for k in reversed(range(len(bounds))):
                lo, hi = bounds[k]
                xs = x[:, lo:hi].detach().requires_grad_(want_x)
                carry_in = _leaves(starts[k])
                y, carry_out = unit(xs, carry_in, return_carry=True)
                outputs, grads = [y], [grad_out[:, lo:hi]]
                if grad_end is not None:
                    outputs += list(carry_out)
                    grads += list(grad_end)
                inputs = ([xs] if want_x else []) + list(carry_in or ()) + [params[i] for i in wanted]
                got = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True))
                if want_x:
                    g = got.pop(0)
                    grad_x[:, lo:hi] = 0 if g is None else g
                if carry_in is not None:
                    grad_end = [torch.zeros_like(c) if g is None else g for c, g in zip(carry_in, got)]
                    got = got[len(carry_in):]
                for i, g in zip(wanted, got):
                    if g is not None:
                        grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
                del y, carry_out, outputs, grads, got
        return (None, None, grad_x, *grad_params)
