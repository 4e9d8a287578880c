"""SaShiMi's likelihood-threshold protocol: halves split at random and kept in likelihood order, the band of best
Inception Score on the tuning half applied to the test half (or the s4 script's fixed band)."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_bio_audio.errors import DataError
from mamba_bio_audio.metrics.sample_quality import inception_score
from mamba_bio_audio.tasks.sc09_protocol import LOWER, UPPER, band, threshold_protocol


def fixture(n: int = 400, seed: int = 0):
    """Log-likelihoods, and probabilities that are confident (classes spread evenly) for the samples of middle
    likelihood (ranks 30 % .. 70 %), uniform for the least and the most likely ones."""
    rng = np.random.default_rng(seed)
    loglik = rng.normal(-1000, 50, n)
    rank = np.argsort(np.argsort(loglik)) / n
    probs = np.full((n, 10), 0.1)
    middle = (rank >= 0.3) & (rank < 0.7)
    probs[middle] = np.eye(10)[rng.integers(0, 10, middle.sum())] * 0.99 + 0.001
    return loglik, probs, middle


def test_halves_in_likelihood_order_and_the_best_band():
    loglik, probs, middle = fixture()
    result = threshold_protocol(loglik, probs, seed=3)
    assert len(result.tune) == 200 and len(result.test) == 200
    assert sorted(np.concatenate([result.tune, result.test]).tolist()) == list(range(400))
    for half in (result.tune, result.test):
        assert (np.diff(loglik[half]) >= 0).all()  # least likely first, as the s4 samples are saved
    assert len(result.grid) == len(LOWER) * len(UPPER) == 40
    assert result.tune_is == max(result.grid.values())
    lo, up = result.lower, result.upper
    assert result.grid[(lo, up)] == pytest.approx(inception_score(probs[result.tune[band(200, lo, up)]]))
    assert np.array_equal(result.kept, result.test[band(200, lo, up)])
    assert 0.3 <= lo and up <= 0.7  # the band keeps the confident middle
    assert middle[result.kept].mean() > 0.9 and result.tune_is > 7
    summary = result.summary()
    assert summary["kept_samples"] == len(result.kept) and len(summary["grid"]) == 40


def test_the_s4_band_and_the_seed():
    loglik, probs, _ = fixture(n=101)
    result = threshold_protocol(loglik, probs, seed=0, band_choice="s4")
    assert (result.lower, result.upper) == (0.4, 0.95)
    assert len(result.tune) == 50 and len(result.test) == 51
    assert np.array_equal(result.kept, result.test[int(0.4 * 51):int(0.95 * 51)])
    again = threshold_protocol(loglik, probs, seed=0, band_choice="s4")
    assert np.array_equal(again.tune, result.tune)
    assert not np.array_equal(threshold_protocol(loglik, probs, seed=1).tune, result.tune)


def test_too_few_samples():
    loglik, probs, _ = fixture(n=19)
    with pytest.raises(DataError, match="at least 20 samples"):
        threshold_protocol(loglik, probs)
