"""A torch Dataset over an audio token store (written by :mod:`.sc09` or :mod:`.folder`): fixed-length clips."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from mamba_bio_audio.errors import DataError

from ..store import TokenStore
from .mulaw import ENCODINGS, decode


class AudioClipDataset(Dataset):
    """The clips of one split of an audio token store.

    Item ``i`` is ``{"input_ids": LongTensor (clip_samples,), "label": LongTensor ()}`` (token values 0..255);
    with ``waveform=True`` it also holds ``"waveform": FloatTensor (clip_samples,)``, the decoded tokens in
    [-1, 1] (what a classifier scoring the data sees). Shifting into inputs and targets is the trainer's job.

    Args:
        store: a :class:`~mamba_bio_audio.data_prep.store.TokenStore` or its folder.
        split: ``"train"``, ``"val"``, ``"test"``, or ``None`` for every clip.
        waveform: also yield the decoded waveform.
    """

    def __init__(self, store: TokenStore | str | os.PathLike, split: str | None = None, waveform: bool = False):
        self.store = store if isinstance(store, TokenStore) else TokenStore(store)
        meta = self.store.meta
        self.encoding = meta.get("encoding")
        if meta.get("domain") != "audio" or self.encoding not in ENCODINGS:
            raise DataError(f"{self.store.path}: not an audio token store (meta encoding {self.encoding!r})")
        if "clip_samples" not in meta:
            raise DataError(f"{self.store.path}: a recordings store of any-length files (from 'mba audio prepare'): "
                            "use the 'mba audio' commands, or 'mba sc09 prepare' for fixed-length clips")
        self.sample_rate = int(meta["sample_rate"])
        self.clip_samples = int(meta["clip_samples"])
        self.waveform = waveform
        self.indices = [i for i, r in enumerate(self.store.records) if split is None or r["split"] == split]
        if not self.indices:
            raise DataError(f"{self.store.path}: no clips in split {split!r}")
        bad = next((i for i in self.indices if self.store.records[i]["length"] != self.clip_samples), None)
        if bad is not None:
            raise DataError(f"{self.store.path}: record {bad} has {self.store.records[bad]['length']} tokens, "
                            f"the meta says clips of {self.clip_samples}")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        """The label of every item, int64 array of shape ``(len(self),)``."""
        return np.array([self.store.records[i]["label"] for i in self.indices], dtype=np.int64)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        i = self.indices[idx]
        tokens = torch.from_numpy(np.array(self.store.tokens(i), dtype=np.int64))
        item = {"input_ids": tokens, "label": torch.tensor(self.store.records[i]["label"], dtype=torch.long)}
        if self.waveform:
            item["waveform"] = decode(tokens, self.encoding)
        return item
