"""Sampling from a MambaLM: prefill the prompt with the parallel scan, then one recurrent step per token."""

from __future__ import annotations

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


def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, progress: bool | None = None) -> torch.Tensor:
    """See :meth:`mamba_bio_audio.models.lm.MambaLM.generate`. Returns (batch, prompt_len + max_new_tokens)."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be (batch, prompt_len >= 1), got shape {tuple(input_ids.shape)}")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 0:
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 0")
    device = input_ids.device
    generator = seeded_generator(seed, device)
    was_training = model.training
    model.eval()
    try:
        states = model.allocate_inference_cache(input_ids.shape[0], device=device)
        logits = model(input_ids, states=states, num_last_tokens=1)[:, -1]
        tokens = [input_ids]
        steps = range(max_new_tokens)
        if progress or (progress is None and max_new_tokens >= 4096):
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="generate", unit="tok")
        for i in steps:
            next_ids = sample_next(logits, temperature, top_k, top_p, generator)
            tokens.append(next_ids[:, None])
            if i + 1 < max_new_tokens:
                logits = model.step(next_ids, states)
        return torch.cat(tokens, dim=1)
    finally:
        model.train(was_training)
