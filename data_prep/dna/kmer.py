"""k-mer frequency features of DNA windows (the inputs of the k-mer baseline, :mod:`mamba_bio_audio.tasks.baselines`).

A k-mer's feature index is its base-4 number with A=0, C=1, G=2, T=3, first base most significant (so for k=2,
``AA`` is 0, ``AC`` 1, ..., ``TT`` 15). k-mers that contain a token other than A/C/G/T (N, [UNK], specials) are
skipped. Vectorized: a rolling base-4 code built with k shifted array operations, then one ``np.bincount``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .tokenizer import A_ID, T_ID

MAX_K = 12  # 4**12 = 16.8M counts per window is the practical ceiling


def kmer_counts(tokens: np.ndarray, k: int = 6) -> np.ndarray:
    """Counts of the k-mers of one window: ``tokens (length,)`` token ids -> ``(4**k,)`` int64."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must lie in 1..{MAX_K}, not {k}")
    bases = np.asarray(tokens, dtype=np.int64) - A_ID  # A C G T -> 0..3, anything else outside
    valid = (bases >= 0) & (bases <= T_ID - A_ID)
    n = bases.size - k + 1
    if n <= 0:
        return np.zeros(4**k, dtype=np.int64)
    bases = np.where(valid, bases, 0).astype(np.uint32)
    code = np.zeros(n, dtype=np.uint32)
    for j in range(k):
        code <<= 2
        code |= bases[j: j + n]
    invalid_before = np.concatenate([[0], np.cumsum(~valid)])  # invalid tokens among the first i
    clean = invalid_before[k:] == invalid_before[:-k]
    return np.bincount(code[clean], minlength=4**k)


def kmer_features(windows: Iterable[np.ndarray], k: int = 6) -> np.ndarray:
    """k-mer frequencies of each window: ``(n, length)`` array or n 1-D token arrays -> ``(n, 4**k)`` float32.

    Each row sums to 1, or is all zeros for a window without a clean k-mer.
    """
    rows = []
    for tokens in windows:
        counts = kmer_counts(tokens, k)
        rows.append(counts / max(int(counts.sum()), 1))
    return np.array(rows, dtype=np.float32).reshape(len(rows), 4**k)
