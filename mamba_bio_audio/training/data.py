"""Deterministic, resumable training data: sample i is a pure function of its index.

A recipe gives ``sample_fn(i) -> dict of tensors``; :class:`IndexedStream` yields samples from index
``start`` onwards forever, split across DataLoader workers and distributed ranks without overlap. Because the
DataModule starts the stream at ``global_step * batches_per_step * batch_size``, a run resumed from a checkpoint
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class IndexedStream(IterableDataset):
    """Yields sample_fn(i) for the global batch sequence; batch j holds indices j*B .. j*B+B-1 (world-wide)."""

    def __init__(self, sample_fn: Callable[[int], dict], batch_size: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.sample_fn = sample_fn
        self.batch_size = batch_size
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Local batch k of this rank is global batch (start + k) * world + rank; worker w builds k = w mod workers,
        # and the DataLoader takes one batch from each worker in turn, so the order is exactly k = 0, 1, 2, ...
        k = worker
        while True:
            global_batch = (self.start_batch + k) * self.world_size + self.rank
            first = global_batch * self.batch_size
            for i in range(first, first + self.batch_size):
                yield self.sample_fn(i)
            k += workers


class IndexedDataModule(pl.LightningDataModule):
    """Train on ``sample_fn(i)`` (resumable stream); validate on a fixed list of samples."""

    def __init__(self, sample_fn: Callable[[int], dict], batch_size: int, val_samples: Sequence[dict] = (),
                 num_workers: int = 0, val_batch_size: int | None = None):
        super().__init__()
        self.sample_fn = sample_fn
        self.batch_size = batch_size
        self.val_samples = list(val_samples)
        self.num_workers = num_workers
        self.val_batch_size = val_batch_size or batch_size

    def train_dataloader(self) -> DataLoader:
        start = 0
        rank, world = 0, 1
        if self.trainer is not None:
            start = self.trainer.global_step * self.trainer.accumulate_grad_batches
            rank, world = self.trainer.global_rank, self.trainer.world_size
        stream = IndexedStream(self.sample_fn, self.batch_size, start, rank, world)
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_samples:
            return []
        return DataLoader(self.val_samples, batch_size=self.val_batch_size, shuffle=False)
