"""MambaLM decoding: the reusable Decoder, eager on CPU; on the GPU the CUDA-graph step gives the eager tokens."""

from __future__ import annotations

import pytest
import torch

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.generation.cuda_graph import reset_state
from mamba_bio_audio.generation.decoder import Decoder, refresh_decode_params, use_decode_params
from mamba_bio_audio.generation.sampling import decode_loop


def tiny_lm(device="cpu") -> MambaLM:
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=20, d_state=8)).to(device).eval()


def test_decoder_is_reusable_and_matches_generate_on_cpu():
    model = tiny_lm()
    prompt = torch.randint(0, 20, (3, 4), generator=torch.Generator().manual_seed(1))
    decoder = Decoder(model, 3, cuda_graph=True)  # no CUDA here: the same step, eagerly
    assert not decoder.graphed and decoder.step == decoder.eager_step
    first = decoder(prompt, 9, temperature=0)
    other = decoder(torch.flip(prompt, [1]), 9, temperature=0)  # the prefill overwrites the states
    assert torch.equal(decoder(prompt, 9, temperature=0), first)
    assert torch.equal(model.generate(prompt, 9, temperature=0, cuda_graph=True), first)
    assert not torch.equal(other, first) and first.shape == (3, 13)
    sampled = decoder(prompt, 9, temperature=1.0, top_p=0.9, seed=5)
    assert torch.equal(sampled, model.generate(prompt, 9, temperature=1.0, top_p=0.9, seed=5))
    with pytest.raises(ValueError, match="batch 3"):
        decoder(prompt[:2], 4)


def test_decode_loop_feeds_each_sample_back():
    seen = []

    def step(ids):  # next logits put all mass on ids + 1
        seen.append(ids.clone())
        return torch.nn.functional.one_hot((ids + 1) % 7, 7).float() * 50

    first = torch.nn.functional.one_hot(torch.tensor([2, 5]), 7).float() * 50
    out = decode_loop(first, step, torch.zeros(2, 1, dtype=torch.long), 4, temperature=0)
    assert out.tolist() == [[0, 2, 3, 4, 5], [0, 5, 6, 0, 1]]
    assert len(seen) == 3  # no step after the last token


def test_reset_state_zeroes_nested_tensors_and_the_counter():
    state = {"t": 5, "a": torch.ones(2), "inner": [{"b": torch.ones(3)}]}
    reset_state(state)
    assert state["t"] == 0 and state["a"].sum() == 0 and state["inner"][0]["b"].sum() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_gives_the_eager_tokens(dtype):
    model = tiny_lm("cuda").to(dtype)
    prompt = torch.randint(0, 20, (4, 5), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    eager = model.generate(prompt, 64, temperature=0, cuda_graph=False)
    decoder = Decoder(model, 4)
    assert decoder.graphed
    graphed = decoder(prompt, 64, temperature=0)
    assert torch.equal(graphed, eager)
    assert torch.equal(decoder(prompt, 64, temperature=0), eager)  # replaying again from a fresh prefill
    assert torch.equal(model.generate(prompt, 64, temperature=0), eager)  # default on CUDA: graphed
    sampled = model.generate(prompt, 64, temperature=1.0, top_k=5, seed=3, cuda_graph=False)
    assert torch.equal(decoder(prompt, 64, temperature=1.0, top_k=5, seed=3), sampled)


@pytest.mark.gpu
def test_cuda_graph_follows_in_place_weight_updates():
    model = tiny_lm("cuda")
    prompt = torch.randint(0, 20, (2, 3), device="cuda")
    decoder = Decoder(model, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert torch.equal(decoder(prompt, 32, temperature=0), model.generate(prompt, 32, temperature=0,
                                                                         cuda_graph=False))


@pytest.mark.parametrize("layer", ["S6", "S4D"])
def test_decode_parameter_buffers_follow_refreshes(layer):
    """Steps under use_decode_params read A, D, dt_bias (and S4D's B, C) from buffers: stale until refreshed,
    then exactly the plain step; the Decoder refreshes before each generation."""
    torch.manual_seed(2)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=9, d_state=4, ssm_layer=layer)).eval()
    prompt, token = torch.randint(0, 9, (2, 5)), torch.randint(0, 9, (2,))
    refresh_decode_params(model)  # buffers from the weights as they are now
    with torch.no_grad():
        for layer_ in model.backbone.layers:
            mixer = layer_.mixer
            mixer.A_log.mul_(0.5)
            mixer.D.add_(1.0)
            (mixer.dt_proj.bias if layer == "S6" else mixer.dt_bias).add_(0.7)
        states = model.allocate_inference_cache(2)
        model(prompt, states=states)

        def step(buffers: bool) -> torch.Tensor:
            copy = [{k: v.clone() for k, v in s.items()} for s in states]
            if not buffers:
                return model.step(token, copy)
            with use_decode_params(model):
                return model.step(token, copy)

        plain, stale = step(False), step(True)
        refresh_decode_params(model)
        fresh = step(True)
    assert torch.equal(fresh, plain) and not torch.allclose(stale, plain)
    assert not model.backbone.layers[0].mixer.use_decode_params  # only on inside the context

    decoder = Decoder(model, 2, cuda_graph=False)
    with torch.no_grad():
        model.backbone.layers[1].mixer.D.add_(0.5)
    assert torch.equal(decoder(prompt, 6, temperature=0), model.generate(prompt, 6, temperature=0))
