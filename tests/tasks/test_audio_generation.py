"""Audio sampling for both audio architectures (seeded, scored by the model itself, CUDA graphs == eager), clips
written as WAVs, and loading an audio LM from a model or run folder."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.errors import CheckpointError
from mamba_bio_audio.models.lm import MambaLM
from mamba_bio_audio.models.sashimi import SashimiLM, preset
from mamba_bio_audio.tasks.audio_generation import generate, generate_clips, likelihoods_tsv, load_audio_lm

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides):
    return preset("tiny", **overrides)


@pytest.mark.parametrize("arch", ["sashimi", "mamba-lm"])
def test_generate_is_seeded_and_scores_what_it_draws(arch):
    torch.manual_seed(6)
    if arch == "sashimi":
        model = SashimiLM(tiny()).eval()
    else:
        model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=256, d_state=4)).eval()
    a = generate(model, 3, 20, seed=7)
    b = generate(model, 3, 20, seed=7)
    assert a.tokens.shape == (3, 20) and a.tokens.dtype == torch.long
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_likelihood, b.log_likelihood)
    assert 0 <= a.tokens.min() and a.tokens.max() < 256
    # the log-likelihood is the model's own score of the drawn tokens (silence token in front)
    ids = torch.cat([torch.full((3, 1), 128), a.tokens], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).double(), -1).gather(-1, ids[:, 1:, None])[..., 0].sum(1)
    assert torch.allclose(logp, a.log_likelihood, rtol=1e-4)
    assert (a.bits_per_sample > 0).all()
    greedy = generate(model, 2, 10, temperature=0)
    assert torch.equal(greedy.tokens[0], greedy.tokens[1])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["sashimi", "mamba-lm"])
def test_cuda_graph_decode_equals_eager_decode(arch):
    torch.manual_seed(8)
    if arch == "sashimi":
        model = SashimiLM(tiny(n_layers=2)).cuda().eval()
    else:
        model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=256, d_state=8)).cuda().eval()
    eager = generate(model, 4, 70, seed=9, cuda_graph=False)
    graphed = generate(model, 4, 70, seed=9, cuda_graph=True)
    assert torch.equal(eager.tokens, graphed.tokens)
    assert torch.allclose(eager.log_likelihood, graphed.log_likelihood, rtol=1e-5)


def test_load_audio_lm_from_model_and_run_folders(tmp_path):
    torch.manual_seed(4)
    SashimiLM(tiny()).save_pretrained(tmp_path / "m")
    assert isinstance(load_audio_lm(tmp_path / "m"), SashimiLM)
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=256, d_state=4)).save_pretrained(tmp_path / "run" / "model")
    assert isinstance(load_audio_lm(tmp_path / "run"), MambaLM)  # a training run folder works too
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_audio_lm(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_audio_lm(tmp_path / "empty")


def test_generate_clips_writes_one_wav_per_clip_with_its_score(tmp_path):
    torch.manual_seed(6)
    model = SashimiLM(tiny(extra={"sample_rate": 8000, "encoding": "mulaw8", "clip_samples": 16})).eval()
    rows, waves = generate_clips(model, tmp_path, 5, 24, batch_size=2, seed=3)
    assert [name for name, _, _ in rows] == [f"sample_{i:04d}.wav" for i in range(5)]
    for (name, bits, loglik), wave in zip(rows, waves):
        data, rate = sf.read(tmp_path / name)
        assert rate == 8000 and data.shape == (24,) and wave.shape == (24,)
        assert bits == pytest.approx(-loglik / (24 * torch.log(torch.tensor(2.0)).item()))
    (tmp_path / "again").mkdir()
    again, _ = generate_clips(model, tmp_path / "again", 5, 24, batch_size=2, seed=3)
    assert again == rows  # batch b is seeded with seed * 1_000_003 + b
    lines = likelihoods_tsv(rows).splitlines()
    assert lines[0] == "file\tbits_per_sample\tlog_likelihood_nats" and len(lines) == 6
