"""Non-neural baselines reported beside the models: multinomial logistic regression, on k-mer frequencies for DNA.

``LogisticRegression().fit(X, y).predict_proba(X_test)``, with ``X (n, features)`` and ``y (n,)`` class ids
0..C-1. Features are standardized with the training mean and standard deviation; the fit is full-batch L-BFGS in
float64 on the CPU from zero weights, so it is deterministic.
"""

from __future__ import annotations

import numpy as np
import torch

from mamba_bio_audio.data_prep.dna.kmer import kmer_features
from mamba_bio_audio.data_prep.dna.windows import WindowSet

BASELINE_K = 6
BASELINE_L2 = 1.0
BASELINE_NAME = "k-mer frequencies (k=6) + logistic regression"


class LogisticRegression:
    """Softmax regression with an L2 penalty ``l2 / 2 * ||W||^2`` on the weights (not the bias)."""

    def __init__(self, l2: float = 1e-3, max_iter: int = 200, num_classes: int | None = None):
        self.l2 = l2
        self.max_iter = max_iter
        self.num_classes = num_classes
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.weight: torch.Tensor | None = None  # (features, classes)
        self.bias: torch.Tensor | None = None  # (classes,)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticRegression:
        """Fit on ``X (n, features)``, ``y (n,)`` integer labels; returns self."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"expected X (n, features) and y (n,), got {X.shape} and {y.shape}")
        classes = self.num_classes or int(y.max()) + 1
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale = np.where(std > 1e-12, std, 1.0)  # a constant feature stays 0 after centering
        features = self._standardize(X)
        target = torch.from_numpy(y)
        self.weight = torch.zeros(X.shape[1], classes, dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight, self.bias], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            logits = features @ self.weight + self.bias
            loss = torch.nn.functional.cross_entropy(logits, target) + 0.5 * self.l2 * self.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, classes)`` float64 of ``X (n, features)``."""
        if self.weight is None:
            raise RuntimeError("call fit() before predict_proba()")
        logits = self._standardize(np.asarray(X, dtype=np.float64)) @ self.weight + self.bias
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class ``(n,)`` int64 of ``X (n, features)``."""
        return self.predict_proba(X).argmax(axis=1)

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((X - self.mean) / self.scale)


def kmer_baseline(train: WindowSet, train_labels: np.ndarray, test: WindowSet, num_classes: int,
                  k: int = BASELINE_K, l2: float = BASELINE_L2) -> np.ndarray:
    """Class probabilities ``(len(test), num_classes)`` of a logistic regression on k-mer frequencies
    (``(n, 4**k)`` features, :func:`~mamba_bio_audio.data_prep.dna.kmer.kmer_features`) fit on ``train`` windows
    with labels ``train_labels`` ``(len(train),)``."""
    model = LogisticRegression(l2=l2, num_classes=num_classes)
    model.fit(kmer_features((t for t, _ in train), k), train_labels)
    return model.predict_proba(kmer_features((t for t, _ in test), k))
