"""Any folder of labelled audio files whose names carry label, speaker and take, e.g. the FSDD layout.

File names (without suffix) must match ``pattern``, a regular expression with the named groups ``label`` (an
integer), ``speaker`` and ``take`` (an integer); the default :data:`FSDD_PATTERN` reads the Free Spoken Digit
Dataset's ``{digit}_{speaker}_{index}.wav``. WAV and FLAC files are found recursively under the folder.

Splits by take, per label and speaker: takes in ``test_takes`` are ``test`` (FSDD's own convention: takes 0-4),
takes in ``val_takes`` are ``val`` (default takes 5-9, our choice), every other take is ``train``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

from mamba_bio_audio.errors import DataError

from .clips import Clip, PrepareResult, skip_or_raise, write_clip_store
from .io import AUDIO_SUFFIXES

FSDD_PATTERN = r"(?P<label>\d+)_(?P<speaker>[^_]+)_(?P<take>\d+)"
FSDD_TEST_TAKES = range(0, 5)
FSDD_VAL_TAKES = range(5, 10)


def folder_clips(
    src_dir: str | os.PathLike,
    pattern: str = FSDD_PATTERN,
    test_takes: Collection[int] = FSDD_TEST_TAKES,
    val_takes: Collection[int] = FSDD_VAL_TAKES,
) -> tuple[list[Clip], list[str]]:
    """The audio files under ``src_dir`` as clips, plus one problem line per file whose name does not match."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise DataError(f"{src_dir}: no such folder")
    if set(test_takes) & set(val_takes):
        raise ValueError("test_takes and val_takes overlap")
    regex = re.compile(pattern)
    clips, unmatched = [], []
    for path in sorted(p for p in src_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        m = regex.fullmatch(path.stem)
        if m is None:
            unmatched.append(f"{path}: file name does not match {pattern}")
            continue
        take = int(m["take"])
        split = "test" if take in test_takes else "val" if take in val_takes else "train"
        clips.append(Clip(path=path, label=int(m["label"]), speaker=m["speaker"], split=split))
    return clips, unmatched


def prepare_folder(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sample_rate: int | None = 16000,
    *,
    clip_seconds: float = 1.0,
    encoding: str = "mulaw8",
    normalization: str = "none",
    pattern: str = FSDD_PATTERN,
    test_takes: Collection[int] = FSDD_TEST_TAKES,
    val_takes: Collection[int] = FSDD_VAL_TAKES,
    strict: bool = False,
) -> PrepareResult:
    """Build an audio token store from a folder of labelled files (FSDD layout by default).

    Args:
        src_dir: the folder (searched recursively for .wav/.flac).
        out_dir: the store folder to write (atomically).
        sample_rate: store rate in Hz (files at other rates are resampled through torchaudio); ``None`` keeps
            the files' rate, which must then be shared by all files.
        clip_seconds: every clip is cut to this length (padded with zeros at the end, or trimmed at the end).
        encoding: ``"mulaw8"`` or ``"linear8"`` (:mod:`.mulaw`).
        normalization: ``"none"`` or ``"peak"``.
        pattern: file-name regex with groups ``label``, ``speaker``, ``take``.
        test_takes, val_takes: the takes of the test and validation splits (disjoint).
        strict: raise :class:`DataError` on the first bad file (or unmatched name) instead of skipping it.

    Returns:
        A :class:`~.clips.PrepareResult` (store path, clips per split, skipped files).
    """
    clips, unmatched = folder_clips(src_dir, pattern, test_takes, val_takes)
    skipped: list[str] = []
    for message in unmatched:
        skip_or_raise(message, skipped, strict)
    n_labels = max((c.label for c in clips), default=-1) + 1
    return write_clip_store(
        clips, src_dir, out_dir, sample_rate=sample_rate, clip_seconds=clip_seconds, encoding=encoding,
        normalization=normalization, label_names=[str(i) for i in range(n_labels)], source="folder",
        strict=strict, skipped=skipped,
    )
