"""Streaming generation: chunking does not change the samples or their log-likelihood, and a growing WAV appears
under its name only when complete."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_bio_audio.generation.sampling import seeded_generator
from mamba_bio_audio.generation.streaming import WavStream, stream_tokens


def toy_step():
    """A 'model' whose next logits depend on the last token (so sampling feeds back)."""
    table = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    return lambda ids: table[ids]


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_chunks_concatenate_to_the_unchunked_stream(chunk):
    step = toy_step()
    first = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    whole = list(stream_tokens(step, first, 50, chunk=1000, generator=seeded_generator(5, "cpu")))
    parts = list(stream_tokens(step, first, 50, chunk=chunk, generator=seeded_generator(5, "cpu")))
    assert len(whole) == 1 and len(parts) == -(-50 // chunk)
    assert all(p[0].shape[1] <= chunk for p in parts)
    assert torch.equal(torch.cat([p[0] for p in parts], dim=1), whole[0][0])
    assert torch.equal(parts[-1][1], whole[0][1])
    # the log-likelihood is that of the drawn tokens under the step's logits
    tokens = whole[0][0]
    logits = [first] + [step(tokens[:, t]) for t in range(49)]
    expected = sum(torch.log_softmax(lg, -1).gather(-1, tokens[:, t, None])[:, 0].double()
                   for t, lg in enumerate(logits))
    assert torch.allclose(whole[0][1], expected)


def test_wav_stream_renames_when_complete_and_leaves_nothing_on_error(tmp_path):
    with WavStream(tmp_path / "a.wav", 8000) as w:
        w.write(np.full(100, 0.5, np.float32))
        assert not (tmp_path / "a.wav").exists() and (tmp_path / ".a.wav.partial").exists()
        w.write(torch.full((50,), -2.0))  # clipped to -1
    wave, rate = sf.read(tmp_path / "a.wav")
    assert rate == 8000 and wave.shape == (150,)
    assert np.allclose(wave[:100], 0.5, atol=1e-4) and np.allclose(wave[100:], -1.0, atol=1e-4)
    with pytest.raises(RuntimeError), WavStream(tmp_path / "b.wav", 8000) as w:
        w.write(np.zeros(10, np.float32))
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
