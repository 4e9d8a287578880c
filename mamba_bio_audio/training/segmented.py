"""Training on one sequence longer than memory: segments with states carried across, exact gradients.

Pass 1 runs the segments left to right without autograd and keeps only the states at segment boundaries
(conv inputs and SSM state per layer: a few KB per channel, independent of length). Pass 2 walks the segments
right to left: it recomputes one segment with autograd from its saved boundary state, back-propagates the
segment's loss plus the gradient arriving at its end state, and hands the gradient of its start state to the
segment before. Memory is one segment's activations; the parameter gradients equal one pass over the whole
sequence (tests/training/test_segmented.py checks this in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _detached(carries):
    return [tuple(t.detach().requires_grad_(t.is_floating_point()) for t in c) for c in carries]


def segmented_lm_backward(model, input_ids: torch.Tensor, segment_len: int) -> float:
    """Next-token loss over input_ids (batch, seqlen + 1), back-propagated segment by segment.

    Accumulates gradients into ``model``'s parameters (like ``loss.backward()``) and returns the mean loss
    (nats per token). ``model`` is a MambaLM (``forward_segment``).
    """
    inputs, targets = input_ids[:, :-1], input_ids[:, 1:]
    total_tokens = targets.numel()
    bounds = list(range(0, inputs.shape[1], segment_len))
    starts: list = [None]  # carries entering each segment
    with torch.no_grad():
        for lo in bounds[:-1]:
            _, carries = model.forward_segment(inputs[:, lo: lo + segment_len], starts[-1])
            starts.append(carries)
    total = 0.0
    grad_end = None  # gradient w.r.t. the carries leaving the current segment
    for k in reversed(range(len(bounds))):
        lo = bounds[k]
        carry_in = None if starts[k] is None else _detached(starts[k])
        logits, carry_out = model.forward_segment(inputs[:, lo: lo + segment_len], carry_in)
        seg_targets = targets[:, lo: lo + segment_len]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seg_targets.reshape(-1),
                               reduction="sum") / total_tokens
        outputs, grads = [loss], [None]
        if grad_end is not None:
            for c, g in zip(carry_out, grad_end):
                outputs += list(c)
                grads += list(g)
        torch.autograd.backward(outputs, [g for g in grads] if grad_end is not None else None)
        total += loss.item()
        if carry_in is not None:
            grad_end = [tuple(t.grad if t.grad is not None else torch.zeros_like(t) for t in c) for c in carry_in]
    return total
