"""Packed rows of labelled sequences: several whole sequences end to end in one row, told apart by ``seq_idx``.

A row of width ``width`` holds sequences whose lengths sum to at most ``width``; ``seq_idx`` numbers them 0, 1, 2,
... along the row, and the classifier pools each one on its own
(:meth:`~mamba_bio_audio.models.classifier.MambaClassifier.forward` with ``seq_idx``). Compute goes to real
tokens instead of pads: with lengths from 200 to 5,000 a padded batch is mostly pads, a packed row a few percent.

- :func:`pack_lengths`: first-fit decreasing bin packing of lengths into rows (deterministic).
- :class:`PackedSampler` (training): item ``i`` of an endless stream of rows is a pure function of ``(seed, i)``,
  as :class:`~.buckets.BucketedSampler`'s items are (so ``--resume`` continues exactly). Each epoch shuffles the
  sequences, cuts the order into pools, packs every pool (:func:`pack_lengths`) and shuffles the rows.
- :func:`collate_packed`: rows -> one batch ``input_ids``, ``seq_idx``, ``attention_mask`` (rows right-padded to
  the fullest) and ``label`` (one per sequence, in order: row by row, left to right).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .tokenizer import PAD_ID, reverse_complement


def pack_lengths(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into rows of at most ``width`` tokens: first-fit decreasing (longest first,
    each into the first row with room), a row's indices in that order. Every length must be in ``[1, width]``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > width):
        raise ValueError(f"lengths must lie in [1, {width}], got {lengths.min()} to {lengths.max()}")
    room = np.empty(lengths.size, dtype=np.int64)  # room left per open row (at most one row per length)
    rows: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        fits = np.flatnonzero(room[: len(rows)] >= n)
        if fits.size:
            r = int(fits[0])
            rows[r].append(i)
            room[r] -= n
        else:
            room[len(rows)] = width - n
            rows.append([i])
    return rows


def pack_rows(sequences: Sequence[np.ndarray], width: int) -> tuple[list[list[int]], int]:
    """``(rows, width)``: :func:`pack_lengths` of the sequences' sizes into rows of ``max(width, longest)``."""
    width = max(width, max(s.size for s in sequences))
    return pack_lengths([s.size for s in sequences], width), width


def collate_packed(items: list[dict]) -> dict:
    """Rows (``input_ids`` uint8 (n,), ``seq_idx`` int32 (n,), ``label`` int64 (k,)) -> a batch of numpy-backed
    tensors: ``input_ids`` (rows, longest) uint8, ``seq_idx`` (rows, longest) int32 (a pad gets the number after
    its row's last sequence), ``attention_mask`` (rows, longest) bool, ``label`` (sum of k,) int64."""
    import torch

    longest = max(item["input_ids"].size for item in items)
    ids = np.full((len(items), longest), PAD_ID, dtype=np.uint8)
    seq_idx = np.zeros((len(items), longest), dtype=np.int32)
    mask = np.zeros((len(items), longest), dtype=bool)
    for b, item in enumerate(items):
        n = item["input_ids"].size
        ids[b, :n] = item["input_ids"]
        seq_idx[b, :n] = item["seq_idx"]
        seq_idx[b, n:] = item["seq_idx"][-1] + 1 if n else 0
        mask[b, :n] = True
    return {"input_ids": torch.from_numpy(ids), "seq_idx": torch.from_numpy(seq_idx),
            "attention_mask": torch.from_numpy(mask),
            "label": torch.from_numpy(np.concatenate([item["label"] for item in items]).astype(np.int64))}


def join_row(pieces: Sequence[np.ndarray], labels: Sequence[int]) -> dict:
    """One packed row: ``{"input_ids": uint8 (n,), "seq_idx": int32 (n,), "label": int64 (k,)}``."""
    sizes = [p.size for p in pieces]
    return {"input_ids": np.concatenate(pieces).astype(np.uint8),
            "seq_idx": np.repeat(np.arange(len(pieces), dtype=np.int32), sizes),
            "label": np.asarray(labels, dtype=np.int64)}


class PackedSampler:
    """Item ``i`` -> one packed training row (:func:`join_row`) of the endless stream (module docstring).

    ``store`` is a token store of labelled sequences, ``indices`` its entries to draw from, ``classes`` their class
    ids. Each sequence is cut to a random window of ``crop`` tokens when longer (``crop`` None: the row ``width``;
    the width must hold the longest cut sequence). With probability ``rc_prob`` a sequence is reverse-complemented.
    Each epoch packs every sequence once; ``pool`` sequences are packed together (a pool's rows mix lengths).
    Picklable for DataLoader workers (the store reopens by path).
    """

    def __init__(self, store, indices: Sequence[int], classes: Sequence[int], width: int, *, seed: int = 0,
                 crop: int | None = None, rc_prob: float = 0.0, pool: int = 4096):
        self.store_path = str(store.path)
        self._store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.classes = np.asarray(classes, dtype=np.int64)
        self.crop = min(crop or width, width)
        self.lengths = np.minimum([store.records[k]["length"] for k in self.indices], self.crop)
        self.width, self.seed, self.rc_prob, self.pool = width, seed, rc_prob, pool
        self._rows_per_epoch: list[int] = []
        self._epoch: tuple[int, list[list[int]]] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_epoch": None}

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """The rows of ``epoch``: lists of positions into ``indices``."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 7919])
            order = rng.permutation(self.indices.size)
            rows = []
            for start in range(0, order.size, self.pool):
                chunk = order[start: start + self.pool]
                rows.extend([chunk[j] for j in row] for row in pack_lengths(self.lengths[chunk], self.width))
            self._epoch = (epoch, [rows[r] for r in rng.permutation(len(rows))])
        return self._epoch[1]

    def _locate(self, row: int) -> tuple[int, int]:
        """(epoch, row within it) of the ``row``-th row of the stream (epochs hold different row counts)."""
        epoch = 0
        while True:
            if epoch == len(self._rows_per_epoch):
                self._rows_per_epoch.append(len(self.epoch_rows(epoch)))
            if row < self._rows_per_epoch[epoch]:
                return epoch, row
            row -= self._rows_per_epoch[epoch]
            epoch += 1

    def fill(self, epoch: int = 0) -> float:
        """Share of the row tokens that hold sequence tokens in ``epoch`` (the rest is padding)."""
        rows = self.epoch_rows(epoch)
        return float(self.lengths.sum() / (len(rows) * self.width))

    def __getitem__(self, i: int) -> dict:
        if self._store is None:
            from ..store import TokenStore

            self._store = TokenStore(self.store_path)
        epoch, row = self._locate(int(i))
        rng = np.random.default_rng([self.seed, int(i)])
        pieces, labels = [], []
        for k in self.epoch_rows(epoch)[row]:
            tokens = self._store.tokens(int(self.indices[k]))
            if tokens.size > self.crop:
                start = int(rng.integers(0, tokens.size - self.crop + 1))
                tokens = tokens[start: start + self.crop]
            tokens = np.array(tokens)
            if self.rc_prob and rng.random() < self.rc_prob:
                tokens = reverse_complement(tokens)
            pieces.append(tokens)
            labels.append(int(self.classes[k]))
        return join_row(pieces, labels)

    def __call__(self, i: int) -> dict:
        """``sample_fn(i)`` of the training data module: row ``i`` (:func:`collate_packed` makes the batch)."""
        return self[i]
