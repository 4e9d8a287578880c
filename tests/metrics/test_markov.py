"""The order-k Markov baseline of 8-bit tokens: exact on sequences whose entropy is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mamba_bio_audio.metrics.markov import fit_markov, markov_bits


def test_uniform_noise_costs_eight_bits_at_order_zero():
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 256, 200_000, dtype=np.uint8)]
    bits, n = markov_bits(fit_markov(train, order=0), [rng.integers(0, 256, 50_000, dtype=np.uint8)], alpha=1.0)
    assert n == 50_000 and bits == pytest.approx(8.0, abs=0.01)


def test_a_deterministic_cycle_is_nearly_free_from_order_one_and_not_at_order_zero():
    cycle = np.tile(np.array([3, 141, 59, 26, 5], dtype=np.uint8), 2000)
    counts = fit_markov([cycle], order=1)
    bits, n = markov_bits(counts, [cycle[:501]], alpha=1e-6)
    assert n == 500 and bits < 1e-3
    bits0, _ = markov_bits(fit_markov([cycle], order=0), [cycle], alpha=1e-6)
    assert bits0 == pytest.approx(math.log2(5), abs=1e-3)


def test_contexts_do_not_cross_files_and_short_files_are_skipped():
    a, b = np.array([1, 2, 3], dtype=np.uint8), np.array([9, 9], dtype=np.uint8)
    counts = fit_markov([a, b], order=2)
    assert counts.sum() == 1 and counts[(1 * 256 + 2), 3] == 1  # only (1, 2) -> 3; nothing from b, nothing across
    bits, n = markov_bits(counts, [b, a], alpha=1.0)
    assert n == 1 and bits == pytest.approx(-math.log2(2 / 257))
    with pytest.raises(ValueError, match="order"):
        fit_markov([a], order=4)
