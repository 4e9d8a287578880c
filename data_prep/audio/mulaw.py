"""8-bit audio tokens: mu-law (default) or linear quantization of waveforms in [-1, 1], and back.

Amplitude convention. No normalisation by default (``"none"``, what SC09 uses): a 16-bit PCM file's samples are
``k / 32768`` in [-1, 1) as read, and quantized as they are. ``"peak"`` rescales each clip so that ``max |x| = 1``
(a silent clip is left unchanged). Either way samples are clipped to [-1, 1] before encoding, because
torchaudio's ``mu_law_encoding`` does not clip (1.5 would become token 264).

``"mulaw8"``: torchaudio's ``mu_law_encoding`` / ``mu_law_decoding`` with 256 levels (mu = 255). Encoding compands
``y = sign(x) ln(1 + mu|x|) / ln(1 + mu)`` and rounds ``q = floor((y + 1) / 2 * mu + 0.5)``; decoding inverts the
companding exactly at the grid point ``y_q = 2q / mu - 1``. Silence (x = 0) is token 128, decoded to
``((1 + mu)^(1/mu) - 1) / mu ~ 8.6e-5``.

Round-trip error bound (mu-law, x in [-1, 1]). Rounding moves y by at most ``1/mu`` to a grid point of the same
sign, and ``1 + mu|x| = (1 + mu)^|y|``, so

    |x - dec(enc(x))| <= (1/mu + |x|) * ((1 + mu)^(1/mu) - 1)        (about 2.2 % of |x|, plus 8.6e-5).

The expansion ``(1 + mu)^|y|`` is convex, so the largest error is in the top cell, at its lower edge
``y = 1 - 1/mu``, which rounds up to ``x = 1``:

    max |x - dec(enc(x))| = 1 - ((1 + mu)^(1 - 1/mu) - 1) / mu = 0.0215954... for mu = 255   (MULAW_MAX_ERROR).

``"linear8"``: the same 256-point grid without companding, ``q = floor((x + 1) / 2 * 255 + 0.5)``,
decoded to ``2q / 255 - 1`` (so -1, 1 are exact and silence is token 128 -> 1/255); max error ``1/255``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.functional as AF

MU = 255
LEVELS = MU + 1
ENCODINGS = ("mulaw8", "linear8")
NORMALIZATIONS = ("none", "peak")
MULAW_MAX_ERROR = 1.0 - ((1.0 + MU) ** (1.0 - 1.0 / MU) - 1.0) / MU
LINEAR_MAX_ERROR = 1.0 / MU
SILENCE_TOKEN = 128  # the token of x = 0 in both encodings


def mulaw_relative_bound(x: torch.Tensor) -> torch.Tensor:
    """The per-sample mu-law bound ``(1/mu + |x|) * ((1 + mu)^(1/mu) - 1)``, same shape as ``x``."""
    return (1.0 / MU + x.abs()) * math.expm1(math.log1p(MU) / MU)


def normalize(wave: torch.Tensor, method: str = "none") -> torch.Tensor:
    """Apply an amplitude normalisation to ``wave: (..., samples)``: ``"none"`` or ``"peak"`` (max |x| -> 1)."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalisation must be one of {NORMALIZATIONS}, got {method!r}")
    if method == "none":
        return wave
    peak = wave.abs().amax(dim=-1, keepdim=True)
    return wave / torch.where(peak > 0, peak, torch.ones_like(peak))


def mulaw_encode(wave: torch.Tensor) -> torch.Tensor:
    """Float waveform ``(..., samples)`` -> uint8 mu-law tokens of the same shape (clipped to [-1, 1] first)."""
    return AF.mu_law_encoding(wave.float().clamp(-1.0, 1.0), LEVELS).to(torch.uint8)


def mulaw_decode(tokens: torch.Tensor) -> torch.Tensor:
    """Mu-law tokens ``(..., samples)`` (any integer dtype, values 0..255) -> float32 waveform in [-1, 1]."""
    return AF.mu_law_decoding(tokens.to(torch.float32), LEVELS)


def linear_encode(wave: torch.Tensor) -> torch.Tensor:
    """Float waveform ``(..., samples)`` -> uint8 linear tokens ``floor((x + 1) / 2 * 255 + 0.5)``."""
    return torch.floor((wave.float().clamp(-1.0, 1.0) + 1.0) / 2.0 * MU + 0.5).to(torch.uint8)


def linear_decode(tokens: torch.Tensor) -> torch.Tensor:
    """Linear tokens ``(..., samples)`` -> float32 waveform ``2q / 255 - 1``."""
    return tokens.to(torch.float32) * (2.0 / MU) - 1.0


def encode(wave: torch.Tensor | np.ndarray, encoding: str = "mulaw8") -> torch.Tensor:
    """Float waveform ``(..., samples)`` -> uint8 tokens with ``encoding`` in :data:`ENCODINGS`."""
    wave = torch.as_tensor(wave)
    if encoding == "mulaw8":
        return mulaw_encode(wave)
    if encoding == "linear8":
        return linear_encode(wave)
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


def decode(tokens: torch.Tensor | np.ndarray, encoding: str = "mulaw8") -> torch.Tensor:
    """Tokens ``(..., samples)`` -> float32 waveform with ``encoding`` in :data:`ENCODINGS`."""
    tokens = torch.as_tensor(tokens)
    if encoding == "mulaw8":
        return mulaw_decode(tokens)
    if encoding == "linear8":
        return linear_decode(tokens)
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
