"""Reading and writing audio: conversions (mono, resampling) and one-line errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_bio_audio.data_prep.audio.io import read_audio, write_wav
from mamba_bio_audio.errors import DataError


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)).astype(np.float32)


def peak_frequency(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave.double()).abs()
    return float(spectrum.argmax()) * rate / wave.numel()


def test_read_pcm16_scaling_and_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.array([0, 16384, -32768, 32767], np.int16), 8000, subtype="PCM_16")
    wave, rate = read_audio(path)
    assert rate == 8000 and wave.dtype == torch.float32 and wave.shape == (4,)
    assert wave.tolist() == [0.0, 0.5, -1.0, 32767 / 32768]


def test_resample_8k_to_16k_keeps_length_ratio_and_frequency(tmp_path):
    path = write_wav(tmp_path / "sine.wav", sine(440.0, 8000, 1.0), 8000)
    wave, rate = read_audio(path, sample_rate=16000)
    assert rate == 16000 and wave.shape == (16000,)
    assert abs(peak_frequency(wave, 16000) - 440.0) <= 1.0
    spectrum = torch.fft.rfft(wave.double()).abs()
    assert spectrum[4100:].max() < 1e-2 * spectrum.max()  # nothing new above the old Nyquist rate


def test_stereo_becomes_mean_of_channels(tmp_path):
    left, right = sine(300.0, 8000, 0.25), sine(700.0, 8000, 0.25, amp=0.25)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    wave, _ = read_audio(path)
    torch.testing.assert_close(wave, torch.from_numpy((left + right) / 2), atol=2 / 32768, rtol=0)


def test_write_wav_is_pcm16_clipped_and_leaves_no_temp_file(tmp_path):
    path = write_wav(tmp_path / "sub" / "out.wav", torch.tensor([0.0, 0.25, 1.5, -2.0]), 16000)
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
    assert sf.read(path, dtype="int16")[0].tolist() == [0, 8192, 32767, -32768]
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("zero_bytes.wav", b"", r"empty file \(0 bytes\)"),  # before: "unreadable or corrupt (Format not ...)"
        ("garbage.wav", b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", "unreadable or corrupt"),
    ],
)
def test_corrupt_files_raise_naming_the_file(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as info:
        read_audio(path)
    assert str(info.value).count(str(path)) == 1 and "\n" not in str(info.value)  # named once, one line


def test_empty_nan_and_missing_files_raise_naming_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 8000, subtype="PCM_16")
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1], np.float32), 8000, subtype="FLOAT")
    cases = [(empty, "empty audio file"), (nan, "NaN or infinite sample at frame 1"),
             (tmp_path / "missing.wav", "no such audio file")]
    for path, problem in cases:
        with pytest.raises(DataError, match=problem) as info:
            read_audio(path)
        assert str(info.value).startswith(str(path))
