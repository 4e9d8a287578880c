"""Training callbacks: the sequence-length warm-up of the HyenaDNA and Mamba DNA recipes."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


def fold_to_seqlen(batch: dict, seqlen: int) -> dict:
    """Cut each (batch, L) window into L // seqlen contiguous pieces: (batch * L // seqlen, seqlen).

    Tokens per batch stay constant. Per-sequence tensors (e.g. "label" (batch,)) are repeated for each piece.
    A batch already at or below ``seqlen`` is returned unchanged.
    """
    ids = batch["input_ids"]
    length = ids.shape[1]
    if seqlen >= length:
        return batch
    if length % seqlen != 0:
        raise ValueError(f"window length {length} is not a multiple of the warm-up length {seqlen}")
    pieces = length // seqlen
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() >= 2 and value.shape[1] == length:
            out[key] = value.reshape(value.shape[0] * pieces, seqlen, *value.shape[2:])
        elif torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == ids.shape[0]:
            out[key] = value.repeat_interleave(pieces, dim=0)
        else:
            out[key] = value
    return out


def warmup_schedule(min_len: int, max_len: int, steps_per_stage: int) -> list[tuple[int, int]]:
    """[(first_step, seqlen), ...]: seqlen doubles from min_len to max_len, one stage every steps_per_stage."""
    if min_len < 1 or max_len < min_len or steps_per_stage < 1:
        raise ValueError("need 1 <= min_len <= max_len and steps_per_stage >= 1")
    stages, length, step = [], min_len, 0
    while length < max_len:
        stages.append((step, length))
        length *= 2
        step += steps_per_stage
    stages.append((step, max_len))
    return stages


class SeqLenWarmup(pl.Callback):
    """Train on short windows first and double the length each stage, at constant tokens per batch.

    The data always delivers full windows (batch, max_len); while a stage is shorter, the task folds each
    window into pieces (:func:`fold_to_seqlen`). Depends only on the global step, so resuming is exact.
    """

    def __init__(self, min_len: int, max_len: int, steps_per_stage: int):
        self.stages = warmup_schedule(min_len, max_len, steps_per_stage)
        self.max_len = max_len

    def seqlen_at(self, step: int) -> int:
        length = self.stages[0][1]
        for first, stage_len in self.stages:
            if step >= first:
                length = stage_len
        return length

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        length = self.seqlen_at(trainer.global_step)
        pl_module.current_seqlen = None if length >= self.max_len else length
