"""Batches of sequences of mixed lengths with little padding: length buckets, and right padding with a mask.

Training (:class:`BucketedSampler`): item ``i`` of an endless stream is a pure function of ``(seed, i)``, as the
window samplers' are (so ``--resume`` continues exactly). Each epoch shuffles the sequences, cuts the shuffled order
into pools of ``pool`` batches, sorts every pool by length and cuts it into batches of ``batch_size``, then
shuffles the batches: a batch holds sequences of similar length, and epochs differ. Items ``j * batch_size`` to
``j * batch_size + batch_size - 1`` are batch ``j``.

Evaluation (:func:`eval_batches`): every sequence once, sorted by length, in batches of at most ``batch_size``
sequences and ``max_tokens`` padded tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .tokenizer import PAD_ID, reverse_complement


def bucket_batches(lengths: Sequence[int], batch_size: int, seed: int, pool: int = 32) -> list[np.ndarray]:
    """One epoch: ``ceil(n / batch_size)`` batches of exactly ``batch_size`` indices into ``lengths``, each of
    similar lengths (the last fills up from the start of the epoch's order)."""
    n = len(lengths)
    if n == 0 or batch_size < 1:
        raise ValueError(f"need sequences and a positive batch size, got {n} and {batch_size}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_batches = -(-n // batch_size)
    order = np.resize(order, n_batches * batch_size)  # repeats the start to fill the last batch
    lengths = np.asarray(lengths)
    batches = []
    for start in range(0, order.size, pool * batch_size):
        chunk = order[start: start + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk.reshape(-1, batch_size))
    return [batches[k] for k in rng.permutation(len(batches))]


def eval_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Indices of every sequence once, in batches sorted by length: at most ``batch_size`` sequences and (a
    single longer sequence aside) ``max_tokens`` padded tokens each."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, current = [], []
    for i in order.tolist():
        width = lengths[i]  # sorted: the newest sequence is the longest of the batch
        if current and (len(current) == batch_size or (max_tokens and (len(current) + 1) * width > max_tokens)):
            batches.append(np.array(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.array(current))
    return batches


def pad_batch(sequences: Sequence[np.ndarray], pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """Right padding: ``(ids (b, longest) uint8, mask (b, longest) bool)``, mask True on real tokens."""
    longest = max(s.size for s in sequences)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.uint8)
    mask = np.zeros((len(sequences), longest), dtype=bool)
    for b, s in enumerate(sequences):
        ids[b, : s.size] = s
        mask[b, : s.size] = True
    return ids, mask


class BucketedSampler:
    """Item ``i`` -> ``(tokens (length,) uint8, class id)`` of the training stream (see the module docstring).

    ``store`` is a token store of labelled sequences, ``indices`` its entries to draw from, ``classes`` their class
    ids. A sequence longer than ``crop`` (None: no limit) gives a random window of ``crop`` tokens; with
    probability ``rc_prob`` it is reverse-complemented. Picklable for DataLoader workers (the store reopens by path).
    """

    def __init__(self, store, indices: Sequence[int], classes: Sequence[int], batch_size: int, *,
                 seed: int = 0, crop: int | None = None, rc_prob: float = 0.0, pool: int = 32):
        self.store_path = str(store.path)
        self._store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.classes = np.asarray(classes, dtype=np.int64)
        self.lengths = np.array([store.records[k]["length"] for k in self.indices])
        if crop is not None:
            self.lengths = np.minimum(self.lengths, crop)
        self.batch_size, self.seed, self.crop, self.rc_prob, self.pool = batch_size, seed, crop, rc_prob, pool
        self.batches_per_epoch = -(-len(self.indices) // batch_size)
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_epoch": None}

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, bucket_batches(self.lengths, self.batch_size, self.seed + 7919 * epoch, self.pool))
        return self._epoch[1]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if self._store is None:
            from ..store import TokenStore

            self._store = TokenStore(self.store_path)
        batch, slot = divmod(int(i), self.batch_size)
        epoch, batch = divmod(batch, self.batches_per_epoch)
        k = int(self._batches(epoch)[batch][slot])
        tokens = self._store.tokens(int(self.indices[k]))
        rng = np.random.default_rng([self.seed, int(i)])
        if self.crop is not None and tokens.size > self.crop:
            start = int(rng.integers(0, tokens.size - self.crop + 1))
            tokens = tokens[start: start + self.crop]
        tokens = np.array(tokens)
        if self.rc_prob and rng.random() < self.rc_prob:
            tokens = reverse_complement(tokens)
        return tokens, int(self.classes[k])
