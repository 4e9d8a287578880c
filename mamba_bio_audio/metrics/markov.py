"""The simple baseline beside an audio LM's NLL: an order-k Markov chain (an n-gram model) of 8-bit tokens.

p(x_t | x_{t-k} .. x_{t-1}) = (count(context, x_t) + alpha) / (count(context) + 256 alpha), counted over the
training files (contexts never cross a file boundary) and scored in bits per sample over the test files, each file
from its k-th sample on (its first k samples are context only). Order 2 (a trigram of samples: 256^3 counts, 128
MiB of int64) is the default: on music it is about where a small neural LM starts to win.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

VOCAB = 256


def _contexts(tokens: np.ndarray, order: int) -> np.ndarray:
    """(len - order,) int64 codes of (x_{t-order} .. x_t) for t = order .. len - 1 (base 256, oldest first)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.size - order
    code = np.zeros(max(n, 0), dtype=np.int64)
    for j in range(order + 1):
        code = code * VOCAB + tokens[j:j + n]
    return code


def fit_markov(train_files: Iterable[np.ndarray], order: int = 2) -> np.ndarray:
    """Counts (256^order, 256) int64 of each next token after each context over ``train_files`` (uint8 arrays)."""
    if not 0 <= order <= 3:
        raise ValueError(f"order must be 0 .. 3 (256^(order + 1) counts), got {order}")
    counts = np.zeros(VOCAB ** (order + 1), dtype=np.int64)
    for tokens in train_files:
        if len(tokens) > order:
            counts += np.bincount(_contexts(tokens, order), minlength=counts.size)
    return counts.reshape(-1, VOCAB)


def markov_bits(counts: np.ndarray, test_files: Iterable[np.ndarray], alpha: float = 0.1) -> tuple[float, int]:
    """(mean -log2 p(x_t | context) over the test samples after each file's first ``order`` samples, how many
    samples were scored), with add-``alpha`` smoothing of ``counts`` from :func:`fit_markov`."""
    order = round(np.log(counts.shape[0]) / np.log(VOCAB))
    smoothed = counts.astype(np.float64) + alpha
    log_p = np.log2(smoothed / smoothed.sum(1, keepdims=True)).ravel()
    total, scored = 0.0, 0
    for tokens in test_files:
        if len(tokens) > order:
            codes = _contexts(tokens, order)
            total -= float(log_p[codes].sum())
            scored += codes.size
    return (total / scored if scored else float("nan")), scored


def markov_baseline(store, order: int = 2, alpha: float = 0.1, split: str = "test") -> dict:
    """The order-``order`` Markov baseline of a recordings store: fitted on its train files, scored on ``split``.
    Returns ``{"order", "alpha", "bits_per_sample", "samples"}`` (JSON-ready)."""
    def files(name: str):
        return (store.window(i, 0, r["length"]) for i, r in enumerate(store.records) if r["split"] == name)

    bits, samples = markov_bits(fit_markov(files("train"), order), files(split), alpha)
    return {"order": order, "alpha": alpha, "bits_per_sample": bits, "samples": samples, "split": split}
