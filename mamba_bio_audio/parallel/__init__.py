"""Training across devices beyond data parallelism (which Lightning's DDP / FSDP strategies cover).

:mod:`mamba_bio_audio.parallel.context`: context parallelism, one sequence split over the ranks of a process
group, states passed forward and state gradients backward between neighbouring ranks, gradients exact.
"""

from __future__ import annotations

from mamba_bio_audio.parallel.context import (
    allreduce_gradients,
    context_parallel_backward,
    context_parallel_lm_backward,
    local_lm_ids,
    segment_bounds,
)

__all__ = ["allreduce_gradients", "context_parallel_backward", "context_parallel_lm_backward", "local_lm_ids",
           "segment_bounds"]
