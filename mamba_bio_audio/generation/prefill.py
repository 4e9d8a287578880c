"""Prefill: run a prompt through a model in parallel (the scan) and leave the recurrent state ``step`` needs next.

After ``logits = prefill(model, input_ids, state)`` the state equals the one ``T = input_ids.shape[1]`` calls of
``model.step`` would leave, and ``logits: (batch, T, vocab)`` are the parallel forward's, so generation continues
with ``model.step`` from position ``T`` at the cost of one parallel pass instead of ``T`` recurrent steps.

- :class:`~mamba_bio_audio.models.lm.MambaLM`: its forward writes every layer's conv and SSM state in place.
- :class:`~mamba_bio_audio.models.sashimi.SashimiLM`: walked stage by stage (:func:`stage_prefill`). A stage of
  pool factor ``p`` has, after ``T`` samples, run its inner stage on the ``n = ceil(T / p)`` coarse positions
  ``0 .. n - 1`` (coarse ``j`` pools the ``p`` down-path outputs ending at ``p j <= T - 1``, so the end padding
  to ``n p`` is never read); the inner stage is prefilled on exactly those ``n`` positions (never on padding,
  which would advance its state). The stage keeps the last ``p`` down-path outputs (its DownPool window, zeros
  before the start) and the ``p`` up-pooled fine vectors of coarse position ``n - 1``, which serve the fine
  positions ``p (n - 1) .. p n - 1``, exactly what ``Stage.step`` keeps.

Every state tensor is written in place (``copy_``), so a state captured by CUDA graphs
(:class:`~mamba_bio_audio.generation.cuda_graph.GraphedStep`) can be prefilled after the capture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def prefill(model, input_ids: torch.Tensor, state) -> torch.Tensor:
    """``input_ids: (batch, T)`` -> logits ``(batch, T, vocab)``; ``state`` (from
    ``model.allocate_inference_cache(batch)``) is overwritten in place with the state after position ``T - 1``."""
    from mamba_bio_audio.models.sashimi import SashimiLM

    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be (batch, T >= 1), got shape {tuple(input_ids.shape)}")
    if not isinstance(model, SashimiLM):
        return model(input_ids, states=state)
    hidden = stage_prefill(model.stage, model.embedding(input_ids), state["stage"])
    state["t"] = input_ids.shape[1]
    return model.lm_head(model.norm_f(hidden.to(model.norm_f.weight.dtype)))


def stack_prefill(stack, x: torch.Tensor, states: list[dict]) -> torch.Tensor:
    """A SaShiMi :class:`BlockStack` forward ``(batch, T, d) -> (batch, T, d)`` that fills its blocks' states."""
    hidden, residual = x, None
    for layer, state in zip(stack.layers, states):
        hidden, residual = layer(hidden, residual, state)
    return hidden if residual is None else (hidden + residual).to(x.dtype)


def stage_prefill(stage, x: torch.Tensor, state: dict) -> torch.Tensor:
    """A SaShiMi :class:`Stage` forward on ``x: (batch, T, d)`` (any ``T >= 1``) that fills ``state`` as ``T``
    calls of ``Stage.step`` would (module docstring)."""
    seqlen = x.shape[1]
    skip = stack_prefill(stage.down, x, state["down"])
    if stage.inner is None:
        return stack_prefill(stage.up, skip, state["up"])
    p = stage.pool.pool
    n = -(-seqlen // p)
    coarse = stage_prefill(stage.inner, stage.pool(F.pad(skip, (0, 0, 0, n * p - seqlen))), state["inner"])
    fine = stage.unpool(coarse)  # (batch, n * p, d)
    state["upsampled"].copy_(fine[:, (n - 1) * p:])
    state["window"].copy_(F.pad(skip, (0, 0, max(0, p - seqlen), 0))[:, -p:])
    return stack_prefill(stage.up, fine[:, :seqlen] + skip, state["up"])


def copy_state(dst, src) -> None:
    """Copy a batch-1 (or same-batch) recurrent state ``src`` into ``dst`` in place, broadcasting over the batch;
    nested dicts / lists of tensors, plus a counter ``"t"``."""
    items = dst.items() if isinstance(dst, dict) else enumerate(dst)
    for key, value in items:
        if torch.is_tensor(value):
            value.copy_(src[key].expand_as(value))
        elif isinstance(value, dict | list):
            copy_state(value, src[key])
        else:
            dst[key] = src[key]
