"""Synthetic "spoken digits": ten classes of voiced, vowel-like sounds. Not speech; a stand-in for tests and demos.

Each class is a word made of 1-3 syllables; a class fixes the syllable count (rhythm), the vowel of each syllable
(formant frequencies F1-F3 of /i e a o u/) and the pitch contour over the word (flat, rising, falling,
rise-fall, fall-rise), see :data:`DIGIT_WORDS`. A word is rendered by additive synthesis: harmonics of the
time-varying pitch ``f0(t)`` up to the Nyquist rate, each weighted by a 1/k source tilt and by the formant
resonances ``1 / (1 + ((f - F) / B)^2)``, under a raised-cosine envelope per syllable, plus white noise.

Speaker-like variation (:class:`Speaker`, drawn once per speaker): base pitch 90-230 Hz, formant scale
0.9-1.15 (vocal-tract length), tempo 0.85-1.2, loudness, noise level 20-35 dB SNR. Each take adds small jitter
(pitch, tempo, formants: a few percent) and a random leading silence.

:func:`write_synthetic_digits` writes ``{digit}_{speaker}_{take}.wav`` files (the FSDD layout), so the folder is
prepared with :func:`~.folder.prepare_folder` like real data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import write_wav

VOWELS = {  # formant frequencies F1, F2, F3 in Hz (adult male averages)
    "i": (270.0, 2290.0, 3010.0),
    "e": (530.0, 1840.0, 2480.0),
    "a": (730.0, 1090.0, 2440.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
CONTOURS = {  # pitch multipliers at the start, middle and end of the word
    "flat": (1.0, 1.0, 1.0),
    "rising": (0.85, 1.0, 1.25),
    "falling": (1.25, 1.0, 0.8),
    "rise-fall": (0.9, 1.3, 0.85),
    "fall-rise": (1.2, 0.85, 1.2),
}
DIGIT_WORDS = (  # (vowels of the syllables, pitch contour) for digits 0..9
    ("io", "falling"),
    ("a", "rising"),
    ("u", "flat"),
    ("i", "falling"),
    ("o", "rise-fall"),
    ("ai", "rising"),
    ("eu", "fall-rise"),
    ("eao", "flat"),
    ("aui", "falling"),
    ("ua", "rise-fall"),
)
FORMANT_BANDWIDTHS = (80.0, 100.0, 120.0)  # Hz
FORMANT_GAINS = (1.0, 0.6, 0.3)
SYLLABLE_SECONDS = 0.18
GAP_SECONDS = 0.05


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: base pitch (Hz), formant scale, tempo (duration factor), peak level, SNR (dB)."""

    f0: float
    formant_scale: float
    tempo: float
    level: float
    snr_db: float


def random_speaker(rng: np.random.Generator) -> Speaker:
    """Draw a speaker from the ranges documented in the module docstring."""
    return Speaker(f0=rng.uniform(90, 230), formant_scale=rng.uniform(0.9, 1.15), tempo=rng.uniform(0.85, 1.2),
                   level=rng.uniform(0.3, 0.8), snr_db=rng.uniform(20, 35))


def synthesize_digit(digit: int, sample_rate: int, speaker: Speaker, rng: np.random.Generator) -> np.ndarray:
    """One take of ``digit`` (0-9) by ``speaker``: float32 waveform of shape ``(samples,)`` in [-1, 1]."""
    vowels, contour = DIGIT_WORDS[digit]
    tempo = speaker.tempo * rng.uniform(0.92, 1.08)
    syl_n, gap_n = round(SYLLABLE_SECONDS * tempo * sample_rate), round(GAP_SECONDS * tempo * sample_rate)
    lead_n = round(rng.uniform(0.02, 0.1) * sample_rate)
    n = lead_n + len(vowels) * syl_n + (len(vowels) - 1) * gap_n + lead_n

    envelope = np.zeros(n)
    formants = np.zeros((3, n))
    syllable = np.sin(np.pi * np.arange(syl_n) / syl_n) ** 2
    scale = speaker.formant_scale * rng.uniform(0.97, 1.03)
    for j, vowel in enumerate(vowels):
        start = lead_n + j * (syl_n + gap_n)
        envelope[start:start + syl_n] = syllable
        formants[:, start:start + syl_n] = np.array(VOWELS[vowel])[:, None] * scale

    word = np.linspace(0.0, 1.0, n)
    f0 = speaker.f0 * rng.uniform(0.95, 1.05) * np.interp(word, (0.0, 0.5, 1.0), CONTOURS[contour])
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    k = np.arange(1, int(0.5 * sample_rate / f0.min()) + 1)[:, None]  # harmonics, (K, 1)
    freqs = k * f0  # (K, n)
    gain = sum(g / (1 + ((freqs - f[None]) / b) ** 2)
               for f, b, g in zip(formants, FORMANT_BANDWIDTHS, FORMANT_GAINS))
    gain = np.where(freqs < 0.5 * sample_rate, gain / k, 0.0)
    wave = envelope * (gain * np.sin(k * phase)).sum(axis=0)
    wave *= speaker.level / np.abs(wave).max()
    noise_rms = np.sqrt(np.mean(wave[envelope > 0.5] ** 2)) * 10 ** (-speaker.snr_db / 20)
    wave += rng.normal(0.0, noise_rms, n)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def write_synthetic_digits(out_dir: str | os.PathLike, *, sample_rate: int = 8000, speakers: int = 4,
                           takes: int = 10, seed: int = 0) -> list[Path]:
    """Write ``10 * speakers * takes`` synthetic files ``{digit}_synth{s}_{take}.wav`` (16-bit PCM) into ``out_dir``.

    Deterministic for a given ``seed``. Returns the written paths, sorted.
    """
    out_dir = Path(out_dir)
    paths = []
    for s in range(speakers):
        speaker = random_speaker(np.random.default_rng([seed, s]))
        for digit in range(len(DIGIT_WORDS)):
            for take in range(takes):
                rng = np.random.default_rng([seed, s, digit, take])
                wave = synthesize_digit(digit, sample_rate, speaker, rng)
                paths.append(write_wav(out_dir / f"{digit}_synth{s}_{take}.wav", wave, sample_rate))
    return sorted(paths)
