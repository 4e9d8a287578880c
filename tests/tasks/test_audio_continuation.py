"""Continuing a prompt: the clip starts with the prompt (after the mu-law round trip), the continuation's
log-likelihood is what the parallel forward gives the written clip, chunking changes nothing, and the prompt is
downmixed / resampled with a warning."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_bio_audio.data_prep.audio.io import read_audio
from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN, decode, encode
from mamba_bio_audio.errors import DataError
from mamba_bio_audio.tasks.audio_continuation import load_prompt, write_generations
from mamba_bio_audio.tasks.audio_lm import build_audio_lm

RATE = 8000
AUDIO = {"sample_rate": RATE, "encoding": "mulaw8", "clip_samples": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_audio_lm("sashimi", "tiny", AUDIO).eval()


@pytest.fixture
def prompt_file(tmp_path):
    """A 16 kHz stereo chirp: downmixed and resampled on loading."""
    t = np.arange(1600) / 16000
    left = 0.4 * np.sin(2 * np.pi * (200 + 2000 * t) * t)
    sf.write(tmp_path / "prompt.wav", np.stack([left, 0.5 * left], axis=1).astype(np.float32), 16000)
    return tmp_path / "prompt.wav"


def test_load_prompt_downmixes_resamples_and_cuts(prompt_file):
    tokens, notes = load_prompt(prompt_file, AUDIO, seconds=0.05)
    assert tokens.shape == (400,) and tokens.dtype == torch.long
    assert any("2 channels, averaged to mono" in n for n in notes)
    assert any("16000 Hz, resampled to the model's 8000 Hz" in n for n in notes)
    wave, _ = read_audio(prompt_file, RATE)
    assert torch.equal(tokens, encode(wave[:400], "mulaw8").long())
    _, notes = load_prompt(prompt_file, AUDIO, seconds=5.0)
    assert any("shorter than --prompt-seconds" in n for n in notes)
    with pytest.raises(DataError, match="no such audio file"):
        load_prompt(prompt_file.with_name("missing.wav"), AUDIO)


def test_continuation_starts_with_the_prompt_and_scores_like_the_parallel_pass(model, prompt_file, tmp_path):
    tokens, _ = load_prompt(prompt_file, AUDIO, seconds=0.03)  # 240 samples
    out = tmp_path / "gen"
    out.mkdir()
    rows, metrics = write_generations(model, out, 3, 50, prompt=tokens, batch_size=2, seed=3, chunk=16)
    assert [r[0] for r in rows] == ["sample_0000.wav", "sample_0001.wav", "sample_0002.wav"]
    assert sorted(p.name for p in out.iterdir()) == [r[0] for r in rows]  # no temporary files left
    assert metrics["prompt_samples"] == 240 and metrics["samples_per_clip"] == 290
    assert metrics["batch_1"]["batch_size"] == 1 and metrics["batch_1"]["samples_per_second"] > 0
    assert metrics["audio_seconds_per_second"] > 0
    expected_prompt = decode(tokens, "mulaw8").numpy()
    for name, bits, loglik in rows:
        wave, rate = sf.read(out / name, dtype="float32")
        assert rate == RATE and wave.shape == (290,)
        assert np.abs(wave[:240] - expected_prompt).max() <= 1 / 32768 + 1e-6  # 16-bit rounding only
        clip = encode(torch.from_numpy(wave), "mulaw8").long()  # the 16-bit WAV keeps every mu-law level
        assert torch.equal(clip[:240], tokens)
        ids = torch.cat([torch.tensor([SILENCE_TOKEN]), clip])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[:, :-1]).double(), -1)[0].gather(-1, ids[0, 1:, None])[:, 0]
        assert logp[240:].sum().item() == pytest.approx(loglik, rel=1e-4, abs=1e-3)
        assert bits == pytest.approx(-loglik / (50 * np.log(2)))
    assert metrics["prompt_bits_per_sample"] == pytest.approx(-logp[:240].mean().item() / np.log(2), rel=1e-4)


def test_chunk_size_does_not_change_the_clips(model, tmp_path):
    for chunk in (7, 1000):
        (tmp_path / str(chunk)).mkdir()
        write_generations(model, tmp_path / str(chunk), 2, 30, batch_size=2, seed=1, chunk=chunk,
                          measure_batch_1=False)
    for name in ("sample_0000.wav", "sample_0001.wav"):
        a, _ = sf.read(tmp_path / "7" / name)
        b, _ = sf.read(tmp_path / "1000" / name)
        assert a.shape == (30,) and np.array_equal(a, b)
