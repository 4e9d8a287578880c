"""A small fixture of classifier outputs (features and probabilities of a 'training set' and of 'samples'), drawn
from a seeded generator, for checking our SC09 scores against the s4 repository's metric code."""

from __future__ import annotations

import numpy as np


def _set(rng: np.random.Generator, n: int, dim: int, classes: int, shift: float, sharpness: float):
    mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    features = rng.standard_normal((n, dim)) @ mix + shift
    logits = sharpness * rng.standard_normal((n, classes)) + np.linspace(0, 1, classes)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return features, probs / probs.sum(1, keepdims=True)


def classifier_outputs_fixture() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``{name: (train_features, train_probs, sample_features, sample_probs)}``: "large" (2,000 samples, 16
    features: many more samples than features) and "small" (40 samples, 16 features)."""
    out = {}
    for name, n_train, n_samples, seed in (("large", 3000, 2000, 0), ("small", 300, 40, 1)):
        rng = np.random.default_rng([20261206, seed])
        out[name] = (*_set(rng, n_train, 16, 10, 0.0, 3.0), *_set(rng, n_samples, 16, 10, 0.3, 2.0))
    return out
