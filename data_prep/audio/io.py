"""Read and write audio files: WAV/FLAC in (soundfile), float mono waveforms out, 16-bit PCM WAV back.

Conversions done on reading, in this order:

- samples are read as float32; 16-bit PCM ``k`` becomes ``k / 32768`` in [-1, 1) (no other amplitude change);
- two or more channels become mono by averaging the channels;
- another sample rate is resampled to the requested one with :func:`torchaudio.functional.resample`
  (its defaults: windowed-sinc, Hann window, ``lowpass_filter_width=6``, ``rolloff=0.99``).

Failures raise :class:`~mamba_bio_audio.errors.DataError` with one line naming the file and the problem:
missing, unreadable or corrupt, empty (0 bytes, or no samples), or holding NaN/inf samples (possible in float WAV/FLAC).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from mamba_bio_audio.errors import DataError
from mamba_bio_audio.files import umask_mode

AUDIO_SUFFIXES = (".wav", ".flac")


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample ``wave: (..., samples)`` from ``orig_rate`` to ``new_rate`` Hz (torchaudio, windowed sinc)."""
    if orig_rate == new_rate:
        return wave
    return AF.resample(wave, orig_rate, new_rate)


def unreadable(path: Path, error: Exception) -> str:
    """The one-line message for a file soundfile cannot open or decode (libsndfile's reason, without its
    repetition of the path)."""
    reason = error.error_string if isinstance(error, sf.LibsndfileError) else str(error)
    reason = reason.strip().splitlines()[0].rstrip(".") if reason.strip() else type(error).__name__
    return f"{path}: unreadable or corrupt audio ({reason})"


def read_frames(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """An audio file's samples as float32 ``(frames, channels)`` (no conversion but PCM scaling) and its rate in
    Hz; a one-line DataError when the file is missing, unreadable, empty or holds NaN/inf samples."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except (sf.SoundFileError, RuntimeError, ValueError) as e:
        raise DataError(unreadable(path, e)) from None
    if data.size == 0:
        raise DataError(f"{path}: empty audio file (no samples: a header only, or a file cut short)")
    if not np.isfinite(data).all():
        bad = int(np.argmax(~np.isfinite(data).all(axis=1)))
        raise DataError(f"{path}: NaN or infinite sample at frame {bad}")
    return data, int(rate)


def to_mono(data: np.ndarray) -> torch.Tensor:
    """``(frames, channels)`` float32 -> ``(frames,)``: the mean of the channels."""
    return torch.from_numpy(data.mean(axis=1, dtype=np.float32))


def read_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Read a WAV/FLAC file as a mono float32 waveform (:func:`read_frames`, then :func:`to_mono`).

    Args:
        path: the audio file.
        sample_rate: resample to this rate (Hz); ``None`` keeps the file's own rate.

    Returns:
        ``(wave, rate)``: ``wave`` is a float32 tensor of shape ``(samples,)`` and ``rate`` its sample rate.
    """
    data, rate = read_frames(path)
    wave = to_mono(data)
    if sample_rate is not None and sample_rate != rate:
        wave = resample(wave, rate, sample_rate)
        rate = sample_rate
    return wave, int(rate)


def write_wav(path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write a mono waveform as 16-bit PCM WAV, atomically (temp file in the same folder, then ``os.replace``).

    Args:
        path: destination file; its folder is created if needed.
        wave: float samples of shape ``(samples,)``, nominally in [-1, 1]; values outside are clipped.
        sample_rate: rate in Hz written into the header.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    samples = torch.as_tensor(wave, dtype=torch.float32).detach().cpu()
    if samples.ndim != 1:
        raise ValueError(f"wave must have shape (samples,), got {tuple(samples.shape)}")
    samples = samples.clamp(-1.0, 1.0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, umask_mode(0o666))  # mkstemp makes it owner-only: give the WAV the user's usual permissions
    try:
        sf.write(tmp, samples, sample_rate, format="WAV", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
