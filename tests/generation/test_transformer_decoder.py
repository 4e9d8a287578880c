"""The Transformer's static-cache step (what its CUDA graphs replay): the same logits as the eager cached step and
the full forward at every position up to max_len, unaffected by what the cache holds beyond the position; the
decoder's bucketed lengths; on the GPU the graphed decoder gives the eager tokens."""

from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.generation.transformer_decoder import (
    TransformerDecoder,
    attended_lengths,
    generate,
    length_for,
)
from mamba_bio_audio.models.transformer import TransformerConfig, TransformerLM

from conftest import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")


def odd_model(n_positions: int = 0, seed: int = 0, device="cpu", d_model: int = 21, n_head: int = 3) -> TransformerLM:
    """Odd sizes by default: head_dim 7, 3 heads, 3 layers, vocab 23; weights scaled up (x8) so that attention
    matters and the top logits are O(1) apart. Built on the CPU, then moved (the same weights on every device)."""
    torch.manual_seed(seed)
    model = TransformerLM(TransformerConfig(d_model=d_model, n_layer=3, n_head=n_head, vocab_size=23,
                                            n_positions=n_positions))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)
    return model.to(device).eval()


def test_attended_lengths_and_the_length_each_position_uses():
    assert attended_lengths(1016, 256) == [256, 512, 768, 1016]
    assert attended_lengths(1024, 256) == [256, 512, 768, 1024]
    assert attended_lengths(100, 0) == [100] and attended_lengths(100, 256) == [100]
    assert [length_for(p, 1016, 256) for p in (0, 255, 256, 767, 768, 1015)] == [256, 256, 512, 768, 1016, 1016]
    assert length_for(5, 100, 0) == 100
    for max_len, bucket in [(21, 8), (1016, 256), (7, 3), (5, 1)]:
        lengths = attended_lengths(max_len, bucket)
        for pos in range(max_len):
            length = length_for(pos, max_len, bucket)
            assert length in lengths and pos < length
            assert all(shorter <= pos for shorter in lengths if shorter < length)  # the smallest that covers it
    with pytest.raises(ValueError):
        attended_lengths(0, 4)


@pytest.mark.parametrize("n_positions, bucket", [(0, 8), (21, 0), (0, 1)])
def test_static_step_equals_the_eager_step_and_the_full_forward_up_to_max_len(n_positions, bucket):
    """fp64, every position from the prompt to max_len - 1; before each static step the cache beyond the attended
    length is NaN and the masked positions inside it hold large garbage: neither may reach the logits."""
    model = odd_model(n_positions, seed=1).double()
    batch, prompt_len, max_len = 3, 5, 21
    ids = torch.randint(0, 23, (batch, max_len), generator=torch.Generator().manual_seed(2))
    noise = torch.Generator().manual_seed(3)
    with torch.no_grad():
        full = model(ids)
        eager_cache, static_cache = model.allocate_cache(batch, max_len), model.allocate_cache(batch, max_len)
        eager_cache.kv.fill_(float("nan"))  # the eager path never reads beyond pos
        static_cache.kv.fill_(float("nan"))
        first_eager = model(ids[:, :prompt_len], cache=eager_cache)[:, -1]
        first_static = model(ids[:, :prompt_len], cache=static_cache)[:, -1]
        static_cache.position.fill_(prompt_len)
        assert torch.equal(first_eager, first_static) and rel_err(first_eager, full[:, prompt_len - 1]) < 1e-12
        for pos in range(prompt_len, max_len):
            length = length_for(pos, max_len, bucket)
            tail = static_cache.kv[:, :, :, :, pos:]
            tail.copy_(1e4 * torch.randn(tail.shape, generator=noise, dtype=tail.dtype))  # masked: finite garbage
            static_cache.kv[:, :, :, :, length:] = float("nan")  # not read at all
            eager = model.step(ids[:, pos], eager_cache)
            static = model.static_step(ids[:, pos], static_cache, length)
            assert static_cache.position.item() == pos + 1 and eager_cache.pos == pos + 1
            assert rel_err(static, eager) < 1e-12, pos
            assert rel_err(static, full[:, pos]) < 1e-12, pos
        # the keys and values the static step wrote are the eager step's
        assert rel_err(static_cache.kv, eager_cache.kv) < 1e-12


def test_static_step_in_fp32_matches_the_fp64_forward():
    model = odd_model(seed=4)
    reference = odd_model(seed=4).double()
    ids = torch.randint(0, 23, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = reference(ids)
        cache = model.allocate_cache(2, 11)
        cache.kv.fill_(float("nan"))
        model(ids[:, :3], cache=cache)
        cache.kv[:, :, :, :, 3:] = 0.0
        cache.position.fill_(3)
        steps = [model.static_step(ids[:, pos], cache) for pos in range(3, 11)]  # the whole buffer every step
    assert rel_err(torch.stack(steps, 1), full[:, 3:]) < 1e-5


def test_decoder_matches_eager_generate_and_is_reusable_on_cpu():
    model = odd_model(n_positions=24, seed=6).double()
    prompt = torch.randint(0, 23, (3, 4), generator=torch.Generator().manual_seed(7))
    decoder = TransformerDecoder(model, 3, 4 + 17, cuda_graph=True, bucket=6)  # no CUDA here: the same step, eagerly
    assert not decoder.graphed and decoder.graphs is None and decoder.lengths == [6, 12, 18, 21]
    decoder.cache.kv.fill_(float("nan"))  # whatever the buffer held before a call must not leak into it
    first = decoder(prompt, 17, temperature=0)
    assert torch.equal(first, model.generate(prompt, 17, temperature=0)) and first.shape == (3, 21)
    other = decoder(torch.flip(prompt, [1]), 17, temperature=0)  # the prefill overwrites the cache
    assert not torch.equal(other, first)
    assert torch.equal(decoder(prompt, 9, temperature=0), first[:, :13])  # shorter than max_len
    sampled = decoder(prompt, 17, temperature=1.0, top_k=7, seed=8)
    assert torch.equal(sampled, model.generate(prompt, 17, temperature=1.0, top_k=7, seed=8))
    assert torch.equal(generate(model, prompt, 17, temperature=0, bucket=0), first)


def test_decoder_restores_training_and_checks_its_sizes():
    model = odd_model(n_positions=10).train()
    decoder = TransformerDecoder(model, 2, 8)
    prompt = torch.zeros(2, 3, dtype=torch.long)
    assert decoder(prompt, 5, temperature=0).shape == (2, 8) and model.training
    with pytest.raises(ValueError, match="max_len 8"):
        decoder(prompt, 6)
    with pytest.raises(ValueError, match="batch 2"):
        decoder(prompt[:1], 2)
    with pytest.raises(ValueError, match="n_positions 10"):
        TransformerDecoder(model, 2, 11)


@pytest.mark.gpu
@pytest.mark.parametrize("bucket", [16, 0])
@pytest.mark.parametrize("d_model, n_head", [(21, 3), (128, 2)])  # head_dim 7 (SDPA's math path) and 64
def test_cuda_graph_decode_gives_the_eager_greedy_tokens(d_model, n_head, bucket):
    """fp32 on CUDA: the graphed decoder's tokens equal the eager ``generate``'s token for token; the buffers the
    graphs write (cache, logits, static ids) are NaN-poisoned first and must not leak. (On the CPU, fp32 and fp64
    greedy generation from this model and prompt agree, the top two logits at least 0.3 apart.)"""
    model = odd_model(seed=10, device="cuda", d_model=d_model, n_head=n_head)
    prompt = torch.randint(0, 23, (4, 5), generator=torch.Generator().manual_seed(10)).cuda()
    eager = model.generate(prompt, 60, temperature=0)
    decoder = TransformerDecoder(model, 4, 5 + 60, bucket=bucket)
    assert decoder.graphed and set(decoder.graphs.graphs) == set(attended_lengths(65, bucket))
    decoder.cache.kv.fill_(float("nan"))
    for logits in decoder.graphs.logits.values():
        logits.fill_(float("nan"))
    decoder.graphs.ids.fill_(22)
    assert torch.equal(decoder(prompt, 60, temperature=0), eager)
    assert torch.equal(decoder(prompt, 60, temperature=0), eager)  # reusable
    assert torch.equal(decoder(prompt, 20, temperature=0), eager[:, :25])


@pytest.mark.gpu
@pytest.mark.parametrize("d_model, n_head", [(21, 3), (128, 2)])
def test_cuda_graph_step_logits_equal_the_eager_step_on_cuda(d_model, n_head):
    """fp32 logits of each replayed step against the eager cached step and the fp64 full forward (on the CPU),
    position by position (bucket 8, so several graphs are replayed, the last one at max_len)."""
    model = odd_model(n_positions=32, seed=11, device="cuda", d_model=d_model, n_head=n_head)
    ids = torch.randint(0, 23, (3, 29), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        reference = odd_model(n_positions=32, seed=11, d_model=d_model, n_head=n_head).double()(ids)
    ids = ids.cuda()
    decoder = TransformerDecoder(model, 3, 29, bucket=8)
    assert decoder.graphed and sorted(decoder.graphs.graphs) == [8, 16, 24, 29]
    graphed, eager = [], []
    with torch.no_grad():
        eager_cache = model.allocate_cache(3, 29)
        model(ids[:, :4], cache=eager_cache)
        cache = decoder.cache
        model(ids[:, :4], cache=cache)
        cache.kv[:, :, :, :, 4:] = 0.0
        cache.position.fill_(4)
        for pos in range(4, 29):
            graphed.append(decoder.step(ids[:, pos]).clone())
            eager.append(model.step(ids[:, pos], eager_cache))
    assert cache.pos == 29 and cache.position.item() == 29
    graphed, eager = torch.stack(graphed, 1).cpu(), torch.stack(eager, 1).cpu()
    # fp32 against fp64 on the CPU is ~1e-5 for these x8 weights; a wrong position or mask is O(1)
    assert rel_err(graphed, eager) < 5e-4
    assert rel_err(graphed, reference[:, 4:]) < 5e-4 and rel_err(eager, reference[:, 4:]) < 5e-4
