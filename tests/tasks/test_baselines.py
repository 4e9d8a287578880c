"""The non-neural baselines: logistic regression on a separable toy set, and the k-mer baseline on windows whose
classes differ only in base composition."""

import numpy as np
import pytest

from mamba_bio_audio.data_prep.dna.tokenizer import encode
from mamba_bio_audio.tasks.baselines import LogisticRegression, kmer_baseline


def test_logistic_regression_learns_a_separable_set():
    rng = np.random.default_rng(0)
    centers = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    y = rng.integers(0, 3, 300)
    X = centers[y] + rng.normal(size=(300, 3))
    X = np.hstack([X, np.full((300, 1), 7.0)])  # a constant feature must not break standardization
    model = LogisticRegression(l2=1e-3).fit(X, y)
    proba = model.predict_proba(X)
    assert proba.shape == (300, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (model.predict(X) == y).mean() == 1.0
    again = LogisticRegression(l2=1e-3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(proba, again)  # deterministic
    with pytest.raises(RuntimeError, match="call fit"):
        LogisticRegression().predict_proba(X)


def _windows(rng, n: int, gc: float, label: int, length: int = 200) -> list[tuple[np.ndarray, int]]:
    """``n`` random windows of ``length`` bases with GC content ``gc``, as (tokens, label) pairs."""
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]  # A, C, G, T
    return [(encode("".join(rng.choice(list("ACGT"), size=length, p=p))), label) for _ in range(n)]


def test_kmer_baseline_separates_windows_by_composition():
    rng = np.random.default_rng(0)
    train = _windows(rng, 20, 0.3, 0) + _windows(rng, 20, 0.7, 1)
    test = _windows(rng, 10, 0.3, 0) + _windows(rng, 10, 0.7, 1)
    labels = np.array([y for _, y in train])
    proba = kmer_baseline(train, labels, test, num_classes=2, k=2)
    assert proba.shape == (20, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1) == np.array([y for _, y in test])).mean() >= 0.95
    flipped = kmer_baseline(train, 1 - labels, test, num_classes=2, k=2)  # the labels, not a constant, decide
    assert (flipped.argmax(axis=1) != proba.argmax(axis=1)).mean() >= 0.95
