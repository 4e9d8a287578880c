"""SC09: the ten digit words of Google Speech Commands as 1 s, 16 kHz, 8-bit token clips.

Source layout (an extracted ``speech_commands_v0.02``, see :mod:`.download`): ``<word>/<hash>_nohash_<n>.wav``
plus ``validation_list.txt`` and ``testing_list.txt`` at the root, each listing ``<word>/<file>.wav`` paths.
SC09 keeps the words ``zero`` .. ``nine`` (labels 0-9, :data:`DIGITS`); the official lists give the ``val`` and
``test`` splits and every other digit file is ``train``. The speaker is the ``<hash>`` part of the file name.
Clips are cut to exactly 1 s (padded with zeros at the end, or trimmed at the end; see :mod:`.clips`).
"""

from __future__ import annotations

import os
from pathlib import Path

from mamba_bio_audio.errors import DataError

from .clips import Clip, PrepareResult, write_clip_store

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"


def read_split_list(path: Path) -> set[str]:
    """The ``<word>/<file>.wav`` entries of an official split list (blank lines ignored)."""
    if not path.is_file():
        raise DataError(f"{path}: missing (is this an extracted Speech Commands folder?)")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def speech_commands_clips(src_dir: str | os.PathLike) -> list[Clip]:
    """The digit files of an extracted Speech Commands folder with their labels, speakers and splits."""
    src_dir = Path(src_dir)
    val, test = read_split_list(src_dir / VALIDATION_LIST), read_split_list(src_dir / TESTING_LIST)
    clips = []
    for label, word in enumerate(DIGITS):
        folder = src_dir / word
        if not folder.is_dir():
            raise DataError(f"{folder}: missing digit folder (is this an extracted Speech Commands folder?)")
        for path in sorted(folder.glob("*.wav")):
            rel = f"{word}/{path.name}"
            split = "val" if rel in val else "test" if rel in test else "train"
            clips.append(Clip(path=path, label=label, speaker=path.name.split("_nohash_")[0], split=split))
    return clips


def prepare_speech_commands(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sample_rate: int = 16000,
    *,
    encoding: str = "mulaw8",
    normalization: str = "none",
    strict: bool = False,
) -> PrepareResult:
    """Build the SC09 token store from an extracted Speech Commands folder.

    Args:
        src_dir: the extracted ``speech_commands_v0.02`` folder.
        out_dir: the store folder to write (atomically).
        sample_rate: store rate in Hz (the source is 16 kHz; another rate resamples through torchaudio).
        encoding: ``"mulaw8"`` or ``"linear8"`` (:mod:`.mulaw`).
        normalization: ``"none"`` (SC09 convention) or ``"peak"``.
        strict: raise :class:`DataError` on the first bad file instead of skipping it with a warning.

    Returns:
        A :class:`~.clips.PrepareResult` (store path, clips per split, skipped files).
    """
    return write_clip_store(
        speech_commands_clips(src_dir), src_dir, out_dir, sample_rate=sample_rate, clip_seconds=1.0,
        encoding=encoding, normalization=normalization, label_names=DIGITS, source="speech_commands_sc09",
        strict=strict,
    )
