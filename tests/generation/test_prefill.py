"""Prefill (the parallel scan) leaves the state ``T`` recurrent steps leave, for the plain Mamba LM and the
multi-scale SaShiMi U-Net, at prompt lengths around the pooling periods; and the recurrent log-probabilities over
a prompt equal the parallel ones (reference backend on the CPU)."""

from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.generation.prefill import copy_state, prefill
from mamba_bio_audio.models.lm import MambaLM
from mamba_bio_audio.models.sashimi import SashimiLM, preset

from conftest import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")


def randomized(model, seed: int, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model.eval()


MODELS = {
    "sashimi": lambda: SashimiLM(preset("tiny")),
    "sashimi-3-levels": lambda: SashimiLM(preset("tiny", pools=(2, 3, 2), n_layers=2, expand=1)),
    "mamba-lm": lambda: MambaLM(MambaConfig(vocab_size=256, d_model=16, n_layer=2, d_state=4)),
}


def flat(state) -> list[torch.Tensor]:
    items = state.values() if isinstance(state, dict) else state
    out = []
    for value in items:
        if torch.is_tensor(value):
            out.append(value)
        elif isinstance(value, dict | list):
            out.extend(flat(value))
    return out


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seqlen", [1, 3, 4, 5, 16, 17, 38])
def test_prefill_state_and_logits_equal_recurrent_steps(name, seqlen):
    torch.manual_seed(seqlen)
    model = randomized(MODELS[name]().double(), seed=1)
    ids = torch.randint(0, 256, (2, seqlen + 6))
    stepped = model.allocate_inference_cache(2, dtype=torch.float64)
    with torch.no_grad():
        recurrent = torch.stack([model.step(ids[:, t], stepped) for t in range(seqlen)], dim=1)
    state = model.allocate_inference_cache(2, dtype=torch.float64)
    parallel = prefill(model, ids[:, :seqlen], state)
    assert rel_err(parallel, recurrent) < 1e-10
    for a, b in zip(flat(state), flat(stepped), strict=True):
        assert rel_err(a, b) < 1e-10
    if isinstance(state, dict):
        assert state["t"] == stepped["t"] == seqlen
    with torch.no_grad():  # and decoding goes on from either state alike
        after_prefill = torch.stack([model.step(ids[:, t], state) for t in range(seqlen, seqlen + 6)], dim=1)
        after_steps = torch.stack([model.step(ids[:, t], stepped) for t in range(seqlen, seqlen + 6)], dim=1)
    assert rel_err(after_prefill, after_steps) < 1e-10


@pytest.mark.parametrize("name", ["sashimi", "mamba-lm"])
def test_recurrent_log_probs_over_a_prompt_equal_parallel_float32(name):
    torch.manual_seed(0)
    model = randomized(MODELS[name](), seed=2, scale=0.1)
    prompt = torch.randint(0, 256, (1, 200))
    state = model.allocate_inference_cache(1)
    with torch.no_grad():
        recurrent = torch.stack([model.step(prompt[:, t], state) for t in range(200)], dim=1)
    parallel = prefill(model, prompt, model.allocate_inference_cache(1))
    lp_rec = torch.log_softmax(recurrent, -1)[0, :-1].gather(-1, prompt[0, 1:, None])
    lp_par = torch.log_softmax(parallel, -1)[0, :-1].gather(-1, prompt[0, 1:, None])
    assert torch.allclose(lp_rec, lp_par, atol=2e-4, rtol=1e-4)


def test_copy_state_broadcasts_a_batch_1_state():
    model = randomized(MODELS["sashimi"]().double(), seed=3)
    single = model.allocate_inference_cache(1, dtype=torch.float64)
    prefill(model, torch.randint(0, 256, (1, 21)), single)
    batch = model.allocate_inference_cache(3, dtype=torch.float64)
    copy_state(batch, single)
    assert batch["t"] == 21
    for a, b in zip(flat(batch), flat(single), strict=True):
        assert torch.equal(a, b.expand_as(a))


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["sashimi", "mamba-lm"])
def test_cuda_graph_continuation_equals_eager(arch, tmp_path):
    """On a GPU: a prompt prefilled into graph-captured states decodes the eager path's greedy samples."""
    import soundfile as sf

    from mamba_bio_audio.tasks.audio_continuation import write_generations
    from mamba_bio_audio.tasks.audio_lm import build_audio_lm

    torch.manual_seed(0)
    model = build_audio_lm(arch, "tiny", {"sample_rate": 8000, "encoding": "mulaw8", "clip_samples": 64})
    model = model.cuda().eval()
    prompt = torch.randint(0, 256, (37,))
    clips = {}
    for graph in (False, True):
        (tmp_path / str(graph)).mkdir()
        write_generations(model, tmp_path / str(graph), 2, 40, prompt=prompt, batch_size=2, temperature=0.0,
                          cuda_graph=graph, device="cuda", measure_batch_1=False)
        clips[graph] = sf.read(tmp_path / str(graph) / "sample_0001.wav")[0]
    assert (clips[False] == clips[True]).all()
