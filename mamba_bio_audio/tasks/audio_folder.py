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
- ``"pack"``: several short files per training row of ``window`` tokens, told apart by ``seq_idx``, so no compute
  goes to padding (:func:`pack_short_files`: first-fit decreasing, ties in a seeded order, done once; every file
  with at least one sample lands in exactly one row). Each file starts at a multiple of ``align`` (the model's
  stride ``prod(pools)`` for SaShiMi, 1 for the plain Mamba LM): its end is padded with silence under its own
  ``seq_idx`` up to the next multiple, as is the row's tail after its last file. The model restarts at every file;
  the loss leaves out the padding (``"mask"``) and the first sample of each file, whose predecessor belongs to
  another file (:func:`~mamba_bio_audio.training.module.next_token_loss`, as ``dna pretrain --pack``). Example ``i``
  is then either a random window of a long file, drawn as above, or one packed row chosen uniformly; a row weighs
  as much as ``window`` window starts, so a sample of a short file is read about as often as one of a long file.
  Still a pure function of ``(seed, i)``.

Validation and test NLL (:func:`eval_windows`, :func:`window_nll_bits`): each file of the split cut into
consecutive windows of the training length from its start (a last partial window, or a short file, is padded and
masked with ``"pad"`` and ``"pack"``, dropped with ``"skip"``), each window scored on its own; bits per sample is
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

from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN
from mamba_bio_audio.data_prep.dna.packing import pack_lengths
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError, UserError
from mamba_bio_audio.tasks.audio_lm import AudioTrainSettings
from mamba_bio_audio.training.module import LMTask, next_token_loss

LN2 = math.log(2.0)
SHORT_FILES = ("skip", "pad", "pack")
PACK_STREAM = 7207  # the packing's own random stream beside the examples' (seed, i)
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
    """``sample_fn(i) -> {"input_ids": uint8 (window,)[, "mask": bool (window,)][, "seq_idx": int32 (window,)]}``:
    training windows of one split (module docstring). With ``"pack"`` and at least one packed row every item has
    ``mask`` and ``seq_idx`` (a long file's window: all True, all 0), so a batch mixes windows and packed rows.
    A class rather than a closure, so DataLoader workers can pickle it.

    Args:
        store: a recordings store. split: "train", "val" or "test". window: tokens per window (>= 2).
        seed: the stream's seed. short_files: ``"skip"``, ``"pad"`` or ``"pack"`` (module docstring).
        align: with ``"pack"``, files start at multiples of it in a row (:func:`packing_align` of the model).
    Attributes:
        records: the files drawn whole-window from (all but the packed ones). rows: with ``"pack"``, the packed
        rows (lists of record indices), else empty. left_out: names of the files never read.
    """

    def __init__(self, store: TokenStore, split: str, window: int, seed: int = 0, short_files: str = "skip",
                 align: int = 1):
        if short_files not in SHORT_FILES:
            raise UserError(f"--short-files {short_files}: expected one of {', '.join(SHORT_FILES)}")
        if not 2 <= window <= MAX_WINDOW:
            raise UserError(f"--window {window}: expected 2 .. {MAX_WINDOW} samples")
        self.store, self.window, self.seed, self.pad = store, window, seed, short_files == "pad"
        self.align = align
        records = split_records(store, split)
        if not records:
            raise DataError(f"{store.path}: no files in split {split!r}")
        lengths = {i: store.records[i]["length"] for i in records}
        self.records = [i for i in records if self.pad or lengths[i] >= window]
        self.rows: list[list[int]] = []
        if short_files == "pack":
            short = [i for i in records if 0 < lengths[i] < window]
            self.rows = [[short[k] for k in row]
                         for row in pack_short_files([lengths[i] for i in short], window, align, seed)]
        kept = set(self.records).union(*self.rows)
        self.left_out = [store.records[i]["file"] for i in records if i not in kept]
        if not kept:
            longest = max(records, key=lengths.get)
            raise DataError(f"--window {window}: longer than every {split} file (the longest, "
                            f"{store.records[longest]['file']}, has {lengths[longest]} samples); use a shorter "
                            f"window or --short-files pad or pack")
        starts = [max(1, lengths[i] - window + 1) for i in self.records] + [window] * len(self.rows)
        self.cumulative = np.cumsum(np.array(starts, dtype=np.float64))

    @property
    def files(self) -> int:
        """Number of files training reads (whole-window and packed)."""
        return len(self.records) + sum(len(row) for row in self.rows)

    def packing(self) -> dict | None:
        """With ``"pack"``: ``{"rows", "files", "fill"}``, fill = the share of the rows' tokens that are samples
        (the rest is padding); else None."""
        if not self.rows:
            return None
        samples = sum(self.store.records[r]["length"] for row in self.rows for r in row)
        return {"rows": len(self.rows), "files": sum(len(row) for row in self.rows),
                "fill": samples / (len(self.rows) * self.window)}

    def __call__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        k = min(int(np.searchsorted(self.cumulative, rng.random() * self.cumulative[-1], side="right")),
                len(self.cumulative) - 1)
        if k >= len(self.records):
            return packed_row_item(self.store, self.rows[k - len(self.records)], self.window, self.align)
        record = self.records[k]
        length = self.store.records[record]["length"]
        start = int(rng.integers(0, max(1, length - self.window + 1)))
        item = window_item(self.store, record, start, self.window, self.pad or bool(self.rows))
        if self.rows:
            item["seq_idx"] = torch.zeros(self.window, dtype=torch.int32)
        return item


def packing_align(model) -> int:
    """Where packed files may start in a row: multiples of the model's stride (SaShiMi: ``prod(pools)``), 1 for a
    model without one."""
    return int(getattr(model.config, "stride", 1))


def pack_short_files(lengths: list[int], window: int, align: int = 1, seed: int = 0) -> list[list[int]]:
    """Indices into ``lengths`` (each in ``[1, window)``) grouped into rows of ``window`` tokens, each file taking
    its length rounded up to a multiple of ``align``: first-fit decreasing into rows of
    ``window // align * align`` (:func:`~mamba_bio_audio.data_prep.dna.packing.pack_lengths`), equal sizes in a
    seeded order; a file whose rounded length exceeds that gets a row of its own. Every index lands in exactly one
    row; the same arguments give the same rows."""
    order = np.random.default_rng([seed, PACK_STREAM]).permutation(len(lengths))
    sizes = -(-np.asarray(lengths, dtype=np.int64)[order] // align) * align
    width = window // align * align
    fits = np.flatnonzero(sizes <= width)
    rows = [[int(order[fits[j]]) for j in row] for row in pack_lengths(sizes[fits], width)] if fits.size else []
    return rows + [[int(order[j])] for j in np.flatnonzero(sizes > width)]


def packed_row_item(store: TokenStore, row: list[int], window: int, align: int = 1) -> dict[str, torch.Tensor]:
    """One packed row of whole files: ``{"input_ids": uint8 (window,), "seq_idx": int32 (window,), "mask": bool
    (window,)}``. File ``k`` of ``row`` starts at a multiple of ``align`` and is numbered ``k``; the silence after it
    (up to the next multiple, or to the row's end after the last file) is numbered ``k`` too and masked off."""
    tokens = np.full(window, SILENCE_TOKEN, dtype=np.uint8)
    seq_idx = np.zeros(window, dtype=np.int32)
    mask = np.zeros(window, dtype=bool)
    position = 0
    for k, record in enumerate(row):
        n = store.records[record]["length"]
        tokens[position:position + n] = store.window(record, 0, n)
        mask[position:position + n] = True
        seq_idx[position:] = k
        position += -(-n // align) * align
    return {"input_ids": torch.from_numpy(tokens), "seq_idx": torch.from_numpy(seq_idx),
            "mask": torch.from_numpy(mask)}


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
    An empty list when the split has no file or no window fits. ``"pack"`` pads as ``"pad"`` does (each window
    is scored on its own: packing would only save compute)."""
    pad = short_files in ("pad", "pack")
    items = []
    for record in split_records(store, split):
        length = store.records[record]["length"]
        for start in range(0, length, window):
            if start + window <= length or (pad and length - start >= 2):
                items.append((record, start))
    if max_windows is not None and len(items) > max_windows:
        items = [items[int(k)] for k in np.linspace(0, len(items) - 1, max_windows).round()]
    return [window_item(store, r, s, window, pad) for r, s in items]


class MaskedLMTask(LMTask):
    """Next-sample prediction on uint8 windows (:func:`~mamba_bio_audio.training.module.next_token_loss`): the padded
    positions (``"mask"`` off) are left out of the loss; with ``"seq_idx"`` (packed rows) the model restarts at
    each file and a file's first sample is not predicted."""

    def compute_loss(self, batch):
        total, count = next_token_loss(self.model, batch["input_ids"].long(), batch.get("seq_idx"),
                                       batch.get("mask"))
        loss = total / count.clamp(min=1)
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
            loss, n = next_token_loss(model, batch["input_ids"].long(), batch.get("seq_idx"), batch.get("mask"))
            total += loss.item()
            count += int(n)
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


def warmup_plan(settings: RecordingTrainSettings, align: int = 1) -> None:
    """Refuse, before anything is written, a warm-up the window does not allow (a one-line UserError); with
    ``"pack"``, also one whose shortest length is no multiple of ``align`` (:func:`packing_align`): the warm-up
    cuts rows into pieces of that length, and packed files must still start at multiples of ``align`` in each."""
    from mamba_bio_audio.tasks.windows import WARMUP_ABOVE, warmup_stages

    try:
        stages = warmup_stages(dataclasses.replace(settings, max_steps=settings.max_steps or 10))
    except UserError:
        if settings.warmup_min_length is not None:
            raise
        # the default warm-up, not an option the user passed: name the window and the way out
        halvings = math.ceil(math.log2(settings.window / WARMUP_ABOVE))
        fits = f" or {settings.window >> halvings}" if settings.window % 2**halvings == 0 else ""
        raise UserError(f"--window {settings.window}: the default sequence-length warm-up doubles from "
                        f"{WARMUP_ABOVE}, so needs a window of {WARMUP_ABOVE} times a power of two; pass "
                        f"--warmup-min-length 0 (off){fits}") from None
    if stages is not None and settings.short_files == "pack" and stages[0] % align:
        raise UserError(f"--warmup-min-length {stages[0]}: --short-files pack needs a multiple of the model's "
                        f"stride {align} (packed files start at multiples of it)")


def train_recording_lm(store: TokenStore, out: Path, settings: RecordingTrainSettings,
                       resume: bool = False) -> dict | None:
    """Train a fresh audio LM on random windows of the train files, save ``out/model``, score the val windows.

    Returns the metrics (val bits per sample, steps, seconds, warm-up, files left out, audio settings), or None in
    the extra processes of a multi-device run.
    """
    import lightning.pytorch as pl

    from mamba_bio_audio.tasks.audio_lm import eval_device, fit_audio_lm
    from mamba_bio_audio.tasks.windows import WindowData, warmup_callbacks

    s = settings
    pl.seed_everything(s.seed, verbose=False)
    audio = audio_of(store, s.window)
    model = build_recording_lm(s, audio)
    warmup_plan(s, packing_align(model))
    train = RecordingWindows(store, "train", s.window, s.seed, s.short_files, packing_align(model))
    for name in train.left_out:
        warnings.warn(f"{name}: shorter than the {s.window}-sample window -- left out of training", stacklevel=2)
    val = eval_windows(store, "val", s.window, s.short_files, s.val_clips)
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
    val_bits = window_nll_bits(model, val, batch_size=s.batch_size, device=eval_device(s))
    return {"val_bits_per_sample": val_bits, "val_windows": len(val), **run, "arch": s.arch, "preset": s.preset,
            "parameters": sum(p.numel() for p in model.parameters()), "window": s.window,
            "short_files": s.short_files, "train_files": train.files, "files_left_out": train.left_out,
            "packing": train.packing(),
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
