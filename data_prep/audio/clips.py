"""Write labelled audio files into a token store of fixed-length 8-bit clips (shared by SC09 and folder preparation).

Each file is read as mono float (see :mod:`.io`), resampled to the store's rate, cut to exactly ``clip_samples``
(longer clips keep their start, shorter ones are padded with zeros -- silence -- at the end), normalised (see
:mod:`.mulaw`; default none) and quantized to uint8 tokens. A file that cannot be used is skipped with a warning
naming it, or with ``strict=True`` raises :class:`~mamba_bio_audio.errors.DataError`; the store is written
atomically, so an error never leaves a half-written store.

Store layout (:mod:`mamba_bio_audio.data_prep.store`): one record per clip with ``label`` (int), ``speaker`` (str),
``file`` (path relative to the source folder), ``split`` (``train``/``val``/``test``) and ``sample_rate``; the
meta holds ``domain="audio"``, ``encoding``, ``sample_rate``, ``clip_samples``, ``clip_seconds``,
``normalization``, ``label_names``, ``source`` and the ``skipped`` files.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mamba_bio_audio.errors import DataError

from ..store import TokenStoreWriter
from .io import read_audio
from .mulaw import ENCODINGS, NORMALIZATIONS, encode, normalize

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Clip:
    """One source file to store, with its integer label, speaker id and split (one of :data:`SPLITS`)."""

    path: Path
    label: int
    speaker: str
    split: str


@dataclass
class PrepareResult:
    """What a preparation wrote: the store folder, clips per split, and one line per skipped file."""

    store: Path
    counts: dict[str, int]
    skipped: list[str]


def fix_length(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """Trim ``wave: (n,)`` at the end, or pad it with zeros at the end, to shape ``(samples,)``."""
    if wave.numel() >= samples:
        return wave[:samples]
    return torch.nn.functional.pad(wave, (0, samples - wave.numel()))


def skip_or_raise(message: str, skipped: list[str], strict: bool) -> None:
    """Raise DataError(message) when strict; otherwise warn with it and append it to ``skipped``."""
    if strict:
        raise DataError(message)
    warnings.warn(message + " -- skipped", stacklevel=3)
    skipped.append(message)


def write_clip_store(
    clips: Iterable[Clip],
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sample_rate: int | None,
    clip_seconds: float,
    encoding: str,
    normalization: str,
    label_names: Sequence[str],
    source: str,
    strict: bool,
    skipped: list[str] | None = None,
) -> PrepareResult:
    """Read, cut, quantize and store ``clips``; returns a :class:`PrepareResult`.

    Args:
        clips: the files to store; ``Clip.path`` lies under ``src_dir``.
        src_dir: the source folder (record ``file`` fields are relative to it).
        out_dir: the store folder to create (replaced atomically if it exists).
        sample_rate: the store's rate in Hz; ``None`` keeps the files' own rate, which must then be the same
            for all of them (a file with another rate is a bad file).
        clip_seconds: the clip length; ``clip_samples = round(clip_seconds * sample_rate)``.
        encoding: one of :data:`~.mulaw.ENCODINGS`.
        normalization: one of :data:`~.mulaw.NORMALIZATIONS`.
        label_names: the name of each label, stored in the meta.
        source: a short description of the source kind, stored in the meta.
        strict: raise on the first bad file instead of skipping it.
        skipped: problems already found by the caller (e.g. unparsable names), reported with the others.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    src_dir = Path(src_dir)
    skipped = list(skipped or [])
    counts: Counter[str] = Counter()
    rate = sample_rate
    meta = {"domain": "audio", "encoding": encoding, "clip_seconds": clip_seconds,
            "normalization": normalization, "label_names": list(label_names), "source": source}
    with TokenStoreWriter(out_dir, meta=meta) as writer:
        for clip in clips:
            try:
                wave, file_rate = read_audio(clip.path, sample_rate)
            except DataError as e:
                skip_or_raise(str(e), skipped, strict)
                continue
            rate = rate or file_rate
            if file_rate != rate:
                skip_or_raise(f"{clip.path}: sample rate {file_rate} Hz differs from the store's {rate} Hz "
                              "(pass a sample rate to resample)", skipped, strict)
                continue
            wave = normalize(fix_length(wave, round(clip_seconds * rate)), normalization)
            writer.add(encode(wave, encoding).numpy(), label=clip.label, speaker=clip.speaker,
                       file=clip.path.relative_to(src_dir).as_posix(), split=clip.split, sample_rate=rate)
            counts[clip.split] += 1
        if not counts:
            raise DataError(f"{src_dir}: no usable audio files")
        writer.meta.update(sample_rate=rate, clip_samples=round(clip_seconds * rate), skipped=skipped)
    return PrepareResult(store=Path(out_dir), counts={s: counts[s] for s in SPLITS}, skipped=skipped)
