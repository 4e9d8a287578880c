"""Packed training rows of a DNA token store for language-model pretraining: records of any length, end to end.

:class:`~.windows.WindowSampler` draws one window of ``length`` tokens per row, so a record shorter than the
window (a BED interval, a plasmid, a contig) can never be read. :class:`PackedWindowSampler` fills each row of
``length`` tokens with pieces instead: draw a species uniformly, a record of it with probability proportional to
its length (so positions are uniform, as for windows), and take the whole record when it fits the room left in
the row, else a random window of that room. Pieces follow one another until the row is full: no padding, and a row
of a store of long records is one window, as before. ``seq_idx`` numbers the pieces 0, 1, 2, ... along the row;
the model restarts its state at each piece and the loss does not predict a piece's first token from the previous
piece (:mod:`mamba_bio_audio.tasks.dna_lm`).

Item ``i`` is a pure function of ``(seed, i)`` (resumable). A piece with more than ``max_n_fraction`` of its tokens
not A/C/G/T is redrawn (up to ``max_draws`` times, then a DataError).
"""

from __future__ import annotations

import os

import numpy as np

from mamba_bio_audio.errors import DataError

from ..store import TokenStore
from .tokenizer import count_unknown, reverse_complement
from .windows import _PicklesStoreByPath


class PackedWindowSampler(_PicklesStoreByPath):
    """Packed rows of one split: ``sampler[i] -> (tokens (length,) uint8, seq_idx (length,) int32)``.

    Training rows (``split == "train"``) reverse-complement each piece with probability ``rc_prob``; other splits
    never do. ``species``: the species present in the split (labels are positions in ``store.meta["species"]``).
    """

    def __init__(self, store: TokenStore | str | os.PathLike, split: str, length: int, *,
                 max_n_fraction: float = 0.1, rc_prob: float = 0.5, seed: int = 0, max_draws: int = 100):
        self.store = store if isinstance(store, TokenStore) else TokenStore(store)
        if length < 2:
            raise DataError(f"row length must be at least 2, not {length}")
        if self.store.meta.get("domain") != "dna":
            raise DataError(f"{self.store.path}: not a DNA token store")
        entries: dict[str, list[int]] = {}
        for i, rec in enumerate(self.store.records):
            if rec["split"] == split and rec["length"] > 0:
                entries.setdefault(rec["species"], []).append(i)
        if not entries:
            raise DataError(f"{self.store.path}: no records in split {split!r}")
        self.species = sorted(entries)
        self.entries = [np.array(entries[name]) for name in self.species]
        self.ends = [np.cumsum([self.store.records[i]["length"] for i in e]) for e in self.entries]
        self.split, self.length, self.seed = split, length, seed
        self.max_n_fraction, self.max_draws = max_n_fraction, max_draws
        self.rc_prob = rc_prob if split == "train" else 0.0

    def draw(self, rng: np.random.Generator, room: int, k: int | None = None) -> tuple[int, int, int]:
        """``(entry, start, size)`` of one piece of at most ``room`` tokens (of species ``k``; None: a uniform one)."""
        for _ in range(self.max_draws):
            s = int(rng.integers(len(self.species))) if k is None else k
            j = int(np.searchsorted(self.ends[s], int(rng.integers(self.ends[s][-1])), side="right"))
            entry = int(self.entries[s][j])
            rec = self.store.records[entry]
            size = min(rec["length"], room)
            start = int(rng.integers(0, rec["length"] - size + 1))
            if (round(rec.get("n_fraction", 1.0) * rec["length"]) <= self.max_n_fraction * size
                    or count_unknown(self.store.tokens(entry)[start: start + size]) <= self.max_n_fraction * size):
                return entry, start, size
        name = self.species[k] if k is not None else "any species"
        raise DataError(f"{self.store.path}: {name}, split {self.split!r}: no piece with at most "
                        f"{self.max_n_fraction:.0%} N found in {self.max_draws} draws")

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i < 0:
            raise IndexError(f"row index must be >= 0, not {i}")
        rng = np.random.default_rng([self.seed, i])
        tokens = np.empty(self.length, dtype=np.uint8)
        seq_idx = np.empty(self.length, dtype=np.int32)
        pos, piece = 0, 0
        while pos < self.length:
            entry, start, size = self.draw(rng, self.length - pos)
            part = self.store.window(entry, start, size)
            if rng.random() < self.rc_prob:
                part = reverse_complement(part)
            tokens[pos: pos + size] = part
            seq_idx[pos: pos + size] = piece
            pos, piece = pos + size, piece + 1
        return tokens, seq_idx

    def check(self) -> None:
        """Draw one piece of every species (its own random stream: the items are unchanged); a DataError names a
        species without a usable piece (e.g. all N), before training starts rather than during it."""
        rng = np.random.default_rng([self.seed, 2**32])
        for k in range(len(self.species)):
            self.draw(rng, self.length, k)

    def rows(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Items ``0 .. n-1`` (fixed validation rows: the same on every call)."""
        return [self[i] for i in range(n)]
