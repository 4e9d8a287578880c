"""A recurrent decode step replayed as CUDA graphs (used by the LM and the audio samplers).

A decode step at small batch is a few hundred small kernels, so Python and launch overhead dominate; a CUDA graph
replays all of them with one launch. This works when the step

- reads its input from, and writes its state into, tensors that stay at the same addresses (the state is updated
  in place; the input ids are copied into one static buffer before each replay), and
- has no data-dependent control flow. A Python counter is allowed if the step's work repeats with a period
  (``period``): one graph is captured per phase ``t mod period`` (SaShiMi's pooling schedule has period
  ``prod(pools)``; a plain Mamba LM has period 1).

The eager path calls the very same ``step`` function, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def reset_state(state) -> None:
    """Zero every tensor of a (nested dict / list) recurrent state in place and set a counter ``"t"`` to 0."""
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for key, value in items:
        if torch.is_tensor(value):
            value.zero_()
        elif isinstance(value, dict | list):
            reset_state(value)
        elif key == "t":
            state[key] = 0


def capture_per_key(step: Callable[[torch.Tensor, object], torch.Tensor], keys, ids: torch.Tensor,
                    device: torch.device, before_capture: Callable[[object], None] | None = None
                    ) -> tuple[dict, dict]:
    """One CUDA graph of ``step(ids, key) -> logits`` per key, all in one memory pool: first one warm-up call per
    key, in order, on a side stream (kernel compilation, autotuning and lazy initialisation outside the capture),
    then per key ``before_capture(key)`` (if given) and the capture. ``ids``: the static input buffer the graphs
    read. Returns ({key: graph}, {key: logits}), the logits views into graph memory that a replay overwrites."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for key in keys:
            step(ids, key)
    torch.cuda.current_stream(device).wait_stream(side)
    graphs: dict = {}
    logits: dict = {}
    pool = None
    for key in keys:
        if before_capture is not None:
            before_capture(key)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits[key] = step(ids, key)
        pool = graph.pool()
        graphs[key] = graph
    return graphs, logits


class GraphedStep:
    """``step(ids) -> logits`` captured as CUDA graphs, one per phase ``t mod period`` of the decode schedule.

    Args:
        step: ``ids (batch,) int64 -> logits (batch, vocab)``; reads and advances ``state`` in place.
        state: the recurrent state ``step`` works on (tensors, nested dicts / lists, optionally a counter ``"t"``).
        batch_size: rows of ``ids``. device: a CUDA device.
        period: the step's work repeats every ``period`` calls (1 when it has no counter).
        fill_token: the token in the static input buffer during warm-up and capture (any valid id).

    Construction runs ``period`` warm-up steps on a side stream (kernel compilation and autotuning happen
    outside the capture), captures the graphs into one memory pool and finally zeroes ``state`` (counter 0).
    Call it with the next input ids at positions 0, 1, 2, ... in order; each call returns that position's logits,
    a view into graph memory that is overwritten by the next call. Copy ``state`` in place (e.g. a prefill
    writing ``state[...].copy_(...)``) to start from another state.
    """

    def __init__(self, step: Callable[[torch.Tensor], torch.Tensor], state, batch_size: int,
                 device: torch.device | str, period: int = 1, fill_token: int = 0):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.state, self.period = state, int(period)
        self.ids = torch.full((batch_size,), fill_token, dtype=torch.long, device=device)

        def before_capture(phase: int) -> None:
            reset_state(state)
            if isinstance(state, dict) and "t" in state:
                state["t"] = phase

        self.graphs, self.logits = capture_per_key(lambda ids, phase: step(ids), range(self.period), self.ids,
                                                   device, before_capture)
        reset_state(state)
        self.t = 0

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (batch,) -> logits (batch, vocab) of this position (valid until the next call)."""
        self.ids.copy_(input_ids)
        phase = self.t % self.period
        self.graphs[phase].replay()
        self.t += 1
        return self.logits[phase]
