"""SC09 data for the recipe: a token store from Speech Commands or a folder of WAVs, its splits as clip datasets,
and a folder of generated WAVs to score."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from mamba_bio_audio.data_prep.audio.dataset import AudioClipDataset
from mamba_bio_audio.errors import DataError


def speech_commands_tree(src: Path | None, download: bool) -> Path | None:
    """The folder that holds the audio under ``--from src``: ``src/speech_commands_v0.02`` when downloading or
    when it exists, else ``src`` (an output folder may sit beside the audio in ``src``)."""
    from mamba_bio_audio.data_prep.audio.download import SPEECH_COMMANDS_FOLDER

    if src is not None and (download or (src / SPEECH_COMMANDS_FOLDER).is_dir()):
        return src / SPEECH_COMMANDS_FOLDER
    return src


def prepare_audio_store(out: Path, sample_rate: int, *, src: Path | None = None, folder: Path | None = None,
                        download: bool = False, clip_seconds: float = 1.0, encoding: str = "mulaw8",
                        normalization: str = "none", strict: bool = False):
    """Write the token store ``out`` from Speech Commands under ``src`` (fetched first with ``download``) or from
    an FSDD-layout ``folder``; returns the writer's result (``counts`` per split, ``skipped`` messages). Skipped
    files are not warned about: they come back in ``result.skipped``."""
    from mamba_bio_audio.data_prep.audio.download import download_speech_commands
    from mamba_bio_audio.data_prep.audio.folder import prepare_folder
    from mamba_bio_audio.data_prep.audio.sc09 import prepare_speech_commands

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if src is None:
            return prepare_folder(folder, out, sample_rate, clip_seconds=clip_seconds, encoding=encoding,
                                  normalization=normalization, strict=strict)
        src = download_speech_commands(src) if download else speech_commands_tree(src, False)
        return prepare_speech_commands(src, out, sample_rate, encoding=encoding, normalization=normalization,
                                       strict=strict)


def load_clips(store: str | os.PathLike, split: str, *, waveform: bool = False,
               required: bool = True) -> AudioClipDataset | None:
    """The ``split`` of a token store as an :class:`AudioClipDataset`; an empty split is None when not
    ``required`` (a DataError when it is)."""
    try:
        return AudioClipDataset(store, split=split, waveform=waveform)
    except DataError as e:
        if required or "no clips in split" not in str(e):
            raise
        return None


def read_samples(samples: Path | None, test_set: AudioClipDataset):
    """The generated WAVs of ``samples`` at the test set's rate and clip length, ``(n, clip_samples)``, and the
    messages of the files skipped (:func:`~mamba_bio_audio.tasks.audio_lm.read_wav_folder`, without its
    warnings); ``(None, [])`` without ``samples``."""
    from mamba_bio_audio.tasks.audio_lm import read_wav_folder

    if samples is None:
        return None, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        waves, _, skipped = read_wav_folder(samples, test_set.sample_rate, test_set.clip_samples)
    return waves, skipped
