"""8-bit tokens: mu-law round-trip bounds (derived in mulaw.py), clipping, linear option, normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mamba_bio_audio.data_prep.audio.mulaw import (
    LINEAR_MAX_ERROR,
    MULAW_MAX_ERROR,
    SILENCE_TOKEN,
    decode,
    encode,
    mulaw_relative_bound,
    normalize,
)

DENSE = torch.linspace(-1.0, 1.0, 2_000_001, dtype=torch.float64)


def test_mulaw_max_error_closed_form():
    assert MULAW_MAX_ERROR == pytest.approx(1 - (256 ** (254 / 255) - 1) / 255, abs=1e-15)
    assert MULAW_MAX_ERROR == pytest.approx(0.0215954, abs=1e-7)


def test_mulaw_round_trip_error_is_bounded_and_the_bound_is_tight():
    err = (DENSE - decode(encode(DENSE), "mulaw8").double()).abs()
    assert err.max() <= MULAW_MAX_ERROR + 1e-6
    assert err.max() >= MULAW_MAX_ERROR - 1e-5  # the grid (spacing 1e-6) comes close to the supremum
    assert (err <= mulaw_relative_bound(DENSE) + 1e-6).all()


def test_mulaw_worst_case_sits_at_the_top_cell_edge():
    edge = (256 ** (254 / 255) - 1) / 255  # the x whose companded value is 1 - 1/255
    x = torch.tensor([edge + 1e-5, edge - 1e-5])
    assert encode(x).tolist() == [255, 254]
    assert decode(encode(x[:1]))[0].item() == 1.0


def test_mulaw_tokens_are_uint8_with_silence_at_128():
    tokens = encode(torch.tensor([-1.0, 0.0, 1.0]))
    assert tokens.dtype == torch.uint8 and tokens.tolist() == [0, SILENCE_TOKEN, 255]
    assert decode(tokens)[1].item() == pytest.approx(math.expm1(math.log(256) / 255) / 255, abs=1e-8)


@pytest.mark.parametrize("encoding", ["mulaw8", "linear8"])
def test_out_of_range_samples_are_clipped_before_encoding(encoding):
    x = torch.tensor([-3.0, -1.0, 1.0, 1.5])
    assert encode(x, encoding).tolist() == [0, 0, 255, 255]


def test_linear_round_trip_bound_and_grid():
    err = (DENSE - decode(encode(DENSE, "linear8"), "linear8").double()).abs()
    assert err.max() <= LINEAR_MAX_ERROR + 1e-6
    assert decode(torch.tensor([0, 128, 255]), "linear8").tolist() == pytest.approx([-1.0, 1 / 255, 1.0], abs=1e-7)


def test_encode_accepts_numpy_and_rejects_unknown_encodings():
    assert encode(np.zeros(3, np.float32)).tolist() == [SILENCE_TOKEN] * 3
    with pytest.raises(ValueError, match="encoding"):
        encode(torch.zeros(2), "mulaw16")
    with pytest.raises(ValueError, match="encoding"):
        decode(torch.zeros(2, dtype=torch.uint8), "alaw")


def test_normalisation_none_and_peak():
    x = torch.tensor([[0.1, -0.25, 0.2], [0.0, 0.0, 0.0]])
    assert torch.equal(normalize(x, "none"), x)
    peak = normalize(x, "peak")
    torch.testing.assert_close(peak[0], torch.tensor([0.4, -1.0, 0.8]))
    assert torch.equal(peak[1], x[1])  # silence stays silence
    with pytest.raises(ValueError, match="normalisation"):
        normalize(x, "rms")
