"""Torch view of DNA windows (the one DNA module that imports torch; import it only where tensors are wanted)."""

from __future__ import annotations

from collections.abc import Sized

import torch
from torch.utils.data import Dataset

from .windows import WindowSampler, WindowSet


class WindowDataset(Dataset):
    """Map-style dataset: item ``i`` -> ``{"input_ids": LongTensor (length,), "label": LongTensor ()}``.

    Item ``i`` is ``windows[i]``: a :class:`~.windows.WindowSet` (whose length is the dataset's) or a
    :class:`~.windows.WindowSampler`, which is infinite: give ``num_samples`` to use it with a DataLoader, or leave
    it unbounded and pass ``dataset.__getitem__`` as the ``sample_fn(i)`` of :mod:`mamba_bio_audio.training.data`.
    """

    def __init__(self, windows: WindowSampler | WindowSet, num_samples: int | None = None):
        self.windows = windows
        self.num_samples = len(windows) if num_samples is None and isinstance(windows, Sized) else num_samples

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("an unbounded WindowDataset has no length; give num_samples")
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < 0 or (self.num_samples is not None and i >= self.num_samples):
            raise IndexError(f"window index {i} out of range")
        tokens, label = self.windows[i]
        return {"input_ids": torch.from_numpy(tokens).long(), "label": torch.tensor(label, dtype=torch.long)}
