"""Deterministic, resumable training data (sample i is a pure function of its index) and exact validation batches.

Training: a recipe gives ``sample_fn(i) -> dict of tensors``; :class:`IndexedStream` yields samples from a
world-wide position ``start_sample`` onwards forever, split across DataLoader workers and distributed ranks without
overlap: local batch k of rank r (of W, ``batch_size`` B each) holds the samples
``start_sample + (k*W + r)*B .. + B - 1``, so the W ranks' k-th batches are together the k-th run of W*B samples,
in order. An uninterrupted run starts at 0, and sample i is trained on at the same point whatever the worker count.
:class:`IndexedDataModule` records in its ``state_dict`` (which Lightning saves in every training checkpoint) how
many samples the run has consumed world-wide; a resumed run starts its stream there, whatever its world size,
batch size or gradient accumulation: no sample skipped, none repeated. A checkpoint without that record (written
before it existed) resumes at ``global_step * accumulate * world_size * batch_size`` of the resumed run, as before.

Validation: :func:`padded_val_loader` gives each rank its share of a list of ready-made batches, every rank the same
number of batches (FSDP's collectives need every rank to run the same forward calls); the shorter ranks repeat
batches, and :func:`val_batch_position` tells a repeat from a real batch, so that
:meth:`~mamba_bio_audio.training.module.MambaTask.validation_step` counts each batch exactly once. It reads the same
from the ``DistributedSampler`` that Lightning itself puts into a plain ``DataLoader(batches, batch_size=None)``
under DDP or FSDP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    default_collate,
    get_worker_info,
)


class IndexedStream(IterableDataset):
    """Yields ``sample_fn(i)`` for this rank's part of the world-wide sample sequence.

    Local batch k of rank ``rank`` (of ``world_size``) holds samples ``s + (k*W + rank)*B .. s + (k*W + rank)*B + B-1``
    with ``B = batch_size`` and ``s = start_sample`` (default ``start_batch * W * B``: the k-th global batch of B*W
    samples starts the stream).
    """

    def __init__(self, sample_fn: Callable[[int], dict], batch_size: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1, start_sample: int | None = None):
        self.sample_fn = sample_fn
        self.batch_size = batch_size
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.start_sample = start_batch * world_size * batch_size if start_sample is None else int(start_sample)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Worker w builds the local batches k = w mod workers, and the DataLoader takes one batch from each worker
        # in turn, so the order is exactly k = 0, 1, 2, ...
        k = worker
        while True:
            first = self.start_sample + (k * self.world_size + self.rank) * self.batch_size
            for i in range(first, first + self.batch_size):
                yield self.sample_fn(i)
            k += workers


class SampleBatches(Dataset):
    """A list of samples as ready-made batches: item k is ``default_collate(samples[k*B : k*B + B])`` (what
    ``DataLoader(samples, batch_size=B)`` yields), built when read."""

    def __init__(self, samples: Sequence[dict], batch_size: int):
        self.samples = samples
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self):
            raise IndexError(k)
        return default_collate(list(self.samples[k * self.batch_size: (k + 1) * self.batch_size]))


def padded_val_loader(batches: Sequence, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader of ``batches`` (ready-made, e.g. :class:`SampleBatches`) for rank ``rank`` of ``world_size``:
    batches ``rank, rank + W, rank + 2W, ...``, ``ceil(len / W)`` of them on every rank; a rank that runs out repeats
    batches from the start, and :func:`val_batch_position` marks those repeats. One process: every batch, in order."""
    if world_size <= 1:
        return DataLoader(batches, batch_size=None)
    sampler = DistributedSampler(batches, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
    return DataLoader(batches, batch_size=None, sampler=sampler)


def val_batch_position(loader, batch_idx: int) -> tuple[int, bool]:
    """``(index, repeat)`` of the ``batch_idx``-th batch a validation ``loader`` gave this rank: ``index`` is the
    batch's position in the whole validation set (its ``batch_idx`` in a one-process run), ``repeat`` is True for a
    padding repeat that :class:`~torch.utils.data.DistributedSampler` added so that every rank runs as many batches
    (to be counted with weight 0). A loader without a DistributedSampler: ``(batch_idx, False)``.

    Only loaders of ready-made batches (``batch_size=None``) are padded batch by batch; a loader that batches
    samples under a DistributedSampler puts the repeated samples inside its last batches, where they cannot be
    told apart: ``(batch_idx, False)`` and a warning."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return batch_idx, False
    n = len(sampler.dataset)
    if getattr(loader, "batch_sampler", None) is not None:
        if sampler.total_size > n:
            _warn_padded_samples(n, sampler.num_replicas)
        return batch_idx, False
    position = sampler.rank + batch_idx * sampler.num_replicas
    return (position % n if not sampler.shuffle else position), position >= n


_warned: set = set()


def _warn_padded_samples(n: int, world: int) -> None:
    from lightning.pytorch.utilities import rank_zero_warn

    if (n, world) not in _warned:
        _warned.add((n, world))
        rank_zero_warn(f"validation: {n} samples batched under a DistributedSampler of {world} ranks; its padding "
                       f"repeats are counted in the val metrics (give ready-made batches, batch_size=None, to count "
                       f"every sample once)")


class IndexedDataModule(pl.LightningDataModule):
    """Train on ``sample_fn(i)`` (a resumable stream, :class:`IndexedStream`); validate on a fixed list of samples,
    in batches of ``val_batch_size`` (default ``batch_size``) shared out over the ranks by
    :func:`padded_val_loader`.

    ``state_dict()``: ``{"samples_consumed": N}``, the samples the run's optimizer steps have used world-wide (saved
    in training checkpoints; a resumed run's stream starts at sample N)."""

    def __init__(self, sample_fn: Callable[[int], dict], batch_size: int, val_samples: Sequence[dict] = (),
                 num_workers: int = 0, val_batch_size: int | None = None):
        super().__init__()
        self.sample_fn = sample_fn
        self.batch_size = batch_size
        self.val_samples = list(val_samples)
        self.num_workers = num_workers
        self.val_batch_size = val_batch_size or batch_size
        self._restored: int | None = None  # samples_consumed of the checkpoint being resumed
        self._position: tuple | None = None  # (trainer, first sample of the stream, global_step when it started)

    def start_sample(self) -> int:
        """Where this fit's stream starts, world-wide: the checkpoint's ``samples_consumed`` on a resume, where the
        stream had got to when the loader is built again within one fit, else (a new run, or a checkpoint without
        the record) ``global_step * accumulate * world_size * batch_size`` (0 for a new run)."""
        trainer = self.trainer
        if self._restored is not None:
            return self._restored
        if self._position is not None and self._position[0] is trainer:
            return self.samples_consumed()
        return trainer.global_step * trainer.accumulate_grad_batches * trainer.world_size * self.batch_size

    def samples_consumed(self) -> int | None:
        """Samples the optimizer steps so far have trained on, world-wide (None before the training loader)."""
        if self._position is None:
            return self._restored
        trainer, start, step = self._position
        return start + (trainer.global_step - step) * trainer.accumulate_grad_batches * trainer.world_size \
            * self.batch_size

    def train_dataloader(self) -> DataLoader:
        start, rank, world = 0, 0, 1
        if self.trainer is not None:
            start = self.start_sample()
            rank, world = self.trainer.global_rank, self.trainer.world_size
            self._position, self._restored = (self.trainer, start, self.trainer.global_step), None
        stream = IndexedStream(self.sample_fn, self.batch_size, rank=rank, world_size=world, start_sample=start)
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_samples:
            return []
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return padded_val_loader(SampleBatches(self.val_samples, self.val_batch_size), rank, world)

    def state_dict(self) -> dict:
        consumed = self.samples_consumed()
        return {} if consumed is None else {"samples_consumed": int(consumed)}

    def load_state_dict(self, state_dict: dict) -> None:
        if "samples_consumed" in state_dict:
            self._restored = int(state_dict["samples_consumed"])
