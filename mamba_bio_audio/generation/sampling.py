"""Sampling the next token from logits, and the decode loop every LM shares (the MambaLM's :class:`~mamba_bio_audio.
generation.decoder.Decoder`, the Transformer baseline with its KV cache). Sampling always runs outside CUDA graphs,
on the logits the step returns.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) all but the top_k logits and/or the smallest set whose probability exceeds top_p.

    logits: (batch, vocab). top_k 0 / top_p 1.0 disable the filter. The most likely token always survives.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def seeded_generator(seed: int | None, device) -> torch.Generator | None:
    """A torch.Generator on ``device`` seeded with ``seed``, or None (global RNG) when seed is None."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (batch, vocab) -> token ids (batch,). temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_generate_args(input_ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int,
                        top_p: float) -> None:
    """ValueError unless input_ids is (batch, prompt_len >= 1) and the sampling settings are in range."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be (batch, prompt_len >= 1), got shape {tuple(input_ids.shape)}")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 0:
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 0")


def decode_loop(logits: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None, progress: bool | None = None) -> torch.Tensor:
    """Sample ``max_new_tokens`` tokens after a prefilled prompt.

    Args:
        logits: (batch, vocab), the prediction after the prompt's last token (from the prefill).
        step: ``ids (batch,) -> logits (batch, vocab)`` for the next position (advances the model's cache).
        input_ids: (batch, prompt_len), the prompt (copied into the output).
        temperature, top_k, top_p, generator: see :func:`sample_next`.
        progress: a tqdm bar (None: only for long runs, >= 4096 tokens).
    Returns:
        (batch, prompt_len + max_new_tokens) int64 on the prompt's device.
    """
    batch, prompt_len = input_ids.shape
    out = torch.empty(batch, prompt_len + max_new_tokens, dtype=torch.long, device=input_ids.device)
    out[:, :prompt_len] = input_ids
    steps = range(max_new_tokens)
    if progress or (progress is None and max_new_tokens >= 4096):
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="generate", unit="tok")
    for i in steps:
        next_ids = sample_next(logits, temperature, top_k, top_p, generator)
        out[:, prompt_len + i] = next_ids
        if i + 1 < max_new_tokens:
            logits = step(next_ids)
    return out
