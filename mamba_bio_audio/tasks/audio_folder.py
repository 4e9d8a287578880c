"""Audio LMs on any folder of recordings (``mba audio``): windows cut from whole files, training, window NLL.

A recordings store (:mod:`mamba_bio_audio.data_prep.audio.recordings`) holds whole files of any length. Training
examples are windows of ``window`` consecutive tokens cut at random from within the training files
(:class:`RecordingWindows`): example ``i`` is a pure function of ``(seed, i)`` (so ``--resume`` continues exactly);
a file is drawn with probability proportional to its number of window starts, then a start uniformly, so every
position of the split is about equally likely. The LM reads ``window[:-1]`` and predicts ``window[1:]``.

Files shorter than the window (``short_files``):

- ``"skip"`` (default): left out of training with a warning (:attr:`RecordingWindows.left_out`); when every
  training file is shorter, a one-line :class:`~mamba_bio_audio.errors.DataError` names the longest.
- ``"pad"``: kept, padded at the end with the silence token, and the padded positions masked out of the loss
  (``"mask"``, :class:`MaskedLMTask`).

Validation and test NLL (:func:`eval_windows`, :func:`window_nll_bits`): each file of the split cut into
consecutive windows of the training length from its start (a last partial window, or a short file, is padded and
masked with ``"pad"``, dropped with ``"skip"``), each window scored on its own; bits per sample is
``-log2 p(x_t | x_<t within the window)`` averaged over every predicted (unmasked) sample. At most ``max_windows``
windows, evenly spaced over the list.

Long windows reuse the DNA recipes' machinery: the sequence-length warm-up
(:func:`~mamba_bio_audio.tasks.windows.warmup_callbacks`: from 2^14 by default above 2^14, doubling) and, for the
plain Mamba LM, activation checkpointing (on by default from 2^17 samples).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError, UserError
from mamba_bio_audio.tasks.audio_lm import AudioTrainSettings
from mamba_bio_audio.training.module import LMTask

LN2 = math.log(2.0)
SHORT_FILES = ("skip", "pad")
MAX_WINDOW = 2**20


def open_recordings(path: str | os.PathLike) -> TokenStore:
    """A store written by ``mba audio prepare``, or a one-line DataError."""
    store = TokenStore(path)
    if store.meta.get("domain") != "audio" or store.meta.get("layout") != "recordings":
        raise DataError(f"{store.path}: not a recordings store (write one with `mba audio prepare`)")
    return store


def split_records(store: TokenStore, split: str) -> list[int]:
    """Indices of the records of ``split``."""
    return [i for i, r in enumerate(store.records) if r["split"] == split]


def audio_of(store: TokenStore, window: int) -> dict:
    """What a model trained on ``store`` saves in ``config.extra``: rate, encoding, and ``clip_samples`` (the
    training window, also the default length of generated clips)."""
    return {"sample_rate": int(store.meta["sample_rate"]), "encoding": store.meta["encoding"],
            "clip_samples": int(window), "layout": "recordings"}


class RecordingWindows:
    """``sample_fn(i) -> {"input_ids": uint8 (window,)[, "mask": bool (window,)]}``: training windows of one split
    (module docstring). A class rather than a closure, so DataLoader workers can pickle it.

    Args:
        store: a recordings store. split: "train", "val" or "test". window: tokens per window (>= 2).
        seed: the stream's seed. short_files: ``"skip"`` or ``"pad"`` (module docstring).
    """

    def __init__(self, store: TokenStore, split: str, window: int, seed: int = 0, short_files: str = "skip"):
        if short_files not in SHORT_FILES:
            raise UserError(f"--short-files {short_files}: expected one of {', '.join(SHORT_FILES)}")
        if not 2 <= window <= MAX_WINDOW:
            raise UserError(f"--window {window}: expected 2 .. {MAX_WINDOW} samples")
        self.store, self.window, self.seed, self.pad = store, window, seed, short_files == "pad"
        records = split_records(store, split)
        if not records:
            raise DataError(f"{store.path}: no files in split {split!r}")
        lengths = {i: store.records[i]["length"] for i in records}
        self.records = [i for i in records if self.pad or lengths[i] >= window]
        self.left_out = [store.records[i]["file"] for i in records if i not in set(self.records)]
        if not self.records:
            longest = max(records, key=lengths.get)
            raise DataError(f"--window {window}: longer than every {split} file (the longest, "
                            f"{store.records[longest]['file']}, has {lengths[longest]} samples); use a shorter "
                            f"window or --short-files pad")
        starts = np.array([max(1, lengths[i] - window + 1) for i in self.records], dtype=np.float64)
        self.cumulative = np.cumsum(starts)

    def __call__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        k = int(np.searchsorted(self.cumulative, rng.random() * self.cumulative[-1], side="right"))
        record = self.records[min(k, len(self.records) - 1)]
        length = self.store.records[record]["length"]
        start = int(rng.integers(0, max(1, length - self.window + 1)))
        return window_item(self.store, record, start, self.window, self.pad)


def window_item(store: TokenStore, record: int, start: int, window: int, pad: bool) -> dict[str, torch.Tensor]:
    """Tokens ``[start, start + window)`` of ``record`` as ``{"input_ids": uint8 (window,)}``; with ``pad`` the
    part past the file's end is the silence token and ``"mask": bool (window,)`` marks the real samples."""
    length = store.records[record]["length"]
    n = min(window, length - start)
    tokens = np.full(window, SILENCE_TOKEN, dtype=np.uint8)
    tokens[:n] = store.window(record, start, n)
    item = {"input_ids": torch.from_numpy(tokens)}
    if pad:
        mask = torch.zeros(window, dtype=torch.bool)
        mask[:n] = True
        item["mask"] = mask
    return item


def eval_windows(store: TokenStore, split: str, window: int, short_files: str = "skip",
                 max_windows: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Consecutive windows of every file of ``split`` (module docstring); at most ``max_windows``, evenly spaced.
    An empty list when the split has no file or no window fits."""
    pad = short_files == "pad"
    items = []
    for record in split_records(store, split):
        length = store.records[record]["length"]
        for start in range(0, length, window):
            if start + window <= length or (pad and length - start >= 2):
                items.append((record, start))
    if max_windows is not None and len(items) > max_windows:
        items = [items[int(k)] for k in np.linspace(0, len(items) - 1, max_windows).round()]
    return [window_item(store, r, s, window, pad) for r, s in items]


def masked_targets(batch: dict) -> torch.Tensor:
    """``batch["input_ids"][:, 1:]`` as int64, with ``-100`` (ignored by cross-entropy) where ``"mask"`` is off."""
    targets = batch["input_ids"][:, 1:].long()
    if "mask" in batch:
        targets = targets.masked_fill(~batch["mask"][:, 1:].bool(), -100)
    return targets


class MaskedLMTask(LMTask):
    """Next-sample prediction on uint8 windows, the padded positions (``"mask"`` off) left out of the loss."""

    def compute_loss(self, batch):
        ids = batch["input_ids"].long()
        logits = self.model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), masked_targets(batch).reshape(-1),
                               ignore_index=-100)
        return loss, {"bits_per_token": loss.detach() / LN2}


@torch.no_grad()
def window_nll_bits(model, windows: list[dict], *, batch_size: int = 16,
                    device: str | torch.device = "cpu") -> float | None:
    """Mean ``-log2 p(x_t | x_<t)`` over every predicted (unmasked) sample of ``windows``; None when empty."""
    if not windows:
        return None
    was_training = model.training
    model.eval().to(device)
    total, count = 0.0, 0
    try:
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            batch = {k: torch.stack([w[k] for w in chunk]).to(device) for k in chunk[0]}
            logits = model(batch["input_ids"].long()[:, :-1]).float()
            targets = masked_targets(batch)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                     reduction="sum").item()
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1) / LN2


# ---- training -----------------------------------------------------------------------------------------------------
@dataclass
class RecordingTrainSettings(AudioTrainSettings):
    """:class:`~mamba_bio_audio.tasks.audio_lm.AudioTrainSettings` plus the window: ``window`` samples per example,
    ``short_files`` (module docstring), the sequence-length warm-up (``warmup_min_length``: None = 2^14 above 2^14,
    0 = off; ``warmup_stage_steps``: None = a tenth of the run) and ``checkpoint_activations`` (None: on from 2^17
    samples for ``mamba-lm``; SaShiMi has none). ``val_clips`` is the number of validation windows."""

    window: int = 16384
    short_files: str = "skip"
    warmup_min_length: int | None = None
    warmup_stage_steps: int | None = None
    checkpoint_activations: bool | None = None

    @property
    def length(self) -> int:  # the name the DNA warm-up planner reads
        return self.window


def build_recording_lm(settings: RecordingTrainSettings, audio: dict):
    """A fresh audio LM (:func:`~mamba_bio_audio.tasks.audio_lm.build_audio_lm`) with activation checkpointing
    as ``settings`` asks (a UserError for SaShiMi, which has none)."""
    from mamba_bio_audio.tasks.audio_lm import build_audio_lm
    from mamba_bio_audio.tasks.windows import CHECKPOINT_ACTIVATIONS_FROM

    model = build_audio_lm(settings.arch, settings.preset, audio)
    wanted = settings.checkpoint_activations
    if settings.arch == "sashimi":
        if wanted:
            raise UserError("--checkpoint-activations: only --arch mamba-lm has activation checkpointing")
        return model
    model.gradient_checkpointing = wanted if wanted is not None else settings.window >= CHECKPOINT_ACTIVATIONS_FROM
    return model


def warmup_plan(settings: RecordingTrainSettings) -> None:
    """Refuse, before anything is written, a warm-up the window does not allow (a one-line UserError)."""
    from mamba_bio_audio.tasks.windows import warmup_stages

    warmup_stages(dataclasses.replace(settings, max_steps=settings.max_steps or 10))


def train_recording_lm(store: TokenStore, out: Path, settings: RecordingTrainSettings,
                       resume: bool = False) -> dict | None:
    """Train a fresh audio LM on random windows of the train files, save ``out/model``, score the val windows.

    Returns the metrics (val bits per sample, steps, seconds, warm-up, files left out, audio settings), or None in
    the extra processes of a multi-device run.
    """
    import lightning.pytorch as pl

    from mamba_bio_audio.tasks.audio_lm import fit_audio_lm
    from mamba_bio_audio.tasks.windows import WindowData, warmup_callbacks

    s = settings
    warmup_plan(s)
    pl.seed_everything(s.seed, verbose=False)
    train = RecordingWindows(store, "train", s.window, s.seed, s.short_files)
    for name in train.left_out:
        warnings.warn(f"{name}: shorter than the {s.window}-sample window -- left out of training", stacklevel=2)
    val = eval_windows(store, "val", s.window, s.short_files, s.val_clips)
    audio = audio_of(store, s.window)
    model = build_recording_lm(s, audio)
    datamodule = WindowData(train, s.batch_size, val_samples=val, num_workers=s.num_workers)
    warmup: dict = {}

    def callbacks(max_steps: int) -> list:
        found, warmup["plan"] = warmup_callbacks(dataclasses.replace(s, max_steps=max_steps))
        return found

    run = fit_audio_lm(model, datamodule, out, s, resume=resume, validate=bool(val), callbacks=callbacks,
                       task_class=MaskedLMTask)
    if run is None:
        return None
    model.save_pretrained(out / "model")
    val_bits = window_nll_bits(model, val, batch_size=s.batch_size, device=next(model.parameters()).device)
    return {"val_bits_per_sample": val_bits, "val_windows": len(val), **run, "arch": s.arch, "preset": s.preset,
            "parameters": sum(p.numel() for p in model.parameters()), "window": s.window,
            "short_files": s.short_files, "train_files": len(train.records), "files_left_out": train.left_out,
            "sequence_length_warmup": warmup.get("plan"),
            "checkpoint_activations": bool(getattr(model, "gradient_checkpointing", False)), **audio}


def evaluate_recording_lm(model, store: TokenStore, *, split: str = "test", short_files: str = "skip",
                          max_windows: int | None = None, batch_size: int = 16,
                          device: str | torch.device = "cpu") -> dict:
    """Test NLL of ``model`` on consecutive windows of its training length over the ``split`` files."""
    from mamba_bio_audio.tasks.audio_lm import audio_settings

    audio = audio_settings(model)
    if audio["sample_rate"] != store.meta["sample_rate"] or audio["encoding"] != store.meta["encoding"]:
        raise UserError(f"the model was trained on {audio['sample_rate']} Hz {audio['encoding']} audio, the store "
                        f"{store.path} holds {store.meta['sample_rate']} Hz {store.meta['encoding']}")
    window = int(audio["clip_samples"])
    if not split_records(store, split):
        raise DataError(f"{store.path}: no files in split {split!r}")
    windows = eval_windows(store, split, window, short_files, max_windows)
    if not windows:
        raise DataError(f"{store.path}: every {split} file is shorter than the model's {window}-sample window; "
                        f"pass --short-files pad")
    bits = window_nll_bits(model, windows, batch_size=batch_size, device=device)
    return {f"{split}_bits_per_sample": bits, f"{split}_windows": len(windows), "window": window,
            "short_files": short_files, "files": len(split_records(store, split)), **audio}
