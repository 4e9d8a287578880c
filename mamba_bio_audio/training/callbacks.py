"""Training callbacks: the sequence-length warm-up of the HyenaDNA and Mamba DNA recipes, and a clean stop on
SIGTERM / SIGINT."""

from __future__ import annotations

import signal
import threading

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


class GracefulStop(pl.Callback):
    """Stop on SIGTERM or SIGINT at the next optimizer step: save a resumable checkpoint at ``path`` (the same
    hook and call Lightning's own step checkpoints use, so ``--resume`` continues exactly), then end training.

    The handlers replace Lightning's (its SIGTERM handler ends the run with exit 0 and no checkpoint) from the start
    of training until its end. ``stopped_by`` is then "SIGTERM" or "SIGINT" (None when training ran to its end); the
    caller turns it into :class:`~mamba_bio_audio.errors.TrainingStopped`. A second signal while stopping is ignored.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, path):
        self.path = path
        self.received: str | None = None
        self.stopped_by: str | None = None
        self._previous: dict = {}
        self._last_step: int | None = None

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in self.SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.received = self.stopped_by = None
        self._last_step = trainer.global_step
        self._install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # inside gradient accumulation: not a step boundary
        self._last_step = trainer.global_step
        received = self.received
        if trainer.world_size > 1:  # every process stops at the same step, whichever got the signal
            received = "SIGTERM" if trainer.strategy.reduce_boolean_decision(received is not None, all=False) \
                else None
            received = self.received or received
        if received is None:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.stopped_by = received
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()
