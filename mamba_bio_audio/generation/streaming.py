"""Long generations in constant memory: tokens come out in chunks (:func:`stream_tokens`) and go straight into
WAV files that grow on disk (:class:`WavStream`).

Memory does not grow with the length: the recurrent state, one chunk of tokens and one float64 log-likelihood per
sequence. A WAV is written under a hidden temporary name in its folder and renamed into place by
:meth:`WavStream.commit`; :meth:`WavStream.abort` (or leaving a ``with`` block by an exception) deletes it, so an
interrupted run leaves no half-written WAV behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mamba_bio_audio.generation.sampling import sample_next


@torch.no_grad()
def stream_tokens(step: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, num_tokens: int, *,
                  chunk: int = 16384, temperature: float = 1.0, top_p: float = 1.0,
                  generator: torch.Generator | None = None,
                  progress: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sample ``num_tokens`` tokens after a prefill, ``chunk`` at a time.

    Args:
        step: ``ids (batch,) -> logits (batch, vocab)`` at the next position (advances the model's state).
        logits: ``(batch, vocab)``, the prediction of the first token to sample (the prefill's last position).
        num_tokens, chunk: tokens to sample, and per yielded chunk.
        temperature, top_p, generator: see :func:`~mamba_bio_audio.generation.sampling.sample_next`.
        progress: a tqdm bar.

    Yields:
        ``(tokens, log_likelihood)``: the next ``(batch, <= chunk)`` int64 tokens on the CPU and the running
        ``(batch,)`` float64 sum of the untempered, unfiltered ``log p(x_t | x_<t)`` of the tokens drawn so far.
    """
    batch = logits.shape[0]
    buffer = torch.empty(batch, min(chunk, num_tokens), dtype=torch.long, device=logits.device)
    log_likelihood = torch.zeros(batch, dtype=torch.float64, device=logits.device)
    steps = range(num_tokens)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="generate", unit="sample")
    filled = 0
    for t in steps:
        logits = logits.float()
        current = sample_next(logits, temperature, 0, top_p, generator)
        log_likelihood += torch.log_softmax(logits, dim=-1).gather(-1, current[:, None])[:, 0].double()
        buffer[:, filled] = current
        filled += 1
        if t + 1 < num_tokens:
            logits = step(current)
        if filled == buffer.shape[1] or t + 1 == num_tokens:
            yield buffer[:, :filled].to("cpu", copy=True), log_likelihood.to("cpu", copy=True)
            filled = 0


class WavStream:
    """A mono 16-bit PCM WAV written in pieces: ``write(wave)`` appends, ``commit()`` renames it into place.

    Use as a context manager: leaving the block normally commits, by an exception aborts (deletes the temporary
    file). The temporary file is ``.NAME.partial`` beside ``path``.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.file = sf.SoundFile(self.tmp, "w", samplerate=int(sample_rate), channels=1, format="WAV",
                                 subtype="PCM_16")
        self.frames = 0

    def write(self, wave: torch.Tensor | np.ndarray) -> None:
        """Append float samples ``(n,)`` (clipped to [-1, 1])."""
        samples = np.clip(np.asarray(torch.as_tensor(wave, dtype=torch.float32).cpu()), -1.0, 1.0)
        self.file.write(samples)
        self.frames += samples.shape[0]

    def commit(self) -> Path:
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> WavStream:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
