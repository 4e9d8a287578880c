"""Fixed-length windows of a DNA token store, labelled with their species.

- :class:`WindowSampler`: random training windows, ``sampler[i] -> (tokens, label)``; item ``i`` is a pure function
  of ``(seed, i)``, so the stream is infinite, reproducible and resumable at any step.
- :func:`eval_windows`: a fixed set of ``per_species`` windows per species, the same on every call.

Both draw a species uniformly (classes are balanced whatever the genome sizes), then a start uniformly among all
positions of that species' records of the split where the whole window fits: a window never runs past its record
(no padding, no N filler) and never crosses from one index entry into the next. A window with more than
``max_n_fraction`` tokens that are not A/C/G/T is redrawn (up to ``max_draws`` times, then a DataError).
Labels are positions in the store's ``meta["species"]``; a species with no entry in the split (e.g. a two-strain
species has no val strain when splitting by strain) is simply absent from that split's windows.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from mamba_bio_audio.errors import DataError

from ..store import TokenStore
from .tokenizer import count_unknown, reverse_complement


class Window(NamedTuple):
    """Where a window lies: store entry ``entry``, tokens ``[start, start + length)`` of it; its species ``label``."""

    entry: int
    start: int
    length: int
    label: int


class _SpeciesWindows:
    """The valid window positions of one split of a store, per species, and draws from them."""

    def __init__(self, store: TokenStore, split: str, length: int, max_n_fraction: float, max_draws: int):
        if length <= 0:
            raise DataError(f"window length must be positive, not {length}")
        check_genome_store(store)
        self.path, self.records, self.split, self.length = store.path, store.records, split, length
        self.max_unknown = int(max_n_fraction * length)
        self.max_draws = max_draws
        entries: dict[str, list[int]] = {}
        for i, rec in enumerate(self.records):
            if rec["split"] == split:
                entries.setdefault(rec["species"], []).append(i)
        if not entries:
            raise DataError(f"{self.path}: no records in split {split!r}")
        self.names = sorted(entries)
        self.labels = [store.meta["species"].index(name) for name in self.names]
        self.entries, self.ends = [], []  # per species: entry indices, cumulative counts of valid starts
        for name in self.names:
            fits = [i for i in entries[name] if self.records[i]["length"] >= length]
            if not fits:
                rec = max((self.records[i] for i in entries[name]), key=lambda r: r["length"])
                raise DataError(f"{self.path}: species {name!r} has no {split} record of at least {length} tokens "
                                f"(longest: {rec['record']!r}, {rec['length']} tokens)")
            self.entries.append(np.array(fits))
            self.ends.append(np.cumsum([self.records[i]["length"] - length + 1 for i in fits]))

    def draw(self, store: TokenStore, rng: np.random.Generator, k: int) -> tuple[int, int]:
        """``(entry, start)`` of a window of species ``k`` (its position in ``self.names``)."""
        for _ in range(self.max_draws):
            pos = int(rng.integers(self.ends[k][-1]))
            j = int(np.searchsorted(self.ends[k], pos, side="right"))
            start = pos - (int(self.ends[k][j - 1]) if j else 0)
            entry = int(self.entries[k][j])
            view = store.tokens(entry)[start: start + self.length]  # a memmap view: read only if checked
            if self._clean(entry) or count_unknown(view) <= self.max_unknown:
                return entry, start
        raise DataError(f"{self.path}: species {self.names[k]!r}, split {self.split!r}: no {self.length}-token "
                        f"window with at most {self.max_unknown} N found in {self.max_draws} draws")

    def _clean(self, entry: int) -> bool:
        """Whether every window of ``entry`` passes the N limit (the entry holds few enough N in all)."""
        rec = self.records[entry]
        return round(rec["n_fraction"] * rec["length"]) <= self.max_unknown


def _open(store: TokenStore | str | os.PathLike) -> TokenStore:
    return store if isinstance(store, TokenStore) else TokenStore(store)


class _PicklesStoreByPath:
    """Pickles (into DataLoader workers started by spawn, say) the store's path, not its tokens; reopens it."""

    store: TokenStore

    def __getstate__(self) -> dict:
        return {**self.__dict__, "store": self.store.path}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, store=TokenStore(state["store"]))


class WindowSampler(_PicklesStoreByPath):
    """Random windows of one split: ``sampler[i] -> (tokens (length,) uint8, label)``, for any ``i >= 0``.

    Item ``i`` depends only on ``(seed, i)``. Training windows (``split == "train"``) are reverse-complemented with
    probability ``rc_prob``; other splits never are. Iterating yields items 0, 1, 2, ... forever.
    """

    def __init__(self, store: TokenStore | str | os.PathLike, split: str, length: int, *,
                 max_n_fraction: float = 0.1, rc_prob: float = 0.5, seed: int = 0, max_draws: int = 100):
        self.store = _open(store)
        self._windows = _SpeciesWindows(self.store, split, length, max_n_fraction, max_draws)
        self.split, self.length, self.seed = split, length, seed
        self.rc_prob = rc_prob if split == "train" else 0.0

    @property
    def species(self) -> list[str]:
        """The species present in this split (their labels are their positions in ``store.meta["species"]``)."""
        return list(self._windows.names)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if i < 0:
            raise IndexError(f"window index must be >= 0, not {i}")
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self._windows.names)))
        entry, start = self._windows.draw(self.store, rng, k)
        tokens = self.store.window(entry, start, self.length)
        if rng.random() < self.rc_prob:
            tokens = reverse_complement(tokens)
        return tokens, self._windows.labels[k]

    def check(self) -> None:
        """Draw one window of every species (its own random stream: the items are unchanged); a DataError names a
        species without a usable window (e.g. all N), before training starts rather than during it."""
        rng = np.random.default_rng([self.seed, 2**32])
        for k in range(len(self._windows.names)):
            self._windows.draw(self.store, rng, k)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        i = 0
        while True:
            yield self[i]
            i += 1


def check_genome_store(store: TokenStore) -> None:
    """A one-line DataError unless ``store`` holds genomes by species (``mba species prepare`` / ``dna pretrain``):
    a labelled-sequence store or an audio store says which command reads it."""
    meta = store.meta
    if meta.get("domain") == "dna" and meta.get("task") == "classify":
        raise DataError(f"{store.path}: a labelled-sequence store (from 'mba dna classify prepare'): train on it "
                        "with 'mba dna classify train'")
    if meta.get("domain") != "dna" or "species" not in meta:
        raise DataError(f"{store.path}: not a genome token store (made by 'mba species prepare' or "
                        "'mba dna pretrain')")


class WindowSet(_PicklesStoreByPath, Sequence):
    """A fixed list of windows: ``windows[i] -> (tokens (length,) uint8, label)``, read from the store on access."""

    def __init__(self, store: TokenStore, windows: list[Window]):
        self.store, self.windows = store, windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        w = self.windows[i]
        return self.store.window(w.entry, w.start, w.length), w.label

    @property
    def labels(self) -> np.ndarray:
        """``(len(self),)`` int64 labels."""
        return np.array([w.label for w in self.windows], dtype=np.int64)


def eval_windows(store: TokenStore | str | os.PathLike, split: str, length: int, per_species: int, seed: int = 0, *,
                 max_n_fraction: float = 0.1, max_draws: int = 100) -> WindowSet:
    """``per_species`` windows of each species present in ``split``, species by species, never reverse-complemented.

    The same arguments give the same windows on every call; a species' windows depend only on ``(seed, species)``.
    """
    store = _open(store)
    index = _SpeciesWindows(store, split, length, max_n_fraction, max_draws)
    windows = []
    for k, (name, label) in enumerate(zip(index.names, index.labels)):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        for _ in range(per_species):
            entry, start = index.draw(store, rng, k)
            windows.append(Window(entry, start, length, label))
    return WindowSet(store, windows)
