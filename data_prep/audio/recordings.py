"""Any folder of recordings -> an audio token store of whole files (``mba audio prepare``).

Files: ``.wav``, ``.flac`` and ``.ogg`` (whatever libsndfile reads through soundfile), found recursively, any
duration, any rate, any channel count. Each file is read as float32 (:func:`~.io.read_frames`), checked (clipping
in every channel), averaged to mono, resampled to the store's rate (torchaudio's windowed sinc), normalised
(:mod:`.mulaw`, default none) and quantized to 8-bit tokens (mu-law or linear). One record per file, of the file's
own length.

Splits are by file, so no recording is in two splits: a seeded shuffle of the usable files (those not skipped)
gives ``val_fraction`` and ``test_fraction`` of them to ``val`` and ``test`` (each at least one file when its
fraction is above 0 and there are at least three usable files), or a list file names them
(:func:`read_split_list`; a skipped file it names is simply absent).

Problems with one file -- unreadable or corrupt, empty, NaN or infinite samples, longer than ``max_file_seconds``
("huge": checked from the header, before reading), more than ``max_clipped_fraction`` of its samples at full scale
("clipped"; the full scale of the file's own format, below 1 for 8-bit and G.711 files) -- skip that file with a
warning naming it, or with ``strict`` raise a one-line :class:`~mamba_bio_audio.errors.DataError`. A folder with no
audio files, with no usable one (the DataError names the first skipped file and its problem) or with no usable
training file is a DataError. The store is written atomically
(:class:`~mamba_bio_audio.data_prep.store.TokenStoreWriter`).

Store layout: meta ``domain="audio"``, ``layout="recordings"``, ``encoding``, ``sample_rate``, ``normalization``,
``source``, ``split_by`` and ``skipped``; one record per file with ``file`` (relative to the source folder, POSIX),
``split``, ``seconds`` and the ``source_rate`` / ``source_channels`` of the file.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mamba_bio_audio.errors import DataError

from ..store import TokenStoreWriter
from .clips import SPLITS, PrepareResult, skip_or_raise
from .io import read_frames, resample, to_mono, unreadable
from .mulaw import ENCODINGS, NORMALIZATIONS, encode, normalize

RECORDING_SUFFIXES = (".wav", ".flac", ".ogg")
MAX_FILE_SECONDS = 3600.0  # default: a longer file is skipped as "huge" (its float32 copy alone would be > 0.5 GB)
MAX_CLIPPED_FRACTION = 0.01  # default: a file with more of its samples at full scale is skipped as "clipped"
FULL_SCALE = 0.999  # |x| at or above this counts as clipped (16-bit full scale is 32767/32768 = 0.99997)
# the largest positive sample of the coarser subtypes, all below FULL_SCALE (8-bit PCM, and G.711 as libsndfile
# decodes it); at or above it counts as clipped in a file of that subtype
SUBTYPE_FULL_SCALE = {"PCM_U8": 127 / 128, "PCM_S8": 127 / 128, "ULAW": 32124 / 32768, "ALAW": 32256 / 32768}


def find_recordings(src_dir: str | os.PathLike) -> list[Path]:
    """The audio files under ``src_dir`` (recursive, sorted; hidden files and folders left out)."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise DataError(f"{src_dir}: no such folder")
    files = sorted(p for p in src_dir.rglob("*") if p.suffix.lower() in RECORDING_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(src_dir).parts))
    if not files:
        raise DataError(f"{src_dir}: no audio files ({', '.join(RECORDING_SUFFIXES)}) in this folder or below")
    return files


def split_by_file(names: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """``{name: split}``: a seeded shuffle of ``names``; the first ``round(n * test_fraction)`` are test, the next
    ``round(n * val_fraction)`` val (each at least 1 when its fraction is > 0 and n >= 3), the rest train."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val fraction {val_fraction} and test fraction {test_fraction}: each in [0, 1), sum < 1")
    n = len(names)

    def count(fraction: float) -> int:
        k = round(n * fraction)
        return max(k, 1) if fraction > 0 and n >= 3 else k

    n_test, n_val = count(test_fraction), count(val_fraction)
    order = np.random.default_rng(seed).permutation(n)
    split = {}
    for rank, i in enumerate(order):
        split[names[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split


def read_split_list(path: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """``{name: split}`` from a list file: one ``<file> <split>`` per line (the file relative to the audio folder,
    the split ``train``, ``val`` or ``test`` after the last space or tab; ``#`` starts a comment). Files the list
    does not name are ``train``. A line naming no file of the folder, or another split, is a DataError."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable split list ({e})") from None
    known = set(names)
    split = dict.fromkeys(names, "train")
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or parts[1] not in SPLITS:
            raise DataError(f"{path}:{number}: expected '<file> <split>' with split train, val or test")
        name = parts[0].strip().replace("\\", "/")
        if name not in known:
            raise DataError(f"{path}:{number}: {name} is not an audio file of the folder")
        split[name] = parts[1]
    return split


def file_problem(path: Path, max_file_seconds: float) -> str | None:
    """A one-line problem read from the header (unreadable, empty, huge), or None."""
    if path.stat().st_size == 0:
        return f"{path}: empty file (0 bytes)"
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, ValueError) as e:
        return unreadable(path, e)
    if info.frames <= 0:
        return f"{path}: empty audio file (no samples: a header only, or a file cut short)"
    seconds = info.frames / info.samplerate
    if seconds > max_file_seconds:
        return f"{path}: huge file ({seconds:.0f} s, more than {max_file_seconds:g} s; raise --max-file-seconds)"
    return None


def clipped_fraction(samples: torch.Tensor | np.ndarray, subtype: str | None = None) -> float:
    """The fraction of ``samples`` (any shape: a file's ``(frames, channels)``, every channel counted) at full
    scale: ``|x| >= FULL_SCALE``, or at the largest positive value of a coarser ``subtype`` (soundfile's name:
    ``PCM_U8``, ``ULAW``, ...; SUBTYPE_FULL_SCALE)."""
    samples = torch.as_tensor(samples)
    return float((samples.abs() >= min(FULL_SCALE, SUBTYPE_FULL_SCALE.get(subtype, 1.0))).float().mean())


def prepare_recordings(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sample_rate: int,
    *,
    encoding: str = "mulaw8",
    normalization: str = "none",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_list: str | os.PathLike | None = None,
    seed: int = 0,
    max_file_seconds: float = MAX_FILE_SECONDS,
    max_clipped_fraction: float = MAX_CLIPPED_FRACTION,
    strict: bool = False,
) -> PrepareResult:
    """Build a recordings token store from every audio file under ``src_dir`` (module docstring).

    Args:
        src_dir: the folder (searched recursively). out_dir: the store folder to write (atomically).
        sample_rate: the store's rate in Hz; every file is resampled to it.
        encoding: ``"mulaw8"`` or ``"linear8"``. normalization: ``"none"`` or ``"peak"`` (per file).
        val_fraction, test_fraction, seed: the seeded split by file (without ``split_list``).
        split_list: a list file (:func:`read_split_list`) instead of the seeded split.
        max_file_seconds, max_clipped_fraction: the "huge" and "clipped" limits.
        strict: raise DataError on the first bad file instead of skipping it with a warning.

    Returns:
        A :class:`~.clips.PrepareResult`: the store, files per split, and one message per skipped file.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    src_dir = Path(src_dir)
    files = find_recordings(src_dir)
    names = [p.relative_to(src_dir).as_posix() for p in files]
    splits = read_split_list(split_list, names) if split_list is not None else None
    skipped: list[str] = []
    meta = {"domain": "audio", "layout": "recordings", "encoding": encoding, "sample_rate": int(sample_rate),
            "normalization": normalization, "source": "recordings",
            "split_by": "list" if split_list is not None else f"file (seed {seed}, val {val_fraction}, "
                                                               f"test {test_fraction})"}
    with TokenStoreWriter(out_dir, meta=meta) as writer:
        for path, name in zip(files, names):
            problem = file_problem(path, max_file_seconds)
            if problem is None:
                try:
                    data, rate = read_frames(path)  # (frames, channels): clipping is counted per channel
                    info = sf.info(str(path))
                except DataError as e:
                    problem = str(e)
            if problem is None and (clipped := clipped_fraction(data, info.subtype)) > max_clipped_fraction:
                problem = (f"{path}: clipped ({100 * clipped:.1f}% of the samples at full scale, more than "
                           f"{100 * max_clipped_fraction:g}%; raise --max-clipped-fraction to keep it)")
            if problem is not None:
                skip_or_raise(problem, skipped, strict)
                continue
            wave = normalize(resample(to_mono(data), rate, sample_rate), normalization)
            writer.add(encode(wave, encoding).numpy(), file=name, split="",
                       seconds=round(wave.numel() / sample_rate, 6), source_rate=rate, source_channels=info.channels)
        if not writer.records:
            raise DataError(f"{src_dir}: no usable audio files ({len(skipped)} skipped; the first: {skipped[0]})")
        if splits is None:  # the seeded split of the usable files: a skipped file takes no val or test place
            splits = split_by_file([r["file"] for r in writer.records], val_fraction, test_fraction, seed)
        for record in writer.records:
            record["split"] = splits[record["file"]]
        counts = Counter(record["split"] for record in writer.records)
        if not counts["train"]:
            raise DataError(f"{src_dir}: no usable file is in the train split")
        writer.meta["skipped"] = skipped
    return PrepareResult(store=Path(out_dir), counts={s: counts[s] for s in SPLITS}, skipped=skipped)
