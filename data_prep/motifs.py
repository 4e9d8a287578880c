"""A built-in synthetic token language for demos and tests (documented as synthetic, not real data).

Sequences are chains of a few fixed "motifs" (short token strings over a small alphabet). Which motif comes
next depends on the current one (each motif has two possible successors), and every token mutates with a small
probability. A model that learns the motifs and their grammar predicts far better than the alphabet's
log2(vocab) bits per token; :meth:`MotifLanguage.entropy_bits` gives the floor.
"""

from __future__ import annotations

import math

import numpy as np


class MotifLanguage:
    """Motif chains over tokens 0..vocab-1. Sample i is a pure function of (seed, i)."""

    def __init__(self, seed: int = 0, vocab: int = 4, n_motifs: int = 8, motif_len: int = 6,
                 mutation: float = 0.02):
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.vocab = vocab
        self.motif_len = motif_len
        self.mutation = mutation
        self.motifs = rng.integers(0, vocab, size=(n_motifs, motif_len), dtype=np.int64)
        self.successors = np.stack([rng.permutation(n_motifs)[:2] for _ in range(n_motifs)])

    def sample(self, index: int, length: int) -> np.ndarray:
        """Tokens (length,) int64 for sample ``index``."""
        rng = np.random.default_rng([self.seed, index])
        n_chunks = length // self.motif_len + 2
        choice = rng.integers(0, 2, size=n_chunks)
        current = int(rng.integers(len(self.motifs)))
        order = np.empty(n_chunks, dtype=np.int64)
        for k in range(n_chunks):
            order[k] = current
            current = int(self.successors[current, choice[k]])
        tokens = self.motifs[order].reshape(-1)
        offset = int(rng.integers(self.motif_len))
        tokens = tokens[offset: offset + length].copy()
        flips = rng.random(length) < self.mutation
        tokens[flips] = rng.integers(0, self.vocab, size=int(flips.sum()))
        return tokens

    def entropy_bits(self) -> float:
        """Approximate entropy rate in bits per token: one bit per motif choice, plus the mutations."""
        p = self.mutation * (self.vocab - 1) / self.vocab
        h_mut = -(1 - p) * math.log2(1 - p) - p * math.log2(p / (self.vocab - 1)) if p > 0 else 0.0
        return 1.0 / self.motif_len + h_mut
