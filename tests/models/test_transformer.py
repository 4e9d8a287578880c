"""The Transformer baseline: KV-cache decoding equals the full causal forward, causality, size, generate."""

from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.models.transformer import TransformerConfig, TransformerLM

from conftest import rel_err


def tiny(**kw) -> TransformerConfig:
    return TransformerConfig(**{"d_model": 32, "n_layer": 2, "n_head": 4, "vocab_size": 19, **kw})


@pytest.mark.parametrize("n_positions", [0, 16])
def test_kv_cache_steps_equal_the_full_forward(n_positions):
    torch.manual_seed(0)
    model = TransformerLM(tiny(n_positions=n_positions)).double().eval()
    ids = torch.randint(0, 19, (3, 13))
    with torch.no_grad():
        full = model(ids)
        # prefill 4, a chunk of 3 after the prefix (masked attention), then one token at a time
        cache = model.allocate_cache(3, 16)
        pieces = [model(ids[:, :4], cache=cache), model(ids[:, 4:7], cache=cache)]
        pieces += [model.step(ids[:, t], cache)[:, None] for t in range(7, 13)]
    assert cache.pos == 13
    assert rel_err(torch.cat(pieces, 1), full) < 1e-12


def test_later_tokens_do_not_change_earlier_logits():
    torch.manual_seed(1)
    model = TransformerLM(tiny()).double().eval()
    ids = torch.randint(0, 19, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 5) % 19
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_greedy_generate_equals_repeated_argmax_and_sampling_is_seeded():
    torch.manual_seed(2)
    model = TransformerLM(tiny())
    prompt = torch.randint(0, 19, (2, 3))
    out = model.generate(prompt, 8, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq) and model.training  # generate restores the training flag
    a = model.generate(prompt, 10, temperature=1.0, top_k=5, seed=3)
    assert torch.equal(a, model.generate(prompt, 10, temperature=1.0, top_k=5, seed=3)) and a.shape == (2, 13)


def test_cache_overflow_positions_and_config_errors():
    model = TransformerLM(tiny(n_positions=8)).eval()
    cache = model.allocate_cache(1, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with torch.no_grad(), pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(UserError, match="divisible"):
        TransformerConfig(d_model=30, n_head=4)


def test_default_size_is_the_85m_baseline_with_tied_embeddings():
    with torch.device("meta"):
        model = TransformerLM()
    assert model.lm_head.weight is model.embedding.weight
    assert sum(p.numel() for p in model.parameters()) == 85_252_608
